"""One MeZO step, as in the paper's algorithm box (with stored coefficients).

Two-point SPSA (``estimator="spsa"``, MeZO)::

    for each direction j:
        L+_j, L-_j = loss(theta + eps z_tj), loss(theta - eps z_tj)   # two forwards
        g_j = (L+_j - L-_j) / (2 eps)
    c_j = round13(lr_t * g_j / n)                                     # stored in the record
    theta <- theta * m_t - sum_j c_j z_tj                             # the shared update rule

One-sided (``estimator="one-sided"``): one forward at theta gives a shared baseline L0,
then ``g_j = (L+_j - L0) / eps``: n + 1 forwards for n directions instead of 2n.

FZOO-style (``estimator="fzoo"``, Dang et al. 2025): one-sided, with the step divided by
the spread of the losses instead of by eps: ``c_j = round13(lr_t (L+_j - L0) / (n sigma))``
with sigma the standard deviation of the n perturbed losses (a zeroth-order normalised
SGD: large steps where the loss is flat, small where it is steep). sigma = 0 applies nothing.

Momentum (``momentum=beta``, window W): step t also re-applies the directions of the W
steps before it, ``h_kj = round13(beta^k c_(t-k)j)`` for k = 1..W (beta^k by repeated
binary64 multiplication), stored in the record as history coefficients: a truncated
heavy-ball update that replay applies with no state (docs/FORMAT.md §6.2, §10.1).

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

from mezo_ckpt.core.update import (
    UpdateBatch,
    UpdateSpec,
    apply_to_tensors,
    decay_multiplier,
    round_coefficient,
)
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.tasks import Encoded, LossTerms
from mezo_ckpt.trajectory import FLAG_SKIPPED, StepRecords
from mezo_ckpt.trajectory.header import ESTIMATORS

#: Consecutive steps with non-finite losses after which a run counts as diverged.
DIVERGED_AFTER = 3

#: How a step measures the objective on a batch (under whatever perturbation is active).
Measure = Callable[[Encoded], LossTerms]
#: Sums loss terms over data-parallel ranks (identity in one process).
Reduce = Callable[[Sequence[LossTerms]], list[LossTerms]]


@dataclass
class StepEstimate:
    """What the forwards of one step decided."""

    step: int
    coefs: list[float]  # one per direction, exactly as stored and applied
    pair_losses: list[tuple[float, float]]  # per direction: (L+, L-) or (L+, L0)
    decay: float  # weight-decay multiplier (1.0: none)
    skipped: bool  # a non-finite loss or coefficient: the step applies nothing
    forwards: int = 0
    #: [W][n] history coefficients (direction j of step - k at row k - 1), or None
    history: list[list[float]] | None = None

    @property
    def loss(self) -> float:
        return float(np.mean(self.pair_losses))

    def record(self, *, with_losses: bool) -> StepRecords:
        """The step's trajectory record."""
        n = len(self.coefs)
        return StepRecords(
            np.array([FLAG_SKIPPED if self.skipped else 0], np.uint8),
            np.array([self.coefs], np.float32),
            np.array([self.decay], np.float32),
            np.array([self.pair_losses], np.float32) if with_losses else None,
            None
            if self.history is None
            else np.array(self.history, np.float32).reshape(1, len(self.history), n),
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
        momentum: float = 0.0,
        window: int = 0,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; use {', '.join(ESTIMATORS)}")
        if estimator == "fzoo" and n_directions < 2:
            raise ValueError("fzoo needs at least two directions")
        if not 0.0 <= momentum < 1.0 or window < 0:
            raise ValueError("momentum must be in [0, 1) and the window >= 0")
        self.momentum = momentum
        self.window = window if momentum > 0 else 0
        #: beta^k for k = 1..W, by repeated binary64 multiplication (portable)
        self._powers: list[float] = []
        p = 1.0
        for _ in range(self.window):
            p *= momentum
            self._powers.append(p)
        #: the stored coefficients of earlier steps (step -> [n]); skipped steps are zeros
        self._past: dict[int, list[float]] = {}
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
            momentum=cfg.momentum,
            window=cfg.history_window,
        )

    @property
    def forwards_per_step(self) -> int:
        n = self.n_directions
        return 2 * n if self.estimator == "spsa" else n + 1

    def remember(self, records: StepRecords, first_step: int = 0) -> None:
        """Load the coefficients of already recorded steps (resume), for the momentum
        terms of the steps that follow."""
        if not self.window:
            return
        n = len(records)
        for i in range(max(0, n - self.window), n):
            c = records.coefs[i]
            skipped = bool(records.flags[i] & FLAG_SKIPPED)
            self._past[first_step + i] = [0.0] * len(c) if skipped else [float(v) for v in c]

    def _history(self, step: int) -> list[list[float]] | None:
        """h[k-1][j] = round13(beta^k c_(step-k)j); zeros before step 0."""
        if not self.window:
            return None
        zeros = [0.0] * self.n_directions
        out = []
        for k, power in enumerate(self._powers, start=1):
            past = self._past.get(step - k, zeros)
            out.append([round_coefficient(power * c) for c in past])
        return out

    def _keep(self, est: StepEstimate) -> None:
        if self.window:
            self._past[est.step] = [0.0] * len(est.coefs) if est.skipped else list(est.coefs)
            for s in [s for s in self._past if s <= est.step - self.window]:
                del self._past[s]

    def _measure(self, step: int, lane: int, sign: int, enc: Encoded) -> LossTerms:
        if not self.owns(lane):  # another rank's direction: it contributes nothing here
            return LossTerms(0.0, 0, 0.0)
        with torch.inference_mode(), self.perturber.perturbed(step, lane, sign):
            return self.measure(enc)

    def estimate(self, step: int, enc: Encoded, lr: float) -> StepEstimate:
        """The step's coefficients from forwards only; the weights are untouched."""
        n = self.n_directions
        local: list[LossTerms] = []
        if self.estimator != "spsa":
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
        elif self.estimator == "fzoo":
            base = losses[0]
            pairs = [(losses[1 + j], base) for j in range(n)]
            perturbed = [lp for lp, _ in pairs]
            mean = math.fsum(perturbed) / n
            sigma = math.sqrt(math.fsum((v - mean) ** 2 for v in perturbed) / n)
            grads = [(lp - base) / sigma if sigma > 0 else 0.0 for lp in perturbed]
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
        history = self._history(step)
        if skipped:
            zero = None if history is None else [[0.0] * n for _ in history]
            return StepEstimate(step, [0.0] * n, pairs, 1.0, True, len(local), zero)
        decay = decay_multiplier(lr, self.weight_decay)
        return StepEstimate(step, coefs, pairs, decay, False, len(local), history)

    def apply(self, est: StepEstimate) -> None:
        """The update rule (the same code replay runs)."""
        self._keep(est)
        if est.skipped:
            return
        with torch.no_grad():
            apply_to_tensors(
                self.params,
                self.spec,
                UpdateBatch.single(est.step, est.coefs, est.decay, est.history),
            )


def take_step(stepper: MezoStep, writer, step: int, batch, lr: float, *, with_losses: bool):
    """One step as every loop runs it (the CLI's recipe, :class:`mezo_ckpt.MeZO`,
    :class:`mezo_ckpt.MezoTrainer`): the forwards decide the coefficients, the record is
    made durable, and only then do the weights move (a kill at any moment loses at most
    the step in flight, and never leaves weights the file does not describe)."""
    est = stepper.estimate(step, batch, lr)
    writer.append_steps(est.record(with_losses=with_losses))
    stepper.apply(est)
    return est
