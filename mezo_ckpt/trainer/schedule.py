"""Learning-rate schedules. Only training evaluates them: the trajectory stores the exact
coefficient each step applied, so replay never recomputes a cosine."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def learning_rate(
    step: int,
    *,
    lr: float,
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for 0-based ``step``: linear warm-up, then the named decay.

    Args:
        lr: peak learning rate.
        total_steps: length of the run (decay reaches ``lr * min_lr_ratio`` there).
        schedule: "constant", "linear" or "cosine".
        warmup_steps: steps of linear warm-up from lr/warmup to lr.
        min_lr_ratio: floor of the decay as a fraction of lr.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = lr * min_lr_ratio
    if schedule == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
