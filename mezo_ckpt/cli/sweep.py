"""`mezo-ckpt sweep`: a grid of `train` runs over seeds, and the paper's mean (std) table."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import click

from mezo_ckpt.util.text import clean

#: `train` options a sweep sets itself for each run.
_OWN = ("-o", "--output", "--resume", "--overwrite", "--print-config", "--seed", "--data-seed")


def _own_option(args: tuple[str, ...]) -> str | None:
    for a in args:
        name = a.split("=", 1)[0]
        if name in _OWN:
            return name
        if a.startswith("-o") and not a.startswith("--") and len(a) > 2:
            return "-o"
    for a, b in zip(args, args[1:]):
        if a == "--set" and b.split("=", 1)[0].strip().replace("-", "_") in ("seed", "data_seed"):
            return "--set " + b.split("=", 1)[0]
    return None


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


@click.command(
    context_settings={"ignore_unknown_options": True},
    epilog="""\b
Examples:
  mezo-ckpt sweep --grid lr=1e-7,1e-6,1e-5 --seeds 13,21,42,87,100 -o sst2-grid \\
      -c sst2-mlm --model ./roberta-large --k-shot 16      # the paper's k=16 grid
  mezo-ckpt sweep -c sst2-mlm --model ./roberta-large -o grid   # the recipe's own grid
  mezo-ckpt sweep --grid lr=1e-5,3e-5 --seeds 1,2,3 --jobs 2 -o g --steps 200
  mezo-ckpt sweep ... -o g --shard $SLURM_ARRAY_TASK_ID/15      # one run per array task
  mezo-ckpt sweep -o g                               # resume the sweep in g (Ctrl-C, kill)
  mezo-ckpt sweep -o g --table                       # the table of what has finished
  mezo-ckpt sweep -o g --list                        # the runs, their state and commands

