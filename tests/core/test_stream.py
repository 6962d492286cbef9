"""The perturbation stream (§9) against the independent implementation.

tests/reference_numpy.py is written from docs/FORMAT.md with NumPy uint64 arithmetic,
hashlib and ``statistics``/``mpmath``; it never calls or copies mezo_ckpt code. The
tests require identical bits from mezo_ckpt's reference (eager torch) and compiled paths,
under every CPU capability.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from paths import ROOT, TESTS
from reference_numpy import (
    KEYS,
    TORCH,
    _bits,
    _words,
    np_apply,
    np_key,
    np_philox,
    np_rounding_bits,
    np_table,
    np_z,
)

from mezo_ckpt.core import spec
from mezo_ckpt.core import stream as S
from mezo_ckpt.core import update as U
from mezo_ckpt.core.hashing import tensors_sha256

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
    assert hashlib.sha256(t.astype("<i2").tobytes()).hexdigest() == spec.NORMAL16_SHA256


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
        "import json, sys; sys.path[:0] = sys.argv[1:3]; import test_stream; "
        "print(json.dumps(test_stream._fingerprints()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(TESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
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


def test_without_numba_the_eager_path_is_used_with_one_warning():
    """numba missing: one RuntimeWarning for the whole process, and the same bits."""
    code = r"""
import sys, warnings
sys.modules["numba"] = None  # import numba -> ImportError
import torch
from mezo_ckpt.core import stream, update
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    outs = []
    for _ in range(3):
        assert not stream.use_compiled("cpu")
        w = torch.linspace(-1, 1, 1000)
        outs.append(update.perturbed_copy(w, (5, 9), 3, 0, 1e-3, kind="normal16"))
ref = update.perturbed_copy(w, (5, 9), 3, 0, 1e-3, kind="normal16", backend="reference")
assert all(torch.equal(o, ref) for o in outs)
msgs = [str(x.message) for x in seen if issubclass(x.category, RuntimeWarning)]
assert len(msgs) == 1 and "compiled CPU kernels unavailable" in msgs[0], msgs
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
