"""mezo_ckpt.trainer.schedule: warm-up, constant/linear/cosine decay, floors, bad input."""

from __future__ import annotations

import math

import pytest

from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.resume import EXTENSIBLE_SCHEDULES
from mezo_ckpt.trainer.schedule import SCHEDULES, learning_rate


def lr_of(step: int, schedule: str, total: int = 10, **kw) -> float:
    return learning_rate(step, lr=1.0, total_steps=total, schedule=schedule, **kw)


def test_schedules_are_the_config_choices():
    assert SCHEDULES == ("constant", "linear", "cosine")
    assert TrainConfig.option("schedule").choices == SCHEDULES


def test_default_schedule_is_constant():
    assert learning_rate(5, lr=3e-5, total_steps=10) == 3e-5


@pytest.mark.parametrize("step", [0, 1, 9, 10, 11, 10**6])
def test_constant_is_the_peak_at_every_step(step):
    assert learning_rate(step, lr=3e-5, total_steps=10, schedule="constant") == 3e-5
    # the floor is a floor of the decay; a constant schedule does not decay
    assert lr_of(step, "constant", min_lr_ratio=0.5) == 1.0


@pytest.mark.parametrize(
    "step, expected", [(0, 1.0), (1, 0.9), (5, 0.5), (9, 0.1), (10, 0.0), (11, 0.0), (100, 0.0)]
)
def test_linear_values(step, expected):
    assert lr_of(step, "linear") == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1.0),
        (5, 0.5),
        (10, 0.0),
        (15, 0.0),
        (1, 0.5 * (1 + math.cos(math.pi * 0.1))),
        (9, 0.5 * (1 + math.cos(math.pi * 0.9))),
    ],
)
def test_cosine_values(step, expected):
    assert lr_of(step, "cosine") == pytest.approx(expected, abs=1e-15)


def test_cosine_is_above_linear_in_the_first_half_and_below_in_the_second():
    for step in range(1, 5):
        assert lr_of(step, "cosine") > lr_of(step, "linear")
    for step in range(6, 10):
        assert lr_of(step, "cosine") < lr_of(step, "linear")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warmup_rises_linearly_to_the_peak(schedule):
    got = [
        learning_rate(s, lr=2e-4, total_steps=20, schedule=schedule, warmup_steps=4)
        for s in range(5)
    ]
    assert got[:4] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4])
    # the first step after warm-up is the peak: decay starts there
    assert got[4] == pytest.approx(2e-4)
    assert all(a < b for a, b in zip(got[:4], got[1:4]))


def test_warmup_one_step_is_no_warmup():
    for schedule in SCHEDULES:
        assert lr_of(0, schedule, warmup_steps=1) == lr_of(0, schedule)


@pytest.mark.parametrize("step, expected", [(2, 1.0), (7, 0.5), (11, 0.1), (12, 0.0), (20, 0.0)])
def test_linear_decay_spans_the_steps_after_warmup(step, expected):
    assert lr_of(step, "linear", total=12, warmup_steps=2) == pytest.approx(expected, abs=1e-15)


def test_cosine_midpoint_after_warmup():
    assert lr_of(7, "cosine", total=12, warmup_steps=2) == pytest.approx(0.5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_lr_ratio_is_the_floor(schedule):
    ratio = 0.1
    end = lr_of(10, schedule, min_lr_ratio=ratio)
    assert end == pytest.approx(0.1)
    assert lr_of(50, schedule, min_lr_ratio=ratio) == pytest.approx(0.1)
    assert lr_of(5, schedule, min_lr_ratio=ratio) == pytest.approx(0.55)
    assert lr_of(0, schedule, min_lr_ratio=ratio) == pytest.approx(1.0)
    values = [lr_of(s, schedule, min_lr_ratio=ratio) for s in range(30)]
    assert min(values) == pytest.approx(0.1)
    assert all(0.1 - 1e-12 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_never_increases(schedule):
    values = [lr_of(s, schedule, total=50, warmup_steps=5) for s in range(5, 60)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[0] == 1.0 and values[-1] == 0.0


def test_ratio_one_keeps_the_peak():
    for schedule in SCHEDULES:
        assert {lr_of(s, schedule, min_lr_ratio=1.0) for s in range(12)} == {1.0}


def test_lr_zero_is_zero_everywhere():
    for schedule in SCHEDULES:
        assert {
            learning_rate(s, lr=0.0, total_steps=5, schedule=schedule, warmup_steps=2)
            for s in range(8)
        } == {0.0}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("total, warmup", [(0, 0), (1, 0), (3, 3), (2, 5)])
def test_degenerate_lengths_do_not_divide_by_zero(schedule, total, warmup):
    for step in range(8):
        v = lr_of(step, schedule, total=total, warmup_steps=warmup)
        assert 0.0 <= v <= 1.0
    # a one-step run trains its one step at the peak
    if warmup == 0:
        assert lr_of(0, schedule, total=total) == 1.0


def test_warmup_longer_than_the_run_then_floor():
    # warm-up covers steps 0..4; with no room left to decay, the next step is the floor
    assert lr_of(4, "linear", total=2, warmup_steps=5) == 1.0
    assert lr_of(5, "linear", total=2, warmup_steps=5) == 1.0
    assert lr_of(6, "linear", total=2, warmup_steps=5, min_lr_ratio=0.25) == 0.25


def test_returns_python_floats():
    for schedule in SCHEDULES:
        assert type(learning_rate(3, lr=1.0, total_steps=10, schedule=schedule)) is float


@pytest.mark.parametrize("name", ["step", "Cosine", "LINEAR", "", "cosine_with_restarts"])
def test_unknown_schedule(name):
    with pytest.raises(ValueError, match="unknown schedule") as e:
        learning_rate(0, lr=1.0, total_steps=10, schedule=name)
    assert "cosine" in str(e.value)


def _independent_of_length(schedule: str) -> bool:
    """Whether the steps a run already recorded keep their rate when the run grows."""
    for warmup in (0, 3):
        short = [lr_of(s, schedule, total=10, warmup_steps=warmup) for s in range(10)]
        longer = [lr_of(s, schedule, total=20, warmup_steps=warmup) for s in range(10)]
        if short != longer:
            return False
    return True


def test_extensible_schedules_are_exactly_those_independent_of_the_run_length():
    independent = {s for s in SCHEDULES if _independent_of_length(s)}
    assert independent == {"constant"}
    assert set(EXTENSIBLE_SCHEDULES) == independent
