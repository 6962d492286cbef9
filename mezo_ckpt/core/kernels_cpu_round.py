"""Compiled CPU kernels (numba): the dtype side of the update rule. Widening bf16/fp16
bit patterns to fp32, rounding fp32 back (nearest-even, or stochastic with the stream's
24-bit integers, exactly as :func:`mezo_ckpt.core.update.stochastic_round` specifies),
with canonical NaNs. :mod:`mezo_ckpt.core.kernels_cpu` builds the replay and perturbation
kernels on these."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from mezo_ckpt.core import spec as _S

#: Storage codes: how a tensor's elements are stored (its bit view's element type).
DT_FP32, DT_BF16, DT_FP16 = 0, 1, 2
#: Rounding codes.
ROUND_NEAREST, ROUND_STOCHASTIC = 0, 1
#: Canonical NaN bit patterns (spec.CANONICAL_NAN).
NAN_BF16 = np.uint16(0x7FC0)
NAN_FP16 = np.uint16(0x7E00)
ROUNDING_DROP = np.uint32(32 - _S.ROUNDING_BITS)

_OPTS = dict(cache=True, fastmath=False, error_model="numpy", boundscheck=False, nogil=True)


# ----------------------------------------------------------------------------- bit casts


@intrinsic
def _f32_bits(typingctx, x):
    """Bit pattern of a float32 as uint32 (a register bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def _f32_from_bits(typingctx, b):
    """float32 with the given uint32 bit pattern."""
    if b != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(b), codegen


# ----------------------------------------------------------------------------- dtypes


@njit(inline="always")
def _widen(bits, dt):
    """fp32 value of one stored element (exact for every storage dtype)."""
    u = np.uint32(bits)
    if dt == DT_FP32:
        return _f32_from_bits(np.uint32(u))
    if dt == DT_BF16:
        return _f32_from_bits(np.uint32(u << np.uint32(16)))
    # fp16 -> fp32
    s = (u & np.uint32(0x8000)) << np.uint32(16)
    e = (u >> np.uint32(10)) & np.uint32(0x1F)
    m = u & np.uint32(0x3FF)
    if e == 0:
        if m == 0:
            return _f32_from_bits(np.uint32(s))
        v = np.float32(m) * np.float32(2.0**-24)  # exact: a normal fp32
        return _f32_from_bits(np.uint32(s | _f32_bits(v)))
    if e == 0x1F:
        return _f32_from_bits(np.uint32(s | np.uint32(0x7F800000) | (m << np.uint32(13))))
    return _f32_from_bits(
        np.uint32(s | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13)))
    )


@njit(inline="always")
def _bf16_nearest(y):
    """fp32 -> bf16 bits, round to nearest even (torch's rule); NaN -> canonical."""
    b = _f32_bits(y)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return NAN_BF16
    r = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    return np.uint16(r)


@njit(inline="always")
def _fp16_nearest(y):
    """fp32 -> IEEE fp16 bits, round to nearest even; overflow -> inf; NaN -> canonical."""
    b = _f32_bits(y)
    s = np.uint16((b >> np.uint32(16)) & np.uint32(0x8000))
    a = b & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):
        return NAN_FP16
    if a >= np.uint32(0x477FF000):  # |y| >= 65520: rounds to infinity
        return s | np.uint16(0x7C00)
    if a >= np.uint32(0x38800000):  # normal in fp16: drop 13 bits, ties to even
        r = a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))
        return s | np.uint16((r - np.uint32(0x38000000)) >> np.uint32(13))
    q = _f32_from_bits(np.uint32(a)) * np.float32(2.0**24)  # exact; units of the fp16 subnormal ulp
    return s | np.uint16(np.rint(q))


@njit(inline="always")
def _bf16_stochastic(y, r):
    """fp32 -> bf16 bits, rounded up (away from zero) iff r < frac * 2^24 (docs §10.3).

    With the dropped 16 bits ``d`` the exact fraction is ``d / 2^16``, so the rule is
    ``(r >> 8) < d``; the largest finite value never rounds up to infinity.
    """
    b = _f32_bits(y)
    a = b & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):  # inf or NaN: nearest
        return _bf16_nearest(y)
    s = np.uint16((b >> np.uint32(16)) & np.uint32(0x8000))
    hi = np.uint16(a >> np.uint32(16))
    if hi >= np.uint16(0x7F7F):  # the largest finite bf16 never rounds up to infinity
        return s | np.uint16(0x7F7F)
    d = a & np.uint32(0xFFFF)
    up = (np.uint32(r) >> np.uint32(8)) < d
    return s | (hi + np.uint16(1 if up else 0))


@njit(inline="always")
def _fp16_stochastic(y, r):
    """fp32 -> fp16 bits, rounded up (away from zero) iff r < frac * 2^24 (docs §10.3)."""
    b = _f32_bits(y)
    a = b & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):
        return _fp16_nearest(y)
    s = np.uint16((b >> np.uint32(16)) & np.uint32(0x8000))
    if a >= np.uint32(0x477FE000):  # |y| >= 65504, the largest finite: toward zero
        return s | np.uint16(0x7BFF)
    if a >= np.uint32(0x38800000):  # normal: frac = d / 2^13 with d the dropped 13 bits
        lo16 = np.uint16((a - np.uint32(0x38000000)) >> np.uint32(13))
        d = a & np.uint32(0x1FFF)
        up = (np.uint32(r) >> np.uint32(11)) < d
        return s | (lo16 + np.uint16(1 if up else 0))
    # subnormal in fp16: q = |y| / 2^-24, a = floor(q), frac = q - a (all exact)
    q = _f32_from_bits(np.uint32(a)) * np.float32(2.0**24)
    k = np.floor(q)
    frac = np.float64(q - k) * 2.0**24
    up = np.float64(r) < frac
    return s | np.uint16(np.uint32(k) + np.uint32(1 if up else 0))


@njit(inline="always")
def _narrow(y, dt):
    """Stored bits of an fp32 value already rounded to the dtype (NaN canonical)."""
    if dt == DT_FP32:
        return _f32_bits(y)
    if dt == DT_BF16:
        return np.uint32(_bf16_nearest(y))
    return np.uint32(_fp16_nearest(y))


@njit(**_OPTS)
def _round_block(x, n, dt, mode, rwords, roff):
    """Round the fp32 working values to the dtype (kept as fp32) in place."""
    if dt == DT_BF16:
        if mode == ROUND_STOCHASTIC:
            for i in range(n):
                h = _bf16_stochastic(x[i], rwords[roff + i] >> ROUNDING_DROP)
                x[i] = _f32_from_bits(np.uint32(np.uint32(h) << np.uint32(16)))
        else:
            for i in range(n):
                x[i] = _f32_from_bits(np.uint32(np.uint32(_bf16_nearest(x[i])) << np.uint32(16)))
    elif dt == DT_FP16:
        if mode == ROUND_STOCHASTIC:
            for i in range(n):
                x[i] = _widen(_fp16_stochastic(x[i], rwords[roff + i] >> ROUNDING_DROP), DT_FP16)
        else:
            for i in range(n):
                x[i] = _widen(_fp16_nearest(x[i]), DT_FP16)
