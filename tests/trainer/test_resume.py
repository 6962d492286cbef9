"""mezo_ckpt.trainer.resume: which file a resume target means, the settings a resume
rebuilds from a trajectory (and what it refuses: paths not named again, settings that
cannot change, shrinking or a step-dependent schedule), the evaluation plan, and
extending a finished run."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers_train import config, write_jsonl
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.errors import ConfigError, TrajectoryNotFoundError
from mezo_ckpt.trainer import TrainConfig, train
from mezo_ckpt.trainer.resume import (
    EXTENSIBLE_SCHEDULES,
    JOURNAL_SUFFIX,
    eval_plan,
    locate,
    paths_for,
    resume_config,
)
from mezo_ckpt.trajectory import read_trajectory

QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny base, data files, and a finished 2-step run (with its own log file)."""
    d = tmp_path_factory.mktemp("resume")
    save_tiny(d / "base", "llama")
    data = {
        "train_file": write_jsonl(d / "train.jsonl", toy_sentiment(48, 0)),
        "dev_file": write_jsonl(d / "dev.jsonl", toy_sentiment(8, 1)),
    }
    out = d / "done.zst"
    cfg = config(
        str(d / "base"), data, out, steps=2, eval_every=0, eval_examples=8, log_file=str(d / "l")
    )
    train(cfg, **QUIET)
    named = {"model": str(d / "base"), **data}
    return {"dir": d, "base": str(d / "base"), "data": data, "out": out, "named": named}


# ----------------------------------------------------------------------------- files


def test_paths_for_either_name(tmp_path):
    out, journal = tmp_path / "run.zst", tmp_path / "run.zst.partial"
    assert paths_for(out) == (out, journal)
    assert paths_for(journal) == (out, journal)
    assert paths_for(str(out)) == (out, journal)
    assert JOURNAL_SUFFIX == ".partial"


def test_locate_prefers_the_journal(tmp_path):
    out, journal = paths_for(tmp_path / "run.zst")
    with pytest.raises(TrajectoryNotFoundError, match="nothing to resume: neither") as e:
        locate(out)
    assert isinstance(e.value, FileNotFoundError)
    assert "run.zst.partial" in str(e.value)
    out.write_bytes(b"x")
    assert locate(out) == (out, journal, out)
    journal.write_bytes(b"y")
    assert locate(out) == (out, journal, journal)
    assert locate(journal) == (out, journal, journal)
    out.unlink()
    assert locate(out) == (out, journal, journal)


# ----------------------------------------------------------------------------- settings


def test_resume_needs_paths_and_repos_named_again(setup):
    out, named = setup["out"], setup["named"]
    with pytest.raises(ConfigError, match="resuming needs the paths, repos and code") as e:
        resume_config(out)
    msg = str(e.value)
    for flag in ("--model", "--train-file", "--dev-file"):
        assert flag in msg
    assert f"--model {named['model']}" in msg
    assert f"mezo-ckpt train --resume {out} " in msg
    # naming only some of them lists the others
    with pytest.raises(ConfigError) as e:
        resume_config(out, {"model": named["model"]})
    assert "--train-file" in str(e.value) and "--model" not in str(e.value).split("used:")[1]


def test_resume_config_restores_the_stored_settings(setup):
    out, named = setup["out"], setup["named"]
    cfg, traj, notes = resume_config(out, named)
    assert traj.num_steps == 2 and traj.complete
    assert cfg.lr == 3e-3 and cfg.eps == 1e-2 and cfg.batch_size == 8
    assert cfg.template == "{text} =" and cfg.verbalizer == {"pos": "+", "neg": "-"}
    assert cfg.steps == 2 and cfg.output == str(out)
    assert cfg.train_file == named["train_file"] and cfg.model == named["model"]
    # the run's own log file is a path: not reused, and the notes say so
    assert cfg.log_file is None
    assert any("the run used --log-file" in n and "next to the trajectory" in n for n in notes)
    # None flags are "not given"; equal values are accepted
    cfg2, _, _ = resume_config(out, {**named, "lr": 3e-3, "seed": None})
    assert cfg2 == cfg


def test_settings_that_may_change_on_resume(setup):
    cfg, _, _ = resume_config(setup["out"], {**setup["named"], "threads": 2, "device": "cpu"})
    assert cfg.threads == 2 and cfg.device == "cpu"


