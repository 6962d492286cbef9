"""High-level operations behind the CLI and the Python API (no click here)."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mezo_ckpt.core.hashing import file_sha256
from mezo_ckpt.errors import ModelLoadError, OutputError
from mezo_ckpt.trajectory import FLAG_SKIPPED, Trajectory, read_trajectory
from mezo_ckpt.util.fsutil import check_output, is_inside
from mezo_ckpt.util.runtime import quiet_progress, set_threads

#: Output formats of `replay` and the kind of path each writes.
OUTPUT_KINDS = {"hf": "folder", "safetensors": "file", "delta": "file", "peft": "folder"}


def base_spec_from_header(traj: Trajectory) -> tuple[str | None, str | None]:
    """(spec, revision) to load the base a trajectory names, or raise if it must be given."""
    b = traj.header.base
    if b.kind == "embedded":
        return None, None
    if b.kind == "hub":
        return b.repo_id, b.revision
    hint = f" (it was {b.repo_id})" if b.repo_id else ""
    raise ModelLoadError(
        "this trajectory was trained from a local base folder"
        + hint
        + "; pass it with --base PATH (its identity is checked)"
    )


def _base_spec(traj: Trajectory, base: str | None) -> tuple[str | None, str | None]:
    b = traj.header.base
    if base is None:
        return base_spec_from_header(traj)
    if b.kind == "hub" and base == b.repo_id:
        return base, b.revision
    return base, None


def load_base_for(traj: Trajectory, base: str | None = None, *, device: str = "cpu"):
    """Load the trajectory's base (or the one given) in the trajectory's dtype. A base
    named by the trajectory is fetched from the Hub, never looked up as a local path."""
    from mezo_ckpt.models.base import load_base

    spec, revision = _base_spec(traj, base)
    return load_base(
        spec,
        dtype=traj.header.base.dtype,
        device=device,
        revision=revision,
        hub_only=base is None,
    )


def default_output(trajectory: Path, step: int, fmt: str) -> Path:
    stem = trajectory.name.removesuffix(".partial").removesuffix(".zst")
    suffix = {
        "hf": "",
        "safetensors": ".safetensors",
        "delta": "-delta.safetensors",
        "peft": "-adapter",
    }[fmt]
    return trajectory.with_name(f"{stem}-step{step}{suffix}")


def replay_to(
    trajectory: str | os.PathLike,
    *,
    base: str | None = None,
    step: int | str | None = None,
    output: str | os.PathLike | None = None,
    fmt: str = "hf",
    overwrite: bool = False,
    ignore_base_mismatch: bool = False,
    allow_unverified: bool = False,
    verify: bool = True,
    threads: int | None = None,
    progress: bool = True,
    stream: bool | None = None,
) -> dict[str, Any]:
    """Replay a trajectory file onto its base and write the weights (see `mezo-ckpt replay`).

    ``stream``: replay an ``hf`` output shard by shard (peak memory: about one tensor)
    instead of loading the whole base; None decides by size
    (:func:`mezo_ckpt.rebuild.sources.should_stream`).

    Everything that can be checked before the work is: the file, the step (and that a
    checkpoint covers it), the output path (not an input, writable, not existing unless
    ``overwrite``); then the base's whole identity is checked before a weight is touched.
    """
    from mezo_ckpt import rebuild as rb

    if fmt not in OUTPUT_KINDS:
        raise OutputError(f"unknown output format {fmt!r}; use {', '.join(OUTPUT_KINDS)}")
    set_threads(threads)
    path = Path(trajectory)
    traj = read_trajectory(path)
    check_format(traj, fmt)
    plan = rb.Plan.make(traj, step, verify=verify, allow_unverified=allow_unverified, path=path)
    out = Path(output) if output is not None else default_output(path, plan.step, fmt)
    inputs: list[Path] = [path]
    if base is not None and Path(os.path.expanduser(base)).exists():
        inputs.append(Path(os.path.expanduser(base)))
    check_output(out, kind=OUTPUT_KINDS[fmt], overwrite=overwrite, inputs=inputs)
    plan = dataclasses.replace(plan, sha256=file_sha256(path))
    source = open_source(
        traj,
        base,
        fmt=fmt,
        stream=stream,
        progress=progress,
        ignore_base_mismatch=ignore_base_mismatch,
    )
    if source.folder is not None and is_inside(out, source.folder):
        raise OutputError(f"-o {out} would write into the base model folder {source.folder}")
    sinks = {
        "hf": rb.ShardSink if source.streams else rb.HfFolderSink,
        "safetensors": rb.SafetensorsSink,
        "delta": rb.DeltaSink,
        "peft": rb.PeftSink,
    }
    done = rb.rebuild(
        plan,
        source,
        sinks[fmt](out, replace=overwrite),
        ignore_base_mismatch=ignore_base_mismatch,
        progress=progress,
        desc="replay (streaming)" if source.streams else "replay",
    )
    if done.check.overridden:
        from mezo_ckpt.util.text import clean

        warnings.warn(
            "replaying onto a base that differs from the trajectory's (--ignore-base-mismatch):\n"
            + "\n".join(f"  - {clean(d)}" for d in done.check.overridden),
            stacklevel=2,
        )
    return {
        "trajectory": str(path),
        "step": plan.step,
        "applied_steps": len(plan.batch),
        "element_steps": done.element_steps,
        "seconds": done.seconds,
        "rate": done.rate,
        "verified": done.verdict.verified,
        "verification": done.verdict.describe(),
        "checked": done.check.checked,
        "base_mismatch": done.check.overridden,
        "fingerprint": done.verdict.fingerprint,
        "format": fmt,
        "output": str(out),
        "streamed": done.streamed,
    }


def check_format(traj: Trajectory, fmt: str) -> None:
    """Refuse an output format the run cannot have, before any work.

    Raises:
        OutputError: saying which format to use instead.
    """
    peft = traj.header.peft
    if peft is not None and peft.type == "prefix" and fmt != "peft":
        raise OutputError(
            "a prefix-tuning run has no merged weights (its virtual tokens are extra inputs, "
            "not a change to any weight): use --format peft and load it with peft"
        )
    if peft is not None and fmt in ("safetensors", "delta"):
        raise OutputError(
            f"this is a parameter-efficient ({peft.type}) run: use --format peft "
            "(the adapter folder) or --format hf (the base with the adapter merged)"
        )
    if peft is None and fmt == "peft":
        raise OutputError(
            "--format peft is for parameter-efficient runs; this run trains the model"
        )


def open_source(
    traj: Trajectory,
    base: str | None,
    *,
    fmt: str = "hf",
    stream: bool | None = None,
    progress: bool = True,
    ignore_base_mismatch: bool = False,
):
    """The base of a rebuild: streamed from its folder (an hf output of a full-parameter
    run, when asked or when the weights would not fit in half the free memory) or loaded.
    A base named by the trajectory is fetched from the Hub, never looked up as a path."""
    from mezo_ckpt.rebuild import FolderStream, ModelSource, StateSource
    from mezo_ckpt.rebuild.sources import should_stream

    state_file = _state_file(base)
    if state_file is not None:
        if fmt not in ("safetensors", "delta"):
            raise OutputError(
                f"--base {base} is a weights file (a state dict), not a model folder: use "
                "--format safetensors (or delta); an hf folder needs the model's config"
            )
        return StateSource.from_file(state_file)
    streamable = fmt == "hf" and traj.header.peft is None and not ignore_base_mismatch
    if streamable and stream is not False:
        from mezo_ckpt.models.base import locate_base

        spec, revision = _base_spec(traj, base)
        with quiet_progress(progress):
            where = locate_base(spec, revision=revision, progress=progress, hub_only=base is None)
        if any(where.folder.glob("*.safetensors")) and should_stream(where.folder, stream):
            return FolderStream(where.folder)
    if stream and not streamable:
        raise OutputError(
            "--stream writes an hf folder of a full-parameter run from a checked base "
            "(not with --ignore-base-mismatch, --format "
            f"{fmt}{' or a LoRA/prefix run' if traj.header.peft is not None else ''})"
        )
    with quiet_progress(progress):
        loaded = load_base_for(traj, base)
    return ModelSource.of(loaded)


def _state_file(base: Any) -> Path | None:
    """The path of ``base`` when it names one safetensors file (a state dict)."""
    if not isinstance(base, (str, os.PathLike)):
        return None
    p = Path(os.path.expanduser(base))
    return p if p.is_file() and p.suffix == ".safetensors" else None


def _stats(x: np.ndarray) -> dict[str, float] | None:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    return {
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "abs_mean": float(np.abs(x).mean()),
    }


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Everything `mezo-ckpt info` shows, as plain data."""
    from mezo_ckpt.errors import StepOutOfRangeError
    from mezo_ckpt.trajectory.steps import best_step

    p = Path(path)
    traj = read_trajectory(p)
    h = traj.header
    size = traj.valid_length
    rec = traj.records
    skipped = int(np.count_nonzero(rec.flags & FLAG_SKIPPED))
    try:
        best: int | None = best_step(traj)
    except StepOutOfRangeError:
        best = None
    base = h.base.to_json()
    base.pop("tensors", None)
    files = base.pop("files", {})
    trainable_elements = None
    if h.base.tensors is not None and h.peft is None:  # adapter tensors are not the base's
        sizes = {t.name: math.prod(t.shape) for t in h.base.tensors}
        trainable_elements = sum(sizes.get(n, 0) for n in h.trainable)
    state = "complete" if traj.complete else "incomplete"
    if traj.bound and not traj.sealed:
        state = "cut"
    return {
        "file": str(p),
        "bytes": size,
        "format_version": f"{traj.version[0]}.{traj.version[1]}",
        "tool": h.tool.to_json(),
        "base": base,
        "base_files": files,
        "trainable_tensors": len(h.trainable),
        "trainable_elements": trainable_elements,
        "adapter": h.peft.type if h.peft is not None else None,
        "perturbation": h.perturbation.to_json(),
        "update": {k: v for k, v in h.update.to_json().items() if k != "decay_params"},
        "optimizer": h.optimizer.to_json(),
        "steps": traj.num_steps,
        "total_steps": traj.total_steps,
        "complete": traj.complete,
        "state": state,
        "bound": traj.bound,
        "last_verified_step": traj.sealed_step,
        "skipped_steps": skipped,
        "bytes_per_step": size / traj.num_steps if traj.num_steps else None,
        "coefficients": _stats(rec.coefs.reshape(-1)),
        "losses": _stats(rec.losses.reshape(-1)) if rec.losses is not None else None,
        "evaluations": [e.as_json() for e in traj.evaluations],
        "best_step": best,
        "checkpoints": {str(k): v for k, v in sorted(traj.checkpoints.items())},
        "config": dict(h.config),
    }


