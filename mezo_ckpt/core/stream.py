"""The perturbation stream: portable, counter-based random directions z.

Every z element is a pure function of (run seed, canonical parameter name, step,
direction, element index). Nothing depends on parameter order, on how a tensor is
split into chunks, on the device, or on the thread count, so training and replay
(and any independent implementation of docs/FORMAT.md) see the same bits.

Generator: Philox4x32-10 (Salmon et al., SC'11), written with int64 torch ops so that
CPU and CUDA compute identical integers. Mapping to floats uses only table lookups
and exact scaling, never a transcendental function at run time.

Counter layout for element ``e`` of a parameter (per Philox block of 4 words):

* normal16: block ``b = e // 8``; words w0..w3; element ``8b + 2j`` takes the low 16 bits
  of ``w_j``, element ``8b + 2j + 1`` the high 16 bits; ``z = NORMAL16[u16] / 256``.
* rademacher: block ``b = e // 128``; element ``128b + 32j + i`` takes bit ``i`` of
  ``w_j``; ``z = +1`` for a 0 bit, ``-1`` for a 1 bit.
* counter = (b mod 2^32, b div 2^32, step, lane), lane = direction index for z, and
  ``LANE_ROUNDING + direction`` for stochastic-rounding bits; key = :func:`param_key`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch

from mezo_ckpt.core.backends import compiled_kernels, triton_kernels, use_compiled, use_triton
from mezo_ckpt.core.spec import (
    ELEMENTS_PER_BLOCK,
    KIND_CODES,
    LANE_ROUNDING,
    MASK32,
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_ROUNDS,
    PHILOX_W0,
    PHILOX_W1,
    ROUNDING_BITS,
    ROUNDING_PER_BLOCK,
    Z_KINDS,
    Z_QUANTUM,
    normal16_table_int,
    normal16_table_numpy,
)


@lru_cache(maxsize=8)
def _normal16_table(device: str) -> torch.Tensor:
    t = torch.tensor(normal16_table_int(), dtype=torch.float32) * Z_QUANTUM
    return t.to(device)


def param_key(seed: int, name: str) -> tuple[int, int]:
    """Philox key (k0, k1) for one parameter: sha256(tag, seed, canonical name)[:8].

    Args:
        seed: run seed, ``0 <= seed < 2**63``.
        name: canonical parameter name (tied parameters share one canonical name).
    """
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    digest = hashlib.sha256(
        b"mezo-ckpt/philox-key/v1\x00" + seed.to_bytes(8, "little") + name.encode("utf-8")
    ).digest()
    return int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little")


def philox4x32(
    counter: tuple[int, int, int, int], key: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Scalar Philox4x32-10 (pure Python), for known-answer tests and documentation."""
    c0, c1, c2, c3 = (c & MASK32 for c in counter)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for _ in range(PHILOX_ROUNDS):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            ((p1 >> 32) ^ c1 ^ k0) & MASK32,
            p1 & MASK32,
            ((p0 >> 32) ^ c3 ^ k1) & MASK32,
            p0 & MASK32,
        )
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox_blocks_torch(
    first_block: int, n_blocks: int, step: int, lane: int, key: tuple[int, int], device: str
) -> torch.Tensor:
    """Philox4x32-10 output words for consecutive blocks, as an int64 tensor [n, 4].

    Uses int64 arithmetic only: a 32x32-bit product wraps modulo 2^64 and the high
    and low halves are recovered with shifts and masks, identically on CPU and CUDA.
    """
    if not (first_block >= 0 and first_block + n_blocks <= 2**64):
        raise ValueError("block counter out of range [0, 2**64)")
    if first_block >= 2**63:  # int64 holds the same 64 bits (two's complement)
        first_block -= 2**64
    b = torch.arange(first_block, first_block + n_blocks, dtype=torch.int64, device=device)
    c0 = b & MASK32
    c1 = (b >> 32) & MASK32
    c2 = torch.full_like(b, step & MASK32)
    c3 = torch.full_like(b, lane & MASK32)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for _ in range(PHILOX_ROUNDS):
        p0 = c0 * PHILOX_M0
        p1 = c2 * PHILOX_M1
        n0 = ((p1 >> 32) & MASK32) ^ c1 ^ k0
        n2 = ((p0 >> 32) & MASK32) ^ c3 ^ k1
        c0, c1, c2, c3 = n0, p1 & MASK32, n2, p0 & MASK32
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return torch.stack((c0, c1, c2, c3), dim=1)


