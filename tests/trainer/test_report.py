"""mezo_ckpt.trainer.report: durations, the optional reporters' imports, and what the
Reporter writes (JSONL log, plain progress lines in a log, messages on a terminal)."""

from __future__ import annotations

import io
import json
import math
import sys
from types import SimpleNamespace

import pytest

from mezo_ckpt.errors import ConfigError, OutputError
from mezo_ckpt.trainer import report
from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.report import Reporter, _duration, reporter_module


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def est(loss: float = 0.5, skipped: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        loss=loss, pair_losses=[(loss + 0.1, loss - 0.1)], coefs=[0.25], skipped=skipped
    )


def reporter(tmp_path, *, total=40, start=0, progress=True, stream=None, **kw):
    logged: list[str] = []
    rep = Reporter(
        total=total,
        start=start,
        progress=progress,
        log=logged.append,
        log_path=kw.pop("log_path", tmp_path / "log.jsonl"),
        stream=stream if stream is not None else io.StringIO(),
        **kw,
    )
    return rep, logged


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (0, "0s"),
        (59.4, "59s"),
        (59.6, "1m00s"),
        (61, "1m01s"),
        (3600, "1h00m00s"),
        (3 * 3600 + 5 * 60 + 9, "3h05m09s"),
        (math.inf, "?"),
        (math.nan, "?"),
    ],
)
def test_duration(seconds, shown):
    assert _duration(seconds) == shown


def test_reporter_module_imports_on_demand(monkeypatch):
    assert reporter_module("none") is None
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ConfigError, match=r"--report-to wandb needs the wandb package") as e:
        reporter_module("wandb")
    assert "WANDB_MODE=offline" in str(e.value)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"needs the tensorboard package") as e:
        reporter_module("tensorboard")
    assert "WANDB_MODE" not in str(e.value)


# ----------------------------------------------------------------------------- Reporter


def test_every_step_goes_to_the_jsonl_log(tmp_path):
    rep, _ = reporter(tmp_path, total=3)
    rep.step(0, est(0.5), 1e-3, 0.2)
    rep.step(1, est(0.25, skipped=True), 5e-4, 0.3)
    rep.close()
    rows = jsonl(tmp_path / "log.jsonl")
    assert rows[0] == {
        "event": "step",
        "step": 0,
        "loss": 0.5,
        "loss_plus": [0.6],
        "loss_minus": [0.4],
        "lr": 1e-3,
        "coefs": [0.25],
        "skipped": False,
        "seconds": 0.2,
    }
    assert rows[1]["step"] == 1 and rows[1]["skipped"] is True and rows[1]["lr"] == 5e-4
    assert rep.log_f.closed
    # a second reporter appends to the same log (a resumed run)
    rep2, _ = reporter(tmp_path, total=3, start=2)
    rep2.step(2, est(), 1e-3, 0.1)
    rep2.close()
    assert [r["step"] for r in jsonl(tmp_path / "log.jsonl")] == [0, 1, 2]


def test_plain_lines_every_five_percent_and_at_the_end(tmp_path):
    rep, logged = reporter(tmp_path, total=40)
    assert rep.plain and rep.bar.disable
    for s in range(5):
        rep.step(s, est(), 1e-3, 0.5)
    rep.close()
    # 5% of 40 steps is every 2 steps
    assert [line.split("  ")[0] for line in logged] == ["step 2/40 (5%)", "step 4/40 (10%)"]
    assert logged[0] == "step 2/40 (5%)  loss 0.5000  lr 1.00e-03  0.50 s/step  ETA 19s"
    rep, logged = reporter(tmp_path, total=3, log_path=None)
    for s in range(3):
        rep.step(s, est(), 1e-3, 1.0)
    assert logged[-1].startswith("step 3/3 (100%)") and logged[-1].endswith("ETA 0s")