# ----------------------------------------------------------------------------- deltas


def apply_delta_file(
    delta: str | os.PathLike,
    output: str | os.PathLike,
    *,
    base: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Base + an exact delta (``replay --format delta``) -> a from_pretrained folder.

    The base's whole identity (every tensor, config, tokenizer) is checked against the one
    the delta records before it is patched, and the result against the tuned fingerprint.

    Raises:
        DeltaError: a malformed delta, or one that records nothing to verify against.
        BaseMismatchError: the base is not the one the delta was made from.
        VerificationError: the patched weights miss the delta's fingerprint.
    """
    from mezo_ckpt import rebuild as rb
    from mezo_ckpt.models.base import load_base
    from mezo_ckpt.models.export import load_delta
    from mezo_ckpt.trajectory.header import is_repo_id

    path = Path(delta)
    tensors, prov = load_delta(path)
    edit = rb.DeltaEdit.from_file(tensors, prov, str(path))
    inputs: list[Path] = [path]
    if base is not None and Path(os.path.expanduser(base)).exists():
        inputs.append(Path(os.path.expanduser(base)))
    check_output(output, kind="folder", overwrite=overwrite, inputs=inputs)
    b = prov["base"]
    if base is None:
        if b.get("kind") == "embedded":
            spec, revision = None, None
        elif b.get("kind") == "hub" and isinstance(b.get("repo_id"), str):
            spec, revision = b["repo_id"], b.get("revision")
            if not is_repo_id(spec) or not (revision is None or isinstance(revision, str)):
                raise ModelLoadError(f"the delta names an invalid base repo {str(spec)[:80]!r}")
        else:
            raise ModelLoadError(
                "this delta was made from a local base folder: pass it with --base PATH"
            )
    else:
        spec, revision = base, None
    dtype = b.get("dtype") if b.get("dtype") in ("float32", "bfloat16", "float16") else None
    if dtype is None:
        raise ModelLoadError(f"{path}: the delta names no usable base dtype")
    with quiet_progress(progress):
        loaded = load_base(spec, dtype=dtype, revision=revision, hub_only=base is None)
    if loaded.folder is not None and is_inside(output, loaded.folder):
        raise OutputError(f"-o {output} would write into the base model folder {loaded.folder}")
    done = rb.rebuild(
        edit,
        rb.ModelSource.of(loaded),
        rb.HfFolderSink(Path(output), replace=overwrite, verified="fingerprint"),
        progress=progress,
        desc="apply-delta",
    )
    return {
        "delta": str(path),
        "output": str(output),
        "tensors": len(edit.trained),
        "step": edit.step,
        "verified": done.verdict.verified,
        "verification": done.verdict.describe(),
        "checked": done.check.checked,
    }


# ----------------------------------------------------------------------------- diff


def diff_trajectories(
    a: str | os.PathLike,
    b: str | os.PathLike | None = None,
    *,
    step_a: int | str | None = None,
    step_b: int | str | None = None,
    base: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-tensor and per-layer change between two steps of a trajectory, or between two
    trajectories on the same base, rebuilt through the same pipeline as ``replay`` (the
    whole base checked, adapters prepared, each state's fingerprint verified where the
    file records one). Memory: one base model plus two copies of the tensor compared.
    """
    from mezo_ckpt import rebuild as rb

    ta = read_trajectory(a)
    tb = read_trajectory(b) if b is not None else ta
    if b is None:
        pa = rb.Plan.make(ta, 0 if step_a is None else step_a)
    else:
        pa = rb.Plan.make(ta, step_a)
    pb = rb.Plan.make(tb, step_b)
    if b is not None:
        from mezo_ckpt.errors import BaseMismatchError
        from mezo_ckpt.models.base import diff_identities

        differs, _ = diff_identities(ta.header.base, tb.header.base)
        if differs:  # known from the two headers, before any base is loaded
            raise BaseMismatchError(
                "the two trajectories were not trained from the same base", differs
            )
    state_file = _state_file(base)
    if state_file is not None:  # the initial weights of a plain module's run
        source: Any = rb.StateSource.from_file(state_file)
    else:
        with quiet_progress(progress):
            source = rb.ModelSource.of(load_base_for(ta, base))
    done = rb.rebuild([pa, pb], source, rb.DiffSink(), progress=progress, desc="diff")
    return {
        "a": {"trajectory": str(a), "step": pa.step, "verified": done.verdicts[0].verified},
        "b": {
            "trajectory": str(b if b is not None else a),
            "step": pb.step,
            "verified": done.verdicts[1].verified,
        },
        "checked": done.check.checked,
        **done.output,
    }


# ----------------------------------------------------------------------------- python


def replay_model_from(
    trajectory: str | os.PathLike,
    base: Any = None,
    *,
    step: int | str | None = None,
    allow_unverified: bool = False,
    progress: bool = False,
):
    """``mezo_ckpt.replay``: the fine-tuned model a trajectory rebuilds, in memory.

    Args:
        trajectory: the trajectory file.
        base: None (the base the trajectory names: the embedded default or its Hub repo at
            the pinned commit), a local folder or Hub repo id, an already loaded
            ``torch.nn.Module`` (changed in place: pass a copy to keep the original), or
            the initial weights as a state dict or a ``.safetensors`` file (what a
            :class:`mezo_ckpt.MeZO` loop over a plain module replays onto; never changed).
        step: None (last), "best", or N.
        allow_unverified: allow a step after the file's last checkpoint.

    Returns:
        The rebuilt model (a ``peft.PeftModel`` for a LoRA/prefix run), with
        ``model.mezo_ckpt`` saying which step and what was verified; for a state dict or
        a safetensors file, the rebuilt state dict (load it with
        ``module.load_state_dict``).

    Raises:
        BaseMismatchError: the base is not the trajectory's (nothing is changed).
        VerificationError, StepOutOfRangeError, UnverifiedStepError, TrajectoryError.
    """
    import torch

    from mezo_ckpt import rebuild as rb

    path = Path(trajectory)
    traj = read_trajectory(path)
    plan = rb.Plan.make(traj, step, allow_unverified=allow_unverified, path=path)
    if isinstance(base, torch.nn.Module):
        source: Any = rb.ModelSource(base)
    elif isinstance(base, Mapping):
        source = rb.StateSource(base)
    elif (state_file := _state_file(base)) is not None:
        source = rb.StateSource.from_file(state_file)
    elif base is None or isinstance(base, (str, os.PathLike)):
        with quiet_progress(progress):
            source = rb.ModelSource.of(load_base_for(traj, None if base is None else str(base)))
    else:
        raise TypeError(
            f"base must be None, a folder, a Hub repo id, a safetensors file, a state dict "
            "or a torch.nn.Module, not "
            f"{type(base).__name__}"
        )
    with torch.no_grad():
        done = rb.rebuild(plan, source, rb.ModelSink(), progress=progress)
    model = done.output
    info = {
        "trajectory": str(path),
        "step": plan.step,
        "verified": done.verdict.verified,
        "verification": done.verdict.describe(),
        "checked": done.check.checked,
    }
    if isinstance(model, dict):  # a state dict in, a state dict out
        return model
    model.mezo_ckpt = info
    return model
