"""`mezo-ckpt info` (mezo_ckpt/cli/info.py) on the golden trajectories of tests/golden/:
the text summary, --json, --plot and its output checks, and escaping of file strings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from paths import GOLDEN

from mezo_ckpt.cli import main
from mezo_ckpt.cli.info import _fmt, _state
from mezo_ckpt.trajectory import Trajectory, read_trajectory, write_trajectory
from mezo_ckpt.trajectory.codec import Evaluation

HASHES = json.loads((GOLDEN / "HASHES.json").read_text())
V10 = "llama-fp32-normal16"  # format 1.0: 40 steps, trainable tensors pinned only
V11 = "llama-bf16-stochastic-chained"  # format 1.1: 24 steps, whole base, chained
LORA = "llama-fp32-lora-chained"
ESC = "\x1b]0;pwned\x07"


def info(*args: object):
    return CliRunner().invoke(main, ["info", *map(str, args)])


def info_json(name: str) -> dict:
    r = info(GOLDEN / f"{name}.zst", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def with_extras(tmp_path: Path, golden: str = V10, **tool: str) -> Path:
    """A copy of a golden file with dev evaluations (and, optionally, another tool name)."""
    t = read_trajectory(GOLDEN / f"{golden}.zst")
    raw = dict(t.header.to_json())
    if tool:
        raw["tool"] = tool
    evals = [
        Evaluation(10, "dev", {"accuracy": 0.5, "loss": 0.75}),
        Evaluation(20, "dev", {"accuracy": 0.75, "loss": 0.5}),
        Evaluation(t.num_steps, "dev", {"accuracy": 0.625, "loss": 0.625}),
    ]
    out = tmp_path / "extra.zst"
    write_trajectory(
        out,
        Trajectory(raw, t.records, evals, dict(t.checkpoints), version=t.version),
    )
    return out


@pytest.mark.parametrize("name", sorted(HASHES))
def test_json_matches_the_file_for_every_golden(name):
    s = info_json(name)
    path = GOLDEN / f"{name}.zst"
    t = read_trajectory(path)
    case = HASHES[name]["case"]
    assert s["bytes"] == path.stat().st_size
    assert s["steps"] == s["total_steps"] == case["steps"]
    assert s["complete"] is True and s["state"] == "complete"
    assert s["skipped_steps"] == 1  # make_golden skips step steps // 3
    assert s["base"]["kind"] == "local" and s["base"]["dtype"] == case["dtype"]
    assert s["base"]["tie_word_embeddings"] == case["tie"]
    assert s["perturbation"]["z"] == case["z"]
    assert s["perturbation"]["n_directions"] == case["n"]
    assert s["update"]["rounding"] == case["rounding"]
    assert s["update"]["weight_decay"] == case["wd"]
    assert "decay_params" not in s["update"]
    assert s["adapter"] == case.get("peft")
    assert s["config"] == {"golden": name}
    assert s["bytes_per_step"] == pytest.approx(s["bytes"] / case["steps"])
    coefs = t.records.coefs.reshape(-1)
    coefs = coefs[np.isfinite(coefs)]
    assert s["coefficients"]["min"] == float(coefs.min())
    assert s["coefficients"]["max"] == float(coefs.max())
    assert s["coefficients"]["mean"] == pytest.approx(float(coefs.mean()))
    assert s["losses"] is None and s["evaluations"] == [] and s["best_step"] is None
    assert list(s["checkpoints"]) == [str(case["steps"])]


def test_json_of_a_format_1_0_file():
    s = info_json(V10)
    assert s["format_version"] == "1.0" and s["bound"] is False
    assert s["tool"] == {"name": "mezo-ckpt", "version": "golden"}
    assert s["trainable_tensors"] == 20 and s["trainable_elements"] is None
    assert s["checkpoints"] == {"40": HASHES[V10]["replayed_sha256"]["40"]}
    assert "tensors_sha256" not in s["base"] and s["base"]["trainable_sha256"]


def test_json_of_a_format_1_1_file():
    s = info_json(V11)
    assert s["format_version"] == "1.1" and s["bound"] is True
    assert s["last_verified_step"] == 24
    assert s["trainable_elements"] == s["base"]["num_parameters"] == 21664
    assert "tensors" not in s["base"]  # the per-tensor list is left out
    assert s["base"]["tensors_sha256"] and s["base_files"] == {}


def test_json_of_an_adapter_run_counts_no_base_elements():
    s = info_json(LORA)
    assert s["adapter"] == "lora" and s["trainable_tensors"] == 8
    assert s["trainable_elements"] is None


def test_text_summary_of_a_format_1_0_file():
    path = GOLDEN / f"{V10}.zst"
    r = info(path)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"{path}  (961 bytes, format 1.0, written by mezo-ckpt golden)"
    assert lines[1] == (
        "base        local: local folder  LlamaForCausalLM float32, 21,664 params, "
        "tied embeddings: True"
    )
    assert lines[2].startswith("            pinned: trainable tensors only cff64a5ba8dea353")
    assert lines[3] == "trainable   20 tensors"
    assert lines[4] == (
        "steps       40 recorded, complete (format 1.0: records not bound); 1 skipped; "
        "24.02 bytes/step"
    )
    assert lines[5] == (
        "perturb     philox4x32-10, z=normal16, eps=0.001, seed=20261122, directions=1"
    )
    assert lines[6] == "update      exact-v1, rounding=nearest, weight_decay=0.0"
    assert lines[7] == 'optimizer   {"lr": 0.01, "schedule": "constant"}'
    assert lines[8].startswith("coef        mean ")
    assert lines[-1] == "fingerprints at steps 40"
    assert not any(line.startswith(("loss", "evaluations", "plot")) for line in lines)


def test_text_summary_of_a_format_1_1_file_and_an_adapter_run():
    r = info(GOLDEN / f"{V11}.zst")
    assert r.exit_code == 0, r.output
    assert "24 recorded, complete, sealed; 1 skipped" in r.stdout
    assert "pinned: every tensor deb1fdef75d4ba77..., config d22b6be0cc8f..., 0 tokenizer" in (
        r.stdout
    )
    assert "trainable   20 tensors, 21,664 elements = 100.0% of the model" in r.stdout
    r = info(GOLDEN / f"{LORA}.zst")
    assert r.exit_code == 0, r.output
    assert "trainable   8 tensors (lora adapter tensors; the base is frozen)" in r.stdout


def test_evaluations_are_listed_and_the_best_dev_step_marked(tmp_path):
    path = with_extras(tmp_path)
    r = info(path)
    assert r.exit_code == 0, r.output
    assert "evaluations\n" in r.stdout
    assert "  step     10  dev   accuracy=0.5  loss=0.75\n" in r.stdout
    assert "  step     20  dev   accuracy=0.75  loss=0.5  <- best\n" in r.stdout
    assert "  step     40  dev   accuracy=0.625  loss=0.625\n" in r.stdout
    s = json.loads(info(path, "--json").stdout)
    assert s["best_step"] == 20
    assert [e["step"] for e in s["evaluations"]] == [10, 20, 40]


def test_strings_from_the_file_are_shown_escaped(tmp_path):
    path = with_extras(tmp_path, name="evil" + ESC, version="1\u202e2")
    r = info(path)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\u202e" not in r.stdout
    assert "written by evil\\x1b]0;pwned\\x07 1\\u202e2)" in r.stdout


def test_a_missing_file_is_one_typed_line_and_exit_2(tmp_path):
    r = info(tmp_path / "nope.zst")
    assert r.exit_code == 2
    assert (
        r.stderr
        == f"Error (TrajectoryNotFoundError): no such trajectory file: {tmp_path}/nope.zst\n"
    )


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "notes.zst"
    path.write_text("hello\n")
    r = info(path)
    assert r.exit_code == 2 and r.stderr.startswith("Error (BadMagicError): ")
    assert "Traceback" not in r.output


def test_plot_writes_a_png_and_says_so(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    r = info(with_extras(tmp_path), "--plot", png)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stdout.splitlines()[-1] == f"plot        {png}"


def test_plot_is_checked_before_the_file_is_read(tmp_path):
    png = tmp_path / "curve.png"
    png.write_bytes(b"keep me")
    r = info(tmp_path / "missing.zst", "--plot", png)  # the output is refused first
    assert r.exit_code == 2
    assert r.stderr.startswith("Error (OutputExistsError): --plot ")
    assert png.read_bytes() == b"keep me"
    r = info(GOLDEN / f"{V10}.zst", "--plot", GOLDEN / f"{V10}.zst")
    assert r.exit_code == 2 and "own input" in r.stderr


def test_plot_overwrite_replaces_an_existing_file(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    png.write_bytes(b"old")
    r = info(with_extras(tmp_path), "--plot", png, "--overwrite")
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_state_sentences():
    assert _state({"state": "complete", "bound": True}) == "complete, sealed"
    assert _state({"state": "complete", "bound": False}) == (
        "complete (format 1.0: records not bound)"
    )
    assert _state({"state": "incomplete", "steps": 3, "total_steps": 10}) == (
        "INCOMPLETE (3/10 steps; resumable)"
    )
    cut = _state({"state": "cut", "steps": 9, "last_verified_step": 6})
    assert cut.startswith("CUT: 9 steps recorded but the last checkpoint covers only steps 0..6")
    assert "resume the run to seal it" in cut
    none = _state({"state": "cut", "steps": 2, "last_verified_step": None})
    assert "covers only none" in none


def test_numbers_are_shown_with_four_significant_digits():
    assert _fmt(None) == "-"
    assert _fmt(0.123456) == "0.1235"
    assert _fmt(-6.2581e-06) == "-6.258e-06"


def test_task_and_data_lines():
    from mezo_ckpt.cli.info import _task_lines

    config = {
        "resolved_task": {"kind": "classification", "template": "{t} It was{mask}.",
                          "masked_lm": True},
        "data": {"source": "files", "train_examples": 32,
                 "k_shot": {"k": 16, "seed": 13, "train_rows": [], "dev_rows": []}},
    }  # fmt: skip
    assert _task_lines(config) == [
        "task        masked LM, classification, template '{t} It was{mask}.'",
        "data        files: 32 training examples (k-shot: 16 per class, data seed 13; "
        "the rows drawn: --json)",
    ]
    assert _task_lines({}) == []
    assert _task_lines({"resolved_task": {"template": 3}, "data": []}) == []  # crafted
    plain = {"resolved_task": {"kind": "generation", "template": "Q: {q}\nA:"},
             "data": {"source": "builtin", "train_examples": 9066}}  # fmt: skip
    assert _task_lines(plain) == [
        "task        generation, template 'Q: {q}\\nA:'",
        "data        builtin: 9,066 training examples",
    ]
