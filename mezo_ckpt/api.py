"""High-level operations behind the CLI and the Python API (no click here)."""

from __future__ import annotations

import math
import os
import re
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
    from mezo_ckpt.base import load_base

    spec, revision = _base_spec(traj, base)
    return load_base(
        spec,
        dtype=traj.header.base.dtype,
        device=device,
        revision=revision,
        hub_only=base is None,
    )


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return None


def should_stream(folder: Path, requested: bool | None) -> bool:
    """Stream when asked, or (by default) when the weights would not fit in half of the
    memory available now."""
    if requested is not None:
        return requested
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    free = _available_memory()
    return free is not None and size > free // 2


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

    ``stream``: replay an ``hf`` output shard by shard (peak memory: one shard) instead of
    loading the whole base; None decides by size (see :func:`should_stream`).

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
    if traj.header.peft is not None and fmt in ("safetensors", "delta"):
        raise OutputError(
            f"this is a parameter-efficient ({traj.header.peft.type}) run: use --format peft "
            "(the adapter folder) or --format hf (the base with the adapter merged)"
        )
    if traj.header.peft is not None and traj.header.peft.type == "prefix" and fmt == "hf":
        raise OutputError(
            "a prefix-tuning run has no merged weights (its virtual tokens are extra inputs, "
            "not a change to any weight): use --format peft and load it with peft"
        )
    if traj.header.peft is None and fmt == "peft":
        raise OutputError(
            "--format peft is for parameter-efficient runs; this run trains the model"
        )
    target = resolve_step(traj, step)
    check_verifiable(traj, target, allow_unverified=allow_unverified)
    out = Path(output) if output is not None else default_output(path, target, fmt)
    inputs: list[Path] = [path]
    if base is not None and Path(os.path.expanduser(base)).exists():
        inputs.append(Path(os.path.expanduser(base)))
    check_output(out, kind=OUTPUT_KINDS[fmt], overwrite=overwrite, inputs=inputs)
    if fmt == "hf" and traj.header.peft is None and not ignore_base_mismatch and verify:
        from mezo_ckpt.base import locate_base

        spec, revision = _base_spec(traj, base)
        where = locate_base(spec, revision=revision, progress=progress, hub_only=base is None)
        if should_stream(where.folder, stream):
            return _replay_streaming(traj, path, where, target, out, overwrite, progress)
    with quiet_progress(progress):
        loaded = load_base_for(traj, base)
    if loaded.folder is not None and (
        same_path(out, loaded.folder) or out.resolve().is_relative_to(loaded.folder.resolve())
    ):
        raise OutputError(f"-o {out} would write into the base model folder {loaded.folder}")
    model = loaded.model
    from mezo_ckpt.adapters import prepare

    check = verify_base(traj.header, model, offered=loaded, allow_mismatch=ignore_base_mismatch)
    model = prepare(traj.header, model)
    if check.overridden:
        from mezo_ckpt.text import clean

        warnings.warn(
            "replaying onto a base that differs from the trajectory's (--ignore-base-mismatch):\n"
            + "\n".join(f"  - {clean(d)}" for d in check.overridden),
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
    if fmt == "peft":
        from mezo_ckpt.export import export_adapter_folder

        export_adapter_folder(
            model, out, header=traj.header, folder=loaded.folder, meta=meta, replace=overwrite
        )
    elif fmt == "hf":
        if traj.header.peft is not None:
            from mezo_ckpt.adapters import merged

            model = merged(model)
            meta["merged"] = (
                "the adapter was merged by peft (a matrix product in the parameters' dtype: "
                "not bit-stable across machines; the adapter itself is)"
            )
        export_hf(model, out, tokenizer_from=loaded.folder, meta=meta, replace=overwrite)
    elif fmt == "safetensors":
        export_safetensors(state_dict_tensors(model), out, {**meta, "kind": "weights"})
    else:
        assert before is not None
        from mezo_ckpt.hashing import tensors_sha256

        delta, fixes = delta_tensors(before, dict(params), trainable)
        meta.update(
            kind="delta",
            rule=DELTA_RULE,
            exact=True,
            fixed_elements=fixes,
            tuned_sha256=tensors_sha256(params, trainable),
        )
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


def _replay_streaming(
    traj, path: Path, where, target: int, out: Path, overwrite: bool, progress: bool
) -> dict[str, Any]:
    import time

    from tqdm.auto import tqdm

    from mezo_ckpt.export import provenance
    from mezo_ckpt.fsutil import is_inside
    from mezo_ckpt.sharded import replay_folder

    if is_inside(out, where.folder):
        raise OutputError(f"-o {out} would write into the base model folder {where.folder}")
    meta = provenance(traj, target, file_sha256(path))
    params = {t.name: t for t in traj.header.base.tensors or ()}
    total = None
    if params:
        total = sum(math.prod(params[n].shape) for n in traj.header.trainable if n in params)
        total *= len(traj.update_batch(target))
    t0 = time.perf_counter()
    with tqdm(
        total=total,
        unit="el-step",
        unit_scale=True,
        desc="replay (streaming)",
        disable=not progress,
        leave=False,
    ) as bar:
        r = replay_folder(
            traj, where.folder, out, step=target, meta=meta, replace=overwrite, progress=bar.update
        )
    seconds = time.perf_counter() - t0
    words = {
        "fingerprint": "verified: the weights match the trainer's fingerprint at this step",
        "records": "records verified by a later checkpoint (no weight fingerprint at this step)",
    }
    return {
        "trajectory": str(path),
        "step": target,
        "applied_steps": len(traj.update_batch(target)),
        "element_steps": r["element_steps"],
        "seconds": seconds,
        "rate": r["element_steps"] / seconds if seconds > 0 else 0.0,
        "verified": r["verified"],
        "verification": words.get(str(r["verified"]), "NOT verified: nothing binds these records"),
        "checked": r["checked"],
        "base_mismatch": [],
        "fingerprint": r["fingerprint"],
        "format": "hf",
        "output": str(out),
        "streamed": True,
        "shards": r["shards"],
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

    The result is checked against the trained fingerprint the delta records.
    """
    from mezo_ckpt.base import load_base
    from mezo_ckpt.errors import BaseMismatchError
    from mezo_ckpt.export import apply_delta, export_hf, load_delta
    from mezo_ckpt.hashing import tensors_sha256

    path = Path(delta)
    tensors, prov = load_delta(path)
    inputs: list[Path] = [path]
    if base is not None and Path(os.path.expanduser(base)).exists():
        inputs.append(Path(os.path.expanduser(base)))
    check_output(output, kind="folder", overwrite=overwrite, inputs=inputs)
    b = prov.get("base") or {}
    if base is None:
        if b.get("kind") == "embedded":
            spec, revision = None, None
        elif b.get("kind") == "hub" and b.get("repo_id"):
            spec, revision = b["repo_id"], b.get("revision")
        else:
            raise ModelLoadError(
                "this delta was made from a local base folder: pass it with --base PATH"
            )
    else:
        spec, revision = base, None
    from mezo_ckpt.header import is_repo_id

    if base is None and spec is not None and not is_repo_id(spec):
        raise ModelLoadError(f"the delta names an invalid base repo {str(spec)[:80]!r}")
    with quiet_progress(progress):
        loaded = load_base(
            spec, dtype=b.get("dtype", "float32"), revision=revision, hub_only=base is None
        )
    model = loaded.model
    params = canonical_parameters(model)
    names = sorted(k for k in tensors if "::" not in k)
    if b.get("trainable_sha256") and tensors_sha256(params, names) != b.get("trainable_sha256"):
        raise BaseMismatchError(
            "the base is not the one this delta was made from (the fingerprint of its "
            "trained tensors differs); refusing to patch it"
        )
    apply_delta(model, tensors, expected=prov.get("tuned_sha256"))
    meta = {**prov, "kind": "weights", "from_delta": str(path), "verified": "fingerprint"}
    export_hf(model, output, tokenizer_from=loaded.folder, meta=meta, replace=overwrite)
    return {
        "delta": str(path),
        "output": str(output),
        "tensors": len(names),
        "step": prov.get("step"),
    }


# ----------------------------------------------------------------------------- diff

_LAYER = re.compile(r"^(.*?\.(?:layers|h|layer|blocks|decoder\.layers)\.\d+)\.")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to (``model.layers.3``), else its module path."""
    m = _LAYER.match(name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


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
    trajectories on the same base. Streams tensor by tensor: one base model in memory
    plus two copies of the tensor being compared.
    """
    import torch
    from tqdm.auto import tqdm

    from mezo_ckpt.base import verify_base
    from mezo_ckpt.errors import BaseMismatchError
    from mezo_ckpt.replay import check_verifiable, resolve_step
    from mezo_ckpt.stream import param_key
    from mezo_ckpt.update import UpdateSpec, apply_updates

    ta = read_trajectory(a)
    tb = read_trajectory(b) if b is not None else ta
    if b is None:
        sa = resolve_step(ta, 0 if step_a is None else step_a)
        sb = resolve_step(tb, step_b)
    else:
        sa, sb = resolve_step(ta, step_a), resolve_step(tb, step_b)
    check_verifiable(ta, sa)
    check_verifiable(tb, sb)
    if b is not None:
        ba, bb = ta.header.base, tb.header.base
        same = (ba.tensors_sha256 or ba.manifest_sha256) == (
            bb.tensors_sha256 or bb.manifest_sha256
        )
        if not same or ba.dtype != bb.dtype:
            raise BaseMismatchError("the two trajectories were not trained from the same base")
    with quiet_progress(progress):
        loaded = load_base_for(ta, base)
    verify_base(ta.header, loaded.model, offered=loaded)
    params = canonical_parameters(loaded.model)
    names = sorted(set(ta.header.trainable) | set(tb.header.trainable))
    per: dict[str, dict[str, float]] = {}
    layers: dict[str, dict[str, float]] = {}

    def replayed(traj: Trajectory, step: int, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in traj.header.trainable:
            return x
        spec = UpdateSpec.from_header(traj.header)
        batch = traj.update_batch(step)
        if name not in spec.decay_params:
            batch = type(batch)(batch.steps, batch.coefs, np.ones_like(batch.decay))
        apply_updates(x, param_key(spec.seed, name), batch, kind=spec.kind, rounding=spec.rounding)
        return x

    with torch.no_grad():
        for name in tqdm(names, desc="diff", unit="tensor", disable=not progress, leave=False):
            p = params[name].detach()
            xa = replayed(ta, sa, name, p.clone().contiguous())
            xb = replayed(tb, sb, name, p.clone().contiguous())
            d = xb.double() - xa.double()
            sq, ref = float((d * d).sum()), float((xa.double() ** 2).sum())
            row = {
                "elements": float(p.numel()),
                "norm": math.sqrt(sq),
                "relative": math.sqrt(sq) / math.sqrt(ref) if ref > 0 else math.inf,
                "max_abs": float(d.abs().max()) if p.numel() else 0.0,
                "changed": float((xa != xb).sum()),
            }
            per[name] = row
            agg = layers.setdefault(
                layer_of(name), {"sq": 0.0, "ref": 0.0, "max_abs": 0.0, "elements": 0.0}
            )
            agg["sq"] += sq
            agg["ref"] += ref
            agg["max_abs"] = max(agg["max_abs"], row["max_abs"])
            agg["elements"] += row["elements"]
            del xa, xb, d
    layer_rows = {
        k: {
            "elements": v["elements"],
            "norm": math.sqrt(v["sq"]),
            "relative": math.sqrt(v["sq"] / v["ref"]) if v["ref"] > 0 else math.inf,
            "max_abs": v["max_abs"],
        }
        for k, v in layers.items()
    }
    total_sq = sum(v["sq"] for v in layers.values())
    total_ref = sum(v["ref"] for v in layers.values())
    return {
        "a": {"trajectory": str(a), "step": sa},
        "b": {"trajectory": str(b if b is not None else a), "step": sb},
        "total": {
            "norm": math.sqrt(total_sq),
            "relative": math.sqrt(total_sq / total_ref) if total_ref > 0 else math.inf,
            "max_abs": max((v["max_abs"] for v in per.values()), default=0.0),
            "tensors": len(per),
        },
        "layers": layer_rows,
        "tensors": per,
    }
