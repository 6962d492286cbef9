"""The update rule (§10): coefficients, decay, exact products, rounding, apply_updates.

Checked against the independent implementation in tests/reference_numpy.py and the
documented test vectors of docs/FORMAT.md §16.
"""

from __future__ import annotations

import math
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch
from reference_numpy import (
    KEYS,
    TORCH,
    _bits,
    _to_np32,
    np_apply,
    np_key,
    np_round_nearest,
    np_round_stochastic,
)

from mezo_ckpt.core import stream as S
from mezo_ckpt.core import update as U

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
            torch.zeros(8, dtype=torch.float64), key, batch, kind="normal16", backend="compiled"
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


DOC_HISTORY = {  # docs/FORMAT.md §16, "Replay with history"
    ("normal16", "float32", "nearest"): (
        "3e96797c bf8371ec 403dbbf9 3d353bcf 3b94fc38 c01eb382 42c7da00 3cb21c00"
    ),
    ("normal16", "bfloat16", "stochastic"): "3e96 bf84 403d 3d36 3b95 c01f 42c7 3cb3",
    ("rademacher", "float32", "nearest"): (
        "3e683e77 bf82ef3c 403e66d9 bc841062 3cd42f0e c0213f0a 42c7d90d 3ccc0000"
    ),
    ("rademacher", "float16", "stochastic"): "3342 bc18 41f3 a420 26a1 c10b 563f 2660",
}


@pytest.mark.parametrize("case", sorted(DOC_HISTORY), ids=lambda c: "-".join(c))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_documented_history_vector(case, backend):
    kind, dtype, rounding = case
    vals = [0.25, -1.0, 3.0, 0.0078125, 1e-3, -2.5, 100.0, -0.0]
    m = struct.unpack("<f", bytes.fromhex("3f7fbe77")[::-1])[0]
    steps = np.array([0, 2], np.int64)  # record 1 is skipped
    coefs = np.array([[2.0**-6, -3 * 2.0**-10], [2.0**-11, 0.0]], np.float32)
    decay = np.array([m, 1.0], np.float32)
    hist = np.array([[[0, 0], [0, 0]], [[0, 0], [2.0**-7, 2.0**-9]]], np.float32)
    fmt = "%08x" if dtype == "float32" else "%04x"
    x = torch.tensor(vals, dtype=torch.float32).to(TORCH[dtype])
    batch = U.UpdateBatch(steps, coefs, decay, hist)
    U.apply_updates(x, np_key(1, "w"), batch, kind=kind, rounding=rounding, backend=backend)
    assert " ".join(fmt % v for v in _bits(x)) == DOC_HISTORY[case]
    x0 = np.array(vals, np.float32)
    if dtype != "float32":
        x0 = np_round_nearest(x0, dtype)
    want = _bits(np_apply(x0, dtype, np_key(1, "w"), steps, coefs, decay, kind, rounding, 0, hist))
    if dtype == "bfloat16":
        want = want >> 16
    elif dtype == "float16":
        want = want.view(np.float32).astype(np.float16).view(np.uint16)
    assert " ".join(fmt % v for v in want) == DOC_HISTORY[case]


def test_cpu_updates_never_import_triton():
    """Triton is for CUDA tensors: CPU work must not pay its import (nor fix its mode
    before a test sets TRITON_INTERPRET)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, torch\n"
        "from mezo_ckpt.core import update as U\n"
        "c = np.array([[2.0**-10]], np.float32)\n"
        "b = U.UpdateBatch(np.array([0]), c, np.ones(1, np.float32))\n"
        "for backend in ('auto', 'compiled', 'reference'):\n"
        "    U.apply_updates(torch.zeros(100), (1, 2), b, kind='normal16', backend=backend)\n"
        "    w = torch.zeros(100)\n"
        "    U.perturbed_copy(w, (1, 2), 0, 0, 1e-3, kind='normal16', backend=backend)\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
