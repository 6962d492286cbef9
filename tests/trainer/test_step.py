"""MezoStep (mezo_ckpt/trainer/step.py) on its own: the algorithm box, coefficient by
coefficient, with a fake objective whose losses are set per (direction, sign)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mezo_ckpt.core import update as U
from mezo_ckpt.core.stream import param_key
from mezo_ckpt.trainer.step import MezoStep
from mezo_ckpt.trainer.tasks import LossTerms
from mezo_ckpt.trajectory import FLAG_SKIPPED

EPS = 1e-2


class Perturber:
    """Records the active (step, lane, sign)."""

    def __init__(self):
        self.state = None

    def perturbed(self, step, lane, sign):
        outer = self

        class Ctx:
            def __enter__(self):
                outer.state = (step, lane, sign)

            def __exit__(self, *a):
                outer.state = None

        return Ctx()


def stepper(losses, n=1, estimator="spsa", weight_decay=0.0, decay=(), **kw):
    """losses: {(lane, sign): loss} and {None: baseline}."""
    pert = Perturber()
    seen = []

    def measure(enc):
        key = None if pert.state is None else pert.state[1:]
        seen.append(pert.state)
        return LossTerms(losses[key] * 4, 4, 0.0)  # sums over a batch of 4

    params = {"w": torch.linspace(-1, 1, 64), "b": torch.zeros(8)}
    spec = U.UpdateSpec(5, "normal16", "nearest", ("b", "w"), frozenset(decay))
    st = MezoStep(
        params,
        pert,
        spec,
        measure,
        eps=EPS,
        n_directions=n,
        estimator=estimator,
        weight_decay=weight_decay,
        **kw,
    )
    return st, params, seen


def test_spsa_coefficient_is_the_rounded_projected_gradient():
    st, _, seen = stepper({(0, 1): 1.30, (0, -1): 1.10})
    est = st.estimate(3, None, 1e-3)
    g = (1.30 - 1.10) / (2 * EPS)
    assert est.coefs == [U.round_coefficient(1e-3 * g)]
    assert est.pair_losses == [(pytest.approx(1.30), pytest.approx(1.10))]
    assert est.forwards == 2 == st.forwards_per_step and not est.skipped
    assert seen == [(3, 0, 1), (3, 0, -1)]  # +eps then -eps of this step's direction
    assert U.is_valid_coefficient(est.coefs[0])


def test_n_spsa_averages_directions():
    losses = {(0, 1): 1.0, (0, -1): 0.8, (1, 1): 0.9, (1, -1): 1.1, (2, 1): 1.0, (2, -1): 1.0}
    st, _, _ = stepper(losses, n=3)
    est = st.estimate(0, None, 1e-2)
    want = [(1.0 - 0.8), (0.9 - 1.1), 0.0]
    assert est.coefs == [U.round_coefficient(1e-2 * d / (2 * EPS) / 3) for d in want]
    assert st.forwards_per_step == 6


def test_one_sided_shares_one_baseline():
    st, _, seen = stepper({None: 1.0, (0, 1): 1.2, (1, 1): 0.7}, n=2, estimator="one-sided")
    est = st.estimate(1, None, 1e-3)
    assert est.coefs == [U.round_coefficient(1e-3 * (v - 1.0) / EPS / 2) for v in (1.2, 0.7)]
    assert seen[0] is None and len(seen) == 3 == st.forwards_per_step


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_skips_the_step(bad):
    st, params, _ = stepper({(0, 1): bad, (0, -1): 1.0})
    before = {k: v.clone() for k, v in params.items()}
    est = st.estimate(0, None, 1e-3)
    assert est.skipped and est.coefs == [0.0] and est.decay == 1.0
    assert est.record(with_losses=True).flags[0] & FLAG_SKIPPED
    st.apply(est)
    assert all(torch.equal(params[k], before[k]) for k in params)


def test_an_absurd_coefficient_skips_the_step():
    st, _, _ = stepper({(0, 1): 1e300, (0, -1): -1e300})
    assert st.estimate(0, None, 1.0).skipped


def test_weight_decay_multiplier_only_with_decay_params():
    st, _, _ = stepper({(0, 1): 1.0, (0, -1): 1.0}, weight_decay=0.1, decay=("w",))
    assert st.estimate(0, None, 1e-2).decay == U.decay_multiplier(1e-2, 0.1) < 1.0
    st, _, _ = stepper({(0, 1): 1.0, (0, -1): 1.0}, weight_decay=0.1)  # nothing decays
    assert st.estimate(0, None, 1e-2).decay == 1.0


def test_apply_is_the_shared_update_rule():
    st, params, _ = stepper({(0, 1): 1.3, (0, -1): 1.1}, weight_decay=0.1, decay=("w",))
    w0, b0 = params["w"].clone(), params["b"].clone()
    est = st.estimate(7, None, 1e-2)
    st.apply(est)
    batch = U.UpdateBatch.single(7, est.coefs, est.decay)
    want_w = w0.clone()
    U.apply_updates(want_w, param_key(5, "w"), batch, kind="normal16")
    want_b = b0.clone()
    U.apply_updates(want_b, param_key(5, "b"), batch.without_decay(), kind="normal16")
    assert torch.equal(params["w"], want_w) and torch.equal(params["b"], want_b)
    assert not torch.equal(params["w"], w0)


def test_directions_of_other_ranks_contribute_nothing_here():
    losses = {(0, 1): 1.2, (0, -1): 1.0, (1, 1): 5.0, (1, -1): 5.0}
    st, _, seen = stepper(losses, n=2, owns=lambda j: j == 0)
    est = st.estimate(0, None, 1e-3)
    assert all(s[1] == 0 for s in seen)  # direction 1 is never measured here
    assert est.pair_losses[1] == (0.0, 0.0)  # its losses arrive by reduce (none here)


def test_record_layout():
    st, _, _ = stepper({(0, 1): 1.3, (0, -1): 1.1, (1, 1): 1.0, (1, -1): 1.2}, n=2)
    rec = st.estimate(0, None, 1e-3).record(with_losses=True)
    assert rec.coefs.shape == (1, 2) and rec.losses.shape == (1, 2, 2) and rec.history is None
    assert rec.coefs.dtype == np.float32
    assert st.estimate(0, None, 1e-3).record(with_losses=False).losses is None


def test_bad_settings():
    with pytest.raises(ValueError, match="estimator"):
        stepper({}, estimator="adam")
    with pytest.raises(ValueError, match="two directions"):
        stepper({}, estimator="fzoo")
    with pytest.raises(ValueError, match="momentum"):
        stepper({}, momentum=1.0, window=2)