def test_a_fixed_setting_cannot_change_and_the_source_is_named(setup, tmp_path):
    out, named = setup["out"], setup["named"]
    with pytest.raises(ConfigError, match=r"^--lr: lr cannot change when resuming") as e:
        resume_config(out, {**named, "lr": 0.5})
    assert "the run used lr='0.003'" in str(e.value)
    assert "start a new run with -o NEW.zst" in str(e.value)
    with pytest.raises(ConfigError, match=r"^--set batch-size=4: batch_size cannot change"):
        resume_config(out, named, ["batch-size=4"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# comment\neps: 0.5\n")
    with pytest.raises(ConfigError, match=rf"^{recipe}:2: eps cannot change when resuming"):
        resume_config(out, named, yaml_path=recipe)
    with pytest.raises(ConfigError, match=r"objective cannot change when resuming"):
        resume_config(out, {**named, "objective": "accuracy"})


def test_an_unknown_setting_is_refused_with_a_guess(setup):
    with pytest.raises(ConfigError, match=r"--set lrr=1: unknown setting 'lrr'; did you mean"):
        resume_config(setup["out"], setup["named"], ["lrr=1"])


def test_steps_grow_but_never_shrink(setup):
    out, named = setup["out"], setup["named"]
    cfg, _, notes = resume_config(out, {**named, "steps": 5})
    assert cfg.steps == 5
    assert "extending the run from 2 to 5 steps" in notes
    with pytest.raises(ConfigError, match=r"--steps 1: the run already recorded 2 steps"):
        resume_config(out, {**named, "steps": 1})
    assert EXTENSIBLE_SCHEDULES == ("constant",)


def test_a_step_dependent_schedule_cannot_be_extended(setup, tmp_path):
    out = tmp_path / "cos.zst"
    train(
        config(
            setup["base"],
            setup["data"],
            out,
            steps=2,
            eval_every=0,
            eval_examples=4,
            schedule="cosine",
        ),
        **QUIET,
    )
    cfg, _, notes = resume_config(out, setup["named"])  # same steps: fine
    assert cfg.schedule == "cosine" and notes == []
    with pytest.raises(ConfigError, match=r"--steps 3: this run's cosine schedule depends on"):
        resume_config(out, {**setup["named"], "steps": 3})


def test_a_journal_is_resumed_and_may_stop_earlier(setup, tmp_path, monkeypatch):
    out = tmp_path / "cut.zst"
    real = TrainConfig.lr_at

    def dying(self, step):
        if step == 2:
            raise RuntimeError("simulated crash")
        return real(self, step)

    monkeypatch.setattr(TrainConfig, "lr_at", dying)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config(setup["base"], setup["data"], out, steps=4, eval_every=0), **QUIET)
    monkeypatch.setattr(TrainConfig, "lr_at", real)
    journal = out.with_name(out.name + JOURNAL_SUFFIX)
    assert not out.exists() and journal.exists()
    cfg, traj, notes = resume_config(journal, setup["named"])
    assert traj.num_steps == 2 and traj.header.total_steps == 4 and cfg.steps == 4
    assert cfg.output == str(out)  # the output, not the journal
    cfg, _, notes = resume_config(out, {**setup["named"], "steps": 3})
    assert cfg.steps == 3
    assert notes == ["the run will now stop at step 3 (it was to run 4)"]
    with pytest.raises(ConfigError, match="the run already recorded 2 steps"):
        resume_config(out, {**setup["named"], "steps": 1})


def test_resume_reads_the_journal_before_the_finished_file(setup, tmp_path):
    out = tmp_path / "copy.zst"
    shutil.copy(setup["out"], out.with_name(out.name + JOURNAL_SUFFIX))
    cfg, traj, _ = resume_config(out, setup["named"])
    assert traj.num_steps == 2 and cfg.output == str(out)


# ----------------------------------------------------------------------------- plan


def test_eval_plan():
    cfg = TrainConfig(steps=10, eval_every=4, eval_test=True)
    both = {"dev": 1, "test": 1}
    assert eval_plan(cfg, both, 10) == [(0, "dev"), (0, "test"), (4, "dev"), (8, "dev")]
    assert eval_plan(cfg, both, 4) == [(0, "dev"), (0, "test"), (4, "dev")]
    assert eval_plan(cfg, {"dev": 1}, 10) == [(0, "dev"), (4, "dev"), (8, "dev")]
    assert eval_plan(TrainConfig(steps=10, eval_every=0, eval_test=False), both, 10) == [(0, "dev")]
    assert eval_plan(cfg, {}, 10) == []


# ----------------------------------------------------------------------------- extend


def test_train_resume_extends_a_finished_run(setup, tmp_path):
    out = tmp_path / "ext.zst"
    shutil.copy(setup["out"], out)
    before = read_trajectory(out)
    logged: list[str] = []
    r = train(resume=out, steps=3, progress=False, log=logged.append, **setup["named"])
    assert r.steps == 3 and r.total_steps == 3
    assert "Note: extending the run from 2 to 3 steps" in logged
    traj = read_trajectory(out)
    assert traj.complete and traj.num_steps == 3 and traj.header.total_steps == 3
    assert traj.header.config["extended_from"] == [{"total_steps": 2, "recorded": 2}]
    for field in ("flags", "coefs"):
        assert torch.equal(
            torch.as_tensor(getattr(traj.records, field)[:2]),
            torch.as_tensor(getattr(before.records, field)),
        )
    assert not out.with_name(out.name + JOURNAL_SUFFIX).exists()
