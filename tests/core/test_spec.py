"""mezo_ckpt.core.spec: the constants of docs/FORMAT.md.

The Philox constants give Random123's known answers (through a ten-line Philox written
here from the constants alone); the normal16 table has the construction, symmetry,
digest and moments the spec states (§9.4, §9.6), its float32 form is exact; the layout
constants agree with each other (128 bits per Philox block); the canonical NaNs are
quiet NaNs of their dtype; and a table whose digest differs is refused.
"""

from __future__ import annotations

import hashlib
import math
import struct
from statistics import NormalDist

import numpy as np
import pytest
import torch

from mezo_ckpt.core import spec as S


def _philox(counter, key):
    """Philox4x32 from the spec's constants only (independent of mezo_ckpt.core.stream)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(S.PHILOX_ROUNDS):
        p0, p1 = S.PHILOX_M0 * c0, S.PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ k0,
            p1 & S.MASK32,
            (p0 >> 32) ^ c3 ^ k1,
            p0 & S.MASK32,
        )
        k0, k1 = (k0 + S.PHILOX_W0) & S.MASK32, (k1 + S.PHILOX_W1) & S.MASK32
    return c0, c1, c2, c3


@pytest.mark.parametrize(
    "counter,key,want",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((S.MASK32,) * 4, (S.MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
    ids=["zeros", "ones", "pi"],
)
def test_philox_constants_give_random123_known_answers(counter, key, want):
    assert S.GENERATOR == "philox4x32-10" and S.PHILOX_ROUNDS == 10
    assert _philox(counter, key) == want


def test_stream_layout_constants_agree():
    assert S.Z_KINDS == ("normal16", "rademacher")
    assert set(S.ELEMENTS_PER_BLOCK) == set(S.ELEMENT_SHIFT) == set(S.KIND_CODES) == set(S.Z_KINDS)
    assert sorted(S.KIND_CODES.values()) == [0, 1]
    # one Philox call makes 4 x 32 = 128 bits: 8 indices of 16 bits, or 128 signs
    bits_per_element = {"normal16": 16, "rademacher": 1}
    for kind, per in S.ELEMENTS_PER_BLOCK.items():
        assert per == 1 << S.ELEMENT_SHIFT[kind]
        assert per * bits_per_element[kind] == 128
    assert S.ROUNDING_PER_BLOCK * 32 == 128
    assert 0 < S.ROUNDING_BITS <= 32
    assert S.LANE_ROUNDING == 2**31 and S.MASK32 == 2**32 - 1
    assert S.KEY_RULE == "sha256-seed-name-v1"


def test_arithmetic_constants():
    assert S.ARITHMETIC == "exact-v1"
    assert S.ROUNDING_MODES == ("nearest", "stochastic")
    assert S.Z_QUANTUM == 2.0**-8
    assert (S.COEF_MIN, S.COEF_MAX) == (2.0**-100, 2.0**100)
    # a 13-bit coefficient times an 11-bit z fits fp32's 24-bit significand
    assert S.COEF_SIGNIFICANT_BITS + 11 <= 24


@pytest.mark.parametrize("dtype,bits", [(torch.bfloat16, 0x7FC0), (torch.float16, 0x7E00)])
def test_canonical_nans_are_quiet_nans_of_their_dtype(dtype, bits):
    assert S.CANONICAL_NAN[dtype] == bits
    assert set(S.CANONICAL_NAN) == {torch.bfloat16, torch.float16}
    value = torch.tensor([bits], dtype=torch.int16).view(dtype)
    assert torch.isnan(value).all()
    # positive sign, and the quiet bit (top bit of the significand) set
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    assert bits < 0x8000 and bits >> (mantissa_bits - 1) & 1


def test_normal16_table_construction_and_digest():
    t = S.normal16_table_int()
    assert isinstance(t, tuple) and len(t) == 65536
    assert hashlib.sha256(struct.pack("<65536h", *t)).hexdigest() == S.NORMAL16_SHA256
    nd = NormalDist()
    for i in (0, 1, 100, 16316, 20000, 32767):
        assert t[i] == round(256.0 * nd.inv_cdf((i + 0.5) / 65536.0))
    assert all(t[65535 - i] == -t[i] for i in range(32768))
    assert all(a <= b for a, b in zip(t, t[1:]))  # quantiles: non-decreasing
    assert S.normal16_table_int() is t  # computed once


def test_normal16_table_properties_from_the_spec():
    """docs/FORMAT.md §9.4 and §9.6: extremes, zeros, moments."""
    t = S.normal16_table_int()
    assert (t[0], t[65535]) == (-1107, 1107)
    assert t.count(0) == 102
    assert sum(t) == 0
    assert sum(v * v for v in t) == 4294886358
    assert sum(v**4 for v in t) == 844177123093950
    assert math.isclose(sum(v * v for v in t) / 65536 / 65536, 0.9999811551533639)
    assert max(abs(v) for v in t) < 2**11  # 11 significant bits at most


def test_normal16_table_numpy_is_exact_and_cached():
    table = S.normal16_table_numpy()
    assert table.dtype == np.float32 and table.shape == (65536,)
    ints = np.asarray(S.normal16_table_int(), dtype=np.int64)
    np.testing.assert_array_equal((table.astype(np.float64) * 256).astype(np.int64), ints)
    assert float(table.max()) == 4.32421875 and float(table.min()) == -4.32421875
    assert S.normal16_table_numpy() is table


def test_normal16_table_refuses_another_digest(monkeypatch):
    S.normal16_table_int.cache_clear()
    monkeypatch.setattr(S, "NORMAL16_SHA256", "0" * 64)
    try:
        with pytest.raises(RuntimeError, match="normal16 table hash mismatch: 586fabbe"):
            S.normal16_table_int()
    finally:
        monkeypatch.undo()
        S.normal16_table_int.cache_clear()
    assert len(S.normal16_table_int()) == 65536
