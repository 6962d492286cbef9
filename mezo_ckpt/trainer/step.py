"""One MeZO step, as in the paper's algorithm box (with stored coefficients).

Two-point SPSA (``estimator="spsa"``, MeZO)::

    for each direction j:
        L+_j, L-_j = loss(theta + eps z_tj), loss(theta - eps z_tj)   # two forwards
        g_j = (L+_j - L-_j) / (2 eps)
    c_j = round13(lr_t * g_j / n)                                     # stored in the record
    theta <- theta * m_t - sum_j c_j z_tj                             # the shared update rule

One-sided (``estimator="one-sided"``): one forward at theta gives a shared baseline L0,
then ``g_j = (L+_j - L0) / eps``: n + 1 forwards for n directions instead of 2n.

:meth:`MezoStep.estimate` runs only forwards and never writes to theta; :meth:`apply`
is the update rule that replay runs too, so replay == training bit for bit. Loss terms
are sums with counts, reduced in one call per step (``reduce``), so data-parallel ranks
that each see a shard of the batch compute the same coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mezo_ckpt.format import FLAG_SKIPPED, StepRecords
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.tasks import Encoded, LossTerms
from mezo_ckpt.update import (
    UpdateBatch,
    UpdateSpec,
    apply_to_tensors,
    decay_multiplier,
    round_coefficient,
)

#: How a step measures the objective on a batch (under whatever perturbation is active).
Measure = Callable[[Encoded], LossTerms]
#: Sums loss terms over data-parallel ranks (identity in one process).
Reduce = Callable[[Sequence[LossTerms]], list[LossTerms]]
ESTIMATORS = ("spsa", "one-sided")


@dataclass
class StepEstimate:
    """What the forwards of one step decided."""

    step: int
    coefs: list[float]  # one per direction, exactly as stored and applied
    pair_losses: list[tuple[float, float]]  # per direction: (L+, L-) or (L+, L0)
    decay: float  # weight-decay multiplier (1.0: none)
    skipped: bool  # a non-finite loss or coefficient: the step applies nothing
    forwards: int = 0

    @property
    def loss(self) -> float:
        return float(np.mean(self.pair_losses))

    def record(self, *, with_losses: bool) -> StepRecords:
        """The step's trajectory record."""
        return StepRecords(
            np.array([FLAG_SKIPPED if self.skipped else 0], np.uint8),
            np.array([self.coefs], np.float32),
            np.array([self.decay], np.float32),
            np.array([self.pair_losses], np.float32) if with_losses else None,
        )


class MezoStep:
    """Estimates and applies MeZO steps on a model's trainable parameters.

    Args:
        params: canonical name -> parameter (the tensors the update rule writes).
        perturber: builds the perturbed forwards (never writes to the parameters).
        spec: the update spec (seed, z kind, rounding, trainable and decay sets).
        measure: the objective's loss terms on a batch.
        eps, n_directions, estimator, weight_decay: the MeZO settings.
        reduce: sums loss terms across data-parallel ranks.
    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        perturber: Perturber,
        spec: UpdateSpec,
        measure: Measure,
        *,
        eps: float,
        n_directions: int,
        estimator: str = "spsa",
        weight_decay: float = 0.0,
        reduce: Reduce | None = None,
        owns: Callable[[int], bool] | None = None,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; use {', '.join(ESTIMATORS)}")
        self.params = params
        self.perturber = perturber
        self.spec = spec
        self.measure = measure
        self.eps = eps
        self.n_directions = n_directions
        self.estimator = estimator
        self.weight_decay = weight_decay if spec.decay_params else 0.0
        self.reduce = reduce or (lambda terms: list(terms))
        #: whether this process evaluates direction j (the others' losses arrive by reduce)
        self.owns = owns or (lambda j: True)

    @classmethod
    def from_config(
        cls,
        cfg,
        params: Mapping[str, torch.Tensor],
        perturber: Perturber,
        spec: UpdateSpec,
        measure: Measure,
        reduce: Reduce | None = None,
        owns: Callable[[int], bool] | None = None,
    ) -> MezoStep:
        """The step a :class:`~mezo_ckpt.trainer.config.TrainConfig` describes."""
        return cls(
            params,
            perturber,
            spec,
            measure,
            eps=cfg.eps,
            n_directions=cfg.n_directions,
            estimator=cfg.estimator,
            weight_decay=cfg.weight_decay,
            reduce=reduce,
            owns=owns,
        )

    @property
    def forwards_per_step(self) -> int:
        n = self.n_directions
        return n + 1 if self.estimator == "one-sided" else 2 * n

    def _measure(self, step: int, lane: int, sign: int, enc: Encoded) -> LossTerms:
        if not self.owns(lane):  # another rank's direction: it contributes nothing here
            return LossTerms(0.0, 0, 0.0)
        with torch.inference_mode(), self.perturber.perturbed(step, lane, sign):
            return self.measure(enc)

    def estimate(self, step: int, enc: Encoded, lr: float) -> StepEstimate:
        """The step's coefficients from forwards only; the weights are untouched."""
        n = self.n_directions
        local: list[LossTerms] = []
        if self.estimator == "one-sided":
            if self.owns(0):  # the shared baseline, measured once (by direction 0's owner)
                with torch.inference_mode():
                    local.append(self.measure(enc))
            else:
                local.append(LossTerms(0.0, 0, 0.0))
            for j in range(n):
                local.append(self._measure(step, j, 1, enc))
        else:
            for j in range(n):
                local.append(self._measure(step, j, 1, enc))
                local.append(self._measure(step, j, -1, enc))
        terms = self.reduce(local)
        losses = [t.loss for t in terms]
        if self.estimator == "one-sided":
            base = losses[0]
            pairs = [(losses[1 + j], base) for j in range(n)]
            grads = [(lp - base) / self.eps for lp, _ in pairs]
        else:
            pairs = [(losses[2 * j], losses[2 * j + 1]) for j in range(n)]
            grads = [(lp - lm) / (2.0 * self.eps) for lp, lm in pairs]
        coefs: list[float] = []
        skipped = not all(math.isfinite(v) for v in losses)
        if not skipped:
            try:
                coefs = [round_coefficient(lr * g / n) for g in grads]
            except ValueError:  # non-finite or absurd: skip the step
                skipped = True
        if skipped:
            return StepEstimate(step, [0.0] * n, pairs, 1.0, True, len(local))
        decay = decay_multiplier(lr, self.weight_decay)
        return StepEstimate(step, coefs, pairs, decay, False, len(local))

    def apply(self, est: StepEstimate) -> None:
        """The update rule (the same code replay runs)."""
        if est.skipped:
            return
        with torch.no_grad():
            apply_to_tensors(
                self.params, self.spec, UpdateBatch.single(est.step, est.coefs, est.decay)
            )