def test_plain_eta_counts_only_the_steps_run_now(tmp_path):
    rep, logged = reporter(tmp_path, total=10, start=6, log_path=None)
    rep.step(6, est(), 1e-3, 2.0)
    rep.step(7, est(), 1e-3, 4.0)
    # (5% of 10 steps rounds to every step) 1 step in 2 s, then 2 steps in 6 s
    assert logged == [
        "step 7/10 (70%)  loss 0.5000  lr 1.00e-03  2.00 s/step  ETA 6s",
        "step 8/10 (80%)  loss 0.5000  lr 1.00e-03  3.00 s/step  ETA 6s",
    ]


def test_no_progress_means_no_plain_lines(tmp_path):
    rep, logged = reporter(tmp_path, total=2, progress=False)
    rep.step(0, est(), 1e-3, 0.1)
    rep.step(1, est(), 1e-3, 0.1)
    assert not rep.plain and logged == []
    rep.message("hello")
    assert logged == ["hello"]
    rep.close()
    assert len(jsonl(tmp_path / "log.jsonl")) == 2


def test_evaluation_is_logged_and_shown(tmp_path):
    rep, logged = reporter(tmp_path, total=10)
    rep.evaluation(5, "dev", {"loss": 0.25, "accuracy": 0.5, "examples": 8.0})
    rep.close()
    assert logged == ["step     5  dev  accuracy 0.5000  loss 0.2500"]
    assert jsonl(tmp_path / "log.jsonl") == [
        {"event": "eval", "step": 5, "split": "dev", "loss": 0.25, "accuracy": 0.5, "examples": 8.0}
    ]


def test_evaluating_reports_start_and_slow_progress(tmp_path, monkeypatch):
    rep, logged = reporter(tmp_path, total=10, log_path=None)
    with rep.evaluating(4, "test", 10) as update:
        update(4)
        update(6)
    assert logged == ["evaluating test at step 4: 10 examples"]
    logged.clear()
    monkeypatch.setattr(report, "PLAIN_EVERY_S", 0.0)
    with rep.evaluating(4, "dev", 10) as update:
        update(4)
        update(3)
        update(3)  # done: no line for 10/10
    assert logged == [
        "evaluating dev at step 4: 10 examples",
        "evaluating dev at step 4: 4/10 examples",
        "evaluating dev at step 4: 7/10 examples",
    ]


def test_on_a_terminal_messages_go_above_the_bar(tmp_path):
    term = Terminal()
    rep, logged = reporter(tmp_path, total=4, stream=term, log_path=None)
    assert not rep.plain and not rep.bar.disable
    rep.step(0, est(), 1e-3, 0.1)
    rep.message("Note: above the bar")
    with rep.evaluating(1, "dev", 3) as update:
        update(3)
    rep.close()
    assert logged == []
    assert "Note: above the bar" in term.getvalue()
    assert "mezo" in term.getvalue()


def test_an_unwritable_log_is_an_output_error(tmp_path):
    with pytest.raises(OutputError):
        reporter(tmp_path, log_path=tmp_path / "missing" / "log.jsonl")


def test_for_run_keeps_other_ranks_quiet(tmp_path):
    cfg = TrainConfig(steps=12)
    out = tmp_path / "t.zst"
    logged: list[str] = []
    main = Reporter.for_run(
        cfg, out, tmp_path / "l.jsonl", start=0, progress=True, main=True, log=logged.append
    )
    assert main.total == 12 and main.plain
    main.message("from rank 0")
    main.close()
    assert logged == ["from rank 0"] and (tmp_path / "l.jsonl").exists()
    other = Reporter.for_run(
        cfg, out, tmp_path / "o.jsonl", start=0, progress=True, main=False, log=logged.append
    )
    assert not other.plain and other.log_f is None and other.sinks == []
    other.message("from rank 1")
    other.step(0, est(), 1e-3, 0.1)
    other.close()
    assert logged == ["from rank 0"] and not (tmp_path / "o.jsonl").exists()


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    rep, _ = reporter(
        tmp_path,
        total=2,
        progress=False,
        report_to="tensorboard",
        report_dir=tmp_path / "tb",
        config={"lr": 1e-3},
    )
    assert len(rep.sinks) == 1
    rep.step(0, est(), 1e-3, 0.1)
    rep.evaluation(1, "dev", {"loss": 0.5, "examples": 4.0})
    rep.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
