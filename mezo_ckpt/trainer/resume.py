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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import ConfigError, TrajectoryNotFoundError
from mezo_ckpt.format import Trajectory, read_trajectory
from mezo_ckpt.trainer.config import TrainConfig, coerce, load_yaml, parse_set, unknown_setting

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
    *,
    in_memory: bool = False,
) -> tuple[TrainConfig, Trajectory, list[str]]:
    """The config to resume ``target`` with, the trajectory read, and notes to show.

    Args:
        flags: settings given on the command line (None: not given).
        sets: ``--set key=value`` items; ``yaml_path``: a recipe (same rules as flags).
        in_memory: the caller passes the examples again (``train(resume=..., data=...)``);
            their fingerprints must match the run's.

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
        if steps < traj.header.total_steps and traj.num_steps < traj.header.total_steps:
            notes.append(f"the run will now stop at step {steps}")
        notes.append(f"extending the run from {traj.header.total_steps} to {steps} steps")
    merged["steps"] = steps
    try:
        cfg = TrainConfig.from_dict(merged, where=f"{src} (stored settings)", in_memory=in_memory)
    except ConfigError as e:
        raise ConfigError(f"cannot resume {src}: {e}") from None
    return cfg, traj, notes
