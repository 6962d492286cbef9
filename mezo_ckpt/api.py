"""High-level operations behind the CLI and the Python API (no click here)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mezo_ckpt.errors import ModelLoadError
from mezo_ckpt.format import FLAG_SKIPPED, Trajectory, read_trajectory
from mezo_ckpt.hashing import canonical_parameters, file_sha256


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and the compiled kernels (None: all cores)."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass


def base_spec_from_header(header: dict) -> tuple[str | None, str | None]:
    """(spec, revision) to load the base a trajectory names, or raise if it must be given."""
    b = header["base"]
    if b["kind"] == "embedded":
        return None, None
    if b["kind"] == "hub":
        return b["repo_id"], b.get("revision")
    hint = f" (it was {b['repo_id']})" if b.get("repo_id") else ""
    raise ModelLoadError(
        "this trajectory was trained from a local base folder"
        + hint
        + "; pass it with --base PATH (its identity is checked)"
    )


def load_base_for(traj: Trajectory, base: str | None = None, *, device: str = "cpu"):
    """Load the trajectory's base (or the one given) in the trajectory's dtype."""
    from mezo_ckpt.base import load_base

    if base is None:
        spec, revision = base_spec_from_header(traj.header)
    else:
        spec, revision = base, None
        if traj.header["base"]["kind"] == "hub" and base == traj.header["base"]["repo_id"]:
            revision = traj.header["base"].get("revision")
    return load_base(spec, dtype=traj.header["base"]["dtype"], device=device, revision=revision)


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
    check_base: bool = True,
    verify: bool = True,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Replay a trajectory file onto its base and write the weights (see `mezo-ckpt replay`)."""
    from tqdm.auto import tqdm

    from mezo_ckpt.base import verify_base
    from mezo_ckpt.replay import (
        delta_tensors,
        element_steps,
        export_hf,
        export_safetensors,
        provenance,
        replay_model,
        resolve_step,
    )

    set_threads(threads)
    path = Path(trajectory)
    traj = read_trajectory(path)
    target = resolve_step(traj, step)
    loaded = load_base_for(traj, base)
    model = loaded.model
    if check_base:
        verify_base(traj.header, model, offered=loaded)
    params = canonical_parameters(model)
    trainable = traj.header["trainable"]
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
            traj, model, step=target, verify=verify, check_base=False, progress=bar.update
        )
    meta = provenance(traj, target, file_sha256(path))
    out = Path(output) if output is not None else default_output(path, target, fmt)
    if fmt == "hf":
        export_hf(model, out, tokenizer_from=loaded.folder, meta=meta)
    elif fmt == "safetensors":
        export_safetensors(dict(params), out, meta)
    else:
        assert before is not None
        export_safetensors(delta_tensors(before, dict(params), trainable), out, meta)
    return {
        "trajectory": str(path),
        "step": target,
        "applied_steps": report.applied_steps,
        "element_steps": report.element_steps,
        "seconds": report.seconds,
        "rate": report.rate if math.isfinite(report.rate) else 0.0,
        "verified": report.verified,
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
    from mezo_ckpt.replay import best_step

    p = Path(path)
    traj = read_trajectory(p)
    h = traj.header
    size = p.stat().st_size
    rec = traj.records
    skipped = int(np.count_nonzero(rec.flags & FLAG_SKIPPED))
    try:
        best: int | None = best_step(traj)
    except Exception:
        best = None
    out: dict[str, Any] = {
        "file": str(p),
        "bytes": size,
        "format_version": f"{traj.version[0]}.{traj.version[1]}",
        "tool": h["tool"],
        "base": {k: v for k, v in h["base"].items() if k != "files"},
        "base_files": h["base"]["files"],
        "trainable_tensors": len(h["trainable"]),
        "perturbation": h["perturbation"],
        "update": {k: v for k, v in h["update"].items() if k != "decay_params"},
        "optimizer": h["optimizer"],
        "steps": traj.num_steps,
        "total_steps": traj.total_steps,
        "complete": traj.complete,
        "skipped_steps": skipped,
        "bytes_per_step": size / traj.num_steps if traj.num_steps else None,
        "coefficients": _stats(rec.coefs.reshape(-1)),
        "losses": _stats(rec.losses.reshape(-1)) if rec.losses is not None else None,
        "evaluations": [e.as_json() for e in traj.evaluations],
        "best_step": best,
        "checkpoints": {str(k): v for k, v in sorted(traj.checkpoints.items())},
        "config": h["config"],
    }
    return out
