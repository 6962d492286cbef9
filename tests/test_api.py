"""The operations behind the CLI (mezo_ckpt/api.py), called directly: default output
names, the output formats a run can have, where a base comes from, summarize() on the
golden trajectories, and _state_file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from paths import GOLDEN

from mezo_ckpt import api
from mezo_ckpt.errors import (
    ModelLoadError,
    OutputError,
    TrajectoryNotFoundError,
)
from mezo_ckpt.trajectory import Trajectory, read_trajectory

HASHES = json.loads((GOLDEN / "HASHES.json").read_text())
FULL = "llama-fp32-normal16"
LORA = "llama-fp32-lora-chained"
PREFIX = "gpt2-fp32-prefix-rademacher-chained"


def golden(name: str) -> Trajectory:
    return read_trajectory(GOLDEN / f"{name}.zst")


def with_base(traj: Trajectory, **base) -> Trajectory:
    raw = {**traj.header.to_json()}
    raw["base"] = {**raw["base"], **base}
    return Trajectory(raw, traj.records, version=traj.version)


# ----------------------------------------------------------------------------- default_output


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("run.zst", "hf", "run-step40"),
        ("run.zst", "safetensors", "run-step40.safetensors"),
        ("run.zst", "delta", "run-step40-delta.safetensors"),
        ("run.zst", "peft", "run-step40-adapter"),
        ("run.zst.partial", "hf", "run-step40"),  # a journal names its run
        ("run", "hf", "run-step40"),
        ("my.run.zst", "safetensors", "my.run-step40.safetensors"),
    ],
)
def test_default_output_sits_beside_the_trajectory(name, fmt, expected):
    out = api.default_output(Path("/data/runs") / name, 40, fmt)
    assert out == Path("/data/runs") / expected


def test_default_output_knows_every_format_and_no_other():
    assert set(api.OUTPUT_KINDS) == {"hf", "safetensors", "delta", "peft"}
    for fmt in api.OUTPUT_KINDS:
        assert api.default_output(Path("r.zst"), 0, fmt).name.startswith("r-step0")
    with pytest.raises(KeyError):
        api.default_output(Path("r.zst"), 0, "gguf")


def test_output_kinds():
    assert api.OUTPUT_KINDS == {
        "hf": "folder",
        "safetensors": "file",
        "delta": "file",
        "peft": "folder",
    }


# ----------------------------------------------------------------------------- check_format


def test_a_full_parameter_run_has_every_format_but_peft():
    traj = golden(FULL)
    for fmt in ("hf", "safetensors", "delta"):
        api.check_format(traj, fmt)
    with pytest.raises(OutputError, match="--format peft is for parameter-efficient runs"):
        api.check_format(traj, "peft")


def test_a_lora_run_has_hf_and_peft_only():
    traj = golden(LORA)
    api.check_format(traj, "hf")
    api.check_format(traj, "peft")
    for fmt in ("safetensors", "delta"):
        with pytest.raises(OutputError, match=r"parameter-efficient \(lora\) run: use --format"):
            api.check_format(traj, fmt)


def test_a_prefix_run_has_only_peft():
    traj = golden(PREFIX)
    api.check_format(traj, "peft")
    for fmt in ("hf", "safetensors", "delta"):
        with pytest.raises(OutputError, match="a prefix-tuning run has no merged weights"):
            api.check_format(traj, fmt)


def test_replay_to_refuses_an_unknown_format_before_reading(tmp_path):
    with pytest.raises(OutputError, match="unknown output format 'gguf'; use hf, safetensors"):
        api.replay_to(tmp_path / "missing.zst", fmt="gguf")


def test_replay_to_refuses_a_format_the_run_cannot_have_before_any_output(tmp_path):
    out = tmp_path / "out.safetensors"
    with pytest.raises(OutputError, match="parameter-efficient"):
        api.replay_to(GOLDEN / f"{LORA}.zst", fmt="safetensors", output=out, progress=False)
    assert not out.exists()


# ----------------------------------------------------------------------------- bases


def test_a_local_base_must_be_given():
    with pytest.raises(ModelLoadError, match="trained from a local base folder; pass it with"):
        api.base_spec_from_header(golden(FULL))
    named = with_base(golden(FULL), repo_id="me/old-name")
    with pytest.raises(ModelLoadError, match=r"\(it was me/old-name\)"):
        api.base_spec_from_header(named)


def test_a_hub_base_is_fetched_at_its_pinned_commit():
    rev = "0123456789abcdef0123456789abcdef01234567"
    traj = with_base(golden(FULL), kind="hub", repo_id="tester/base", revision=rev)
    assert api.base_spec_from_header(traj) == ("tester/base", rev)
    assert api._base_spec(traj, None) == ("tester/base", rev)
    assert api._base_spec(traj, "tester/base") == ("tester/base", rev)  # same repo: pinned
    assert api._base_spec(traj, "./elsewhere") == ("./elsewhere", None)


# ----------------------------------------------------------------------------- _state_file


def test_state_file_is_an_existing_safetensors_file_only(tmp_path, monkeypatch):
    st = tmp_path / "init.safetensors"
    st.write_bytes(b"x")
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert api._state_file(st) == st
    assert api._state_file(str(st)) == st
    assert api._state_file(tmp_path / "missing.safetensors") is None
    assert api._state_file(tmp_path / "folder.safetensors") is None
    assert api._state_file(tmp_path / "weights.bin") is None
    assert api._state_file(tmp_path) is None
    assert api._state_file(None) is None
    assert api._state_file({"w": 1}) is None
    assert api._state_file("tester/base") is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert api._state_file("~/init.safetensors") == st


# ----------------------------------------------------------------------------- summarize


@pytest.mark.parametrize("name", sorted(HASHES))
def test_summarize_every_golden(name):
    path = GOLDEN / f"{name}.zst"
    s = api.summarize(path)
    case = HASHES[name]["case"]
    traj = read_trajectory(path)
    assert s["file"] == str(path) and s["bytes"] == path.stat().st_size
    assert s["format_version"] == f"{traj.version[0]}.{traj.version[1]}"
    assert s["steps"] == s["total_steps"] == case["steps"]
    assert s["complete"] is True and s["state"] == "complete"
    assert s["skipped_steps"] == 1
    assert s["bytes_per_step"] == s["bytes"] / case["steps"]
    assert s["base"]["dtype"] == case["dtype"] and "tensors" not in s["base"]
    assert s["trainable_tensors"] == len(traj.header.trainable)
    assert s["adapter"] == case.get("peft")
    assert s["perturbation"]["n_directions"] == case["n"]
    assert s["update"] == {
        "arithmetic": "exact-v1",
        "rounding": case["rounding"],
        "weight_decay": case["wd"],
    }
    coefs = traj.records.coefs.reshape(-1)
    assert s["coefficients"]["abs_mean"] == pytest.approx(float(np.abs(coefs).mean()))
    assert s["coefficients"]["std"] == pytest.approx(float(coefs.std()))
    assert s["losses"] is None and s["evaluations"] == [] and s["best_step"] is None
    assert s["config"] == {"golden": name}
    json.dumps(s)  # plain data


def test_summarize_checkpoints_are_the_committed_hashes():
    s = api.summarize(GOLDEN / f"{FULL}.zst")
    assert s["checkpoints"] == {"40": HASHES[FULL]["replayed_sha256"]["40"]}
    assert s["bound"] is False  # format 1.0: no record chain
    assert s["last_verified_step"] == 40  # the last checkpoint


def test_summarize_whole_base_and_adapter_runs():
    s = api.summarize(GOLDEN / "llama-bf16-stochastic-chained.zst")
    assert s["bound"] is True and s["last_verified_step"] == 24
    assert s["trainable_elements"] == s["base"]["num_parameters"]
    assert s["base_files"] == {}
    lora = api.summarize(GOLDEN / f"{LORA}.zst")
    assert lora["adapter"] == "lora" and lora["trainable_elements"] is None


def test_summarize_a_missing_file(tmp_path):
    with pytest.raises(TrajectoryNotFoundError):
        api.summarize(tmp_path / "nope.zst")


def test_stats_ignore_non_finite_values():
    assert api._stats(np.array([np.nan, np.inf], np.float32)) is None
    s = api._stats(np.array([1.0, -3.0, np.nan], np.float32))
    assert s == {"min": -3.0, "max": 1.0, "mean": -1.0, "std": 2.0, "abs_mean": 2.0}
