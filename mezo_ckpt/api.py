"""High-level operations behind the CLI and the Python API (no click here)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mezo_ckpt.errors import ModelLoadError, OutputError
from mezo_ckpt.format import FLAG_SKIPPED, Trajectory, read_trajectory
from mezo_ckpt.fsutil import check_output, same_path
from mezo_ckpt.hashing import canonical_parameters, file_sha256
from mezo_ckpt.runtime import quiet_progress, set_threads

#: Output formats of `replay` and the kind of path each writes.
OUTPUT_KINDS = {"hf": "folder", "safetensors": "file", "delta": "file"}


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


def load_base_for(traj: Trajectory, base: str | None = None, *, device: str = "cpu"):
    """Load the trajectory's base (or the one given) in the trajectory's dtype."""
    from mezo_ckpt.base import load_base

    b = traj.header.base
    if base is None:
        spec, revision = base_spec_from_header(traj)
    else:
        spec, revision = base, None
        if b.kind == "hub" and base == b.repo_id:
            revision = b.revision
    return load_base(spec, dtype=b.dtype, device=device, revision=revision)


def default_output(trajectory: Path, step: int, fmt: str) -> Path:
    stem = trajectory.name.removesuffix(".zst").removesuffix(".partial")
    suffix = {"hf": "", "safetensors": ".safetensors", "delta": "-delta.safetensors"}[fmt]
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
) -> dict[str, Any]:
    """Replay a trajectory file onto its base and write the weights (see `mezo-ckpt replay`).

    Everything that can be checked before the work is: the file, the step (and that a
    checkpoint covers it), the output path (not an input, writable, not existing unless
    ``overwrite``); then the base is loaded and its whole identity checked before a weight
    is touched.
    """
    from tqdm.auto import tqdm

    from mezo_ckpt.base import verify_base
    from mezo_ckpt.export import (
        DELTA_RULE,
        delta_tensors,
        export_hf,
        export_safetensors,
        provenance,
        state_dict_tensors,
    )
    from mezo_ckpt.replay import check_verifiable, element_steps, replay_model, resolve_step

    if fmt not in OUTPUT_KINDS:
        raise OutputError(f"unknown output format {fmt!r}; use {', '.join(OUTPUT_KINDS)}")
    set_threads(threads)
    path = Path(trajectory)
    traj = read_trajectory(path)
    target = resolve_step(traj, step)
    check_verifiable(traj, target, allow_unverified=allow_unverified)
    out = Path(output) if output is not None else default_output(path, target, fmt)
    inputs: list[Path] = [path]
    if base is not None and Path(os.path.expanduser(base)).exists():
        inputs.append(Path(os.path.expanduser(base)))
    check_output(out, kind=OUTPUT_KINDS[fmt], overwrite=overwrite, inputs=inputs)
    with quiet_progress(progress):
        loaded = load_base_for(traj, base)
    if loaded.folder is not None and (
        same_path(out, loaded.folder) or out.resolve().is_relative_to(loaded.folder.resolve())
    ):
        raise OutputError(f"-o {out} would write into the base model folder {loaded.folder}")
    model = loaded.model
    check = verify_base(traj.header, model, offered=loaded, allow_mismatch=ignore_base_mismatch)
    if check.overridden:
        warnings.warn(
            "replaying onto a base that differs from the trajectory's (--ignore-base-mismatch):\n"
            + "\n".join(f"  - {d}" for d in check.overridden),
            stacklevel=2,
        )
    params = canonical_parameters(model)
    trainable = list(traj.header.trainable)
    before = {n: params[n].detach().clone() for n in trainable} if fmt == "delta" else None
    total = element_steps(traj, model, target)
    with tqdm(
        total=total,
        unit="el-step",
        unit_scale=True,
        desc="replay",
        disable=not progress,
        leave=False,
    ) as bar:
        report = replay_model(
            traj,
            model,
            step=target,
            verify=verify,
            check_base=False,
            allow_unverified=allow_unverified,
            progress=bar.update,
        )
    meta = provenance(
        traj,
        target,
        file_sha256(path),
        verified=report.verified,
        checked=check.checked,
        base_mismatch=check.overridden or None,
    )
    if fmt == "hf":
        export_hf(model, out, tokenizer_from=loaded.folder, meta=meta, replace=overwrite)
    elif fmt == "safetensors":
        export_safetensors(state_dict_tensors(model), out, {**meta, "kind": "weights"})
    else:
        assert before is not None
        delta, fixes = delta_tensors(before, dict(params), trainable)
        meta.update(kind="delta", rule=DELTA_RULE, exact=True, fixed_elements=fixes)
        export_safetensors(delta, out, meta)
    return {
        "trajectory": str(path),
        "step": target,
        "applied_steps": report.applied_steps,
        "element_steps": report.element_steps,
        "seconds": report.seconds,
        "rate": report.rate if math.isfinite(report.rate) else 0.0,
        "verified": report.verified,
        "verification": report.describe(),
        "checked": check.checked,
        "base_mismatch": check.overridden,
        "fingerprint": report.fingerprint,
        "format": fmt,
        "output": str(out),
    }


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
    from mezo_ckpt.replay import best_step

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
    if h.base.tensors is not None:
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