\b
Every argument sweep does not know goes to each `mezo-ckpt train` run (after --, or
anywhere). Run the same command again, or just `mezo-ckpt sweep -o DIR`, to resume:
finished runs are skipped, a stopped run resumes from its journal.
""",
)
@click.option(
    "-o",
    "--output",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sweep"),
    show_default=True,
    help="Folder of the sweep: runs/<setting>/seed-<S>.zst (+ .out logs), sweep.json, "
    "table.md, results.json.",
)
@click.option(
    "--grid",
    "grid_items",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="A setting and its values (repeatable: the grid is every combination). Default: "
    "the recipe's `sweep: grid:`.",
)
@click.option(
    "--seeds",
    default=None,
    metavar="S1,S2,...",
    help="Seeds; each sets the run seed and the --k-shot draw (as MeZO's scripts do). "
    "Default: the recipe's `sweep: seeds:`, else MeZO's 13,21,42,87,100.",
)
@click.option(
    "-c",
    "--config",
    "config_file",
    default=None,
    metavar="FILE|NAME",
    help="A recipe for every run (as `train -c`); its `sweep:` section may hold a grid and seeds.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Runs at once (each gets an equal share of the CPU threads).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Only runs I, I+N, I+2N, ... (0-based): spread a sweep over a Slurm array, "
    "torchrun ranks or machines that share the folder.",
)
@click.option("--list", "list_only", is_flag=True, help="List the runs and exit.")
@click.option("--table", "table_only", is_flag=True, help="Only print the table of the runs done.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def sweep(
    root: Path,
    grid_items: tuple[str, ...],
    seeds: str | None,
    config_file: str | None,
    jobs: int,
    shard: str | None,
    list_only: bool,
    table_only: bool,
    as_json: bool,
    train_args: tuple[str, ...],
) -> None:
    """Run a grid of `train` runs over several seeds and print the paper's table.

    Each (setting, seed) is one `mezo-ckpt train` run in its own process, kept as a
    trajectory under -o. The table gives, per setting, the mean (std) over seeds of the
    final dev and test metric and of the test metric before training (zero-shot), and
    marks the setting with the best mean dev metric, which is how MeZO picks what it
    reports.
    """
    from mezo_ckpt.errors import ConfigError
    from mezo_ckpt.trainer import sweep as sw
    from mezo_ckpt.trainer.yaml_files import load_sweep

    train_args = tuple(a for a in train_args if a != "--")
    if table_only and list_only:
        raise ConfigError("--table and --list: pick one")
    if not (grid_items or seeds or config_file or train_args) and (root / sw.MANIFEST).exists():
        stored = sw.read_manifest(root)  # `sweep -o DIR`: that sweep, as it was started
        grid, seed_list, passed = stored["grid"], stored["seeds"], tuple(stored["train_args"])
    else:
        recipe = load_sweep(config_file) if config_file else {}
        grid = sw.parse_grid(grid_items or recipe.get("grid") or {})
        seed_list = sw.parse_seeds(
            seeds if seeds is not None else recipe.get("seeds", sw.PAPER_SEEDS)
        )
        passed = (*(("-c", config_file) if config_file else ()), *train_args)
    own = _own_option(passed)  # typed now, or read back from the folder's sweep.json
    if own is not None:
        raise ConfigError(
            f"{own}: a sweep sets each run's output and seed itself (use -o for the sweep's "
            "folder and --seeds for the seeds)"
        )
    runs = sw.plan(grid, seed_list, root)
    part = sw.parse_shard(shard)
    mine = [r for r in runs if part is None or r.index % part[1] == part[0]]

    if list_only:
        for r in mine:
            state = sw.state_of(r)
            cmd = " ".join(sw.command(r, passed, sw.threads_per_run(jobs), state)[3:])
            click.echo(f"{r.index:4d}  {state:8s}  {r.label}  seed {r.seed}  {r.path}")
            click.echo(f"      mezo-ckpt {cmd}")
        return
    want = {"train_args": list(passed), "grid": grid, "seeds": seed_list}
    sw.check_manifest(root, want, write=False)
    if not table_only:
        _check_runs(runs, passed)  # before anything is written
        sw.check_manifest(root, want, write=True)
        _run(sw, mine, passed, jobs, len(runs))
    outcomes = [sw.outcome(r) for r in runs]
    result = sw.table(outcomes)
    if not table_only:
        sw.write_results(root, result)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        click.echo("\n".join(clean(line) for line in sw.format_table(result).splitlines()))
    failed = [o for o in outcomes if o.state != "done"]
    if failed and not table_only:
        click.echo(
            f"{len(failed)} of {len(runs)} runs are not done; run the same command again to "
            "resume them (their logs: runs/<setting>/seed-<S>.out)",
            err=True,
        )
        sys.exit(1)


def _check_runs(runs, passed: tuple[str, ...]) -> None:
    """Every run's settings resolved before anything starts (a typo in the grid or the
    train arguments fails now, not hours later), by the `train` command's own parser."""
    from mezo_ckpt.cli.train import train

    for r in runs:
        args = [*passed, *(x for item in r.sets() for x in ("--set", item)), "--print-config"]
        with contextlib.redirect_stdout(io.StringIO()):
            ctx = train.make_context("train", args)
            with ctx:
                train.invoke(ctx)


def _run(sw, mine, passed: tuple[str, ...], jobs: int, total: int) -> None:
    t0 = time.monotonic()
    done = [0]

    def say(e) -> None:
        tag = f"[{e.run.index + 1:>{len(str(total))}}/{total}] {e.run.label} seed {e.run.seed}"
        if e.kind == "start":
            click.echo(f"{tag}: {'resuming' if e.detail else 'running'}", err=True)
            return
        done[0] += 1
        if e.kind == "skipped":
            click.echo(f"{tag}: done already", err=True)
            return
        if e.kind == "done":
            o = sw.outcome(e.run)
            score = "" if o.test is None else f", test {o.metric} {100 * o.test:.1f}"
            click.echo(f"{tag}: done in {_duration(e.seconds)}{score}", err=True)
        elif e.kind in ("busy", "stopped"):
            click.echo(f"{tag}: {'skipped, ' if e.kind == 'busy' else ''}{e.detail}", err=True)
        else:
            click.echo(f"{tag}: FAILED after {_duration(e.seconds)}: {clean(e.detail)}", err=True)
        click.echo(
            f"  {done[0]}/{len(mine)} runs of this process, {_duration(time.monotonic() - t0)}",
            err=True,
        )

    try:
        sw.execute(mine, passed, jobs=jobs, threads=sw.threads_per_run(jobs), on_event=say)
    except KeyboardInterrupt:
        click.echo(
            "Interrupted: the runs stopped after their current step; run the same command "
            "again to resume.",
            err=True,
        )
        sys.exit(130)
