"""`mezo-ckpt push` and `mezo-ckpt pull` (mezo_ckpt/cli/hub.py): `push --dry-run DIR` of a
golden trajectory (the folder that would be uploaded), and the refusals of both commands.

Nothing is ever uploaded and nothing leaves the machine: refusals run with
HF_HUB_OFFLINE=1, and the dry runs that must download the base (a golden file was
trained from a local folder, so --base-repo names a Hub copy of it) talk to the fake Hub
of tests/hubserver.py on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard
from paths import GOLDEN
from tinymodels import save_tiny

from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import file_sha256

NAME = "llama-fp32-normal16"  # format 1.0 over tiny_model("llama"): trainable tensors pinned
GOLDEN_FILE = GOLDEN / f"{NAME}.zst"
BASE = "tester/tiny-llama"
REPO = "tester/my-finetune"
#: The Hub copy of the golden file's local base, at the tip of main.
PINNED = ("--base-repo", BASE, "--base-revision", "main")


def cli(*args: object):
    return CliRunner().invoke(main, list(map(str, args)))


def error_line(r) -> str:
    """The one error line (the base download may print progress bars before it)."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error (")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def base_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of the tiny Llama the golden file was trained from."""
    folder = tmp_path_factory.mktemp("hub-base") / "tiny-llama"
    save_tiny(folder, "llama")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub(fake_hub, base_files):
    """The fake Hub holding the golden file's base as BASE (main = its only commit)."""
    fake_hub.add_commit(BASE, {**base_files, "README.md": b"---\nlicense: mit\n---\n# base\n"})
    return fake_hub


# ----------------------------------------------------------------------------- push --dry-run


def test_dry_run_writes_the_folder_that_would_be_uploaded(hub, base_files, tmp_path):
    out = tmp_path / "preview"
    commit = hub.resolve(BASE)
    r = cli("push", GOLDEN_FILE, REPO, *PINNED, "--dry-run", out, "--dataset", "tester/toy")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        f"Dry run: wrote README.md, {NAME}.zst, mezo_ckpt.json to {out} (trajectory 961 bytes "
        "for 86,656 bytes of float32 weights); nothing was uploaded.\n"
    )
    assert f"Note: pinned {BASE}@main to commit {commit}\n" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", f"{NAME}.zst", "mezo_ckpt.json"]
    assert (out / f"{NAME}.zst").read_bytes() == GOLDEN_FILE.read_bytes()
    assert not hub.has_repo(REPO)
    assert not [req for req in hub.requests if req[0] in ("POST", "PUT", "DELETE")]

    meta = json.loads((out / "mezo_ckpt.json").read_text())
    assert meta["format"] == "mezo-ckpt/hub" and meta["version"] == 1
    assert meta["trajectory"]["sha256"] == file_sha256(GOLDEN_FILE)
    assert meta["trajectory"]["num_steps"] == 40 and meta["trajectory"]["format_version"] == "1.0"
    assert meta["base"]["kind"] == "hub" and meta["base"]["trained_from"] == "local"
    assert meta["base"]["repo_id"] == BASE and meta["base"]["revision"] == commit
    weights = hashlib.sha256(base_files["model.safetensors"]).hexdigest()
    assert meta["base"]["files"]["model.safetensors"] == weights

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == BASE and card.data.license == "mit"  # from the base's card
    assert card.data.datasets == ["tester/toy"]
    assert f"mezo-ckpt pull {REPO} -o my-finetune" in card.text
    assert commit in card.text


def test_dry_run_json(hub, tmp_path):
    out = tmp_path / "preview"
    r = cli(
        "push", GOLDEN_FILE, REPO, *PINNED, "--dry-run", out, "--license", "apache-2.0", "--json"
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["repo_id"] == REPO and s["folder"] == str(out) and s["commit"] is None
    assert s["files"] == {p.name: p.stat().st_size for p in out.iterdir()}
    assert s["meta"] == json.loads((out / "mezo_ckpt.json").read_text())
    assert ModelCard.load(out / "README.md").data.license == "apache-2.0"


def test_dry_run_into_a_non_empty_folder_is_refused_before_any_download(hub, tmp_path):
    out = tmp_path / "preview"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    r = cli("push", GOLDEN_FILE, REPO, *PINNED, "--dry-run", out)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputExistsError): --dry-run ")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert not [req for req in hub.requests if "/resolve/" in req[1]]


