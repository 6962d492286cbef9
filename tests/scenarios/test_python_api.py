"""The CLI back-ends in mezo_ckpt/api.py, called directly (the Python API behind
`replay`, `info`, `diff` and `apply-delta`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt import api
from mezo_ckpt.errors import ModelLoadError, OutputError, OutputExistsError
from mezo_ckpt.trainer import train
from mezo_ckpt.trajectory import read_trajectory


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    base = root / "base"
    save_tiny(base, "llama")
    out = root / "run.zst"
    r = train(
        model=str(base),
        data={"train": toy_sentiment(32), "dev": toy_sentiment(8, 1)},
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        steps=4,
        batch_size=4,
        eval_every=2,
        eval_test=False,
        lr=1e-2,
        eps=1e-2,
        fsync=False,
        output=str(out),
        progress=False,
        log=lambda s: None,
        keep_model=True,
    )
    return base, out, r


def test_default_output_names():
    p = Path("/x/run.zst")
    assert api.default_output(p, 7, "hf") == Path("/x/run-step7")
    assert api.default_output(p, 7, "safetensors") == Path("/x/run-step7.safetensors")
    assert api.default_output(p, 7, "delta") == Path("/x/run-step7-delta.safetensors")
    assert api.default_output(Path("/x/run.zst.partial"), 2, "peft") == Path("/x/run-step2-adapter")


def test_a_local_base_must_be_named(run):
    _, out, _ = run
    with pytest.raises(ModelLoadError, match="--base"):
        api.base_spec_from_header(read_trajectory(out))


@pytest.mark.parametrize("stream", [False, True])
def test_replay_to_every_format_gives_the_trained_weights(run, tmp_path, stream):
    base, out, r = run
    trained = {k: v.detach() for k, v in r.model.state_dict().items()}
    got = api.replay_to(out, base=str(base), output=tmp_path / "hf", progress=False, stream=stream)
    assert got["verified"] == "fingerprint" and got["step"] == 4
    assert got.get("streamed", False) is stream
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    for k, v in sd.items():
        assert torch.equal(v, trained[k]), k
    api.replay_to(
        out, base=str(base), output=tmp_path / "w.safetensors", fmt="safetensors", progress=False
    )
    sd = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(v, trained[k]) for k, v in sd.items())


def test_replay_to_refuses_bad_outputs_before_any_work(run, tmp_path):
    base, out, _ = run
    with pytest.raises(OutputError, match="format"):
        api.replay_to(out, base=str(base), output=tmp_path / "x", fmt="gguf", progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        api.replay_to(out, base=str(base), output=tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError):
        api.replay_to(out, base=str(base), output=base / "inside", progress=False)


def test_delta_round_trip_and_diff(run, tmp_path):
    base, out, r = run
    api.replay_to(
        out, base=str(base), output=tmp_path / "d.safetensors", fmt="delta", step=2, progress=False
    )
    res = api.apply_delta_file(
        tmp_path / "d.safetensors", tmp_path / "t2", base=str(base), progress=False
    )
    assert res["output"] == str(tmp_path / "t2")
    traj = read_trajectory(out)
    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.models.base import load_base
    from mezo_ckpt.rebuild import replay_model

    model = load_base(str(base)).model
    replay_model(traj, model, step=2)
    want = canonical_parameters(model)
    sd = load_file(tmp_path / "t2" / "model.safetensors")
    assert all(torch.equal(v, want[k]) for k, v in sd.items() if k in want)
    d = api.diff_trajectories(out, base=str(base), progress=False)
    norms = [t["norm"] for t in d["tensors"].values()]
    assert norms and min(norms) >= 0 and max(norms) > 0
    assert "model.layers.0" in d["layers"]


def test_summarize(run):
    _, out, _ = run
    s = api.summarize(out)
    assert s["steps"] == 4 and s["complete"] and s["state"] == "complete"
    assert s["last_verified_step"] == 4
    assert [e["step"] for e in s["evaluations"]] == [0, 2, 4]
    from mezo_ckpt.rebuild.sinks import layer_of, natural_key

    assert layer_of("model.layers.3.mlp.up_proj.weight") == "model.layers.3"
    assert layer_of("lm_head.weight") == "lm_head"
    names = ["model.layers.20", "model.layers.3", "lm_head", "model.layers.10"]
    assert sorted(names, key=natural_key) == [
        "lm_head",
        "model.layers.3",
        "model.layers.10",
        "model.layers.20",
    ]
