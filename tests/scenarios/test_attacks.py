"""Hostile inputs of the third trust round: recipes and YAML, sizes typed on the command
line, objective modules, crafted adapter configs in headers, edited resume journals.
Every one ends in a one-line typed error (exit 2), never a traceback, and leaves nothing
behind that blocks the next run."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
import zstandard
from click.testing import CliRunner
from helpers_train import write_jsonl
from paths import GOLDEN
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.cli import main
from mezo_ckpt.errors import ConfigError, DataError, HeaderError
from mezo_ckpt.trainer.config import resolve_config
from mezo_ckpt.trainer.objectives import UserObjective, load_user_objective
from mezo_ckpt.trajectory import TrajectoryWriter, compact, read_trajectory


def fails(*args: object):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2, r.output + repr(r.exception)
    assert "Traceback" not in r.output
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    save_tiny(root / "base", "llama")
    write_jsonl(root / "train.jsonl", toy_sentiment(32))
    return root


def train_args(tiny, out, *extra: object) -> list[object]:
    return [
        "train", "--model", tiny / "base", "--train-file", tiny / "train.jsonl",
        "--template", "{text} =", "--verbalizer", "pos= p,neg= n", "--steps", "2",
        "--batch-size", "4", "--eval-every", "0", "-q", "--set", "fsync=false", "-o", out,
        *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "text, match",
    [
        ("lr: 1e-5\nsteps: 10\nlr: 0.5\n", "appears twice"),
        ("steps: " + "9" * 400 + "\n", "steps"),
        ("lr: " + "9" * 400 + "\n", "lr"),
        ("template: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply|not valid YAML"),
        ("lr: 1\n" + "#" * (2 << 20) + "\n", "is not a recipe"),
    ],
    ids=["duplicate-key", "400-digit-int", "400-digit-float", "5000-levels", "2-MiB-file"],
)
def test_hostile_yaml_is_a_typed_error(tmp_path, text, match):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(str(p))
    r = fails("train", "-c", p, "--print-config")
    assert "ConfigError" in r.output


def test_duplicate_key_in_a_set_mapping_is_refused():
    with pytest.raises(ConfigError, match="appears twice"):
        resolve_config(sets=["verbalizer={a: x, a: y}"])


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lora-r", "1e8"),
        ("--prefix-tokens", "1e8"),
        ("--threads", "1000000000"),
        ("--batch-size", "1e12"),
        ("--max-new-tokens", "1e9"),
    ],
)
def test_absurd_sizes_are_refused_before_any_work(tiny, tmp_path, flag, value):
    out = tmp_path / "r.zst"
    r = fails(*train_args(tiny, out, flag, value))
    assert "far beyond any real run" in r.output
    assert not list(tmp_path.iterdir())  # no journal left to block the next run


def test_lora_targets_naming_no_module(tiny, tmp_path):
    out = tmp_path / "r.zst"
    r = fails(*train_args(tiny, out, "--peft", "lora", "--lora-targets", "no_such_proj"))
    assert "ConfigError" in r.output and "no_such_proj" in r.output
    assert not (tmp_path / "r.zst.partial").exists()


# ----------------------------------------------------------------------------- objectives


def _objective(tmp_path, monkeypatch, body: str) -> UserObjective:
    import sys

    (tmp_path / "evil_objective.py").write_text(textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "evil_objective", raising=False)  # a fresh import
    return load_user_objective("python:evil_objective:score")


@pytest.mark.parametrize(
    "body, match",
    [
        ("import sys\ndef score(ex, out):\n    sys.exit(0)\n", "called exit"),
        ("def score(ex, out):\n    return '1111'\n", "list of numbers"),
        ("def score(ex, out):\n    return [10**400] * len(ex)\n", "one number per example"),
        ("def score(ex, out):\n    return {'a': 1}\n", "list of numbers"),
        ("def score(ex, out):\n    return [float('nan')] * len(ex)\n", "non-finite"),
    ],
    ids=["sys-exit", "a-string", "10-to-the-400", "a-mapping", "nan"],
)
def test_objectives_that_misbehave_are_data_errors(tmp_path, monkeypatch, body, match):
    obj = _objective(tmp_path, monkeypatch, body)
    with pytest.raises(DataError, match=match):
        obj.scores([{}, {}, {}, {}], ["a", "b", "c", "d"])


def test_an_objective_that_exits_mid_run_fails_loudly(tiny, tmp_path, monkeypatch):
    (tmp_path / "quitter.py").write_text("import sys\ndef score(ex, out):\n    sys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    r = fails(*train_args(tiny, tmp_path / "r.zst", "--objective", "python:quitter:score"))
    assert "DataError" in r.output and "called exit" in r.output


@pytest.mark.parametrize("spec", ["python:os:getcwd", "python:json:JSONDecoder", "python:math:pi"])
def test_builtins_and_non_functions_are_not_objectives(spec):
    with pytest.raises(ConfigError, match="not a Python function|has no function"):
        load_user_objective(spec)


def test_a_module_that_exits_on_import_is_a_config_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="SystemExit"):
        _objective(tmp_path, monkeypatch, "import sys\nsys.exit(3)\ndef score(e, o): return []\n")


# ----------------------------------------------------------------------------- headers


def _with_header(src, dst, edit) -> None:
    """``src`` with its header JSON edited and re-framed (the other frames as they are)."""
    data = src.read_bytes()
    dctx, pos, frames = zstandard.ZstdDecompressor(), 24, []
    while pos < len(data):
        size = zstandard.frame_content_size(data[pos:])  # noqa: F841 - sanity
        reader = dctx.decompressobj()
        content = reader.decompress(data[pos:])
        end = len(data) - len(reader.unused_data)
        frames.append((data[pos:end], content))
        pos = end
    header = json.loads(frames[0][1][4:])
    edit(header)
    head = zstandard.ZstdCompressor(write_checksum=True).compress(
        b"HEAD" + json.dumps(header).encode()
    )
    dst.write_bytes(data[:24] + head + b"".join(raw for raw, _ in frames[1:]))


LORA = GOLDEN / "llama-fp32-lora-chained.zst"


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h["peft"]["config"].__setitem__("r", "8"),
        lambda h: h["peft"]["config"].pop("r"),
        lambda h: h["peft"]["config"].__setitem__("r", -2),
        lambda h: h["peft"]["config"].__setitem__("r", 10**9),
        lambda h: h["peft"]["config"].__setitem__("target_modules", "q_proj"),
        lambda h: h["peft"]["config"].__setitem__("target_modules", []),
        lambda h: h["peft"]["config"].__setitem__("lora_alpha", "sixteen"),
        lambda h: h["peft"]["config"].__setitem__("lora_dropout", 0.1),
    ],
    ids=["r-text", "r-missing", "r-negative", "r-1e9", "targets-string", "targets-empty",
         "alpha-text", "dropout"],
)  # fmt: skip
def test_crafted_peft_configs_are_refused_by_every_reader(tmp_path, edit):
    bad = tmp_path / "crafted.zst"
    _with_header(LORA, bad, edit)
    with pytest.raises(HeaderError, match="peft.config"):
        read_trajectory(bad)
    fails("info", bad)
    fails("replay", bad, "--format", "peft", "-o", tmp_path / "o")
    fails("push", bad, "me/crafted", "--dry-run")
    assert not (tmp_path / "o").exists()


def test_info_of_an_adapter_run_does_not_claim_zero_elements():
    r = CliRunner().invoke(main, ["info", str(LORA)])
    assert r.exit_code == 0, r.output
    assert "0 elements" not in r.output and "lora adapter tensors" in r.output


def test_prefix_delta_refusal_points_to_the_adapter_only(tmp_path):
    prefix = GOLDEN / "gpt2-fp32-prefix-rademacher-chained.zst"
    r = fails("replay", prefix, "--format", "delta", "-o", tmp_path / "d.safetensors")
    assert "--format peft" in r.output and "--format hf" not in r.output


# ----------------------------------------------------------------------------- resume


def test_resume_of_a_journal_whose_settings_disagree_with_its_records(tiny, tmp_path):
    """A journal rewritten with consistent chains but a header whose settings say no
    momentum while its records carry a window: refused with a typed error."""
    out = tmp_path / "m.zst"
    r = CliRunner().invoke(
        main, [str(a) for a in train_args(tiny, out, "--momentum", "0.5", "--momentum-window", "2")]
    )
    assert r.exit_code == 0, r.output
    traj = read_trajectory(out)
    raw = dict(traj.header.raw)
    raw["config"] = {**raw["config"], "momentum": 0.0}
    journal = tmp_path / "m.zst.partial"
    with TrajectoryWriter.create(journal, raw, fsync=False) as w:
        w.append_steps(traj.records.slice(0, 1))
        for e in traj.evaluations:
            if e.step <= 1:
                w.append_evaluation(dataclasses.replace(e, chain_sha256=None))
        w.append_checkpoint(1, traj.checkpoints.get(1, "0" * 64))
    out.unlink()
    r = fails(
        "train", "--resume", out, "--model", tiny / "base", "--train-file", tiny / "train.jsonl"
    )
    assert "momentum" in r.output, r.output
    assert compact  # the journal is kept for the user to inspect
    assert journal.exists()


def test_resuming_a_multi_rank_journal_in_one_process_says_so(tiny, tmp_path):
    """The header records the number of ranks; continuing with another number is allowed
    (the file stays exact) but never silent."""
    out = tmp_path / "w.zst"
    r = CliRunner().invoke(main, [str(a) for a in train_args(tiny, out)])
    assert r.exit_code == 0, r.output
    traj = read_trajectory(out)
    assert traj.header.config["world"] == 1
    raw = dict(traj.header.raw)
    raw["config"] = {**raw["config"], "world": 2}
    journal = tmp_path / "w.zst.partial"
    with TrajectoryWriter.create(journal, raw, fsync=False) as w:
        w.append_steps(traj.records)
        for e in traj.evaluations:
            w.append_evaluation(dataclasses.replace(e, chain_sha256=None))
        for s, d in sorted(traj.checkpoints.items()):
            w.append_checkpoint(s, d)
    out.unlink()
    r = CliRunner().invoke(
        main,
        ["train", "--resume", str(out), "--steps", "3", "--model", str(tiny / "base"),
         "--train-file", str(tiny / "train.jsonl"), "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "used 2 data-parallel rank(s) and continues with 1" in r.output


def test_a_full_disk_while_writing_whole_weights_is_a_typed_error(tiny, tmp_path, monkeypatch):
    """safetensors' own writer reports a full disk as SafetensorError (not OSError); the
    whole-model replay of a sharded base once ended in that traceback."""
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    out = tmp_path / "r.zst"
    r = CliRunner().invoke(main, [str(a) for a in train_args(tiny, out)])
    assert r.exit_code == 0, r.output

    def full(self, *a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    dest = tmp_path / "o"
    r = fails("replay", out, "--base", tiny / "base", "-o", dest, "--no-stream")
    assert "OutputError" in r.output and "the disk is full" in r.output
    assert not dest.exists() and not list(tmp_path.glob(".o.tmp-*"))
