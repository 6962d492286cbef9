"""An implementation of docs/FORMAT.md (§9 stream, §10 update rule) written from the text.

Everything prefixed ``np_`` is NumPy uint64 arithmetic, hashlib and ``statistics``; it
never calls or copies mezo_ckpt code. The tests of stream, update and the kernels require
identical bits from mezo_ckpt's reference (eager torch) and compiled paths.
"""

from __future__ import annotations

import hashlib
import statistics
import struct
from functools import lru_cache

import numpy as np
import torch

MASK = np.uint64(0xFFFFFFFF)
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
TABLE_SHA256 = "586fabbefab1ca027691c6b3d5704762521173d6ce9ad1624f04c5fbc16b9968"
LANE_ROUNDING = 2**31


def np_philox(c0, c1, c2, c3, k0: int, k1: int) -> np.ndarray:
    """Philox4x32-10 (§9.1) on uint64 arrays holding 32-bit words; returns uint32 [n, 4]."""
    c = [np.asarray(x, np.uint64) & MASK for x in (c0, c1, c2, c3)]
    c = np.broadcast_arrays(*c)
    c0, c1, c2, c3 = (np.array(x, np.uint64) for x in c)
    k0, k1 = np.uint64(k0 & 0xFFFFFFFF), np.uint64(k1 & 0xFFFFFFFF)
    for _ in range(10):
        p0 = c0 * M0  # < 2**64: exact in uint64
        p1 = c2 * M1
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & MASK,
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & MASK,
        )
        k0 = (k0 + W0) & MASK
        k1 = (k1 + W1) & MASK
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def np_key(seed: int, name: str) -> tuple[int, int]:
    """Key rule sha256-seed-name-v1 (§9.2)."""
    d = hashlib.sha256(
        b"mezo-ckpt/philox-key/v1\x00" + struct.pack("<Q", seed) + name.encode("utf-8")
    ).digest()
    return struct.unpack("<II", d[:8])


@lru_cache(maxsize=1)
def np_table() -> np.ndarray:
    """The normal16 table (§9.4) as int16, from statistics.NormalDist."""
    nd = statistics.NormalDist()
    half = [round(256.0 * nd.inv_cdf((i + 0.5) / 65536.0)) for i in range(32768)]
    t = np.array(half + [-v for v in reversed(half)], np.int16)
    assert hashlib.sha256(t.astype("<i2").tobytes()).hexdigest() == TABLE_SHA256
    return t


def _words(key, step, lane, first_block, n_blocks) -> np.ndarray:
    b = np.arange(first_block, first_block + n_blocks, dtype=np.uint64)
    return np_philox(b & MASK, b >> np.uint64(32), step, lane, *key)


def np_z(key, step: int, lane: int, start: int, count: int, kind: str) -> np.ndarray:
    """z for elements [start, start + count) (§9.3), float32."""
    per = 8 if kind == "normal16" else 128
    if count == 0:
        return np.zeros(0, np.float32)
    b0, b1 = start // per, (start + count - 1) // per
    raw = _words(key, step, lane, b0, b1 - b0 + 1).astype("<u4").tobytes()
    if kind == "normal16":
        z = np_table()[np.frombuffer(raw, "<u2")].astype(np.float32) / np.float32(256)
    else:
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
        z = (1 - 2 * bits.astype(np.int32)).astype(np.float32)
    off = start - b0 * per
    return z[off : off + count]


def np_rounding_bits(key, step: int, start: int, count: int) -> np.ndarray:
    """24-bit stochastic-rounding integers (§9.5)."""
    if count == 0:
        return np.zeros(0, np.int64)
    b0, b1 = start // 4, (start + count - 1) // 4
    w = _words(key, step, LANE_ROUNDING, b0, b1 - b0 + 1).reshape(-1).astype(np.int64) >> 8
    return w[start - 4 * b0 : start - 4 * b0 + count]


# --- rounding to bf16 / fp16 (§10.3), via tables of every representable value


@lru_cache(maxsize=2)
def _magnitudes(dtype: str) -> np.ndarray:
    """All non-negative finite values of the dtype, increasing, then +inf (float64)."""
    if dtype == "bfloat16":
        pats = np.arange(0, 0x7F81, dtype=np.uint32) << np.uint32(16)
        return pats.view(np.float32).astype(np.float64)
    pats = np.arange(0, 0x7C01, dtype=np.uint16)
    return pats.view(np.float16).astype(np.float64)


def np_round_nearest(y: np.ndarray, dtype: str) -> np.ndarray:
    """RNE from fp32 to the dtype, returned as fp32 values."""
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return y.astype(np.float16).astype(np.float32)
    b = y.view(np.uint32).astype(np.uint64)
    r = (b + np.uint64(0x7FFF) + ((b >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    r = (r << np.uint64(16)).astype(np.uint32)
    r = np.where(np.isnan(y), np.uint32(0x7FC00000), r)
    return r.view(np.float32)


def np_round_stochastic(y: np.ndarray, bits: np.ndarray, dtype: str) -> np.ndarray:
    """The exact stochastic-rounding rule, with the two neighbours from a value table."""
    mags = _magnitudes(dtype)
    ay = np.abs(y.astype(np.float64))
    finite = np.isfinite(y)
    idx = np.searchsorted(mags, np.where(finite, ay, 0.0), side="right") - 1
    a = mags[idx]
    b = mags[np.minimum(idx + 1, len(mags) - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(np.isinf(b), 0.0, (ay - a) / (b - a) * 2.0**24)
    mag = np.where(bits.astype(np.float64) < frac, b, a)
    out = np.copysign(mag, y.astype(np.float64)).astype(np.float32)
    return np.where(finite, out, np_round_nearest(y, dtype))


def np_apply(
    x: np.ndarray,
    dtype: str,
    key,
    steps,
    coefs,
    decay,
    kind: str,
    rounding: str,
    start: int = 0,
    history=None,
) -> np.ndarray:
    """The per-element update rule (§10.1) on fp32 values of a tensor in ``dtype``;
    ``history[i][k-1][j]`` applies direction j of step ``steps[i] - k`` (§6.2)."""
    y = x.astype(np.float32)
    n = len(y)
    for i, (t, cs, m) in enumerate(zip(steps, coefs, decay)):
        m = np.float32(m)
        if m != np.float32(1):
            y = (y * m).astype(np.float32)
        terms = [(int(t), j, c) for j, c in enumerate(cs)]
        if history is not None:
            for k, row in enumerate(history[i], start=1):
                terms += [(int(t) - k, j, c) for j, c in enumerate(row)]
        for s, j, c in terms:
            c = np.float32(c)
            if c == 0 or s < 0:
                continue
            y = (y - c * np_z(key, s, j, start, n, kind)).astype(np.float32)
        if dtype != "float32":
            if rounding == "nearest":
                y = np_round_nearest(y, dtype)
            else:
                y = np_round_stochastic(y, np_rounding_bits(key, int(t), start, n), dtype)
    return y


def _bits(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype in (torch.bfloat16, torch.float16):
            return a.view(torch.int16).numpy().view(np.uint16)
        a = a.numpy()
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype.itemsize == 4 else np.uint16)


TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _to_np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy().copy()


# ============================================================================ Philox


KEYS = [
    (0, 0),
    (0xFFFFFFFF, 0xFFFFFFFF),
    np_key(42, "model.layers.0.mlp.up_proj.weight"),
    np_key(0, "lm_head.weight"),
]
