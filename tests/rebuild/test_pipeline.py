"""The one rebuild pipeline: every sink and every kind of run agree with training.

For each kind of run (plain SPSA, n directions, a momentum window, LoRA, prefix,
bf16 with stochastic rounding) the whole replay, the streamed replay, the exact delta and
``apply-delta``, and ``diff`` are held to the trained weights (``torch.equal``), and the
bugs of the five copies that came before the pipeline stay fixed: ``diff`` of momentum
runs, ``diff`` of adapter runs, ``--stream --no-verify``, shard names from a base's
index used as paths, ``apply-delta`` without the whole-base check.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from click.testing import CliRunner
from helpers_train import write_jsonl
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tinymodels import tiny_model, tiny_tokenizer, toy_sentiment
from transformers import AutoModelForCausalLM

from mezo_ckpt import api
from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import BaseMismatchError, DeltaError, ModelLoadError
from mezo_ckpt.models.adapters import prepare
from mezo_ckpt.models.base import load_base
from mezo_ckpt.trainer import train
from mezo_ckpt.trajectory import read_trajectory

KINDS = {
    "plain": {},
    "n-directions": {"estimator": "one-sided", "n_directions": 2},
    "momentum": {"momentum": 0.8, "momentum_window": 3},
    "lora": {"peft": "lora", "lora_r": 2, "lr": 1e-2, "eps": 1e-2},
    "prefix": {"peft": "prefix", "prefix_tokens": 3, "lr": 1e-2, "eps": 1e-2},
    "bf16-stochastic": {"dtype": "bfloat16", "rounding": "stochastic"},
}


def sharded_base(folder, dtype=torch.float32):
    m = tiny_model("llama", dtype=dtype)
    m.save_pretrained(folder, max_shard_size="20KB")  # many small shards
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run of every kind on a many-shard tiny Llama (fp32 or bf16)."""
    root = tmp_path_factory.mktemp("rebuild")
    write_jsonl(root / "t.jsonl", toy_sentiment(48))
    bases = {
        "float32": sharded_base(root / "base32"),
        "bfloat16": sharded_base(root / "base16", torch.bfloat16),
    }
    out = {}
    for kind, kw in KINDS.items():
        settings = dict(
            task="custom",
            train_file=str(root / "t.jsonl"),
            template="{text} =",
            verbalizer={"pos": " p", "neg": " n"},
            steps=5,
            eval_every=0,
            batch_size=8,
            lr=3e-3,
            eps=1e-2,
            output=str(root / f"{kind}.zst"),
            fsync=False,
        )
        settings.update(kw)
        base = bases[settings.get("dtype", "float32")]
        r = train(model=str(base), progress=False, keep_model=True, log=lambda s: None, **settings)
        params = canonical_parameters(r.model)
        trained = {
            n: params[n].detach().clone() for n in read_trajectory(r.output).header.trainable
        }
        out[kind] = (base, r.output, trained)
    return out


def _state(folder) -> dict[str, torch.Tensor]:
    m = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    return {k: v.detach() for k, v in canonical_parameters(m).items()}


