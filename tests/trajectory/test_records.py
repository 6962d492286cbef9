"""mezo_ckpt.trajectory.records: the size of a record, its bytes (written here from the
spec by helpers_format.pack_records), the round trip with every optional column, and each
validation rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers_format import make_records, pack_records

from mezo_ckpt.errors import RecordError
from mezo_ckpt.trajectory.records import (
    FLAG_SKIPPED,
    StepRecords,
    decode_records,
    encode_records,
    record_size,
    validate_records,
)


def test_record_size_is_the_formula_of_the_spec():
    assert record_size(1, decay=False, losses=False) == 4
    assert record_size(2, decay=True, losses=True) == 1 + 6 + 4 + 16
    assert record_size(3, decay=False, losses=False, history=4) == 1 + 9 + 36


def test_bytes_match_an_independent_packing():
    rec = make_records(5, 2, seed=3)
    assert encode_records(rec, decay=False) == pack_records(rec.coefs.tolist())


@pytest.mark.parametrize(
    "decay, losses, window", [(False, False, 0), (True, True, 0), (True, False, 3)]
)
def test_round_trip_with_every_optional_column(decay, losses, window):
    rec = make_records(6, 2, decay=decay, losses=losses, seed=1, skip=[2])
    if window:
        hist = np.zeros((6, window, 2), np.float32)
        hist[4, 0, 1] = rec.coefs[3, 0]  # step 4 re-applies direction 1 of step 3
        rec = dataclasses.replace(rec, history=hist)
    data = encode_records(rec, decay=decay)
    back = decode_records(data, 2, decay=decay, losses=losses, history=window)
    assert np.array_equal(back.flags, rec.flags) and np.array_equal(back.coefs, rec.coefs)
    assert np.array_equal(back.decay, rec.decay)
    if losses:
        assert np.array_equal(back.losses, rec.losses)
    if window:
        assert np.array_equal(back.history, rec.history)
    batch = back.update_batch()
    assert 2 not in batch.steps.tolist() and len(batch) == 5  # the skipped step is absent


def _one(coef=2.0**-7, flags=0, decay=1.0, history=None) -> StepRecords:
    hist = None if history is None else np.array([history], np.float32)
    return StepRecords(
        np.array([flags], np.uint8), np.array([[coef]], np.float32), np.array([decay], np.float32),
        None, hist,
    )  # fmt: skip


@pytest.mark.parametrize(
    "rec, match",
    [
        (_one(flags=0x80), "unknown flag bits"),
        (_one(coef=float("nan")), "non-finite coefficient"),
        (_one(coef=1.0 + 2.0**-20), "13"),
        (_one(coef=2.0**-110), "13|2\\^-100|range"),
        (_one(decay=0.0), "decay multiplier"),
        (_one(decay=1.5), "decay multiplier"),
        (_one(history=[[2.0**-7]]), "before step 0"),
    ],
    ids=["flags", "nan", "14-bits", "tiny", "decay-0", "decay-1.5", "history-before-0"],
)
def test_each_rule_is_a_record_error(rec, match):
    with pytest.raises(RecordError, match=match):
        validate_records(rec)


def test_a_skipped_step_may_hold_non_finite_values():
    validate_records(_one(coef=0.0, flags=FLAG_SKIPPED))


def test_record_bytes_not_a_multiple_of_the_size():
    with pytest.raises(RecordError, match="multiple"):
        decode_records(b"\x00" * 7, 1, decay=False, losses=False)
