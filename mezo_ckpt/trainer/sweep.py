"""A grid of MeZO runs, the way the paper reports them: every setting of a grid, each over
several seeds, then the mean (std) over seeds per setting and the setting dev picks.

Each run is an ordinary ``mezo-ckpt train`` run in its own process, written to
``DIR/runs/<setting>/seed-<S>.zst`` (a seed sets both the run seed and the ``--k-shot``
draw, as MeZO's scripts do). Nothing here trains: this module plans the runs, says what
state each is in (done, resumable, new), starts them, and reads their results back from
their trajectories, so a table is always the files' own numbers and a sweep that was
stopped goes on where it stopped (finished runs are skipped, a partial run resumes).

Runs can be spread over a launcher that already exists (a Slurm array, torchrun ranks,
several machines sharing a folder): ``--shard I/N`` runs every N-th run from the I-th;
each run takes its trajectory's lock, so two processes never write the same run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import ConfigError, MezoCkptError
from mezo_ckpt.trainer.config import TrainConfig, coerce, unknown_setting

#: MeZO's (and LM-BFF's) data seeds.
PAPER_SEEDS = (13, 21, 42, 87, 100)
#: The sweep's record of what it runs, in its output folder.
MANIFEST = "sweep.json"
#: Settings a grid cannot vary: each run's own paths, and the seed (--seeds sets it).
NOT_IN_GRID = ("output", "log_file", "save_model", "seed", "data_seed")
_SLUG = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a setting of the grid and a seed."""

    index: int
    setting: tuple[tuple[str, str], ...]
    seed: int
    path: Path

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.setting) or "(base settings)"

    def sets(self) -> list[str]:
        """The ``--set`` items of this run (the grid's values, then the seed)."""
        return [f"{k}={v}" for k, v in self.setting] + [
            f"seed={self.seed}",
            f"data_seed={self.seed}",
        ]

    @property
    def journal(self) -> Path:
        from mezo_ckpt.trainer.resume import paths_for

        return paths_for(self.path)[1]

    @property
    def log(self) -> Path:
        return self.path.with_name(self.path.name.removesuffix(".zst") + ".out")