def _assert_trained(got: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> None:
    for name, t in trained.items():
        assert torch.equal(got[name], t), name


@pytest.mark.parametrize("kind", list(KINDS))
def test_whole_replay_equals_training(runs, kind, tmp_path):
    base, traj, trained = runs[kind]
    fmt = "peft" if kind in ("lora", "prefix") else "hf"
    r = api.replay_to(traj, base=str(base), output=tmp_path / "o", fmt=fmt, progress=False)
    assert r["verified"] == "fingerprint" and not r["streamed"]
    if fmt == "peft":
        weights = load_file(str(tmp_path / "o" / "adapter_model.safetensors"))
        assert len(weights) == len(trained)
        assert all(any(torch.equal(w, t) for w in weights.values()) for t in trained.values())
    else:
        _assert_trained(_state(tmp_path / "o"), trained)


@pytest.mark.parametrize("kind", ["plain", "n-directions", "momentum", "bf16-stochastic"])
def test_streamed_replay_and_delta_equal_training(runs, kind, tmp_path):
    base, traj, trained = runs[kind]
    r = api.replay_to(traj, base=str(base), output=tmp_path / "s", stream=True, progress=False)
    assert r["streamed"] and r["verified"] == "fingerprint"
    streamed = _state(tmp_path / "s")
    _assert_trained(streamed, trained)
    api.replay_to(traj, base=str(base), output=tmp_path / "w", stream=False, progress=False)
    whole = _state(tmp_path / "w")
    assert streamed.keys() == whole.keys()
    assert all(torch.equal(streamed[k], whole[k]) for k in whole)
    delta = tmp_path / "d.safetensors"
    api.replay_to(traj, base=str(base), output=delta, fmt="delta", progress=False)
    a = api.apply_delta_file(delta, tmp_path / "a", base=str(base), progress=False)
    assert a["verified"] == "fingerprint" and any("tokenizer" in c for c in a["checked"])
    _assert_trained(_state(tmp_path / "a"), trained)


@pytest.mark.parametrize("kind", list(KINDS))
def test_diff_equals_the_change_training_made(runs, kind):
    """diff rebuilds through the pipeline: momentum history terms and adapters included,
    both states fingerprinted (before the pipeline: wrong numbers, KeyError)."""
    base, traj, trained = runs[kind]
    header = read_trajectory(traj).header
    model = load_base(str(base), dtype=header.base.dtype).model
    start = canonical_parameters(prepare(header, model))
    r = api.diff_trajectories(traj, base=str(base), progress=False)
    assert r["b"]["verified"] == "fingerprint"
    sq = 0.0
    for name, t in trained.items():
        d = t.double() - start[name].detach().double()
        sq += float((d * d).sum())
        assert math.isclose(r["tensors"][name]["norm"], math.sqrt(float((d * d).sum())))
    assert sq > 0 and math.isclose(r["total"]["norm"], math.sqrt(sq), rel_tol=1e-12)


def test_diff_orders_layers_by_number():
    """layers.3 before layers.20 (text order put 20 first), in the JSON and the table."""
    from mezo_ckpt.rebuild import DiffSink

    sink = DiffSink()
    for layer in (20, 3, 11):
        x = torch.ones(4)
        sink.take(f"model.layers.{layer}.w", x, [x, x + 1])
    r = sink.close(None, [], [], None)
    assert list(r["layers"]) == ["model.layers.3", "model.layers.11", "model.layers.20"]
    assert list(r["tensors"])[0] == "model.layers.3.w"


def test_stream_with_no_verify_still_streams(runs, tmp_path):
    base, traj, trained = runs["plain"]
    r = CliRunner().invoke(
        main,
        ["replay", str(traj), "--base", str(base), "-o", str(tmp_path / "o"), "--stream",
         "--no-verify", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["streamed"] is True and doc["verified"] != "fingerprint"  # not compared
    _assert_trained(_state(tmp_path / "o"), trained)


def test_stream_refuses_what_it_cannot_stream(runs, tmp_path):
    base, traj, _ = runs["lora"]
    r = CliRunner().invoke(
        main, ["replay", str(traj), "--base", str(base), "-o", str(tmp_path / "o"), "--stream"]
    )
    assert r.exit_code == 2 and "OutputError" in r.output and "--stream" in r.output


def _hostile_index(base, tmp_path, name: str):
    """A copy of ``base`` whose index maps one shard's tensors to ``name``."""
    wrong = tmp_path / "wrong"
    shutil.copytree(base, wrong)
    index_path = wrong / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    index_path.write_text(json.dumps(index))
    return wrong


@pytest.mark.parametrize("where", ["parent", "absolute", "subfolder", "hidden"])
def test_shard_names_from_an_index_are_never_paths(runs, tmp_path, where):
    """A base index naming ../x, /abs/x, a/x or .x is refused before anything is read or
    written (it once overwrote a user's file and truncated an absolute one)."""
    base, traj, _ = runs["plain"]
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"the user's file")
    name = {
        "parent": "../victim.safetensors",
        "absolute": str(victim),
        "subfolder": "sub/model.safetensors",
        "hidden": ".model.safetensors",
    }[where]
    wrong = _hostile_index(base, tmp_path, name)
    for stream in ("--stream", "--no-stream"):
        dest = tmp_path / f"out{stream}"
        r = CliRunner().invoke(
            main, ["replay", str(traj), "--base", str(wrong), "-o", str(dest), stream]
        )
        assert r.exit_code == 2, r.output
        assert "Error" in r.output and "Traceback" not in r.output
        assert victim.read_bytes() == b"the user's file" and not dest.exists()


def test_streamed_output_shards_have_names_of_our_own(runs, tmp_path):
    base, traj, _ = runs["plain"]
    api.replay_to(traj, base=str(base), output=tmp_path / "o", stream=True, progress=False)
    files = sorted(p.name for p in (tmp_path / "o").glob("*.safetensors"))
    n = len(files)
    assert n > 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        '{"weight_map": []}',
        '{"weight_map": {"model.norm.weight": 3}}',
        '{"weight_map": {"model.norm.weight": "missing.safetensors"}}',
    ],
)
def test_malformed_index_is_a_typed_error_when_streaming(runs, tmp_path, bad):
    base, traj, _ = runs["plain"]
    wrong = tmp_path / "wrong"
    shutil.copytree(base, wrong)
    (wrong / "model.safetensors.index.json").write_text(bad)
    with pytest.raises(ModelLoadError):
        api.replay_to(traj, base=str(wrong), output=tmp_path / "o", stream=True, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "huge-header", "tensor-missing"])
