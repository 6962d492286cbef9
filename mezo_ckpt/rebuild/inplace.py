"""Replay into tensors or a model the caller already holds (the Python API's in-place
form of the pipeline: no base is loaded and nothing is written)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.rebuild.pipeline import rebuild
from mezo_ckpt.rebuild.plan import Plan
from mezo_ckpt.rebuild.sinks import ModelSink
from mezo_ckpt.rebuild.sources import ModelSource, TensorsSource
from mezo_ckpt.trajectory import Trajectory
from mezo_ckpt.trajectory.steps import ProgressFn, ReplayReport


def replay_tensors(
    traj: Trajectory,
    tensors: dict[str, torch.Tensor],
    *,
    step: int | str | None = None,
    verify: bool = True,
    allow_unverified: bool = False,
    progress: ProgressFn | None = None,
    backend: str = "auto",
) -> ReplayReport:
    """Apply the trajectory to named tensors in place (canonical names, contiguous).

    Args:
        traj: a parsed trajectory.
        tensors: canonical name -> tensor, holding at least the trainable set, in the
            trajectory's base state (check it with :func:`replay_model` or
            :func:`mezo_ckpt.models.base.verify_base`).
        step: target step (None: last, "best", N).
        verify: compare the result with the checkpoint fingerprint stored for that step.
        allow_unverified: replay a step of a bound file that no checkpoint covers.
        progress: called with the element-steps done after each tensor.
        backend: "auto", "compiled", "reference" or "triton" (same bits on every one).

    Raises:
        VerificationError: the result does not match the stored fingerprint.
        StepOutOfRangeError, UnverifiedStepError: see :mod:`mezo_ckpt.trajectory.steps`.
    """
    plan = Plan.make(traj, step, verify=verify, allow_unverified=allow_unverified, backend=backend)
    with torch.no_grad():
        done = rebuild(plan, TensorsSource(tensors), ModelSink(), on_progress=progress)
    v = done.verdict
    return ReplayReport(
        plan.step, len(plan.batch), done.element_steps, done.seconds, v.fingerprint,
        v.verified, v.covered_by,
    )  # fmt: skip


def replay_model(
    traj: Trajectory,
    model: torch.nn.Module,
    *,
    step: int | str | None = None,
    verify: bool = True,
    check_base: bool = True,
    allow_unverified: bool = False,
    progress: ProgressFn | None = None,
    backend: str = "auto",
) -> ReplayReport:
    """Check the whole base identity, then replay into ``model``'s parameters in place
    (a LoRA/prefix run: pass the model with its adapter attached).

    Raises:
        BaseMismatchError: the model is not the trajectory's base (nothing is modified).
        VerificationError, UnverifiedStepError: see :func:`replay_tensors`.
    """
    if check_base:
        ModelSource(model).check([Plan(traj, 0)])
    return replay_tensors(
        traj,
        dict(canonical_parameters(model)),
        step=step,
        verify=verify,
        allow_unverified=allow_unverified,
        progress=progress,
        backend=backend,
    )


def catch_up(
    traj: Trajectory,
    tensors: dict[str, torch.Tensor],
    upto: int,
    *,
    stops: Sequence[int] = (),
    at_stop: Callable[[int], None] | None = None,
) -> None:
    """Bring tensors in the base state to step ``upto`` of ``traj`` in place (a resumed
    run), stopping at every recorded fingerprint on the way to check it and at each of
    ``stops`` to call ``at_stop`` (the trainer makes an evaluation a kill left out).

    Raises:
        VerificationError: the weights miss a recorded fingerprint (nothing continues on
            weights the file does not describe).
    """
    marks = sorted({s for s in (*stops, *traj.checkpoints, upto) if 0 <= s <= upto})
    at = 0
    with torch.no_grad():
        for s in marks:
            rebuild(Plan(traj, s, start=at), TensorsSource(tensors), ModelSink())
            at = s
            if at_stop is not None:
                at_stop(s)
