"""mezo_ckpt.rebuild.plan: what a plan resolves before any base is loaded, the steps a
repair segment applies, and the delta checks that need no base."""

from __future__ import annotations

import pytest
import torch
from paths import GOLDEN

from mezo_ckpt.errors import DeltaError, UnverifiedStepError, VerificationError
from mezo_ckpt.rebuild import DeltaEdit, Plan
from mezo_ckpt.trajectory import read_trajectory

CHAINED = GOLDEN / "llama-bf16-stochastic-chained.zst"


def test_a_plan_resolves_its_step_and_refuses_what_nothing_binds():
    traj = read_trajectory(CHAINED)
    assert Plan.make(traj).step == traj.num_steps
    assert Plan.make(traj, "3").step == 3
    traj.checkpoints.clear()
    traj.chains.clear()
    with pytest.raises(UnverifiedStepError):
        Plan.make(traj, 3)
    assert Plan.make(traj, 3, allow_unverified=True).step == 3


def test_a_segment_applies_only_its_steps():
    traj = read_trajectory(CHAINED)
    whole, tail = Plan(traj, 10), Plan(traj, 10, start=6)
    assert set(tail.batch.steps.tolist()) == {s for s in whole.batch.steps.tolist() if s >= 6}
    assert whole.needs_fingerprint is (10 in traj.checkpoints)


def _delta(**prov):
    tensors = {"w": torch.zeros(4)}
    base = {"kind": "local", "dtype": "float32", "tensors_sha256": "0" * 64}
    return tensors, {"kind": "delta", "base": base, "tuned_sha256": "1" * 64, **prov}


def test_delta_checks_that_need_no_base():
    tensors, prov = _delta()
    edit = DeltaEdit.from_file(tensors, prov, "d")
    assert edit.trained == ("w",) and edit.pinned is None  # a 0.2 delta: root digest only
    with pytest.raises(VerificationError):
        edit.judge("2" * 64)
    for bad in (
        {"tuned_sha256": None},
        {"base": "x"},
        {"base_identity": {"kind": 3}},
        {"base": {"kind": "local", "dtype": "float32"}},  # nothing pins the base
    ):
        t, p = _delta(**bad)
        with pytest.raises(DeltaError):
            DeltaEdit.from_file(t, p, "d")
    with pytest.raises(DeltaError, match="float32"):
        DeltaEdit.from_file({"w": torch.zeros(4, dtype=torch.int32)}, _delta()[1], "d")
    with pytest.raises(DeltaError, match="outside"):
        DeltaEdit.from_file(
            {"w": torch.zeros(4), "w::fix_index": torch.tensor([9]),
             "w::fix_value": torch.tensor([1.0])},
            _delta()[1], "d",
        )  # fmt: skip