def z_reference(
    key: tuple[int, int],
    step: int,
    lane: int,
    start: int,
    count: int,
    kind: str,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """z for elements ``[start, start + count)`` of one parameter (eager torch, any device).

    This is the reference implementation; compiled kernels must match it bit for bit.

    Returns:
        float32 tensor of shape [count].
    """
    device = str(device)
    if kind not in ELEMENTS_PER_BLOCK:
        raise ValueError(f"unknown z kind {kind!r}; known: {', '.join(Z_KINDS)}")
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    per = ELEMENTS_PER_BLOCK[kind]
    first = start // per
    last = (start + count - 1) // per
    words = philox_blocks_torch(first, last - first + 1, step, lane, key, device)
    if kind == "normal16":
        lo = words & 0xFFFF
        hi = words >> 16
        u16 = torch.stack((lo, hi), dim=2).reshape(-1)
        z = _normal16_table(device)[u16]
    else:
        shifts = torch.arange(32, dtype=torch.int64, device=device)
        bits = (words.unsqueeze(2) >> shifts) & 1
        z = 1.0 - 2.0 * bits.reshape(-1).to(torch.float32)
    off = start - first * per
    return z[off : off + count].contiguous()


def rounding_bits_reference(
    key: tuple[int, int], step: int, direction: int, start: int, count: int, device: str = "cpu"
) -> torch.Tensor:
    """24-bit uniform integers (int64) for stochastic rounding of elements [start, start+count).

    One Philox word per element: block ``b = e // 4``, element ``4b + j`` uses ``w_j >> 8``,
    lane ``LANE_ROUNDING + direction`` (direction 0 for the update itself).
    """
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    per = ROUNDING_PER_BLOCK
    first = start // per
    last = (start + count - 1) // per
    words = philox_blocks_torch(
        first, last - first + 1, step, LANE_ROUNDING + direction, key, device
    )
    r = (words >> (32 - ROUNDING_BITS)).reshape(-1)
    off = start - first * per
    return r[off : off + count].contiguous()


def z_statistics(kind: str) -> dict[str, float]:
    """Exact population mean, variance and kurtosis of one z element."""
    if kind == "rademacher":
        return {"mean": 0.0, "variance": 1.0, "kurtosis": 1.0, "max_abs": 1.0}
    vals = [v * Z_QUANTUM for v in normal16_table_int()]
    n = len(vals)
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / n
    m4 = sum((v - mean) ** 4 for v in vals) / n
    return {"mean": mean, "variance": var, "kurtosis": m4 / var**2, "max_abs": max(vals)}


def _check_kind(kind: str) -> int:
    if kind not in KIND_CODES:
        raise ValueError(f"unknown z kind {kind!r}; known: {', '.join(Z_KINDS)}")
    return KIND_CODES[kind]


def generate_z(
    key: tuple[int, int],
    step: int,
    lane: int,
    start: int,
    count: int,
    kind: str,
    device: str | torch.device = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """z for elements ``[start, start + count)``: compiled on CPU, eager torch elsewhere.

    Same bits as :func:`z_reference` on every backend.
    """
    code = _check_kind(kind)
    if use_compiled(device):
        if out is None:
            out = torch.empty(count, dtype=torch.float32)
        kernels = compiled_kernels()
        assert kernels is not None
        kernels.z_fill(normal16_table_numpy(), out.numpy(), start, step, lane, *key, code)
        return out
    if use_triton(device):
        if out is None:
            out = torch.empty(count, dtype=torch.float32, device=device)
        triton_kernels().z_fill(out, start, step, lane, *key, code)  # type: ignore[union-attr]
        return out
    z = z_reference(key, step, lane, start, count, kind, device)
    if out is not None:
        out.copy_(z)
        return out
    return z


def generate_rounding_bits(
    key: tuple[int, int],
    step: int,
    direction: int,
    start: int,
    count: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Stochastic-rounding integers (int64, 24 bits); same bits as the reference."""
    if use_compiled(device):
        kernels = compiled_kernels()
        assert kernels is not None
        out = torch.empty(count, dtype=torch.int64)
        kernels.rounding_bits_fill(out.numpy(), start, step, LANE_ROUNDING + direction, *key)
        return out
    if use_triton(device):
        out = torch.empty(count, dtype=torch.int64, device=device)
        triton_kernels().rounding_bits_fill(  # type: ignore[union-attr]
            out, start, step, LANE_ROUNDING + direction, *key
        )
        return out
    return rounding_bits_reference(key, step, direction, start, count, str(device))
