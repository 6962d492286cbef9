"""One runner over every command for the committed corpus of hostile trajectory files
(tests/corpus, built by tests/make_corpus.py, each named after what is wrong with it and
mapped to its typed error in INDEX.json).

Every command that takes a trajectory (``info``, ``replay`` whole and streamed, ``diff``,
``pull``, ``push --dry-run``, ``train --resume``, ``mezo_ckpt.load``, ``mezo_ckpt.replay``)
runs against every malformed file: each ends in a one-line typed error and exit code 2
(the read-only ones with exactly the error INDEX.json names), never a traceback, and
nothing in the folder changes but the command's own output (nothing at all when refused).
The wrong *bases* of tests/wrong_bases.py go through ``replay`` (whole), ``load``,
``pull`` and ``train --resume`` in test_trust.py and through streamed ``replay`` and
``diff`` here; hostile recipes, objectives, adapter configs and journals are in
test_attacks.py, hostile base indexes in tests/rebuild/test_sources.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from paths import TESTS
from tinymodels import save_tiny
from wrong_bases import CASES, EITHER, make_wrong_base

import mezo_ckpt
import mezo_ckpt.errors as errors
from mezo_ckpt.cli import main

CORPUS = TESTS / "corpus"
INDEX: dict[str, str | None] = json.loads((CORPUS / "INDEX.json").read_text())
BAD = sorted(name for name, err in INDEX.items() if err is not None)
FROZEN = "transformer.h.0.mlp.c_fc.weight"
#: Commands that only read the file: they must refuse it with the error INDEX.json names.
READERS = ("info", "replay", "replay-stream", "diff", "pull")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile") / "base"
    save_tiny(folder, "gpt2")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def command(name: str, traj: Path, base: Path, out: Path) -> list[str]:
    t, b, o = str(traj), str(base), str(out)
    return {
        "info": ["info", t],
        "replay": ["replay", t, "--base", b, "-o", o, "-q", "--no-stream"],
        "replay-stream": ["replay", t, "--base", b, "-o", o, "-q", "--stream"],
        "diff": ["diff", t, "--base", b],
        "pull": ["pull", t, "--base", b, "-o", o, "-q"],
        "push": ["push", t, "me/hostile", "--dry-run", o],
        "resume": ["train", "--resume", t, "--model", b, "-q"],
    }[name]


@pytest.mark.parametrize("name", BAD)
def test_every_command_refuses_every_hostile_file(name, base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    want = INDEX[name]
    traj = tmp_path / name.replace(".bin", ".zst")
    shutil.copyfile(CORPUS / name, traj)
    for cmd in (*READERS, "push", "resume"):
        out = tmp_path / f"out-{cmd}"
        before = snapshot(tmp_path)
        r = CliRunner().invoke(main, command(cmd, traj, base, out))
        label = f"{cmd} {name}: {r.output[-300:]!r} {r.exception!r}"
        assert r.exit_code == 2, label
        assert "Traceback" not in r.output and r.output.count("\n") <= 12, label
        assert "Error (" in r.output, label
        if cmd in READERS:
            assert f"Error ({want})" in r.output, label
        after = snapshot(tmp_path)
        if cmd == "resume" and want == "TruncatedError":
            # a torn tail is what resume repairs: its journal may be made; nothing else
            after = {k: v for k, v in after.items() if not k.endswith(".partial")}
        assert after == before, f"{label}: files changed"
    # the Python entry points: the same typed errors
    for fn in (
        lambda: mezo_ckpt.replay(traj, str(base)),
        lambda: mezo_ckpt.load(traj, base=str(base), progress=False),
    ):
        with pytest.raises(getattr(errors, want)):
            fn()
    assert snapshot(tmp_path).keys() == {traj.name} | {
        k for k in snapshot(tmp_path) if k.endswith(".partial")
    }


# ----------------------------------------------------------------------------- bases


@pytest.fixture(scope="module")
def run(base, tmp_path_factory) -> Path:
    """A 2-step run of the tiny GPT-2 (frozen layer 0, so wrong frozen tensors matter)."""
    from helpers_train import config, write_jsonl
    from tinymodels import toy_sentiment

    from mezo_ckpt.trainer import train

    d = tmp_path_factory.mktemp("hostile-run")
    data = {"train_file": write_jsonl(d / "train.jsonl", toy_sentiment(32))}
    cfg = config(str(base), data, d / "run.zst", steps=2, eval_every=0, trainable=["*h.1.*"])
    train(cfg, progress=False, log=lambda s: None)
    return d / "run.zst"


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_replay_and_diff_refuse_every_wrong_base(case, base, run, tmp_path):
    """The wrong-base corpus (tests/wrong_bases.py) against the commands test_trust.py
    does not run it through: a streamed replay and diff."""
    wrong = make_wrong_base(base, tmp_path / "base", case, "gpt2", FROZEN)
    for cmd in ("replay-stream", "diff"):
        out = tmp_path / f"out-{cmd}"
        before = snapshot(tmp_path)
        r = CliRunner().invoke(main, command(cmd, run, wrong, out))
        label = f"{cmd} {case}: {r.output[-300:]!r} {r.exception!r}"
        assert r.exit_code == 2 and "Traceback" not in r.output, label
        # streaming never builds the model: what loading would call unloadable it may
        # report as the tensor that differs or is missing (both are refusals of the base)
        ok = CASES[case].errors + (EITHER if cmd == "replay-stream" else ())
        assert any(f"Error ({e})" in r.output for e in ok), label
        assert snapshot(tmp_path) == before and not out.exists(), label


# ----------------------------------------------------------------------------- recipes, objectives

HOSTILE = TESTS / "hostile"
CASES_TEXT: dict[str, dict[str, str]] = json.loads((HOSTILE / "INDEX.json").read_text())


def test_the_corpus_index_names_every_file():
    files = {str(p.relative_to(HOSTILE)) for p in HOSTILE.rglob("*.*") if p.name != "INDEX.json"}
    assert files == set(CASES_TEXT)


@pytest.mark.parametrize("name", sorted(n for n in CASES_TEXT if n.startswith("recipes/")))
def test_every_hostile_recipe_is_a_typed_error(name, tmp_path):
    from mezo_ckpt.trainer.config import resolve_config

    case = CASES_TEXT[name]
    recipe = tmp_path / Path(name).name
    shutil.copyfile(HOSTILE / name, recipe)
    with pytest.raises(getattr(errors, case["error"]), match=case["match"]):
        resolve_config(str(recipe))
    r = CliRunner().invoke(main, ["train", "-c", str(recipe), "--print-config"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"Error ({case['error']})" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [recipe.name]


@pytest.mark.parametrize("name", sorted(n for n in CASES_TEXT if n.startswith("objectives/")))
def test_every_hostile_objective_fails_the_run_loudly(name, base, tmp_path, monkeypatch):
    """Named on the command line, each objective module ends the run with its typed error
    (at import, or at the first step's scoring), exit 2, and no journal left behind."""
    import sys

    from helpers_train import write_jsonl
    from tinymodels import toy_sentiment

    case = CASES_TEXT[name]
    module = Path(name).stem
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(HOSTILE / name, work / Path(name).name)
    data = write_jsonl(tmp_path / "train.jsonl", toy_sentiment(16))
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, module, raising=False)
    out = tmp_path / "out" / "r.zst"
    r = CliRunner().invoke(main, [
        "train", "--model", str(base), "--train-file", data, "--template", "{text} =",
        "--verbalizer", "pos= p,neg= n", "--steps", "2", "--batch-size", "4",
        "--eval-every", "0", "--no-eval-test", "-q", "-o", str(out),
        "--objective", f"python:{module}:score",
    ])  # fmt: skip
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output + repr(r.exception)
    assert f"Error ({case['error']})" in r.output, r.output
    assert (
        not out.exists() and not list(out.parent.glob("*.partial")) if out.parent.exists() else True
    )
