"""mezo_ckpt.trajectory.steps: which step a request means, whether a file binds it, and
the one verdict and sentence every command prints."""

from __future__ import annotations

import pytest
from helpers_format import HEX_A, HEX_B, make_trajectory
from paths import GOLDEN

from mezo_ckpt.errors import StepOutOfRangeError, UnverifiedStepError, VerificationError
from mezo_ckpt.trajectory import read_trajectory
from mezo_ckpt.trajectory.steps import (
    best_step,
    check_verifiable,
    describe_verification,
    judge,
    resolve_step,
)


def test_resolve_step_forms():
    t = make_trajectory(
        6, evaluations=[(0, "dev", {"accuracy": 0.5}), (4, "dev", {"accuracy": 0.7})]
    )
    assert resolve_step(t, None) == resolve_step(t, "last") == 6
    assert resolve_step(t, "best") == best_step(t) == 4
    assert resolve_step(t, "3") == 3 and resolve_step(t, 0) == 0
    for bad in (7, -1, "x", True, 2.5):
        with pytest.raises(StepOutOfRangeError):
            resolve_step(t, bad)


def test_best_prefers_dev_then_lower_loss_then_earlier():
    t = make_trajectory(
        8,
        evaluations=[
            (2, "dev", {"accuracy": 0.7, "loss": 0.9}),
            (4, "dev", {"accuracy": 0.7, "loss": 0.5}),
            (6, "test", {"accuracy": 0.9}),
        ],
    )
    assert best_step(t) == 4
    with pytest.raises(StepOutOfRangeError):
        best_step(make_trajectory(3, evaluations=[]))


def test_judge_is_the_one_verdict():
    t = make_trajectory(4, checkpoints={4: HEX_A})
    assert judge(t, 4, HEX_A) == ("fingerprint", None)
    assert judge(t, 4, None, verify=False) == (None, None)  # a 1.0 file: nothing binds it
    with pytest.raises(VerificationError):
        judge(t, 4, HEX_B)
    bound = read_trajectory(GOLDEN / "llama-bf16-stochastic-chained.zst")
    last = bound.num_steps
    assert judge(bound, last // 2, None) == ("records", last)
    assert describe_verification("records", last).startswith("records verified by the")
    assert describe_verification("fingerprint").startswith("verified:")
    assert describe_verification(None).startswith("NOT verified")


def test_a_step_after_the_last_checkpoint_needs_asking():
    bound = read_trajectory(GOLDEN / "llama-bf16-stochastic-chained.zst", allow_truncated_tail=True)
    bound.checkpoints.clear()
    bound.chains.clear()
    with pytest.raises(UnverifiedStepError):
        check_verifiable(bound, 3)
    check_verifiable(bound, 3, allow_unverified=True)
    check_verifiable(bound, 0)  # the base itself is always fine
