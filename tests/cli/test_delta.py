"""`mezo-ckpt diff` and `mezo-ckpt apply-delta` (mezo_ckpt/cli/delta.py): option handling,
refusals (typed, one line, exit 2), and both commands on a golden trajectory replayed onto
its tiny base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from paths import GOLDEN
from safetensors.torch import load_file
from tinymodels import save_tiny

from mezo_ckpt.cli import main
from mezo_ckpt.cli.delta import _num
from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.models.base import load_base

LLAMA = GOLDEN / "llama-fp32-normal16.zst"  # 40 steps over tiny_model("llama"), float32
GPT2 = GOLDEN / "gpt2-fp32-rademacher-nspsa-decay.zst"


def cli(*args: object):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("delta-base") / "tiny-llama"
    save_tiny(folder, "llama")
    return folder


@pytest.fixture(scope="module")
def delta(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``replay --format delta`` of the golden file's last step."""
    out = tmp_path_factory.mktemp("delta") / "run-delta.safetensors"
    r = cli("replay", LLAMA, "--base", base, "--format", "delta", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    return out


# ----------------------------------------------------------------------------- diff


@pytest.mark.parametrize("flag", ["--from", "--to"])
def test_diff_refuses_a_bad_step_as_a_usage_error(flag, tmp_path):
    r = cli("diff", tmp_path / "missing.zst", flag, "later")
    assert r.exit_code == 2
    assert "Invalid value for" in r.stderr and "use an integer, 'best' or 'last'" in r.stderr
    assert flag in r.stderr and "--step" not in r.stderr  # the option the user typed


def test_diff_refuses_a_bad_top():
    r = cli("diff", LLAMA, "--top", "x")
    assert r.exit_code == 2 and "Invalid value for '--top'" in r.stderr


def test_diff_of_a_step_beyond_the_file(base):
    r = cli("diff", LLAMA, "--to", "99", "--base", base)
    assert r.exit_code == 2
    assert r.stderr == "Error (StepOutOfRangeError): step 99 is outside the trajectory (0..40)\n"


def test_diff_needs_the_local_base_named():
    r = cli("diff", LLAMA)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (ModelLoadError): this trajectory was trained from a local")


def test_diff_refuses_two_runs_on_different_bases_before_loading_any(tmp_path):
    r = cli("diff", LLAMA, GPT2, "--base", tmp_path / "no-such-base")
    assert r.exit_code == 2
    assert r.stderr.startswith(
        "Error (BaseMismatchError): the two trajectories were not trained from the same base"
    )
    assert "architecture" in r.stderr


def test_diff_of_a_missing_trajectory(tmp_path):
    r = cli("diff", tmp_path / "nope.zst")
    assert r.exit_code == 2 and r.stderr.startswith("Error (TrajectoryNotFoundError): ")


def test_diff_json_from_the_base_to_the_last_step(base):
    r = cli("diff", LLAMA, "--base", base, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["a"] == {"trajectory": str(LLAMA), "step": 0, "verified": d["a"]["verified"]}
    assert d["b"]["trajectory"] == str(LLAMA) and d["b"]["step"] == 40
    assert d["b"]["verified"] == "fingerprint"
    t = d["total"]
    assert t["tensors"] == len(d["tensors"]) == 20
    assert 0 < t["relative"] < 1 and t["norm"] > 0 and t["max_abs"] > 0
    assert all(row["norm"] >= 0 and row["relative"] >= 0 for row in d["tensors"].values())
    assert max(row["max_abs"] for row in d["tensors"].values()) == t["max_abs"]


def test_diff_between_a_step_and_itself_is_zero(base):
    r = cli("diff", LLAMA, LLAMA, "--from", "last", "--to", "40", "--base", base, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["a"]["step"] == d["b"]["step"] == 40
    assert d["total"]["norm"] == 0 and d["total"]["max_abs"] == 0


def test_diff_text_lists_layers_and_the_top_tensors(base):
    r = cli("diff", LLAMA, "--base", base, "--top", "3", "-q")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{LLAMA}@0 -> {LLAMA}@40: 20 tensors, ||change|| ")
    assert "% of the weights' norm), max |change| " in lines[0]
    head = lines.index(
        "tensor (largest relative change first)".ljust(56) + "   relative    max abs"
    )
    assert len(lines) - head - 1 == 3  # --top 3
    ranked = [float(line.split()[-2]) for line in lines[head + 1 :]]
    assert ranked == sorted(ranked, reverse=True)
    assert lines[2].split() == ["layer", "norm", "relative", "max", "abs"]


def test_number_format():
    assert _num(float("inf")) == "inf" and _num(float("nan")) == "inf"
    assert _num(0.000123456) == "0.0001235"


# ----------------------------------------------------------------------------- apply-delta


def test_apply_delta_needs_an_output():
    r = cli("apply-delta", "d.safetensors")
    assert r.exit_code == 2 and "Missing option '-o' / '--output'" in r.stderr


def test_apply_delta_refuses_a_missing_file(tmp_path):
    r = cli("apply-delta", tmp_path / "nope.safetensors", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputError): ") and "not a readable safetensors" in r.stderr
    assert not (tmp_path / "out").exists()


def test_apply_delta_refuses_a_safetensors_file_that_is_no_delta(base, tmp_path):
    r = cli("apply-delta", base / "model.safetensors", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr == (
        f"Error (OutputError): {base / 'model.safetensors'} is not a delta written by "
        "`mezo-ckpt replay --format delta`\n"
    )


def test_apply_delta_refuses_a_corrupt_file_as_a_typed_error(tmp_path):
    """safetensors raises SafetensorError (a plain Exception) for a corrupt header: it was a
    traceback with exit 1."""
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    r = cli("apply-delta", junk, "-o", tmp_path / "out")
    assert r.exit_code == 2 and r.stderr.startswith("Error (")
    assert not (tmp_path / "out").exists()


def test_apply_delta_refuses_an_existing_output_before_loading_the_base(delta, tmp_path):
    out = tmp_path / "tuned"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    r = cli("apply-delta", delta, "-o", out)  # no --base: the output is refused first
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputExistsError): -o ")
    assert (out / "mine.txt").read_text() == "keep"


def test_apply_delta_of_a_local_base_needs_it_named(delta, tmp_path):
    r = cli("apply-delta", delta, "-o", tmp_path / "tuned")
    assert r.exit_code == 2
    assert r.stderr == (
        "Error (ModelLoadError): this delta was made from a local base folder: "
        "pass it with --base PATH\n"
    )


def test_apply_delta_onto_the_wrong_base_is_refused(delta, tmp_path):
    other = tmp_path / "tiny-llama-other-seed"
    save_tiny(other, "llama", seed=99)
    r = cli("apply-delta", delta, "--base", other, "-o", tmp_path / "tuned")
    assert r.exit_code == 2 and r.stderr.startswith("Error (BaseMismatchError): ")
    assert not (tmp_path / "tuned").exists()


def test_apply_delta_rebuilds_what_replay_writes(delta, base, tmp_path):
    out = tmp_path / "tuned"
    r = cli("apply-delta", delta, "--base", base, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["delta"] == str(delta) and s["output"] == str(out)
    assert s["step"] == 40 and s["tensors"] == 20 and s["verified"] == "fingerprint"
    ref = tmp_path / "ref.safetensors"
    r = cli("replay", LLAMA, "--base", base, "--format", "safetensors", "-o", ref, "-q")
    assert r.exit_code == 0, r.output
    expected = load_file(ref)
    got = canonical_parameters(load_base(str(out)).model)
    assert len(got) == 20 and set(got) < set(expected)  # tied: one tensor, two names
    for k in got:
        assert torch.equal(got[k], expected[k]), k


def test_apply_delta_text_output(delta, base, tmp_path):
    out = tmp_path / "tuned"
    r = cli("apply-delta", delta, "--base", base, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"Applied 20 tensors of {delta} (step 40); "
        "verified: the weights match the trainer's fingerprint at this step."
    )
    assert lines[1].startswith("Base checked: ")
    assert lines[2] == f"Wrote hf -> {out}"
    r = cli("apply-delta", delta, "--base", base, "-o", out, "-q")
    assert r.exit_code == 2 and "OutputExistsError" in r.stderr
    r = cli("apply-delta", delta, "--base", base, "-o", out, "-q", "--overwrite")
    assert r.exit_code == 0, r.output
