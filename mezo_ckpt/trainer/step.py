"""One MeZO step, as in the paper's algorithm box (with stored coefficients):

    for each direction j:
        L+_j, L-_j = loss(theta + eps z_tj), loss(theta - eps z_tj)   # two forwards
        g_j = (L+_j - L-_j) / (2 eps)
        c_j = round13(lr_t * g_j / n_directions)                    # stored in the record
    theta <- theta * m_t - sum_j c_j z_tj                            # the shared update rule

`estimate` runs only forwards and never writes to theta; `apply` is the update rule that
replay runs too, so replay == training bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mezo_ckpt.format import FLAG_SKIPPED, StepRecords
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.tasks import Encoded, losses_from_scores, score_candidates
from mezo_ckpt.update import (
    UpdateBatch,
    UpdateSpec,
    apply_to_tensors,
    decay_multiplier,
    round_coefficient,
)


@dataclass
class StepEstimate:
    """What the forwards of one step decided."""

    step: int
    lr: float
    coefs: list[float]  # one per direction, exactly as stored and applied
    pair_losses: list[tuple[float, float]]  # (L+, L-) per direction
    decay: float  # weight-decay multiplier (1.0: none)
    skipped: bool  # a non-finite loss or coefficient: the step applies nothing

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
        eps, n_directions, objective, weight_decay: the MeZO settings.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        params: Mapping[str, torch.Tensor],
        perturber: Perturber,
        spec: UpdateSpec,
        *,
        eps: float,
        n_directions: int,
        objective: str,
        weight_decay: float,
    ) -> None:
        self.model = model
        self.params = params
        self.perturber = perturber
        self.spec = spec
        self.eps = eps
        self.n_directions = n_directions
        self.objective = objective
        self.weight_decay = weight_decay if spec.decay_params else 0.0

    def estimate(self, step: int, enc: Encoded, lr: float) -> StepEstimate:
        """Two-sided SPSA along n directions: forwards only, weights untouched."""
        coefs: list[float] = []
        pair_losses: list[tuple[float, float]] = []
        skipped = False
        for j in range(self.n_directions):
            pair = []
            for sign in (1, -1):
                with torch.inference_mode(), self.perturber.perturbed(step, j, sign):
                    scores = score_candidates(self.model, enc)
                pair.append(losses_from_scores(scores, enc, self.objective)[0])
            lp, lm = pair
            pair_losses.append((lp, lm))
            g = (lp - lm) / (2.0 * self.eps)
            try:
                coefs.append(round_coefficient(lr * g / self.n_directions))
            except ValueError:  # non-finite or absurd: skip the step
                skipped = True
        if skipped or not all(math.isfinite(v) for pair in pair_losses for v in pair):
            return StepEstimate(step, lr, [0.0] * self.n_directions, pair_losses, 1.0, True)
        decay = decay_multiplier(lr, self.weight_decay)
        return StepEstimate(step, lr, coefs, pair_losses, decay, False)

    def apply(self, est: StepEstimate) -> None:
        """The update rule (the same code replay runs)."""
        if est.skipped:
            return
        with torch.no_grad():
            apply_to_tensors(
                self.params, self.spec, UpdateBatch.single(est.step, est.coefs, est.decay)
            )
