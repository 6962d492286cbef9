"""What a person (and their tools) see during a run.

* On a terminal: a tqdm bar; evaluation lines and messages are written above it (never
  on its line).
* In a log (CI, nohup, a pipe): no bar, but a plain progress line every
  ``PLAIN_EVERY_S`` seconds or every 5% of the steps: step, loss, time per step, ETA.
* Always: a JSONL log of every step and evaluation next to the trajectory.
* ``--report-to tensorboard|wandb``: losses, lr, coefficients and evaluation metrics per
  step through those libraries' own writers (imported only when asked).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.util.fsutil import os_errors

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_EVERY_S = 30.0
#: ... and at most this many steps apart, as a fraction of the run.
PLAIN_EVERY_FRACTION = 0.05


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def reporter_module(report_to: str) -> Any:
    """The package a ``--report-to`` choice writes through (None for "none"), imported
    now, so a missing one is a ConfigError before any work rather than after it."""
    import importlib

    names = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}
    if report_to not in names:
        return None
    try:
        return importlib.import_module(names[report_to])
    except ImportError:
        hint = "; set WANDB_MODE=offline to log without an account" if report_to == "wandb" else ""
        raise ConfigError(
            f"--report-to {report_to} needs the {report_to} package: pip install "
            f"'mezo-ckpt[report]' (or {report_to}){hint}"
        ) from None


class _Tensorboard:
    def __init__(self, logdir: Path, config: Mapping[str, Any]) -> None:
        self.w = reporter_module("tensorboard").SummaryWriter(log_dir=str(logdir))
        self.w.add_text(
            "config", "```\n" + json.dumps(dict(config), indent=2, default=str) + "\n```"
        )

    def log(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.flush()
        self.w.close()


class _Wandb:
    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        wandb = reporter_module("wandb")
        self.wandb = wandb
        self.run = wandb.init(project="mezo-ckpt", name=name, config=dict(config))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


class Reporter:
    """Progress bar or plain lines, the JSONL log, and optional tensorboard/wandb."""

    def __init__(
        self,
        *,
        total: int,
        start: int,
        progress: bool,
        log: Callable[[str], None],
        log_path: Path | None,
        report_to: str = "none",
        report_dir: Path | None = None,
        run_name: str = "mezo",
        config: Mapping[str, Any] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.total = total
        self.start = start
        self._log = log
        self.stream = stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.plain = progress and not tty
        self.bar = tqdm(
            total=total,
            initial=start,
            desc="mezo",
            unit="step",
            disable=not (progress and tty),
            dynamic_ncols=True,
            file=self.stream,
        )
        self.log_f: Any = None
        if log_path is not None:
            with os_errors(log_path, "write the log"):
                self.log_f = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        self.t0 = time.perf_counter()
        self._last_plain = self.t0
        self._step_seconds = 0.0  # steps only: evaluations are not steps
        self._plain_every = max(1, int(total * PLAIN_EVERY_FRACTION))
        self.sinks: list[Any] = []
        if report_to == "tensorboard":
            logdir = report_dir or Path(str(log_path or "mezo")).with_suffix(".tb")
            self.sinks.append(_Tensorboard(logdir, config or {}))
        elif report_to == "wandb":
            self.sinks.append(_Wandb(run_name, config or {}))

    @classmethod
    def for_run(
        cls,
        cfg: Any,
        out: Path,
        log_path: Path,
        *,
        start: int,
        progress: bool,
        main: bool,
        log: Callable[[str], None],
    ) -> Reporter:
        """The reporter of a training run (a data-parallel rank other than 0 stays quiet)."""
        return cls(
            total=cfg.steps,
            start=start,
            progress=progress and main,
            log=log if main else (lambda text: None),
            log_path=log_path if main else None,
            report_to=cfg.report_to if main else "none",
            report_dir=out.with_name(out.name + ".tensorboard"),
            run_name=out.name,
            config=cfg.to_dict(),
        )

    def message(self, text: str) -> None:
        """A line for the person watching: above the bar when there is one."""
        if not self.bar.disable:
            self.bar.write(text, file=self.stream)
        else:
            self._log(text)

    def _jsonl(self, obj: Mapping[str, Any]) -> None:
        if self.log_f is None:
            return
        with os_errors(self.log_f.name, "write the log"):
            self.log_f.write(json.dumps(obj, default=float) + "\n")
            self.log_f.flush()

    def step(self, step: int, est, lr: float, seconds: float) -> None:
        done = step + 1
        self._step_seconds += seconds
        self._jsonl(
            {
                "event": "step",
                "step": step,
                "loss": est.loss,
                "loss_plus": [p[0] for p in est.pair_losses],
                "loss_minus": [p[1] for p in est.pair_losses],
                "lr": lr,
                "coefs": est.coefs,
                "skipped": est.skipped,
                "seconds": seconds,
            }
        )
        values = {"train/loss": est.loss, "train/lr": lr}
        for j, c in enumerate(est.coefs):
            values[f"train/coef{j}"] = c
        for sink in self.sinks:
            sink.log(values, done)
        self.bar.set_postfix(loss=f"{est.loss:.4f}", lr=f"{lr:.2e}")
        self.bar.update(1)
        if self.plain:
            now = time.perf_counter()
            if (
                now - self._last_plain >= PLAIN_EVERY_S
                or done % self._plain_every == 0
                or done == self.total
            ):
                self._last_plain = now
                ran = done - self.start
                per = self._step_seconds / max(1, ran)
                eta = per * (self.total - done)
                self._log(
                    f"step {done}/{self.total} ({100 * done / max(1, self.total):.0f}%)  "
                    f"loss {est.loss:.4f}  lr {lr:.2e}  {per:.2f} s/step  ETA {_duration(eta)}"
                )

    @contextlib.contextmanager
    def evaluating(self, step: int, split: str, n: int) -> Iterator[Callable[[int], None]]:
        """Progress of one evaluation (``n`` examples): a transient bar on a terminal, a
        line at the start and every ``PLAIN_EVERY_S`` seconds in a log; the function it
        yields takes the number of examples just evaluated."""
        from tqdm.auto import tqdm

        if self.plain:
            self._log(f"evaluating {split} at step {step}: {n} examples")
        done = 0
        last = time.perf_counter()
        with tqdm(
            total=n,
            desc=f"eval {split}",
            unit="ex",
            leave=False,
            disable=self.bar.disable,
            dynamic_ncols=True,
            file=self.stream,
        ) as bar:

            def update(k: int) -> None:
                nonlocal done, last
                done += k
                bar.update(k)
                now = time.perf_counter()
                if self.plain and now - last >= PLAIN_EVERY_S and done < n:
                    last = now
                    self._log(f"evaluating {split} at step {step}: {done}/{n} examples")

            yield update

    def evaluation(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self._jsonl({"event": "eval", "step": step, "split": split, **metrics})
        for sink in self.sinks:
            sink.log({f"{split}/{k}": v for k, v in metrics.items() if k != "examples"}, step)
        shown = "  ".join(
            f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k not in ("examples",)
        )
        self.message(f"step {step:>5}  {split:<4} {shown}")

    def close(self) -> None:
        self.bar.close()
        for sink in self.sinks:
            sink.close()
        if self.log_f is not None and not self.log_f.closed:
            self.log_f.close()