def parse_grid(items: Iterable[str] | Mapping[str, Sequence[Any]]) -> dict[str, list[str]]:
    """``["lr=1e-7,1e-6", "eps=1e-3"]`` (or a recipe's ``{lr: [1e-7, 1e-6]}``) ->
    {"lr": ["1e-7", "1e-6"], "eps": ["1e-3"]}; each value is checked as the setting's
    type (the text is kept: it names the run).

    Raises:
        ConfigError: not KEY=V1,V2; an unknown setting, one a grid cannot vary, a key
            given twice, a repeated or invalid value.
    """
    if isinstance(items, Mapping):
        pairs = []
        for k, v in items.items():
            vals = v if isinstance(v, list) else [v]
            pairs.append(f"{k}=" + ",".join(str(x) for x in vals))
        items = pairs
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: use KEY=V1,V2,... (e.g. lr=1e-7,1e-6,1e-5)")
        name = key.strip().replace("-", "_")
        if name not in TrainConfig.fields():
            raise unknown_setting(name, f"--grid {item}")
        if name in NOT_IN_GRID:
            raise ConfigError(
                f"--grid {item!r}: {name} is not a grid setting"
                + (" (use --seeds)" if name in ("seed", "data_seed") else " (each run has its own)")
            )
        if name in grid:
            raise ConfigError(f"--grid {item!r}: {name} is already in the grid")
        texts = [v.strip() for v in values.split(",")]
        if any(not t for t in texts) or len(set(texts)) != len(texts):
            raise ConfigError(f"--grid {item!r}: empty or repeated values")
        for t in texts:
            coerce(name, t, f"--grid {item}")
        grid[name] = texts
    return grid


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"13,21,42"`` -> [13, 21, 42] (distinct non-negative integers)."""
    parts = [str(p).strip() for p in (text.split(",") if isinstance(text, str) else text)]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: use integers, e.g. 13,21,42,87,100") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: distinct non-negative integers")
    return seeds


def slug(setting: Sequence[tuple[str, str]]) -> str:
    """The folder name of a setting: ``lr=1e-6,eps=1e-3`` (other characters as _)."""
    return ",".join(f"{k}={_SLUG.sub('_', v)}" for k, v in setting) or "base"


def plan(grid: Mapping[str, Sequence[str]], seeds: Sequence[int], root: Path) -> list[Run]:
    """Every (setting, seed) of the grid, settings in grid order, seeds within."""
    keys = list(grid)
    settings = [tuple(zip(keys, values)) for values in product(*(grid[k] for k in keys))]
    names = [slug(s) for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError("two grid values name the same folder: write them differently")
    runs = []
    for s, name in zip(settings, names):
        for seed in seeds:
            runs.append(Run(len(runs), s, seed, root / "runs" / name / f"seed-{seed}.zst"))
    return runs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None -> None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: use I/N with 0 <= I < N (e.g. 0/4)")
    return int(m.group(1)), int(m.group(2))


# ----------------------------------------------------------------------------- state


def state_of(run: Run) -> str:
    """``done`` (every step recorded and sealed), ``partial`` (resumable: a journal or an
    unfinished file) or ``new``."""
    from mezo_ckpt.trajectory import read_trajectory

    if run.journal.exists():
        return "partial"
    if not run.path.exists():
        return "new"
    try:
        traj = read_trajectory(run.path, allow_truncated_tail=True)
    except MezoCkptError:
        return "partial"  # train --resume says what is wrong with it
    return "done" if traj.complete else "partial"


@dataclass
class Outcome:
    """What a run's trajectory says: the final dev and test metric and the test metric
    before training (zero-shot); None where the file has no such evaluation."""

    run: Run
    state: str
    metric: str | None = None
    dev: float | None = None
    test: float | None = None
    zero_shot: float | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "setting": dict(self.run.setting),
            "seed": self.run.seed,
            "trajectory": str(self.run.path),
            "state": self.state,
            "metric": self.metric,
            "dev": self.dev,
            "test": self.test,
            "zero_shot": self.zero_shot,
            **({"error": self.error} if self.error else {}),
        }


#: Metrics a table reports, in order of preference.
METRICS = ("accuracy", "f1", "exact_match")


def outcome(run: Run, error: str | None = None) -> Outcome:
    """The run's results, read from its trajectory (a run not done has none)."""
    from mezo_ckpt.trajectory import read_trajectory

    state = state_of(run)
    out = Outcome(run, state, error=error)
    if state != "done":
        return out
    traj = read_trajectory(run.path)
    evals = traj.evaluations
    names = {m for e in evals for m in e.metrics}
    out.metric = next((m for m in METRICS if m in names), None)
    if out.metric is None:
        return out
    last = traj.header.total_steps

    def pick(split: str, step: int | None) -> float | None:
        got = [e for e in evals if e.split == split and (step is None or e.step == step)]
        return float(got[-1].metrics[out.metric]) if got and out.metric in got[-1].metrics else None

    out.dev = pick("dev", None)
    out.test = pick("test", last)
    out.zero_shot = pick("test", 0)
    return out


# ----------------------------------------------------------------------------- table


def mean_std(xs: Sequence[float]) -> tuple[float, float] | None:
    """Mean and population standard deviation (numpy's np.std, LM-BFF's and MeZO's
    tables), or None for no values."""
    if not xs:
        return None
    m = math.fsum(xs) / len(xs)
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


@dataclass
class Row:
    """One setting of the grid over its seeds."""

    setting: tuple[tuple[str, str], ...]
    runs: int
    done: int
    dev: tuple[float, float] | None
    test: tuple[float, float] | None
    zero_shot: tuple[float, float] | None
    best: bool = False

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.setting) or "(base settings)"

    def as_json(self) -> dict[str, Any]:
        def pair(v):
            return None if v is None else {"mean": v[0], "std": v[1]}

        return {"setting": dict(self.setting), "runs": self.runs, "done": self.done,
                "dev": pair(self.dev), "test": pair(self.test),
                "zero_shot": pair(self.zero_shot), "best": self.best}  # fmt: skip


