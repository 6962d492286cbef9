"""The constants of the spec (docs/FORMAT.md): generator, z kinds and their layout in
the Philox stream, the normal16 table, the arithmetic of the update. Kernels, stream and
update rule read them from here, so every implementation shares one definition."""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache
from statistics import NormalDist

import torch

Z_KINDS: tuple[str, ...] = ("normal16", "rademacher")
GENERATOR = "philox4x32-10"
KEY_RULE = "sha256-seed-name-v1"

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF

#: Lane offset for the stochastic-rounding bit stream (lane = LANE_ROUNDING + direction).
LANE_ROUNDING = 0x80000000
#: Elements produced per Philox call, by z kind (and log2 of it).
ELEMENTS_PER_BLOCK = {"normal16": 8, "rademacher": 128}
ELEMENT_SHIFT = {"normal16": 3, "rademacher": 7}
#: Stochastic-rounding integers per Philox call (one 32-bit word each, top 24 bits).
ROUNDING_PER_BLOCK = 4
ROUNDING_BITS = 24
#: Integer codes of the z kinds in the compiled kernels.
KIND_CODES = {"normal16": 0, "rademacher": 1}
#: z values are multiples of this (1/256): products with 13-bit coefficients are exact.
Z_QUANTUM = 1.0 / 256.0
#: sha256 of the normal16 table as 65536 little-endian int16 (units of 1/256).
NORMAL16_SHA256 = "586fabbefab1ca027691c6b3d5704762521173d6ce9ad1624f04c5fbc16b9968"


@lru_cache(maxsize=1)
def normal16_table_int() -> tuple[int, ...]:
    """The 65536-entry quantile table of N(0, 1) in units of 1/256.

    ``T[i] = round_half_even(256 * Phi^-1((i + 0.5) / 65536))`` for ``i < 32768`` and
    ``T[65535 - i] = -T[i]``. Verified against a pinned sha256 so a platform whose
    ``inv_cdf`` rounds differently fails loudly instead of producing other z.
    """
    nd = NormalDist()
    half = [round(256.0 * nd.inv_cdf((i + 0.5) / 65536.0)) for i in range(32768)]
    table = tuple(half + [-v for v in reversed(half)])
    digest = hashlib.sha256(struct.pack("<65536h", *table)).hexdigest()
    if digest != NORMAL16_SHA256:  # pragma: no cover - would mean a broken libm
        raise RuntimeError(f"normal16 table hash mismatch: {digest} != {NORMAL16_SHA256}")
    return table


@lru_cache(maxsize=1)
def normal16_table_numpy():  # -> np.ndarray (float32, 65536)
    import numpy as np

    return np.asarray(normal16_table_int(), dtype=np.float32) * np.float32(Z_QUANTUM)


ARITHMETIC = "exact-v1"
ROUNDING_MODES = ("nearest", "stochastic")
COEF_SIGNIFICANT_BITS = 13
#: Coefficients must be 0 or have magnitude in [COEF_MIN, COEF_MAX).
COEF_MIN = 2.0**-100
COEF_MAX = 2.0**100
#: NaN bit patterns the update writes into half-precision tensors.
CANONICAL_NAN = {torch.bfloat16: 0x7FC0, torch.float16: 0x7E00}