def test_malformed_shards_are_typed_errors_when_streaming(runs, tmp_path, damage):
    base, traj, _ = runs["plain"]
    wrong = tmp_path / "wrong"
    shutil.copytree(base, wrong)
    index = json.loads((wrong / "model.safetensors.index.json").read_text())["weight_map"]
    shard = wrong / index["model.layers.1.mlp.up_proj.weight"]
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        shard.write_bytes(b"\x00garbage" * 100)
    elif damage == "huge-header":
        shard.write_bytes((1 << 60).to_bytes(8, "little") + data[8:])
    else:
        tensors = load_file(str(shard))
        tensors.pop("model.layers.1.mlp.up_proj.weight")
        save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises((ModelLoadError, BaseMismatchError)):
        api.replay_to(traj, base=str(wrong), output=tmp_path / "o", stream=True, progress=False)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- apply-delta


@pytest.fixture
def delta(runs, tmp_path):
    base, traj, _ = runs["plain"]
    path = tmp_path / "d.safetensors"
    api.replay_to(traj, base=str(base), output=path, fmt="delta", progress=False)
    return base, path


def _wrong_base(base, tmp_path, what: str):
    wrong = tmp_path / f"wrong-{what}"
    shutil.copytree(base, wrong)
    if what == "frozen-tensor":
        index = json.loads((wrong / "model.safetensors.index.json").read_text())["weight_map"]
        name = "model.layers.1.mlp.up_proj.weight"
        tensors = load_file(str(wrong / index[name]))
        t = tensors[name].clone()
        t.view(-1)[0] = torch.nextafter(t.view(-1)[0], torch.tensor(1.0))
        tensors[name] = t
        save_file(tensors, str(wrong / index[name]), metadata={"format": "pt"})
    elif what == "config":
        p = wrong / "config.json"
        p.write_text(p.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    else:
        p = wrong / "tokenizer.json"
        p.write_text(p.read_text().replace("=", "~", 1))
    return wrong


@pytest.mark.parametrize("what", ["frozen-tensor", "config", "tokenizer"])
def test_apply_delta_checks_the_whole_base(delta, tmp_path, what):
    """A base that replay refuses, apply-delta refuses too (it once checked only the
    trained tensors)."""
    base, path = delta
    wrong = _wrong_base(base, tmp_path, what)
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["apply-delta", str(path), "--base", str(wrong), "-o", str(out)])
    assert r.exit_code == 2 and "BaseMismatchError" in r.output, r.output
    assert not out.exists()


def _rewrite(path, edit_meta=None, edit_tensors=None):
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    prov = json.loads(meta["mezo_ckpt"])
    if edit_meta:
        edit_meta(prov)
    if edit_tensors:
        edit_tensors(tensors)
    meta["mezo_ckpt"] = json.dumps(prov)
    save_file(tensors, str(path), metadata=meta)


def _first(tensors) -> str:
    return sorted(k for k in tensors if "::" not in k)[0]


