"""Triton device functions shared by the kernels of :mod:`mezo_ckpt.core.kernels_triton`:
Philox4x32-10, the z kinds and stochastic-rounding integers from its words, and the
dtype side of the update rule (widening, nearest-even and stochastic rounding, canonical
NaNs), as the spec defines them (constants from :mod:`mezo_ckpt.core.spec`)."""

import torch

from mezo_ckpt.core import spec as _S
from mezo_ckpt.core.spec import CANONICAL_NAN as _CANONICAL_NAN

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Exception | None = None
except Exception as _e:  # pragma: no cover - exercised only where triton is missing
    _IMPORT_ERROR = _e

    class _NoTriton:
        """Just enough of ``triton`` / ``triton.language`` to define (never run) kernels."""

        @staticmethod
        def constexpr(value=None):
            return value

        @staticmethod
        def jit(fn=None, **_kw):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _NoTriton()  # type: ignore[assignment]


#: Storage codes by dtype (same numbering as mezo_ckpt.core.kernels_cpu).
DT_FP32, DT_BF16, DT_FP16 = 0, 1, 2
ROUND_NEAREST, ROUND_STOCHASTIC = 0, 1

_M0 = tl.constexpr(_S.PHILOX_M0)
_M1 = tl.constexpr(_S.PHILOX_M1)
_W0 = tl.constexpr(_S.PHILOX_W0)
_W1 = tl.constexpr(_S.PHILOX_W1)
_ROUNDS = tl.constexpr(_S.PHILOX_ROUNDS)
_KIND_NORMAL16 = tl.constexpr(_S.KIND_CODES["normal16"])
_SHIFT_NORMAL16 = tl.constexpr(_S.ELEMENT_SHIFT["normal16"])
_SHIFT_RADEMACHER = tl.constexpr(_S.ELEMENT_SHIFT["rademacher"])
_SHIFT_ROUNDING = tl.constexpr(_S.ROUNDING_PER_BLOCK.bit_length() - 1)
_PER_NORMAL16 = tl.constexpr(_S.ELEMENTS_PER_BLOCK["normal16"])
_PER_RADEMACHER = tl.constexpr(_S.ELEMENTS_PER_BLOCK["rademacher"])
_PER_ROUNDING = tl.constexpr(_S.ROUNDING_PER_BLOCK)
_ROUNDING_DROP = tl.constexpr(32 - _S.ROUNDING_BITS)
_LANE_ROUNDING = tl.constexpr(_S.LANE_ROUNDING)
_NAN_BF16 = tl.constexpr(_CANONICAL_NAN[torch.bfloat16])
_NAN_FP16 = tl.constexpr(_CANONICAL_NAN[torch.float16])
_DT_FP32 = tl.constexpr(DT_FP32)
_DT_BF16 = tl.constexpr(DT_BF16)
_MODE_STOCHASTIC = tl.constexpr(ROUND_STOCHASTIC)
assert 1 << _S.ROUNDING_PER_BLOCK.bit_length() - 1 == _S.ROUNDING_PER_BLOCK
assert all(_S.ELEMENTS_PER_BLOCK[k] == 1 << v for k, v in _S.ELEMENT_SHIFT.items())


