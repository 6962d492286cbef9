"""mezo_ckpt.core.kernels_cpu_round: the dtype side of the compiled update rule.

Widening every bf16/fp16 bit pattern equals torch's exact conversion; narrowing and the
in-place block rounding (nearest even) equal torch's conversion with canonical NaNs;
stochastic rounding equals :func:`mezo_ckpt.core.update.stochastic_round` with the top
24 bits of each rounding word, including the integers on both sides of each exact
threshold, never rounds a finite value to infinity, and leaves fp32 storage alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mezo_ckpt.core import spec
from mezo_ckpt.core import update as U

R = pytest.importorskip("mezo_ckpt.core.kernels_cpu_round")

HALVES = {R.DT_BF16: torch.bfloat16, R.DT_FP16: torch.float16}
CANONICAL_F32 = 0x7FC00000  # either canonical half NaN, widened


def _inputs(seed: int) -> np.ndarray:
    """fp32 values (as float32): random bit patterns, values near every bf16/fp16
    rounding boundary (ties and their neighbours), fp16 subnormals, overflow edges,
    infinities and NaNs with payloads and signs."""
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32)]
    hi = rng.integers(0, 2**16, 300).astype(np.uint32) << 16
    parts += [hi | off for off in (0x7FFF, 0x8000, 0x8001, 0xFFFF, 1)]
    mid = (rng.integers(0x38800000, 0x47800000, 300).astype(np.uint32) >> 13) << 13
    parts += [mid | off for off in (0xFFF, 0x1000, 0x1001, 0x1FFF, 1)]
    sub = (np.arange(0, 2048, 7, dtype=np.float32) * np.float32(2.0**-25)).view(np.uint32)
    parts += [sub, sub + 1]
    edges = np.array(
        [0x477FE000, 0x477FEFFF, 0x477FF000, 0x7F7F0000, 0x7F7F8000, 0x7F7FFFFF, 0x7F800000]
        + [0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x38800000, 0x387FFFFF, 0x33000000, 0x33000001]
        + [0x00000001, 0x00800000, 0],
        np.uint32,
    )
    parts += [edges, edges | np.uint32(0x80000000)]
    return np.concatenate(parts).view(np.float32)


def _round_block(y: np.ndarray, dt: int, mode: int, rwords=None, roff: int = 0) -> np.ndarray:
    x = y.copy()
    if rwords is None:
        rwords = np.zeros(roff + len(x), np.uint32)
    R._round_block(x, len(x), dt, mode, rwords, roff)
    return x


def _check(got_f32: np.ndarray, want: torch.Tensor) -> None:
    """``got`` (fp32 values already in the dtype) == ``want`` (a half tensor), bit for
    bit where finite-or-inf, and the canonical NaN where ``want`` is NaN."""
    got = torch.from_numpy(got_f32)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].to(want.dtype).view(torch.int16), want[~nan].view(torch.int16))
    assert torch.equal(got[~nan], want[~nan].float())  # exactly representable
    assert (got_f32[nan.numpy()].view(np.uint32) == CANONICAL_F32).all()


def test_codes_and_constants_agree_with_the_spec():
    assert (R.DT_FP32, R.DT_BF16, R.DT_FP16) == (0, 1, 2)
    assert (R.ROUND_NEAREST, R.ROUND_STOCHASTIC) == (0, 1)
    assert [U._STORAGE[d][0] for d in (torch.float32, torch.bfloat16, torch.float16)] == [0, 1, 2]
    assert int(R.NAN_BF16) == spec.CANONICAL_NAN[torch.bfloat16]
    assert int(R.NAN_FP16) == spec.CANONICAL_NAN[torch.float16]
    assert int(R.ROUNDING_DROP) == 32 - spec.ROUNDING_BITS == 8
    assert R._OPTS["fastmath"] is False and R._OPTS["nogil"] is True


@pytest.mark.parametrize("dt", list(HALVES))
def test_widen_every_half_bit_pattern(dt):
    dtype = HALVES[dt]
    patterns = np.arange(0, 65536, 1 if dt == R.DT_FP16 else 5, dtype=np.uint32)
    got = np.array([R._widen(np.uint16(p), dt) for p in patterns], np.float32)
    want = torch.from_numpy(patterns.astype(np.int32)).to(torch.int16).view(dtype).float()
    nan = torch.isnan(want).numpy()
    np.testing.assert_array_equal(np.isnan(got), nan)
    # finite and infinite values exactly (sign of zero and subnormals included)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want.numpy()[~nan].view(np.uint32))


def test_widen_fp32_is_the_bit_pattern():
    for bits in (0x3F800000, 0x80000000, 0x00000001, 0x7F7FFFFF, 0xFF800000):
        got = R._widen(np.uint32(bits), R.DT_FP32)
        assert np.float32(got).view(np.uint32) == bits


@pytest.mark.parametrize("dt", list(HALVES))
def test_narrow_is_nearest_even_with_canonical_nan(dt):
    dtype = HALVES[dt]
    y = _inputs(1)[::4]
    got = np.array([R._narrow(np.float32(v), dt) for v in y], np.uint32)
    want = torch.from_numpy(y).to(dtype)
    nan = torch.isnan(want).numpy()
    wbits = want.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF
    np.testing.assert_array_equal(got[~nan], wbits[~nan])
    assert (got[nan] == spec.CANONICAL_NAN[dtype]).all()
    assert R._narrow(np.float32(-np.nan), dt) == spec.CANONICAL_NAN[dtype]
    assert R._narrow(np.float32(1.5), R.DT_FP32) == np.float32(1.5).view(np.uint32)


@pytest.mark.parametrize("dt", list(HALVES))
def test_round_block_nearest_equals_torch(dt):
    y = _inputs(2)
    _check(_round_block(y, dt, R.ROUND_NEAREST), torch.from_numpy(y).to(HALVES[dt]))


@pytest.mark.parametrize("dt", list(HALVES))
def test_round_block_stochastic_equals_the_reference(dt):
    """Random integers, zero, the largest, and both sides of each exact threshold; the
    low 8 bits of each rounding word are ignored; ``roff`` selects the words."""
    dtype = HALVES[dt]
    y = _inputs(3)
    yt = torch.from_numpy(y)
    rng = np.random.default_rng(4)
    near = yt.to(dtype)
    yd = yt.double()
    over = near.double().abs() > yd.abs()
    a = torch.where(over, torch.nextafter(near, torch.zeros_like(near)), near)
    b = torch.nextafter(a, torch.where(yd < 0, -torch.inf, torch.inf).to(dtype))
    frac = (yd.abs() - a.double().abs()) / (b.double().abs() - a.double().abs())
    thr = torch.nan_to_num(torch.ceil(frac * 2.0**24), nan=0.0, posinf=0.0, neginf=0.0)
    thr = thr.clamp(0, 2**24).to(torch.int64)
    candidates = [
        torch.from_numpy(rng.integers(0, 2**24, y.size)),
        (thr - 1).clamp(0, 2**24 - 1),
        thr.clamp(0, 2**24 - 1),
        torch.zeros_like(thr),
        torch.full_like(thr, 2**24 - 1),
    ]
    for i, r in enumerate(candidates):
        roff = 3 * i
        words = rng.integers(0, 2**32, roff + y.size, dtype=np.uint64).astype(np.uint32)
        words[roff:] = (r.numpy().astype(np.uint32) << 8) | (words[roff:] & 0xFF)
        got = _round_block(y, dt, R.ROUND_STOCHASTIC, words, roff)
        _check(got, U.stochastic_round(yt, r, dtype))


@pytest.mark.parametrize("dt,largest", [(R.DT_BF16, 0x7F7F), (R.DT_FP16, 0x7BFF)])
def test_stochastic_never_rounds_to_infinity(dt, largest):
    dtype = HALVES[dt]
    big = torch.tensor([largest], dtype=torch.int16).view(dtype).float().item()
    y = np.array([big, big * 1.001, -big * 1.001, 3.4e38, -3.4e38, np.inf], np.float32)
    got = _round_block(y, dt, R.ROUND_STOCHASTIC, np.zeros(len(y), np.uint32))
    assert (np.abs(got[:-1]) == np.float32(big)).all()
    assert np.array_equal(np.sign(got[:-1]), np.sign(y[:-1]))
    assert got[-1] == np.inf  # infinity itself stays


@pytest.mark.parametrize("dt", list(HALVES))
def test_stochastic_rounding_is_unbiased_on_average(dt):
    """r < frac * 2**24 with uniform r rounds up a fraction frac of the time."""
    dtype = HALVES[dt]
    one_ulp = {R.DT_BF16: 2.0**-7, R.DT_FP16: 2.0**-10}[dt]
    n = 20_000
    y = np.full(n, 1.0 + 0.25 * one_ulp, np.float32)
    words = np.random.default_rng(5).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    got = _round_block(y, dt, R.ROUND_STOCHASTIC, words)
    assert set(np.unique(got).tolist()) == {1.0, 1.0 + one_ulp}
    assert abs((got > 1.0).mean() - 0.25) < 0.02
    assert torch.from_numpy(got).to(dtype).float().numpy().tolist() == got.tolist()


def test_round_block_fp32_and_partial_blocks():
    y = _inputs(6)[:500]
    same = _round_block(y, R.DT_FP32, R.ROUND_STOCHASTIC)
    np.testing.assert_array_equal(same.view(np.uint32), y.view(np.uint32))
    x = np.array([1.0 + 2.0**-9, 1.0 + 2.0**-9, 1.0 + 2.0**-9], np.float32)
    R._round_block(x, 2, R.DT_BF16, R.ROUND_NEAREST, np.zeros(3, np.uint32), 0)
    assert x.tolist() == [1.0, 1.0, 1.0 + 2.0**-9]  # only the first n elements