CRAFTED = {
    "no-fingerprint": (lambda p: p.pop("tuned_sha256"), None, DeltaError),
    "no-identity": (
        lambda p: (p.pop("base_identity"), p["base"].pop("tensors_sha256")),
        None,
        DeltaError,
    ),
    "base-a-string": (lambda p: p.__setitem__("base", "x"), None, DeltaError),
    "identity-garbage": (lambda p: p.__setitem__("base_identity", {"kind": 3}), None, DeltaError),
    "int-delta": (
        None, lambda t: t.__setitem__(_first(t), t[_first(t)].to(torch.int32)), DeltaError
    ),
    "fix-out-of-range": (
        None,
        lambda t: t.update(
            {_first(t) + "::fix_index": torch.tensor([10**9]),
             _first(t) + "::fix_value": torch.tensor([1.0])}
        ),
        DeltaError,
    ),
    "fix-float-index": (
        None,
        lambda t: t.update(
            {_first(t) + "::fix_index": torch.tensor([0.5]),
             _first(t) + "::fix_value": torch.tensor([1.0])}
        ),
        DeltaError,
    ),
    "unknown-tensor": (
        None, lambda t: t.__setitem__("no.such.weight", torch.zeros(3)), BaseMismatchError
    ),
    "edited-value": (None, lambda t: t[_first(t)].add_(1.0), Exception),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_deltas_are_refused_with_a_typed_error(delta, tmp_path, case):
    base, path = delta
    edit_meta, edit_tensors, error = CRAFTED[case]
    _rewrite(path, edit_meta, edit_tensors)
    out = tmp_path / "o"
    with pytest.raises(error) as e:
        api.apply_delta_file(path, out, base=str(base), progress=False)
    from mezo_ckpt.errors import MezoCkptError

    assert isinstance(e.value, MezoCkptError)
    assert not out.exists()
    r = CliRunner().invoke(main, ["apply-delta", str(path), "--base", str(base), "-o", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_a_legacy_delta_is_checked_by_every_tensor_and_says_what_it_could_not(delta, tmp_path):
    """A delta from 0.2.0 (no whole identity) still applies, checked by its root digest,
    and the result says config and tokenizer were not checked."""
    base, path = delta
    _rewrite(path, lambda p: p.pop("base_identity"))
    r = api.apply_delta_file(path, tmp_path / "o", base=str(base), progress=False)
    assert any("not checked" in c for c in r["checked"])
    wrong = _wrong_base(base, tmp_path, "frozen-tensor")
    with pytest.raises(BaseMismatchError):
        api.apply_delta_file(path, tmp_path / "o2", base=str(wrong), progress=False)


def test_should_stream(tmp_path, monkeypatch):
    from mezo_ckpt.rebuild import sources

    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    assert sources.should_stream(tmp_path, True) and not sources.should_stream(tmp_path, False)
    monkeypatch.setattr(sources, "_available_memory", lambda: 1500)
    assert sources.should_stream(tmp_path, None)  # 1000 bytes > half of 1500
    monkeypatch.setattr(sources, "_available_memory", lambda: 10_000)
    assert not sources.should_stream(tmp_path, None)
    monkeypatch.setattr(sources, "_available_memory", lambda: None)  # unknown: never by default
    assert not sources.should_stream(tmp_path, None)


@pytest.mark.parametrize("kind", ["plain", "momentum", "lora"])
def test_python_replay_rebuilds_the_trained_model(runs, kind):
    """mezo_ckpt.replay(trajectory, base): a folder or a loaded module, the same
    pipeline and the same verdict as the CLI."""
    import mezo_ckpt

    base, traj, trained = runs[kind]
    model = mezo_ckpt.replay(traj, base)
    assert model.mezo_ckpt["verified"] == "fingerprint" and model.mezo_ckpt["step"] == 5
    _assert_trained({k: v.detach() for k, v in canonical_parameters(model).items()}, trained)
    held = load_base(str(base), dtype=read_trajectory(traj).header.base.dtype).model
    again = mezo_ckpt.replay(traj, held, step=5)
    _assert_trained({k: v.detach() for k, v in canonical_parameters(again).items()}, trained)


def test_python_replay_refuses_a_wrong_base_and_odd_arguments(runs, tmp_path):
    import mezo_ckpt

    base, traj, _ = runs["plain"]
    wrong = _wrong_base(base, tmp_path, "config")
    with pytest.raises(BaseMismatchError):
        mezo_ckpt.replay(traj, wrong)
    with pytest.raises(TypeError, match="state dict maps names to tensors"):
        mezo_ckpt.replay(traj, {"a": 1})
    with pytest.raises(TypeError, match="base must be"):
        mezo_ckpt.replay(traj, 42)
