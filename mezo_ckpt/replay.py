"""Replay engine: re-apply a trajectory to base weights, bit for bit, to any step.

Replay needs no forward pass: each trainable tensor receives every stored step through
the shared update rule (:mod:`mezo_ckpt.update`), block by block, so the work is
element-parallel and the weights stream through memory once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mezo_ckpt.errors import StepOutOfRangeError, VerificationError
from mezo_ckpt.format import Trajectory
from mezo_ckpt.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.update import UpdateSpec, apply_to_tensors

ProgressFn = Callable[[int], None]
OUTPUT_FORMATS = ("hf", "safetensors", "delta")
#: Written next to exported weights: which trajectory and step they come from.
PROVENANCE_FILE = "mezo_ckpt_provenance.json"


@dataclass
class ReplayReport:
    """What a replay did."""

    step: int
    applied_steps: int
    element_steps: int
    seconds: float
    fingerprint: str | None  # sha256 of the trainable tensors after replay (if computed)
    verified: bool  # matched a checkpoint fingerprint stored in the trajectory

    @property
    def rate(self) -> float:
        """Element-steps per second."""
        return self.element_steps / self.seconds if self.seconds > 0 else math.inf


def best_step(traj: Trajectory, *, split: str | None = None, metric: str = "accuracy") -> int:
    """The evaluated step with the highest ``metric`` (ties: lower loss, then earlier step).

    Raises:
        StepOutOfRangeError: no evaluation records with that metric.
    """
    evals = [
        e
        for e in traj.evaluations
        if metric in e.metrics and (split is None or e.split == split) and e.step <= traj.num_steps
    ]
    if split is None:
        splits = {e.split for e in evals}
        if "dev" in splits:
            evals = [e for e in evals if e.split == "dev"]
    if not evals:
        raise StepOutOfRangeError(
            f"no evaluation records with {metric!r} to choose a best step "
            "from; pass --step N instead"
        )
    best = min(evals, key=lambda e: (-e.metrics[metric], e.metrics.get("loss", math.inf), e.step))
    return best.step


def resolve_step(traj: Trajectory, step: int | str | None) -> int:
    """None -> last recorded step; "best" -> best evaluated step; N -> N (0 = the base)."""
    if step is None or step == "last":
        return traj.num_steps
    if step == "best":
        return best_step(traj)
    try:
        n = int(step)
    except (TypeError, ValueError):
        raise StepOutOfRangeError(
            f"step must be an integer, 'best' or 'last', not {step!r}"
        ) from None
    if not 0 <= n <= traj.num_steps:
        raise StepOutOfRangeError(f"step {n} is outside the trajectory (0..{traj.num_steps})")
    return n


def replay_tensors(
    traj: Trajectory,
    tensors: dict[str, torch.Tensor],
    *,
    step: int | str | None = None,
    verify: bool = True,
    progress: ProgressFn | None = None,
    backend: str = "auto",
) -> ReplayReport:
    """Apply the trajectory to named tensors in place (canonical names, contiguous).

    Args:
        traj: a parsed trajectory.
        tensors: canonical name -> tensor, holding at least the trainable set, in the
            trajectory's base state (check it with :func:`mezo_ckpt.base.verify_base`).
        step: target step (see :func:`resolve_step`).
        verify: compare the result with the checkpoint fingerprint stored for that step.
        progress: called with element-steps done after each tensor.

    Raises:
        VerificationError: the result does not match the stored fingerprint.
    """
    h = traj.header
    upto = resolve_step(traj, step)
    batch = traj.update_batch(upto)
    t0 = time.perf_counter()
    total = apply_to_tensors(
        tensors, UpdateSpec.from_header(h), batch, progress=progress, backend=backend
    )
    seconds = time.perf_counter() - t0
    fingerprint = None
    verified = False
    expected = traj.checkpoints.get(upto)
    if verify and expected is not None:
        fingerprint = tensors_sha256(tensors, h["trainable"])
        if fingerprint != expected:
            raise VerificationError(
                f"replayed weights at step {upto} have fingerprint {fingerprint[:16]}..., the "
                f"trajectory recorded {expected[:16]}...: the base or the replay arithmetic "
                "differs from training"
            )
        verified = True
    return ReplayReport(upto, len(batch), total, seconds, fingerprint, verified)


def replay_model(
    traj: Trajectory,
    model: torch.nn.Module,
    *,
    step: int | str | None = None,
    verify: bool = True,
    check_base: bool = True,
    progress: ProgressFn | None = None,
    backend: str = "auto",
) -> ReplayReport:
    """Verify the base identity, then replay into ``model``'s parameters in place.

    Raises:
        BaseMismatchError: the model is not the trajectory's base (nothing is modified).
        VerificationError: see :func:`replay_tensors`.
    """
    if check_base:
        from mezo_ckpt.base import verify_base

        verify_base(traj.header, model)
    params = canonical_parameters(model)
    with torch.no_grad():
        return replay_tensors(
            traj, dict(params), step=step, verify=verify, progress=progress, backend=backend
        )


def element_steps(traj: Trajectory, model: torch.nn.Module, step: int) -> int:
    """How many element-steps a replay to ``step`` performs (for progress bars)."""
    params = canonical_parameters(model)
    n = sum(params[name].numel() for name in traj.header["trainable"] if name in params)
    return n * len(traj.update_batch(step))


# ----------------------------------------------------------------------------- export


def provenance(traj: Trajectory, step: int, trajectory_sha256: str | None) -> dict:
    """Small JSON describing where exported weights came from."""
    b = traj.header["base"]
    return {
        "tool": "mezo-ckpt",
        "trajectory_sha256": trajectory_sha256,
        "step": step,
        "num_steps": traj.num_steps,
        "base": {
            k: b.get(k)
            for k in ("kind", "repo_id", "revision", "architecture", "dtype", "trainable_sha256")
        },
    }


def _tmp_sibling(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def export_hf(
    model: torch.nn.Module, out: str | os.PathLike, *, tokenizer_from: Path | None, meta: dict
) -> Path:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` loads (atomic rename)."""
    out = Path(out)
    tmp = _tmp_sibling(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            for p in Path(tokenizer_from).iterdir():
                if p.is_file() and (
                    p.name.startswith(
                        (
                            "tokenizer",
                            "special_tokens",
                            "vocab",
                            "merges",
                            "added_tokens",
                            "chat_template",
                        )
                    )
                ):
                    shutil.copy2(p, tmp / p.name)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            if not out.is_dir() or any(out.iterdir()):
                raise FileExistsError(f"{out} exists and is not empty")
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def export_safetensors(
    tensors: dict[str, torch.Tensor], out: str | os.PathLike, meta: dict
) -> Path:
    """Write tensors (canonical names) to one safetensors file, atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = _tmp_sibling(out)
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp),
            metadata={"format": "pt", "mezo_ckpt": json.dumps(meta, sort_keys=True)},
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def delta_tensors(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], names: list[str]
) -> dict[str, torch.Tensor]:
    """tuned - base in float32 for the named (trainable) tensors."""
    return {n: tuned[n].detach().float() - base[n].detach().float() for n in names}
