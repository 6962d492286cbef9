"""Replay engine and the replay/info CLI: refusals leave the base untouched; every output
format holds the replayed weights."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers_train import assert_same, config, state, write_jsonl
from safetensors.torch import load_file
from tinymodels import save_tiny, tiny_model, toy_sentiment
from transformers import AutoModelForCausalLM

from mezo_ckpt.cli import main
from mezo_ckpt.errors import BaseMismatchError, StepOutOfRangeError, TruncatedError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.models.export import apply_delta
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trainer import train
from mezo_ckpt.trajectory import read_trajectory
from mezo_ckpt.trajectory.steps import best_step


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short training run on a tiny Llama: (base folder, trajectory, trained state)."""
    d = tmp_path_factory.mktemp("run")
    save_tiny(d / "base", "llama")
    data = {
        "train_file": write_jsonl(d / "train.jsonl", toy_sentiment(200, 0)),
        "dev_file": write_jsonl(d / "dev.jsonl", toy_sentiment(32, 1)),
    }
    r = train(
        config(str(d / "base"), data, d / "t.zst", steps=6, eval_every=2),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    return d / "base", d / "t.zst", state(r.model)


@pytest.mark.parametrize("wrong", ["other-weights", "dtype", "untied", "other-arch"])
def test_wrong_base_is_refused_and_untouched(run, wrong):
    _, traj_path, _ = run
    traj = read_trajectory(traj_path)
    model = {
        "other-weights": lambda: tiny_model("llama", seed=99),
        "dtype": lambda: tiny_model("llama", dtype=torch.bfloat16),
        "untied": lambda: tiny_model("llama", tie=False),
        "other-arch": lambda: tiny_model("gpt2"),
    }[wrong]()
    before = state(model)
    with pytest.raises(BaseMismatchError) as e:
        replay_model(traj, model)
    assert e.value.differences and "refusing" in str(e.value)
    assert_same(before, state(model))


def test_truncated_trajectory_is_refused_before_loading(run, tmp_path):
    base, traj_path, _ = run
    cut = tmp_path / "cut.zst"
    cut.write_bytes(traj_path.read_bytes()[:-7])
    result = CliRunner().invoke(
        main, ["replay", str(cut), "--base", str(base), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "TruncatedError" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(TruncatedError):
        read_trajectory(cut)


def test_cli_replay_formats_and_steps(run, tmp_path):
    base, traj_path, trained = run
    cli = CliRunner()
    out = tmp_path / "hf"
    r = cli.invoke(main, ["replay", str(traj_path), "--base", str(base), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "verified" in r.output
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert_same(trained, state(loaded))
    assert json.loads((out / "mezo_ckpt_provenance.json").read_text())["step"] == 6

    st = tmp_path / "w.safetensors"
    r = cli.invoke(
        main,
        ["replay", str(traj_path), "--base", str(base), "--format", "safetensors", "-o", str(st)],
    )
    assert r.exit_code == 0, r.output
    tensors = load_file(str(st))
    assert all(torch.equal(tensors[k], trained[k]) for k in trained)

    delta = tmp_path / "d.safetensors"
    r = cli.invoke(
        main,
        [
            "replay",
            str(traj_path),
            "--base",
            str(base),
            "--format",
            "delta",
            "--step",
            "4",
            "-o",
            str(delta),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["step"] == 4 and json.loads(r.stdout)["verified"]
    d = load_file(str(delta))
    base_state = state(load_base(str(base)).model)
    m = load_base(str(base)).model
    replay_model(read_trajectory(traj_path), m, step=4)
    for k, v in d.items():
        if "::" not in k:
            assert torch.equal(v, state(m)[k].float() - base_state[k].float())
    patched = load_base(str(base)).model
    apply_delta(patched, d)  # exact: the patched model is the replayed one, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(state(patched).values(), state(m).values()))

    traj = read_trajectory(traj_path)
    r = cli.invoke(
        main,
        [
            "replay",
            str(traj_path),
            "--base",
            str(base),
            "--step",
            "best",
            "--json",
            "-o",
            str(tmp_path / "best"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["step"] == best_step(traj)

    r = cli.invoke(main, ["replay", str(traj_path), "--base", str(base), "--step", "99"])
    assert r.exit_code == 2 and "outside the trajectory" in r.output


def test_local_base_must_be_given(run):
    _, traj_path, _ = run
    r = CliRunner().invoke(main, ["replay", str(traj_path)])
    assert r.exit_code == 2 and "--base PATH" in r.output


def test_info_text_and_json(run):
    _, traj_path, _ = run
    cli = CliRunner()
    r = cli.invoke(main, ["info", str(traj_path)])
    assert r.exit_code == 0, r.output
    assert "6 recorded, complete" in r.output and "<- best" in r.output
    s = json.loads(cli.invoke(main, ["info", str(traj_path), "--json"]).stdout)
    assert s["steps"] == 6 and s["complete"] and s["bytes_per_step"] > 0
    assert [e["step"] for e in s["evaluations"]] == [0, 2, 4, 6]
    r = cli.invoke(main, ["info", "/nonexistent.zst"])
    assert r.exit_code == 2 and "TrajectoryNotFoundError" in r.output


def test_best_step_without_evaluations():
    from helpers_format import make_trajectory

    traj = make_trajectory(4, evaluations=())
    with pytest.raises(StepOutOfRangeError):
        best_step(traj)


def test_help_texts_teach():
    cli = CliRunner()
    for cmd in ("train", "replay", "info", "push", "pull"):
        r = cli.invoke(main, [cmd, "--help"])
        assert r.exit_code == 0 and "Examples:" in r.output, cmd