@dataclass
class Table:
    rows: list[Row]
    metric: str | None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.best), None)

    def as_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "metric": self.metric,
            "std": "population (ddof=0) over seeds",
            "settings": [r.as_json() for r in self.rows],
            "best": None if best is None else dict(best.setting),
            "runs": [o.as_json() for o in self.outcomes],
        }


def table(outcomes: Sequence[Outcome]) -> Table:
    """Per setting: mean (std) over its finished seeds of the final dev and test metric
    and of the zero-shot test metric; the best setting is the one with the highest mean
    dev metric among settings whose every run is done (MeZO's selection by dev)."""
    order: list[tuple[tuple[str, str], ...]] = []
    by: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        if o.run.setting not in by:
            order.append(o.run.setting)
        by.setdefault(o.run.setting, []).append(o)
    metrics = {o.metric for o in outcomes if o.metric}
    rows = []
    for s in order:
        group = by[s]
        done = [o for o in group if o.state == "done"]

        def stat(attr: str, done=done):
            return mean_std([getattr(o, attr) for o in done if getattr(o, attr) is not None])

        rows.append(Row(s, len(group), len(done), stat("dev"), stat("test"), stat("zero_shot")))
    whole = [r for r in rows if r.done == r.runs and r.dev is not None]
    if whole:
        max(whole, key=lambda r: r.dev[0]).best = True  # type: ignore[index]
    metric = next(iter(metrics)) if len(metrics) == 1 else None
    return Table(rows, metric, list(outcomes))


def _pct(v: tuple[float, float] | None, scale: float) -> str:
    if v is None:
        return "-"
    return f"{v[0] * scale:.1f} ({v[1] * scale:.1f})"


def format_table(t: Table) -> str:
    """The paper's table: one line per setting, mean (std) over seeds, in percent for a
    metric in [0, 1]; the best setting by dev marked with *."""
    scale = 100.0
    head = ["setting", "runs", f"dev {t.metric or ''}".rstrip(), f"test {t.metric or ''}".rstrip(),
            "zero-shot test"]  # fmt: skip
    body = [
        [
            ("* " if r.best else "  ") + r.label,
            f"{r.done}/{r.runs}",
            _pct(r.dev, scale),
            _pct(r.test, scale),
            _pct(r.zero_shot, scale),
        ]  # fmt: skip
        for r in t.rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in body]
    lines.append(
        "mean (std) over seeds in percent; std is the population std (np.std, as MeZO's "
        "tables); * best setting by mean dev"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """The sweep a folder holds (its train arguments, grid and seeds).

    Raises:
        ConfigError: no readable manifest there.
    """
    path = root / MANIFEST
    try:
        have = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a sweep manifest ({e}): use another folder") from None
    if not isinstance(have, dict) or not {"grid", "seeds", "train_args"} <= set(have):
        raise ConfigError(f"{path} is not a sweep manifest (grid, seeds, train_args)")
    return {
        "grid": parse_grid(have["grid"]),
        "seeds": parse_seeds(have["seeds"]),
        "train_args": [str(a) for a in have["train_args"]],
    }


def check_manifest(root: Path, want: dict[str, Any], *, write: bool) -> None:
    """The folder's sweep must be this one (same train arguments, grid and seeds): a
    rerun resumes it; another sweep needs another folder.

    Raises:
        ConfigError: the folder holds a different sweep (naming what differs).
    """
    from mezo_ckpt.util.fsutil import atomic_write_bytes

    path = root / MANIFEST
    if path.exists():
        have = read_manifest(root)
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            raise ConfigError(
                f"{root} holds another sweep (its {', '.join(diff)} differ): rerun it with "
                "the same arguments to resume it, or use another -o folder"
            )
        return
    if write:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(want, indent=2, sort_keys=True) + "\n").encode())


