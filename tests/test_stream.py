"""The perturbation stream and the update rule against an independent implementation.

Everything prefixed ``np_`` below is written from docs/FORMAT.md (§9, §10) with NumPy
uint64 arithmetic, hashlib and ``statistics``/``mpmath``; it never calls or copies
mezo_ckpt code. The tests require identical bits from mezo_ckpt's reference (eager
torch) and compiled paths.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from mezo_ckpt import stream as S
from mezo_ckpt import update as U
from mezo_ckpt.hashing import ParamInfo, manifest_sha256, tensors_sha256

# ============================================================================ independent code

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
    x: np.ndarray, dtype: str, key, steps, coefs, decay, kind: str, rounding: str, start: int = 0
) -> np.ndarray:
    """The per-element update rule (§10.1) on fp32 values of a tensor in ``dtype``."""
    y = x.astype(np.float32)
    n = len(y)
    for t, cs, m in zip(steps, coefs, decay):
        m = np.float32(m)
        if m != np.float32(1):
            y = (y * m).astype(np.float32)
        for j, c in enumerate(cs):
            c = np.float32(c)
            if c == 0:
                continue
            y = (y - c * np_z(key, int(t), j, start, n, kind)).astype(np.float32)
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


KATS = [  # Random123 kat_vectors, philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,want", KATS)
def test_philox_known_answers_scalar_and_numpy(ctr, key, want):
    assert S.philox4x32(ctr, key) == want
    assert tuple(int(w) for w in np_philox(*ctr, *key)) == want


@pytest.mark.parametrize(
    "ctr,key,want",
    [
        pytest.param(*KATS[0]),
        pytest.param(*KATS[1]),
        pytest.param(*KATS[2]),
    ],
)
def test_philox_known_answers_torch_blocks(ctr, key, want):
    block = ctr[0] | (ctr[1] << 32)  # the full unsigned 64-bit block counter
    w = S.philox_blocks_torch(block, 1, ctr[2], ctr[3], key, "cpu")
    assert tuple(int(x) & 0xFFFFFFFF for x in w[0]) == want


def test_philox_torch_blocks_match_numpy_and_scalar():
    key = (0x01234567, 0x89ABCDEF)
    first = 2**32 - 5  # crosses the counter's high word
    w = S.philox_blocks_torch(first, 11, 0xFFFFFFFF, 63, key, "cpu").numpy()
    ref = _words(key, 0xFFFFFFFF, 63, first, 11)
    np.testing.assert_array_equal(w.astype(np.uint32), ref)
    for i in (0, 5, 10):
        b = first + i
        assert S.philox4x32((b & 0xFFFFFFFF, b >> 32, 0xFFFFFFFF, 63), key) == tuple(
            int(x) for x in ref[i]
        )


# ============================================================================ keys and table


@pytest.mark.parametrize(
    "seed,name,want",
    [
        (0, "model.embed_tokens.weight", (0xAE4F54A3, 0x86676186)),
        (7, "layer.weight", (0xDD20CA36, 0x56D7C3B0)),
        (2**63 - 1, "lm_head.weight", (0xCB55753C, 0xF4A8B04D)),
        (1, "w", (0x58E76D84, 0x4DC6C2DC)),
        (123, "modèle.poids.ü", None),
        (2**40 + 3, "", None),
    ],
)
def test_param_key(seed, name, want):
    k = S.param_key(seed, name)
    assert k == np_key(seed, name)
    if want is not None:
        assert k == want  # docs/FORMAT.md §16


def test_param_key_range():
    for bad in (-1, 2**63):
        with pytest.raises(ValueError):
            S.param_key(bad, "w")


def test_normal16_table():
    t = np_table()
    assert tuple(int(v) for v in t) == S.normal16_table_int()
    np.testing.assert_array_equal(t[::-1], -t)  # symmetric
    assert int(t[0]) == -1107 and int(t[-1]) == 1107 and int((t == 0).sum()) == 102
    assert np.all(np.diff(t.astype(np.int32)) >= 0)
    vals = S.normal16_table_numpy()
    assert vals.dtype == np.float32
    np.testing.assert_array_equal(vals * 256, t.astype(np.float32))  # multiples of 1/256
    assert np.abs(vals).max() < 8
    assert hashlib.sha256(t.astype("<i2").tobytes()).hexdigest() == S.NORMAL16_SHA256


def test_normal16_table_near_boundaries_with_mpmath():
    """The entries closest to a rounding boundary agree with a 100-bit inverse CDF."""
    mpmath = pytest.importorskip("mpmath")
    nd = statistics.NormalDist()
    margins = sorted(
        (abs(v - math.floor(v) - 0.5), i)
        for i in range(32768)
        for v in [256.0 * nd.inv_cdf((i + 0.5) / 65536.0)]
    )
    assert margins[0][0] > 2e-5  # docs/FORMAT.md §9.4: closest approach 2.56e-5
    t = np_table()
    with mpmath.workprec(100):
        for _, i in margins[:12] + [(0, 0), (0, 1), (0, 32767)]:
            p = mpmath.mpf(2 * i + 1) / 131072
            q = -mpmath.sqrt(2) * mpmath.erfinv(1 - 2 * p)
            assert int(mpmath.nint(256 * q)) == int(t[i])


# ============================================================================ z streams

KEYS = [
    (0, 0),
    (0xFFFFFFFF, 0xFFFFFFFF),
    np_key(42, "model.layers.0.mlp.up_proj.weight"),
    np_key(0, "lm_head.weight"),
]
SPANS = [
    (0, 1),
    (0, 8),
    (3, 5),
    (7, 2),
    (1, 129),
    (127, 257),
    (1000, 3001),
    (0, 20_000),
    (5 * 2**32 - 3, 77),
    (8 * 2**32 - 13, 301),
    (128 * 2**32 - 77, 2000),
    (2**40 + 11, 515),
]


@pytest.mark.parametrize("kind", S.Z_KINDS)
@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
def test_z_matches_independent(kind, key):
    for i, (start, count) in enumerate(SPANS):
        step = [0, 1, 19_999, 2**32 - 1][i % 4]
        lane = [0, 1, 63, 7][(i // 2) % 4]
        want = np_z(key, step, lane, start, count, kind)
        ref = S.z_reference(key, step, lane, start, count, kind)
        fast = S.generate_z(key, step, lane, start, count, kind)
        assert ref.dtype == fast.dtype == torch.float32 and ref.shape == (count,)
        np.testing.assert_array_equal(_bits(ref), _bits(want), err_msg=f"ref {start},{count}")
        np.testing.assert_array_equal(_bits(fast), _bits(want), err_msg=f"fast {start},{count}")


def test_z_documented_vectors():
    """docs/FORMAT.md §16."""
    k = np_key(1, "w")
    w = _words(k, 3, 1, 0, 2).reshape(-1)
    assert [f"{int(x):08x}" for x in w] == [
        "8ec01206",
        "0ec766f3",
        "ed93368d",
        "20e1ae40",
        "4090f9a9",
        "4965804b",
        "3546146b",
        "14189dfa",
    ]
    z = S.generate_z(k, 3, 1, 0, 16, "normal16") * 256
    assert z.int().tolist() == [
        -377,
        37,
        -63,
        -403,
        -204,
        374,
        120,
        -290,
        503,
        -171,
        1,
        -144,
        -360,
        -208,
        76,
        -362,
    ]
    assert (S.z_reference(k, 3, 1, 1000, 8, "normal16") * 256).int().tolist() == [
        503,
        62,
        306,
        162,
        116,
        325,
        -22,
        11,
    ]
    r = S.z_reference(k, 3, 0, 0, 40, "rademacher")
    assert (
        "".join("+" if v > 0 else "-" for v in r.tolist())
        == "+---+++-++++------++-++++--+-+--+++---++"
    )
    rb = S.rounding_bits_reference(k, 2, 0, 0, 8)
    assert [f"{int(x):06x}" for x in rb] == [
        "33a949",
        "369502",
        "78df02",
        "d2da5c",
        "7ee36c",
        "2f9e53",
        "0c9f37",
        "250130",
    ]


def test_rounding_bits_match_independent():
    key = KEYS[2]
    for start, count in [(0, 1), (3, 9), (1001, 4099), (4 * 2**32 - 2, 11)]:
        for step in (0, 5, 2**32 - 1):
            want = np_rounding_bits(key, step, start, count)
            for got in (
                S.rounding_bits_reference(key, step, 0, start, count),
                S.generate_rounding_bits(key, step, 0, start, count),
            ):
                assert got.dtype == torch.int64
                np.testing.assert_array_equal(got.numpy(), want)
                assert int(got.max()) < 2**24 and int(got.min()) >= 0


def test_z_empty_and_bad_kind():
    for kind in S.Z_KINDS:
        assert S.z_reference(KEYS[0], 0, 0, 5, 0, kind).numel() == 0
        assert S.generate_z(KEYS[0], 0, 0, 5, 0, kind).numel() == 0
    with pytest.raises(ValueError):
        S.z_reference(KEYS[0], 0, 0, 0, 4, "gaussian")
    with pytest.raises(ValueError):
        S.generate_z(KEYS[0], 0, 0, 0, 4, "gaussian")


@pytest.mark.parametrize("kind", S.Z_KINDS)
def test_chunking_invariance(kind):
    rng = np.random.default_rng(3)
    key, n, start = KEYS[2], 50_000, 777
    whole = S.generate_z(key, 9, 2, start, n, kind).numpy()
    np.testing.assert_array_equal(whole, S.z_reference(key, 9, 2, start, n, kind).numpy())
    bits_whole = S.generate_rounding_bits(key, 9, 0, start, n).numpy()
    for trial in range(6):
        cuts = np.sort(
            rng.choice(np.arange(1, n), size=[1, 3, 17, 60, 200, 1][trial], replace=False)
        )
        if trial == 5:
            cuts = np.arange(1, n // 40)  # many single-element chunks at the start
        edges = [0, *cuts.tolist(), n]
        fn = S.z_reference if trial % 2 else S.generate_z
        parts = [fn(key, 9, 2, start + a, b - a, kind).numpy() for a, b in zip(edges, edges[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        rparts = [
            S.generate_rounding_bits(key, 9, 0, start + a, b - a).numpy()
            for a, b in zip(edges, edges[1:])
        ]
        np.testing.assert_array_equal(np.concatenate(rparts), bits_whole)


def test_parameter_order_independence():
    """Keys and updates depend on names only, not on order or on the other parameters."""
    names = ["b.weight", "a.bias", "z.w", "m.x"]
    shapes = {"b.weight": (7, 5), "a.bias": (5,), "z.w": (300,), "m.x": (3, 3, 3)}

    def tensors(order):
        g = torch.Generator().manual_seed(0)
        base = {n: torch.rand(shapes[n], generator=g) for n in sorted(names)}
        return {n: base[n].clone() for n in order}

    batch = U.UpdateBatch(
        np.array([0, 1, 4], np.int64),
        np.array([[2.0**-5, 0.0], [-3 * 2.0**-8, 2.0**-6], [1.0, -1.0]], np.float32),
        np.array([0.5, 1.0, 0.75], np.float32),
    )
    results = []
    for order in (names, names[::-1], sorted(names)):
        spec = U.UpdateSpec(
            seed=99,
            kind="normal16",
            rounding="nearest",
            trainable=tuple(order),
            decay_params=frozenset({"b.weight"}),
        )
        ts = tensors(order)
        U.apply_to_tensors(ts, spec, batch)
        results.append({n: _bits(t).copy() for n, t in ts.items()})
    for r in results[1:]:
        for n in names:
            np.testing.assert_array_equal(r[n], results[0][n])
    # one parameter alone gets the same update as inside the full set
    spec = U.UpdateSpec(
        seed=99, kind="normal16", rounding="nearest", trainable=("z.w",), decay_params=frozenset()
    )
    ts = tensors(["z.w"])
    U.apply_to_tensors(ts, spec, batch)
    np.testing.assert_array_equal(_bits(ts["z.w"]), results[0]["z.w"])
    # and matches the independent implementation (z.w has no decay)
    x0 = tensors(["z.w"])["z.w"].numpy()
    want = np_apply(
        x0,
        "float32",
        np_key(99, "z.w"),
        batch.steps,
        batch.coefs,
        np.ones(3, np.float32),
        "normal16",
        "nearest",
    )
    np.testing.assert_array_equal(_bits(ts["z.w"]), _bits(want))


# ============================================================================ statistics


@pytest.mark.parametrize("kind", S.Z_KINDS)
def test_z_statistics(kind):
    exact = S.z_statistics(kind)
    if kind == "normal16":
        t = np_table().astype(np.int64)
        s2, s4 = int((t * t).sum()), int((t**4).sum())
        assert int(t.sum()) == 0 and exact["mean"] == 0.0
        assert exact["variance"] == s2 / 2**32 == 0.9999811551533639
        assert math.isclose(exact["kurtosis"], 65536 * s4 / s2**2, rel_tol=1e-13)
        assert math.isclose(exact["kurtosis"], 2.99923265163991, rel_tol=1e-13)
        assert exact["max_abs"] == 1107 / 256
    else:
        assert exact == {"mean": 0.0, "variance": 1.0, "kurtosis": 1.0, "max_abs": 1.0}
    z = (
        torch.cat(
            [S.generate_z(np_key(s, f"p{s}"), s, s % 3, s * 1000, 1 << 19, kind) for s in range(4)]
        )
        .double()
        .numpy()
    )  # 2**21 samples
    n = z.size
    mean, var = z.mean(), z.var()
    kurt = ((z - mean) ** 4).mean() / var**2
    m4 = exact["kurtosis"] * exact["variance"] ** 2
    assert abs(mean - exact["mean"]) < 5 * math.sqrt(exact["variance"] / n)
    if kind == "normal16":
        assert abs(var - exact["variance"]) < 5 * math.sqrt((m4 - exact["variance"] ** 2) / n)
        assert abs(kurt - exact["kurtosis"]) < 5 * math.sqrt(96 / n)
        assert np.isin(np.round(z * 256).astype(np.int64), np_table()).all()
    else:  # a +-1 sample has variance 1 - mean**2 and kurtosis 1 up to the same term
        assert set(np.unique(z).tolist()) == {-1.0, 1.0}
        assert math.isclose(var, 1.0 - mean**2, rel_tol=1e-9)
        assert abs(kurt - exact["kurtosis"]) < 1e-4
    assert np.abs(z).max() <= exact["max_abs"]


# ============================================================================ cross-capability


def _fingerprints() -> dict:
    """Hashes of z, rounding bits and small replays; compared across CPU capabilities."""
    out = {"capability": torch.backends.cpu.get_cpu_capability()}
    h = hashlib.sha256()
    for kind in S.Z_KINDS:
        for start, count in [(0, 70_001), (2**33 + 5, 4099)]:
            for fn in (S.z_reference, S.generate_z):
                h.update(fn(KEYS[2], 17, 3, start, count, kind).numpy().tobytes())
    h.update(S.generate_rounding_bits(KEYS[2], 17, 0, 9, 10_001).numpy().tobytes())
    h.update(S.rounding_bits_reference(KEYS[2], 17, 0, 9, 10_001).numpy().tobytes())
    out["streams"] = h.hexdigest()
    g = torch.Generator().manual_seed(5)
    base = {"w": (torch.rand(64, 33, generator=g) - 0.5) * 0.1, "b": torch.rand(33, generator=g)}
    rng = np.random.default_rng(5)
    steps = np.arange(0, 40, dtype=np.int64)
    coefs = np.array(
        [[U.round_coefficient(v) for v in row] for row in rng.standard_normal((40, 2)) * 1e-3],
        np.float32,
    )
    decay = np.full(40, U.decay_multiplier(1e-2, 0.1), np.float32)
    batch = U.UpdateBatch(steps, coefs, decay)
    for kind in S.Z_KINDS:
        for dtype in ("float32", "bfloat16", "float16"):
            for rounding in ("nearest", "stochastic"):
                for backend in ("reference", "auto"):
                    ts = {n: t.to(TORCH[dtype]).clone() for n, t in base.items()}
                    spec = U.UpdateSpec(
                        seed=3,
                        kind=kind,
                        rounding=rounding,
                        trainable=("b", "w"),
                        decay_params=frozenset({"w"}),
                    )
                    U.apply_to_tensors(ts, spec, batch, backend=backend)
                    out[f"{kind}/{dtype}/{rounding}/{backend}"] = tensors_sha256(ts)
    y = (torch.rand(5000, generator=g) - 0.5) * 3
    bits = S.generate_rounding_bits(KEYS[1], 0, 0, 0, 5000)
    for dt in (torch.bfloat16, torch.float16):
        out[f"sr/{dt}"] = hashlib.sha256(
            U.stochastic_round(y, bits, dt).float().numpy().tobytes()
        ).hexdigest()
    return out


def test_same_bits_under_default_cpu_capability():
    here = _fingerprints()
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_stream; "
        "print(json.dumps(test_stream._fingerprints()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    there = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"\nCPU capability in process: {here['capability']}; "
        f"with ATEN_CPU_CAPABILITY=default: {there['capability']}"
    )
    assert there["capability"].lower() == "default"
    for k in here:
        if k != "capability":
            assert here[k] == there[k], k
    # reference and compiled/auto backends agree too
    for k, v in here.items():
        if k.endswith("/auto"):
            assert v == here[k[: -len("auto")] + "reference"], k


# ============================================================================ coefficients


def _round13_exact(x: float) -> float:
    """Independent round to 13 significant bits with ties to even, using Fractions."""
    f = Fraction(x)
    e = math.floor(math.log2(abs(x)))
    while Fraction(2) ** e > abs(f):
        e -= 1
    while Fraction(2) ** (e + 1) <= abs(f):
        e += 1
    scale = Fraction(2) ** (12 - e)  # 13 significant bits: integer in [2**12, 2**13)
    q = f * scale
    r = round(q)  # Fraction.__round__ rounds half to even
    return float(Fraction(r) / scale)


def test_round_coefficient_random():
    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [rng.standard_normal(2000) * 10.0 ** rng.integers(-25, 25, 2000), rng.uniform(-1, 1, 500)]
    )
    for x in xs.tolist():
        c = U.round_coefficient(x)
        assert c == _round13_exact(x)
        assert U.is_valid_coefficient(c)
        assert U.to_fp32(c) == c
        m, e = math.frexp(x)
        assert abs(c - x) <= 2.0 ** (e - 14)  # half a unit in the 13th bit


def test_round_coefficient_rules():
    rc = U.round_coefficient
    assert rc(0.0) == 0.0 and rc(-0.0) == 0.0
    assert rc(1.0 + 2**-13) == 1.0  # tie -> even (down)
    assert rc(1.0 + 3 * 2**-13) == 1.0 + 2**-11  # tie -> even (up)
    assert rc(-(1.0 + 3 * 2**-13)) == -(1.0 + 2**-11)
    assert rc(1.0 + 2**-13 + 2**-40) == 1.0 + 2**-12  # above the tie
    assert rc(2.0**-100) == 2.0**-100
    assert rc(2.0**-101) == 0.0
    assert rc(-(2.0**-100) * (1 - 2**-20)) == 0.0  # flushed on x, before rounding
    assert rc((1 - 2**-13) * 2.0**100) == (1 - 2**-13) * 2.0**100
    assert rc(1e-7) == _round13_exact(1e-7)
    for bad in (
        math.nan,
        math.inf,
        -math.inf,
        2.0**100,
        -(2.0**101),
        1e300,
        (1 - 2**-20) * 2.0**100,
    ):  # the last rounds up to 2**100
        with pytest.raises(ValueError):
            rc(bad)


def test_is_valid_coefficient():
    ok = [0.0, -0.0, 1.0, -1.5, 2.0**-100, (2**13 - 1) * 2.0**-20, (1 - 2**-13) * 2.0**100]
    bad = [
        math.nan,
        math.inf,
        -math.inf,
        2.0**-101,
        2.0**100,
        1.0 + 2**-13,
        1.0 + 2**-23,
        float(np.float32(0.1)),
        0.1,
    ]
    assert all(U.is_valid_coefficient(c) for c in ok)
    assert not any(U.is_valid_coefficient(c) for c in bad)


def test_decay_multiplier():
    assert U.decay_multiplier(0.0, 0.1) == 1.0 and U.decay_multiplier(1e-3, 0.0) == 1.0
    for lr, wd in [(1e-3, 0.1), (1e-6, 0.01), (0.5, 1.0), (1e-2, 1e-2)]:
        want = struct.unpack("<f", struct.pack("<f", 1.0 - lr * wd))[0]
        assert U.decay_multiplier(lr, wd) == want
    assert U.decay_multiplier(1e-3, 1.0) == float(np.float32(0.999))  # §16: 0x3f7fbe77
    assert struct.pack(">f", U.decay_multiplier(1e-3, 1.0)).hex() == "3f7fbe77"
    for lr, wd in [(1.0, 1.0), (2.0, 1.0), (1e-3, -1.0)]:
        with pytest.raises(ValueError):
            U.decay_multiplier(lr, wd)


def test_coefficient_times_z_is_exact():
    """c * z in fp32 equals the exact (float64) product for every table value."""
    rng = np.random.default_rng(1)
    expo = rng.integers(-100, 100, 3000)
    cs = [
        U.round_coefficient(float(m) * 2.0 ** int(e))
        for m, e in zip(rng.uniform(0.5, 1.0, 3000) * rng.choice([-1, 1], 3000), expo)
    ]
    cs += [2.0**-100, -(2.0**-100), (1 - 2**-13) * 2.0**100, (2**13 - 1) * 2.0**-112]
    c = np.array([x for x in cs if x != 0.0], np.float32)
    assert np.all(c.astype(np.float64) == np.array([x for x in cs if x != 0.0]))
    z = np.unique(S.normal16_table_numpy())
    z = np.concatenate([z, [np.float32(1.0), np.float32(-1.0)]])
    prod32 = c[:, None] * z[None, :]
    prod64 = c.astype(np.float64)[:, None] * z.astype(np.float64)[None, :]
    assert prod32.dtype == np.float32
    np.testing.assert_array_equal(prod32.astype(np.float64), prod64)
    nz = prod64[prod64 != 0]
    assert np.abs(nz).min() >= 2.0**-126  # never subnormal
    # and a fused multiply-add rounds the same as multiply-then-subtract
    x = rng.standard_normal(prod32.shape).astype(np.float32)
    fused = (x.astype(np.float64) - prod64).astype(np.float32)
    np.testing.assert_array_equal(fused, x - prod32)


# ============================================================================ stochastic rounding


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_round_exact_rule(dtype):
    rng = np.random.default_rng(2)
    y = np.concatenate(
        [
            (rng.standard_normal(40_000) * 10.0 ** rng.integers(-8, 5, 40_000)).astype(np.float32),
            np.array(
                [
                    0.0,
                    -0.0,
                    1.0,
                    -1.0,
                    65504.0,
                    65519.0,
                    65520.0,
                    70000.0,
                    -1e30,
                    3.0e38,
                    1e-45,
                    -1e-45,
                    6e-8,
                    1e-7,
                    2.0**-24,
                    2.0**-25,
                    2.0**-133,
                    2.0**-140,
                    np.inf,
                    -np.inf,
                    np.nan,
                ],
                np.float32,
            ),
        ]
    )
    bits = rng.integers(0, 2**24, y.size)
    bits[:50] = 0
    bits[50:100] = 2**24 - 1
    got = U.stochastic_round(torch.from_numpy(y), torch.from_numpy(bits), TORCH[dtype])
    assert got.dtype == TORCH[dtype]
    want = np_round_stochastic(y, bits, dtype)
    # NaN stays NaN; its payload is not specified (torch's vectorised bf16 conversion
    # writes 0xFFFF on AVX-512, the scalar one 0x7FC0)
    got32 = got.float().numpy()
    np.testing.assert_array_equal(np.isnan(got32), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(_bits(got32[ok]), _bits(want[ok]))
    # deterministic given the bits
    again = U.stochastic_round(torch.from_numpy(y), torch.from_numpy(bits), TORCH[dtype])
    np.testing.assert_array_equal(_bits(again), _bits(got))


def test_stochastic_round_threshold():
    """b iff bits < (|y| - |a|) / (|b| - |a|) * 2**24, exactly at the threshold."""
    a, ulp = 1.0, 2.0**-7  # bf16 spacing above 1
    y = torch.tensor([a + ulp / 4, -(a + ulp / 4)], dtype=torch.float32)
    for k, up in [(2**22 - 1, True), (2**22, False), (0, True), (2**24 - 1, False)]:
        r = U.stochastic_round(y, torch.tensor([k, k]), torch.bfloat16).float().tolist()
        assert r == ([a + ulp, -(a + ulp)] if up else [a, -a]), k
    # representable values never move; finite values never become infinite
    y = torch.tensor([1.0, -2.5, 0.0, 65504.0, 65535.0], dtype=torch.float32)
    r = U.stochastic_round(y, torch.zeros(5, dtype=torch.int64), torch.float16)
    assert r.float().tolist() == [1.0, -2.5, 0.0, 65504.0, 65504.0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_round_unbiased(dtype):
    n = 1 << 17
    key = np_key(4, "sr")
    for v in (1.0 + 2.0**-10, -3.14159, 1e-3, 0.3):
        y = torch.full((n,), v, dtype=torch.float32)
        bits = S.generate_rounding_bits(key, 11, 0, 0, n)
        r = U.stochastic_round(y, bits, TORCH[dtype]).double()
        a = np_round_stochastic(np.float32([v]), np.array([2**24]), dtype)[0]  # toward zero
        b = np_round_stochastic(np.float32([v]), np.array([-1]), dtype)[0]  # away from zero
        assert set(np.unique(r.numpy()).tolist()) <= {float(a), float(b)}
        gap = abs(float(b) - float(a))
        se = gap / 2 / math.sqrt(n)
        assert abs(float(r.mean()) - float(np.float32(v))) < 5 * se + 1e-12, (v, dtype)


# ============================================================================ update rule


CASES = [
    (kind, dtype, rounding)
    for kind in S.Z_KINDS
    for dtype, rounding in [
        ("float32", "nearest"),
        ("bfloat16", "nearest"),
        ("bfloat16", "stochastic"),
        ("float16", "nearest"),
        ("float16", "stochastic"),
    ]
]


@pytest.mark.parametrize("kind,dtype,rounding", CASES)
def test_apply_updates_backends_and_independent(kind, dtype, rounding):
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{dtype}/{rounding}".encode()))
    key = np_key(8, f"{kind}.{dtype}")
    t_steps = 12
    steps = np.sort(rng.choice(np.arange(40), t_steps, replace=False)).astype(np.int64)
    raw = rng.standard_normal((t_steps, 3)) * 10.0 ** rng.integers(-6, -1, (t_steps, 3))
    coefs = np.array([[U.round_coefficient(v) for v in row] for row in raw], np.float32)
    coefs[2, 1] = 0.0
    coefs[5] = -0.0
    decay = np.where(
        rng.random(t_steps) < 0.5, np.float32(1.0), np.float32(U.decay_multiplier(1e-2, 0.5))
    ).astype(np.float32)
    batch = U.UpdateBatch(steps, coefs, decay)
    n, start = 9000, 123
    x0 = (rng.standard_normal(n) * 0.05).astype(np.float32)
    x0[:4] = [0.0, -0.0, 1e-30, -1e-30]
    if dtype != "float32":  # NaN is written as the canonical quiet NaN (docs §10.3)
        x0[4:6] = [np.nan, -np.inf]
    base = torch.from_numpy(x0).to(TORCH[dtype])
    outs = {}
    for backend in ("reference", "auto"):
        t = base.clone()
        U.apply_updates(t, key, batch, kind=kind, rounding=rounding, start=start, backend=backend)
        outs[backend] = t
    np.testing.assert_array_equal(_bits(outs["auto"]), _bits(outs["reference"]))
    want = np_apply(_to_np32(base), dtype, key, steps, coefs, decay, kind, rounding, start)
    np.testing.assert_array_equal(_bits(outs["reference"].float()), _bits(want))
    assert not torch.equal(outs["reference"], base)
    # a slice updated on its own (start offset) equals the same slice of the whole
    whole = base.clone()
    U.apply_updates(whole, key, batch, kind=kind, rounding=rounding, start=0)
    part = base[1000:5000].clone()
    U.apply_updates(part, key, batch, kind=kind, rounding=rounding, start=1000)
    np.testing.assert_array_equal(_bits(part), _bits(whole[1000:5000]))


def test_apply_updates_compiled_backend_rules():
    key = KEYS[3]
    batch = U.UpdateBatch.single(0, [2.0**-6])
    with pytest.raises(ValueError):
        U.apply_updates(
            torch.zeros(8, dtype=torch.float16), key, batch, kind="normal16", backend="compiled"
        )
    with pytest.raises(ValueError):
        U.apply_updates(torch.zeros(8), key, batch, kind="normal16", rounding="up")
    with pytest.raises(ValueError):
        U.apply_updates(torch.zeros(4, 4).t(), key, batch, kind="normal16")
    t = torch.zeros(8)
    U.apply_updates(
        t,
        key,
        U.UpdateBatch(np.zeros(0, np.int64), np.zeros((0, 1), np.float32), np.zeros(0, np.float32)),
        kind="normal16",
    )
    assert torch.equal(t, torch.zeros(8))


DOC_REPLAY = {  # docs/FORMAT.md §16
    (
        "normal16",
        "float32",
        "nearest",
    ): "3e8e0a7c bf821d2c 403e40f9 3d00ebcf 3b5d7870 c01ecf82 42c7d490 3c4b5800",
    ("normal16", "bfloat16", "nearest"): "3e8e bf82 403e 3d01 3b5e c01f 42c8 3c4c",
    ("normal16", "bfloat16", "stochastic"): "3e8e bf82 403e 3d01 3b5d c01f 42c7 3c4c",
    ("normal16", "float16", "stochastic"): "3470 bc11 41f2 2807 1aec c0f7 563e 225c",
    (
        "rademacher",
        "float32",
        "nearest",
    ): "3e723e77 bf822f3c 403f06d9 bc2820c4 3ca42f0e c0209f0a 42c7d60d 3c9c0000",
    ("rademacher", "bfloat16", "nearest"): "3e72 bf82 403f bc28 3ca4 c021 42c8 3c9c",
    ("rademacher", "bfloat16", "stochastic"): "3e73 bf82 403f bc28 3ca4 c021 42c7 3c9c",
    ("rademacher", "float16", "stochastic"): "3392 bc12 41f8 a141 2521 c106 563e 24e0",
}


@pytest.mark.parametrize("case", sorted(DOC_REPLAY), ids=lambda c: "-".join(c))
def test_documented_replay_vector(case):
    kind, dtype, rounding = case
    vals = [0.25, -1.0, 3.0, 0.0078125, 1e-3, -2.5, 100.0, -0.0]
    m = struct.unpack("<f", bytes.fromhex("3f7fbe77")[::-1])[0]
    steps = np.array([0, 2], np.int64)  # record 1 is skipped
    coefs = np.array([[2.0**-6, -3 * 2.0**-10], [2.0**-11, 0.0]], np.float32)
    decay = np.array([m, 1.0], np.float32)
    fmt = "%08x" if dtype == "float32" else "%04x"
    x = torch.tensor(vals, dtype=torch.float32).to(TORCH[dtype])
    U.apply_updates(
        x, np_key(1, "w"), U.UpdateBatch(steps, coefs, decay), kind=kind, rounding=rounding
    )
    assert " ".join(fmt % v for v in _bits(x)) == DOC_REPLAY[case]
    x0 = np.array(vals, np.float32)
    if dtype != "float32":
        x0 = np_round_nearest(x0, dtype)
    want = _bits(np_apply(x0, dtype, np_key(1, "w"), steps, coefs, decay, kind, rounding))
    if dtype == "bfloat16":
        want = want >> 16
    elif dtype == "float16":
        want = want.view(np.float32).astype(np.float16).view(np.uint16)
    assert " ".join(fmt % v for v in want) == DOC_REPLAY[case]


# ============================================================================ fingerprints


def test_fingerprints_documented():
    """docs/FORMAT.md §11 and §16, recomputed with hashlib from the text."""
    ts = {"b": torch.tensor([1.0, -2.0]), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    h = hashlib.sha256()
    h.update(b"a\x00bfloat16\x00[2, 2]\x00" + struct.pack("<4H", *[0x3F80] * 4))
    h.update(b"b\x00float32\x00[2]\x00" + struct.pack("<2f", 1.0, -2.0))
    assert (
        tensors_sha256(ts)
        == h.hexdigest()
        == "c806eaee44979e53f1a601614360765fe43c09eca1c24c7d3307f10c1d572fd7"
    )
    man = [ParamInfo("b", (), (2,), "float32"), ParamInfo("a", ("c",), (2, 2), "bfloat16")]
    text = (
        '[{"aliases":["c"],"dtype":"bfloat16","name":"a","shape":[2,2]},'
        '{"aliases":[],"dtype":"float32","name":"b","shape":[2]}]'
    )
    assert (
        manifest_sha256(sorted(man, key=lambda i: i.name))
        == hashlib.sha256(text.encode()).hexdigest()
        == "c223abade4fd3fbe14f99e287fdb51a7e0a01a32cbd2ac3eeec693a4f66fcf70"
    )
