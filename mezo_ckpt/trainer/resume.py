"""Resuming (and extending) a run: find its journal, rebuild its settings safely.

``mezo-ckpt train --resume X.zst`` continues the run whose journal is ``X.zst.partial``
(left by a killed or interrupted run) or whose finished file is ``X.zst`` (to extend it
with ``--steps``). The settings come from the file, with two exceptions:

* Anything that names a file to read or write, a repo to fetch, or code to run is never
  taken from the file: a trajectory is data anyone can craft. The file says what the run
  used; the user names it again on the command line (``--train-file ...``), and the data
  is checked against the fingerprints the run recorded.
* A few settings may change on resume (where to log, threads, device, and ``--steps`` to
  extend a run); every other flag must agree with the file, or resume refuses and says
  which setting differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import ConfigError, DataError, TrajectoryNotFoundError
from mezo_ckpt.trainer.config import TrainConfig, coerce, parse_set, unknown_setting
from mezo_ckpt.trainer.yaml_files import load_yaml
from mezo_ckpt.trajectory import Trajectory, TrajectoryWriter, read_trajectory
from mezo_ckpt.trajectory.journal import rewrite_journal
from mezo_ckpt.util.fsutil import os_errors

JOURNAL_SUFFIX = ".partial"
_DEFAULTS = TrainConfig().to_dict()
#: Schedules whose learning rate at a step does not depend on the number of steps.
EXTENSIBLE_SCHEDULES = ("constant",)


def paths_for(target: str | Path) -> tuple[Path, Path]:
    """(output, journal) of the run named by ``target`` (either of the two)."""
    p = Path(target)
    if p.name.endswith(JOURNAL_SUFFIX):
        p = p.with_name(p.name[: -len(JOURNAL_SUFFIX)])
    return p, p.with_name(p.name + JOURNAL_SUFFIX)


def locate(target: str | Path) -> tuple[Path, Path, Path]:
    """(output, journal, the file to resume from): the journal when there is one (it
    holds at least as many steps), else the finished file.

    Raises:
        TrajectoryNotFoundError: neither exists.
    """
    out, journal = paths_for(target)
    if journal.exists():
        return out, journal, journal
    if out.exists():
        return out, journal, out
    raise TrajectoryNotFoundError(
        f"nothing to resume: neither {out} nor its journal {journal.name} exists"
    )


def _stored(traj: Trajectory) -> dict[str, Any]:
    known = set(TrainConfig.fields())
    return {k: v for k, v in traj.header.config.items() if k in known}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def resume_config(
    target: str | Path,
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    yaml_path: str | Path | None = None,
) -> tuple[TrainConfig, Trajectory, list[str]]:
    """The config to resume ``target`` with, the trajectory read, and notes to show.

    Args:
        flags: settings given on the command line (None: not given).
        sets: ``--set key=value`` items; ``yaml_path``: a recipe (same rules as flags).

    Raises:
        ConfigError: a path, repo or objective the run used is not named again; a setting
            that cannot change differs; ``--steps`` cannot extend this run.
        TrajectoryNotFoundError, TrajectoryFormatError: nothing readable to resume.
    """
    out, journal, src = locate(target)
    traj = read_trajectory(src, allow_truncated_tail=True)
    stored = _stored(traj)
    given: dict[str, tuple[Any, str]] = {}
    if yaml_path:
        data, lines = load_yaml(yaml_path)
        for k, v in data.items():
            given[k] = (v, f"{yaml_path}:{lines.get(k, '?')}")
    for k, v in (flags or {}).items():
        if v is not None:
            given[k] = (v, _flag(k))
    for item in sets:
        k, v = parse_set(item)
        given[k] = (v, f"--set {item}")
    values: dict[str, Any] = {}
    for k, (v, src_name) in given.items():
        if k not in TrainConfig.fields():
            raise unknown_setting(k, src_name)
        values[k] = coerce(k, v, src_name)
    notes: list[str] = []
    missing: list[str] = []
    merged: dict[str, Any] = dict(stored)
    for name in TrainConfig.fields():
        opt = TrainConfig.option(name)
        was = stored.get(name)
        now = values.get(name)
        untrusted = opt.trust is not None or (
            name == "objective" and isinstance(was, str) and was.startswith("python:")
        )
        if untrusted:
            merged[name] = now if name in values else _DEFAULTS[name]
            if was is not None and was != _DEFAULTS[name] and name not in values:
                if name == "report_to":
                    notes.append(f"the run reported to {was}; pass --report-to {was} to go on")
                elif name in ("log_file", "save_model"):
                    what = (
                        "the log goes next to the trajectory"
                        if name == "log_file"
                        else ("the trained weights are not saved")
                    )
                    notes.append(f"the run used {_flag(name)} {was}; not given now, so {what}")
                else:
                    missing.append(f"{_flag(name)} {_shown(was)}")
            elif name == "objective" and was != now:
                raise ConfigError(f"--objective cannot change on resume (the run used {was!r})")
            continue
        if name not in values or values[name] == was:
            continue
        if name == "steps":
            continue  # checked below
        if not opt.on_resume:
            raise ConfigError(
                f"{given[name][1]}: {name} cannot change when resuming (the run used "
                f"{name}={_shown(was)!r}); start a new run with -o NEW.zst to change it"
            )
        merged[name] = values[name]
    if missing:
        raise ConfigError(
            "resuming needs the paths, repos and code the run used, named again on the command "
            "line (a trajectory never makes mezo-ckpt read, write, fetch or run anything by "
            f"itself). The run used: {' '.join(missing)}. Continue with:\n  mezo-ckpt train "
            f"--resume {out} {' '.join(missing)}"
        )
    merged["output"] = str(out)
    steps = values.get("steps", traj.header.total_steps)
    if steps < traj.num_steps:
        raise ConfigError(
            f"--steps {steps}: the run already recorded {traj.num_steps} steps; a run can "
            "grow, not shrink (replay any earlier step with `mezo-ckpt replay --step N`)"
        )
    if steps != traj.header.total_steps:
        schedule = stored.get("schedule", "constant")
        if schedule not in EXTENSIBLE_SCHEDULES:
            raise ConfigError(
                f"--steps {steps}: this run's {schedule} schedule depends on the number of "
                f"steps (it was {traj.header.total_steps}), so extending it would change the "
                "learning rate of the steps already recorded; start a new run instead"
            )
        if steps < traj.header.total_steps:
            notes.append(
                f"the run will now stop at step {steps} (it was to run {traj.header.total_steps})"
            )
        else:
            notes.append(f"extending the run from {traj.header.total_steps} to {steps} steps")
    merged["steps"] = steps
    try:
        cfg = TrainConfig.from_dict(merged, where=f"{src} (stored settings)")
    except ConfigError as e:
        raise ConfigError(f"cannot resume {src}: {e}") from None
    return cfg, traj, notes


def open_resumed(run: Any) -> None:
    """Reopen the journal of ``run`` (a :class:`~mezo_ckpt.trainer.recipe.MezoRecipe`),
    check its data and whole base against the file, attach the run's adapter, and extend
    the header when more steps are asked for.

    Raises:
        DataError, BaseMismatchError, ConfigError: the data, base or request differ.
    """
    from mezo_ckpt.models.adapters import prepare
    from mezo_ckpt.models.base import verify_base
    from mezo_ckpt.trainer.outputs import FollowerWriter

    cfg = run.cfg
    assert run.dist is not None
    src = run.journal if run.journal.exists() else run.out
    if run.main:
        if src == run.out:  # a finished (or interrupted and compacted) file: journal again
            with os_errors(run.journal, "write"):
                run.journal.write_bytes(run.out.read_bytes())
        writer, traj = TrajectoryWriter.open_for_resume(run.journal, fsync=cfg.fsync)
    if run.dist.active:  # every rank replays rank 0's journal
        from mezo_ckpt.trajectory import parse_trajectory

        data = run.dist.broadcast_bytes(
            run.journal.read_bytes()[: traj.valid_length] if run.main else None
        )
        traj = parse_trajectory(data, allow_truncated_tail=True)
        if not run.main:
            writer = FollowerWriter(traj.num_steps)
    h = traj.header
    try:
        if h.records.history != cfg.history_window:  # a crafted or edited header
            raise ConfigError(
                f"cannot resume {src}: its records carry a momentum window of "
                f"{h.records.history} steps but its settings ask for {cfg.history_window} "
                "(momentum / momentum_window disagree with the records)"
            )
        stored = h.config.get("data") or {}
        now = run.data_info
        for key in sorted(set(stored) | set(now)):
            if key.endswith("_sha256") and stored.get(key) != now.get(key):
                raise DataError(
                    f"cannot resume {src}: the {key.removesuffix('_sha256')} data differs "
                    "from what the run trained on (its fingerprint changed); pass the same "
                    "files, columns and example limits"
                )
        world = h.config.get("world")
        if isinstance(world, int) and not isinstance(world, bool) and world != run.dist.world:
            note = (
                f"the run used {world} data-parallel rank(s) and continues with "
                f"{run.dist.world}: the steps from here on differ from what {world} "
                "rank(s) would record (the file still replays exactly)"
            )
            run.notes.append(note)
            run._log(f"Note: {note}")
        check = verify_base(h, run.model, offered=run.loaded, values=run.offload)
        run.notes.append("base checked: " + check.summary())
        run.model = prepare(h, run.model)
        run.peft_kind = h.peft.type if h.peft is not None else None
    except BaseException:
        writer.close()
        if run.main and src == run.out:  # the copy made above: nothing was resumed
            with contextlib.suppress(OSError):
                run.journal.unlink()
        raise
    run.writer = writer
    run.header = h
    run.traj = traj
    run.evaluations = list(traj.evaluations)
    run.checkpoints = dict(traj.checkpoints)
    run.start = traj.num_steps
    if cfg.steps != h.total_steps:
        extend(run, traj, cfg.steps)
    elif src == run.out and traj.complete and run.start == h.total_steps:
        # a finished file (a journal at its last step still needs its final
        # evaluations and compaction: finish() does them)
        run.writer.close()
        if run.main:
            with os_errors(run.journal, "remove"):
                run.journal.unlink()
        raise ConfigError(
            f"{run.out} is already complete ({traj.num_steps}/{h.total_steps} steps); "
            f"extend it with --resume {run.out} --steps N (N > {h.total_steps})"
        )
    run.message(f"Resuming {run.out} at step {run.start}/{run.header.total_steps}")


def extend(run: Any, traj: Trajectory, steps: int) -> None:
    """Rewrite the journal under a header with the new number of steps (the records,
    evaluations and fingerprints carry over, re-bound to the new header)."""
    if not run.main:
        run.header = run.header.with_(total_steps=steps)
        return
    cfg_json = dict(run.header.config)
    cfg_json["steps"] = steps
    history = list(cfg_json.get("extended_from") or [])
    history.append({"total_steps": run.header.total_steps, "recorded": traj.num_steps})
    cfg_json["extended_from"] = history
    header = run.header.with_(total_steps=steps, config=cfg_json)
    assert run.writer is not None
    run.writer.close()
    writer, traj2 = rewrite_journal(run.journal, traj, header, fsync=run.cfg.fsync)
    run.writer, run.header, run.traj = writer, traj2.header, traj2
    run.evaluations = list(traj2.evaluations)


def eval_plan(cfg: TrainConfig, splits: Mapping[str, Any], upto: int) -> list[tuple[int, str]]:
    """(step, split) evaluations a run of this config makes at or before ``upto``."""
    plan = [(0, "dev")] + ([(0, "test")] if cfg.eval_test else [])
    if cfg.eval_every:
        plan += [(s, "dev") for s in range(cfg.eval_every, cfg.steps, cfg.eval_every)]
    return [(s, sp) for s, sp in plan if s <= upto and sp in splits]


def redo_missing(run: Any, upto: int) -> None:
    """Replay the resumed steps onto the base, stopping where an evaluation or a
    checkpoint is missing (a kill between a step and its evaluation) to make it, and
    checking every recorded fingerprint on the way."""
    from mezo_ckpt.rebuild.inplace import catch_up

    done = {(e.step, e.split) for e in run.evaluations}
    plan = eval_plan(run.cfg, run.splits, upto)

    def at_stop(s: int) -> None:
        missing = [sp for st, sp in plan if st == s and (st, sp) not in done]
        if missing:
            run.message(f"Redoing what the interrupted run left out at step {s}")
            run.run_eval(s, missing)

    catch_up(run.traj, run.params, upto, stops=[s for s, _ in plan], at_stop=at_stop)