# ----------------------------------------------------------------------------- Philox


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors (key words: uint32 scalars)."""
    for _ in tl.static_range(_ROUNDS):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _philox_words(b0, NB: tl.constexpr, step, lane, k0, k1):
    """Words of counter blocks ``b0 .. b0+NB-1`` as uint32 [NB, 4] (row b: w0 w1 w2 w3)."""
    b = b0 + tl.arange(0, NB).to(tl.int64)
    c0 = (b & 0xFFFFFFFF).to(tl.uint32)
    c1 = (b >> 32).to(tl.uint32)
    c2 = tl.zeros([NB], dtype=tl.uint32) + step
    c3 = tl.zeros([NB], dtype=tl.uint32) + lane
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    # join(join(w0, w2), join(w1, w3))[b, i, j] = w_{2i + j}: row-major order w0 w1 w2 w3
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [NB, 4])


@triton.jit
def _normal16_index(base, step, lane, k0, k1, BLOCK: tl.constexpr):
    """normal16 table index (int32 [BLOCK]) of global elements base .. base+BLOCK-1."""
    w = _philox_words(base >> _SHIFT_NORMAL16, BLOCK // _PER_NORMAL16, step, lane, k0, k1)
    # element 8b + 2i takes the low half of w_i, 8b + 2i + 1 the high half
    return tl.reshape(tl.join(w & 0xFFFF, w >> 16), [BLOCK]).to(tl.int32)


@triton.jit
def _rademacher_bits(base, step, lane, k0, k1, BLOCK: tl.constexpr):
    """Sign bit (uint32 0/1 [BLOCK], 1 means z = -1) of global elements base ..."""
    w = _philox_words(base >> _SHIFT_RADEMACHER, BLOCK // _PER_RADEMACHER, step, lane, k0, k1)
    shifts = tl.arange(0, 32).to(tl.uint32)
    # element 128b + 32i + k takes bit k of w_i
    return tl.reshape((w[:, :, None] >> shifts[None, None, :]) & 1, [BLOCK])


@triton.jit
def _rounding_ints(base, step, lane, k0, k1, BLOCK: tl.constexpr):
    """24-bit stochastic-rounding integers (uint32 [BLOCK]): element 4b + j uses w_j >> 8."""
    w = _philox_words(base >> _SHIFT_ROUNDING, BLOCK // _PER_ROUNDING, step, lane, k0, k1)
    return tl.reshape(w, [BLOCK]) >> _ROUNDING_DROP


@triton.jit
def _z(table_ptr, base, step, lane, k0, k1, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """z (fp32 [BLOCK]) of global elements base .. base+BLOCK-1."""
    if KIND == _KIND_NORMAL16:
        z = tl.load(table_ptr + _normal16_index(base, step, lane, k0, k1, BLOCK))
    else:
        bit = _rademacher_bits(base, step, lane, k0, k1, BLOCK)
        z = tl.where(bit != 0, -1.0, 1.0)
    return z


@triton.jit
def _sub_cz(x, c, table_ptr, base, step, lane, k0, k1, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """fl32(x - c * z): one rounding (c * z is rounded first where it is inexact)."""
    if KIND == _KIND_NORMAL16:
        z = tl.load(table_ptr + _normal16_index(base, step, lane, k0, k1, BLOCK))
        y = x - c * z
    else:  # c * z is exactly +-c
        bit = _rademacher_bits(base, step, lane, k0, k1, BLOCK)
        y = x - tl.where(bit != 0, -c, c)
    return y


# ----------------------------------------------------------------------------- dtypes


@triton.jit
def _widen(u, DT: tl.constexpr):
    """fp32 value (exact) of stored bits ``u`` (uint32 holding 32 or 16 bits)."""
    if DT == _DT_FP32:
        b = u
    elif DT == _DT_BF16:
        b = u << 16
    else:  # IEEE fp16
        s = (u & 0x8000) << 16
        e = (u >> 10) & 0x1F
        m = u & 0x3FF
        normal = s | ((e + 112) << 23) | (m << 13)
        special = s | 0x7F800000 | (m << 13)
        # subnormal m * 2^-24: float(m) is exact (m < 1024), then 24 off its exponent
        sub = s | (m.to(tl.float32).to(tl.uint32, bitcast=True) - (24 << 23))
        b = tl.where(e == 0, tl.where(m == 0, s, sub), tl.where(e == 0x1F, special, normal))
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _bf16_nearest(b):
    """fp32 bits -> bf16 bits, round to nearest even; NaN -> canonical."""
    a = b & 0x7FFFFFFF
    r = (b + (0x7FFF + ((b >> 16) & 1))) >> 16
    return tl.where(a > 0x7F800000, _NAN_BF16, r)


@triton.jit
def _fp16_subnormal_parts(a):
    """For |y| (bits ``a``) below fp16's normal range: the fp32 significand M (with the
    implicit bit), and the shift ``s`` with |y| = M * 2^-s in units of the fp16
    subnormal ulp 2^-24 (int32, >= 14)."""
    e = a >> 23
    big_m = (a & 0x7FFFFF) | tl.where(e > 0, 0x800000, 0)
    s = 126 - tl.maximum(e, 1).to(tl.int32)
    return big_m, tl.maximum(s, 14)


@triton.jit
def _fp16_nearest(b):
    """fp32 bits -> fp16 bits, round to nearest even; overflow -> inf; NaN -> canonical."""
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    normal = (a + 0xFFF + ((a >> 13) & 1) - 0x38000000) >> 13
    big_m, s = _fp16_subnormal_parts(a)
    sh = tl.minimum(s, 25).to(tl.uint32)  # M < 2^24: 25 or more rounds to 0 alike
    sub = (big_m + ((1 << (sh - 1)) - 1) + ((big_m >> sh) & 1)) >> sh
    h = tl.where(a >= 0x38800000, normal, sub)
    h = sign | tl.where(a >= 0x477FF000, 0x7C00, h)  # |y| >= 65520 rounds to infinity
    return tl.where(a > 0x7F800000, _NAN_FP16, h)


@triton.jit
def _bf16_stochastic(b, r):
    """fp32 bits -> bf16 bits, away from zero iff r < frac * 2^24 (r: 24-bit ints)."""
    a = b & 0x7FFFFFFF
    sign = (b >> 16) & 0x8000
    hi = a >> 16
    up = ((r >> 8) < (a & 0xFFFF)).to(tl.uint32)  # frac = (dropped 16 bits) / 2^16
    h = sign | tl.where(hi >= 0x7F7F, 0x7F7F, hi + up)  # never up to infinity
    return tl.where(a >= 0x7F800000, _bf16_nearest(b), h)


@triton.jit
def _fp16_stochastic(b, r):
    """fp32 bits -> fp16 bits, away from zero iff r < frac * 2^24 (r: 24-bit ints)."""
    a = b & 0x7FFFFFFF
    sign = (b >> 16) & 0x8000
    # normal range: frac = d / 2^13 with d the 13 dropped bits
    normal = ((a - 0x38000000) >> 13) + ((r >> 11) < (a & 0x1FFF)).to(tl.uint32)
    # subnormal range: |y| = M * 2^-s ulps, floor k = M >> s, frac = d / 2^s
    big_m, s = _fp16_subnormal_parts(a)
    sh = tl.minimum(s, 25).to(tl.uint32)
    k = big_m >> sh
    d = big_m - (k << sh)
    # r < d * 2^(24 - s): for s <= 24 an integer shift; else r < ceil(d / 2^(s - 24)),
    # and from s - 24 = 24 on (d < 2^24) that ceiling is 1 for any d > 0 alike
    lo_shift = (24 - tl.minimum(s, 24)).to(tl.uint32)
    p = tl.minimum(tl.maximum(s - 24, 1), 24).to(tl.uint32)
    up = tl.where(s <= 24, r < (d << lo_shift), r < ((d + ((1 << p) - 1)) >> p))
    sub = k + up.to(tl.uint32)
    h = tl.where(a >= 0x38800000, normal, sub)
    h = sign | tl.where(a >= 0x477FE000, 0x7BFF, h)  # |y| >= 65504: toward zero
    return tl.where(a >= 0x7F800000, _fp16_nearest(b), h)


@triton.jit
def _round_half(y, r, DT: tl.constexpr, MODE: tl.constexpr):
    """fp32 ``y`` -> stored half bits (uint32); r: rounding ints (stochastic mode)."""
    b = y.to(tl.uint32, bitcast=True)
    if DT == _DT_BF16:
        if MODE == _MODE_STOCHASTIC:
            h = _bf16_stochastic(b, r)
        else:
            h = _bf16_nearest(b)
    else:
        if MODE == _MODE_STOCHASTIC:
            h = _fp16_stochastic(b, r)
        else:
            h = _fp16_nearest(b)
    return h


@triton.jit
def _load_fp32(ptrs, mask, DT: tl.constexpr):
    """Load stored bits (int32 or int16 view) and widen to fp32."""
    raw = tl.load(ptrs, mask=mask, other=0)
    if DT == _DT_FP32:
        u = raw.to(tl.uint32, bitcast=True)
    else:
        u = raw.to(tl.uint16, bitcast=True).to(tl.uint32)
    return _widen(u, DT)


@triton.jit
def _store_rounded(ptrs, y, mask, DT: tl.constexpr):
    """Store fp32 ``y`` to its dtype, nearest even (NaN canonical for halves)."""
    if DT == _DT_FP32:
        tl.store(ptrs, y.to(tl.int32, bitcast=True), mask=mask)
    else:
        h = _round_half(y, y.to(tl.uint32, bitcast=True), DT, 0)
        tl.store(ptrs, h.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