def test_a_hub_base_that_is_not_the_trained_one_is_refused(fake_hub, tmp_path):
    other = tmp_path / "other"
    save_tiny(other, "llama", seed=7)
    fake_hub.add_commit(BASE, {p.name: p.read_bytes() for p in other.iterdir()})
    out = tmp_path / "preview"
    r = cli("push", GOLDEN_FILE, REPO, *PINNED, "--dry-run", out)
    assert r.exit_code == 2
    assert error_line(r).startswith(
        f"Error (BaseMismatchError): {BASE}@main is not the base this trajectory was trained "
        "from; refusing to push"
    )
    assert r.stderr.endswith(
        "  - content of the trainable tensors differs (fingerprint 89e622e4d323 != cff64a5ba8de)\n"
    )
    assert not out.exists()


def test_with_adapter_is_refused_for_a_full_parameter_run(hub, tmp_path):
    r = cli("push", GOLDEN_FILE, REPO, *PINNED, "--dry-run", tmp_path / "p", "--with-adapter")
    assert r.exit_code == 2
    assert error_line(r) == (
        "Error (PushRefusedError): --with-adapter is for LoRA/prefix runs (--peft); this run "
        "trains the model itself"
    )
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------------- push refusals


def test_a_local_base_without_a_hub_copy_is_refused(no_hub, tmp_path):
    out = tmp_path / "preview"
    r = cli("push", GOLDEN_FILE, REPO, "--dry-run", out)
    assert r.exit_code == 2
    assert r.stderr.startswith(
        "Error (PushRefusedError): this trajectory was trained from a local base folder"
    )
    assert "--base-repo REPO --base-revision COMMIT" in r.stderr
    assert r.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-repo", BASE], "--base-repo and --base-revision go together"),
        (["--base-revision", "main"], "--base-repo and --base-revision go together"),
    ],
)
def test_base_repo_and_revision_go_together(no_hub, tmp_path, args, message):
    r = cli("push", GOLDEN_FILE, REPO, *args, "--dry-run", tmp_path / "p")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error (PushRefusedError): {message}")


@pytest.mark.parametrize("repo", ["no-slash", "a/b/c", "https://huggingface.co/a/b", "../x"])
def test_a_bad_repo_id_is_refused(no_hub, tmp_path, repo):
    r = cli("push", GOLDEN_FILE, repo, "--dry-run", tmp_path / "p")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (PushRefusedError): ")
    assert "is not a Hub repo id: use USER/NAME or ORG/NAME" in r.stderr


def test_a_dry_run_folder_may_not_hold_the_trajectory(no_hub):
    r = cli("push", GOLDEN_FILE, REPO, "--dry-run", GOLDEN)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputError): --dry-run ")
    assert "own input" in r.stderr


def test_a_dry_run_path_that_is_a_file_is_a_usage_error(no_hub, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = cli("push", GOLDEN_FILE, REPO, "--dry-run", f)
    assert r.exit_code == 2
    assert "Invalid value for '--dry-run'" in r.stderr and "is a file" in r.stderr
    assert f.read_text() == "x"


def test_offline_push_without_dry_run_is_refused(no_hub):
    r = cli("push", GOLDEN_FILE, REPO)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (HubError): HF_HUB_OFFLINE is set, so nothing can be")
    assert "--dry-run DIR" in r.stderr


def test_push_of_a_missing_file_is_a_usage_error(no_hub, tmp_path):
    r = cli("push", tmp_path / "nope.zst", REPO)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_push_of_a_foreign_file_is_a_typed_error(no_hub, tmp_path):
    f = tmp_path / "notes.zst"
    f.write_text("not a trajectory")
    r = cli("push", f, REPO, "--dry-run", tmp_path / "p")
    assert r.exit_code == 2 and r.stderr.startswith("Error (BadMagicError): ")


# ----------------------------------------------------------------------------- pull refusals


def test_pull_ignore_base_mismatch_needs_an_output(no_hub):
    r = cli("pull", REPO, "--ignore-base-mismatch")
    assert r.exit_code == 2
    assert r.stderr == (
        "Error (OutputError): --ignore-base-mismatch needs -o DIR (such weights are never cached)\n"
    )


def test_pull_refuses_a_bad_step(no_hub):
    r = cli("pull", REPO, "--step", "-2")
    assert r.exit_code == 2 and "steps count from 0" in r.stderr


def test_pull_offline_of_an_uncached_repo_is_a_typed_error(no_hub, tmp_path):
    r = cli("pull", REPO, "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error (NotCachedError): {REPO} is not in the local cache")
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_pull_of_a_local_trajectory_needs_its_local_base(no_hub, tmp_path):
    r = cli("pull", GOLDEN_FILE, "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (PublishedRepoError): this trajectory was trained from a")
    assert "(--base PATH)" in r.stderr
    assert not (tmp_path / "out").exists()
