"""`mezo-ckpt replay` (mezo_ckpt/cli/replay.py): the refusals that come before any work
(a bad --step, an existing output, an unknown --format, a format the run cannot have),
the result lines, and real replays: a golden trajectory onto its tiny base (to the
committed hashes) and a tiny run onto its base (to the trainer's own weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers_train import config, write_jsonl
from paths import GOLDEN
from safetensors.torch import load_file
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.cli import main
from mezo_ckpt.cli.replay import FORMATS, _si
from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.trajectory import read_trajectory

HASHES = json.loads((GOLDEN / "HASHES.json").read_text())
NAME = "llama-fp32-normal16"  # format 1.0, trained from tiny_model("llama") in float32
GOLDEN_FILE = GOLDEN / f"{NAME}.zst"


def replay(*args: object):
    return CliRunner().invoke(main, ["replay", *map(str, args)])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama the golden file (and the run below) was trained from."""
    folder = tmp_path_factory.mktemp("replay-base") / "tiny-llama"
    save_tiny(folder, "llama")
    return folder


@pytest.fixture(scope="module")
def run(base: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 4-step run from ``base`` (the trainer's final weights kept)."""
    from mezo_ckpt.trainer import train

    root = tmp_path_factory.mktemp("replay-run")
    data = {
        "train_file": write_jsonl(root / "train.jsonl", toy_sentiment(32, 0)),
        "dev_file": write_jsonl(root / "dev.jsonl", toy_sentiment(16, 1)),
    }
    cfg = config(str(base), data, root / "run.zst", steps=4, eval_every=2, eval_examples=16)
    return train(cfg, progress=False, keep_model=True, log=lambda _m: None)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("step", ["-1", "abc", "1.5", "first"])
def test_a_bad_step_is_a_usage_error_before_the_file_is_read(tmp_path, step):
    r = replay(tmp_path / "missing.zst", "--step", step)
    assert r.exit_code == 2
    assert "Invalid value for --step" in r.stderr
    assert "TrajectoryNotFoundError" not in r.output


def test_a_step_beyond_the_file_is_a_typed_error(tmp_path):
    r = replay(GOLDEN_FILE, "--step", "41", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr == "Error (StepOutOfRangeError): step 41 is outside the trajectory (0..40)\n"
    assert not (tmp_path / "out").exists()


def test_an_unknown_format_is_a_usage_error():
    r = replay(GOLDEN_FILE, "--format", "gguf")
    assert r.exit_code == 2
    assert "Invalid value for '--format': 'gguf' is not one of" in r.stderr
    assert FORMATS == ("hf", "safetensors", "delta", "peft")


def test_a_format_the_run_cannot_have_is_refused(tmp_path):
    r = replay(GOLDEN_FILE, "--format", "peft", "-o", tmp_path / "a")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputError): --format peft is for parameter-efficient")
    r = replay(GOLDEN / "llama-fp32-lora-chained.zst", "--format", "delta", "-o", tmp_path / "d")
    assert r.exit_code == 2 and "use --format peft" in r.stderr
    assert not list(tmp_path.iterdir())


def test_an_existing_output_is_kept_and_refused_before_the_base_is_needed(tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    # no --base: reaching the base would fail with ModelLoadError; the output check comes first
    r = replay(GOLDEN_FILE, "--format", "safetensors", "-o", out)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputExistsError): -o ")
    assert "--overwrite" in r.stderr
    assert out.read_bytes() == b"precious"
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    r = replay(GOLDEN_FILE, "-o", folder)
    assert r.exit_code == 2 and "OutputExistsError" in r.stderr
    assert (folder / "keep.txt").read_text() == "mine"


def test_the_output_may_not_be_the_trajectory_itself(tmp_path):
    traj = tmp_path / "run.zst"
    traj.write_bytes(GOLDEN_FILE.read_bytes())
    r = replay(traj, "--format", "safetensors", "-o", traj, "--overwrite")
    assert r.exit_code == 2
    assert "would overwrite this command's own input" in r.stderr
    assert traj.read_bytes() == GOLDEN_FILE.read_bytes()


def test_a_local_base_must_be_named(tmp_path):
    r = replay(GOLDEN_FILE, "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (ModelLoadError): this trajectory was trained from a local")
    assert "--base PATH" in r.stderr


def test_the_wrong_base_is_refused(tmp_path):
    other = tmp_path / "tiny-gpt2"
    save_tiny(other, "gpt2")
    r = replay(GOLDEN_FILE, "--base", other, "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (BaseMismatchError): ")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- real replays


@pytest.mark.parametrize("step", ["20", "last"])
def test_golden_replays_onto_its_base_to_the_committed_hash(base, tmp_path, step):
    out = tmp_path / "tuned.safetensors"
    r = replay(GOLDEN_FILE, "--base", base, "--step", step, "--format", "safetensors", "-o", out)
    assert r.exit_code == 0, r.output
    n = 20 if step == "20" else 40
    lines = r.stdout.splitlines()
    # one step of each golden file is skipped (nothing to apply)
    assert lines[0].startswith(f"Replayed {n - 1} steps to step {n} (")
    if n == 40:  # the file's only checkpoint
        assert lines[0].endswith(
            "verified: the weights match the trainer's fingerprint at this step."
        )
    else:
        assert lines[0].endswith("NOT verified: nothing in the file binds these records.")
    assert lines[1].startswith("Base checked: architecture, dtype, parameter manifest; ")
    assert lines[2] == f"Wrote safetensors -> {out}"
    tensors = load_file(out)
    trainable = read_trajectory(GOLDEN_FILE).header.trainable
    assert tensors_sha256(tensors, trainable) == HASHES[NAME]["replayed_sha256"][str(n)]


def test_json_summary_and_the_default_output_name(base, tmp_path):
    traj = tmp_path / "golden.zst"
    traj.write_bytes(GOLDEN_FILE.read_bytes())
    r = replay(traj, "--base", base, "--step", "20", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["output"] == str(tmp_path / "golden-step20")  # <trajectory>-step<N>
    assert s["step"] == 20 and s["format"] == "hf" and s["base_mismatch"] == []
    assert s["applied_steps"] == 19 and s["verified"] is None and s["fingerprint"] is None
    assert s["verification"] == "NOT verified: nothing in the file binds these records"
    assert (tmp_path / "golden-step20" / "config.json").is_file()


def test_overwrite_replaces_an_existing_output(base, tmp_path):
    out = tmp_path / "tuned.safetensors"
    out.write_bytes(b"old")
    r = replay(GOLDEN_FILE, "--base", base, "--format", "safetensors", "-o", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() != b"old" and load_file(out)


def test_a_tiny_run_replays_onto_its_base_bit_for_bit(run, base, tmp_path):
    out = tmp_path / "tuned"
    r = replay(run.output, "--base", base, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert "Replayed 4 steps to step 4" in r.stdout
    assert "verified: the weights match the trainer's fingerprint" in r.stdout
    assert "2 tokenizer file(s)" in r.stdout  # a 1.1 file checks the whole base
    from mezo_ckpt.models.base import load_base

    rebuilt = canonical_parameters(load_base(str(out)).model)
    trained = canonical_parameters(run.model)
    assert rebuilt.keys() == trained.keys()
    for k in trained:
        assert rebuilt[k].dtype == trained[k].dtype and torch.equal(rebuilt[k], trained[k]), k


def test_si_units():
    assert _si(12) == "12"
    assert _si(1234) == "1.23 k"
    assert _si(1234567) == "1.23 M"
    assert _si(2.5e9) == "2.50 G"
    assert _si(3e12) == "3.00 T"