def write_results(root: Path, t: Table) -> None:
    """``table.md`` (the printed table) and ``results.json`` (every run and setting)."""
    from mezo_ckpt.util.fsutil import atomic_write_bytes

    atomic_write_bytes(root / "table.md", ("```\n" + format_table(t) + "\n```\n").encode())
    atomic_write_bytes(root / "results.json", (json.dumps(t.as_json(), indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- running


def command(
    run: Run, train_args: Sequence[str], threads: int | None, state: str | None = None
) -> list[str]:
    """The ``mezo-ckpt train`` command line of a run (``--resume`` when it has started;
    ``state``: the run's :func:`state_of`, when the caller has it already)."""
    cmd = [sys.executable, "-m", "mezo_ckpt", "train", *train_args]
    for item in run.sets():
        cmd += ["--set", item]
    given = any(a == "--threads" or a.startswith("--threads=") or a.startswith("threads=")
                for a in train_args)  # fmt: skip
    if threads is not None and not given:
        cmd += ["--threads", str(threads)]
    if (state or state_of(run)) == "partial":
        return [*cmd, "--resume", str(run.path), "-q"]
    return [*cmd, "-o", str(run.path), "-q"]


@dataclass
class Event:
    run: Run
    kind: str  # "start", "done", "failed", "busy", "skipped", "stopped"
    seconds: float = 0.0
    detail: str = ""


def _last_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error")]
    return (errors or lines or ["(no output)"])[-1][:400]


def execute(
    runs: Sequence[Run],
    train_args: Sequence[str],
    *,
    jobs: int = 1,
    threads: int | None = None,
    on_event: Callable[[Event], None] = lambda e: None,
) -> dict[int, str]:
    """Run what is not done, ``jobs`` at a time; each run's output goes to its ``.out``
    file. Returns {run index: error line} for the runs that failed (a run whose lock
    another process holds is reported ``busy`` and left to it).

    Each run is a process of its own session, so Ctrl-C reaches the sweep alone, which
    then sends every running run one SIGINT (it finishes its step and leaves a resumable
    file), starts no other run, waits for them, and raises KeyboardInterrupt.
    """
    failed: dict[int, str] = {}
    stop = threading.Event()
    running: set[subprocess.Popen] = set()
    guard = threading.Lock()

    def one(run: Run) -> None:
        state = state_of(run)
        if state == "done":
            on_event(Event(run, "skipped", detail="done"))
            return
        run.path.parent.mkdir(parents=True, exist_ok=True)
        cmd = command(run, train_args, threads, state)
        if stop.is_set():
            return
        with open(run.log, "ab") as log:
            with guard:
                if stop.is_set():
                    return
                on_event(Event(run, "start", detail="resuming" if state == "partial" else ""))
                log.write(f"$ {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.PIPE, start_new_session=True
                )
                running.add(proc)
            t0 = time.monotonic()
            try:
                _, stderr = proc.communicate()
            finally:
                with guard:
                    running.discard(proc)
            log.write(stderr)
        err = stderr.decode("utf-8", "replace")
        took = time.monotonic() - t0
        if proc.returncode == 0 and state_of(run) != "done":  # it was asked to stop
            on_event(Event(run, "stopped", took, "stopped; it resumes from its journal"))
        elif proc.returncode == 0:
            on_event(Event(run, "done", took))
        elif "RunLockedError" in err:
            on_event(Event(run, "busy", took, "another process is running it"))
        else:
            failed[run.index] = _last_error(err) + f" (see {run.log})"
            on_event(Event(run, "failed", took, failed[run.index]))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, run) for run in runs]
        try:
            for fut in futures:
                fut.result()
        except KeyboardInterrupt:
            with guard:
                stop.set()
                for proc in running:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
            for fut in futures:
                fut.cancel()
            wait(futures)
            raise
    return failed


def threads_per_run(jobs: int) -> int | None:
    """CPU threads for each of ``jobs`` runs at once (None: one run, all cores)."""
    if jobs <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)
