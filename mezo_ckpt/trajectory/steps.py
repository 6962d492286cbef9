"""Steps of a trajectory: which step a request means, whether a file binds it, and what
a rebuild to it may claim. The rebuilding itself is :mod:`mezo_ckpt.rebuild`.

What a replay to step N can claim (:attr:`ReplayReport.verified`):

* ``"fingerprint"``: a checkpoint at N stores the trainer's fingerprint of the trained
  tensors, and the replayed tensors have it;
* ``"records"``: no checkpoint at N, but the records up to N are bound by the chain
  digest of a later checkpoint (format 1.1), so they are the trainer's records;
* ``None``: neither (a format 1.0 file without a checkpoint at N, or a step after the
  last checkpoint, which replay refuses unless asked: :class:`UnverifiedStepError`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mezo_ckpt.errors import StepOutOfRangeError, UnverifiedStepError, VerificationError
from mezo_ckpt.trajectory import Trajectory

ProgressFn = Callable[[int], None]


@dataclass
class ReplayReport:
    """What a replay did."""

    step: int
    applied_steps: int
    element_steps: int
    seconds: float
    fingerprint: str | None  # sha256 of the trainable tensors after replay (if computed)
    verified: str | None  # "fingerprint", "records" or None (see the module docstring)
    covered_by: int | None = None  # the checkpoint whose chain binds the records

    @property
    def rate(self) -> float:
        """Element-steps per second."""
        return self.element_steps / self.seconds if self.seconds > 0 else math.inf

    def describe(self) -> str:
        return describe_verification(self.verified, self.covered_by)


def describe_verification(verified: str | None, covered_by: int | None = None) -> str:
    """The one sentence every command prints for what a rebuild verified."""
    if verified == "fingerprint":
        return "verified: the weights match the trainer's fingerprint at this step"
    if verified == "records":
        where = (
            f"the checkpoint at step {covered_by}"
            if covered_by is not None
            else "a later checkpoint"
        )
        return f"records verified by {where} (no weight fingerprint was recorded at this step)"
    return "NOT verified: nothing in the file binds these records"


def judge(
    traj: Trajectory, step: int, fingerprint: str | None, *, verify: bool = True
) -> tuple[str | None, int | None]:
    """What a rebuild to ``step`` may claim, given the fingerprint of its trained tensors.

    Returns:
        (verified, covered_by): see the module docstring.

    Raises:
        VerificationError: ``verify`` and the file records a different fingerprint at
            ``step``.
    """
    expected = traj.checkpoints.get(step)
    verified: str | None = None
    if verify and expected is not None:
        if fingerprint != expected:
            got = "none" if fingerprint is None else f"{fingerprint[:16]}..."
            raise VerificationError(
                f"replayed weights at step {step} have fingerprint {got}, the trajectory "
                f"recorded {expected[:16]}...: the base or the replay arithmetic differs "
                "from training"
            )
        verified = "fingerprint"
    covered = traj.covered_by(step) if traj.bound else None
    if verified is None and covered is not None:
        verified = "records"
    return verified, covered


#: Metrics that rank evaluated steps, in order of preference (higher is better).
BEST_METRICS = ("accuracy", "f1", "exact_match")


def best_step(traj: Trajectory, *, split: str | None = None, metric: str | None = None) -> int:
    """The evaluated step with the highest ``metric`` (ties: lower loss, then earlier step).

    ``metric`` defaults to the first of accuracy, f1, exact_match the evaluations have
    (f1 for generation tasks).

    Raises:
        StepOutOfRangeError: no evaluation records with that metric.
    """
    if metric is None:
        present = {k for e in traj.evaluations for k in e.metrics}
        metric = next((m for m in BEST_METRICS if m in present), "accuracy")
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
        if traj.num_steps == 0 and traj.total_steps > 0:
            raise StepOutOfRangeError(
                f"this file records no step (0 of {traj.total_steps}): it was cut, or its run "
                "never took a step, so its last step is the base itself; ask for step 0 to "
                "rebuild the base anyway"
            )
        return traj.num_steps
    if step == "best":
        return best_step(traj)
    if isinstance(step, bool) or (isinstance(step, float) and not step.is_integer()):
        raise StepOutOfRangeError(f"step must be an integer, 'best' or 'last', not {step!r}")
    try:
        n = int(step)
    except (TypeError, ValueError):
        raise StepOutOfRangeError(
            f"step must be an integer, 'best' or 'last', not {step!r}"
        ) from None
    if not 0 <= n <= traj.num_steps:
        raise StepOutOfRangeError(f"step {n} is outside the trajectory (0..{traj.num_steps})")
    return n


def check_verifiable(traj: Trajectory, step: int, *, allow_unverified: bool = False) -> None:
    """Refuse a step of a bound (1.1) file that no checkpoint covers.

    Raises:
        UnverifiedStepError: ``step`` is after the last checkpoint and not allowed.
    """
    if step == 0 or not traj.bound or allow_unverified or traj.covered_by(step) is not None:
        return
    last = traj.sealed_step
    raise UnverifiedStepError(
        f"step {step} lies after the last checkpoint of this file "
        f"({'none' if last is None else f'step {last}'}), so nothing binds its records: the "
        "file was cut or its run was killed before sealing them. Resume the run to seal it, "
        "replay a covered step"
        + (f" (0..{last})" if last is not None else "")
        + ", or pass --allow-unverified to replay it anyway"
    )
