"""Compiled kernels (numba) against the eager torch reference, bit for bit.

Every storage dtype (fp32, bf16, fp16) and rounding mode (nearest, stochastic), both z
kinds, several directions, decay, odd sizes and offsets, special values and random bit
patterns; the perturbed-copy kernels too; results independent of the thread count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mezo_ckpt.core import stream as S
from mezo_ckpt.core import update as U

K = pytest.importorskip("mezo_ckpt.core.kernels_cpu")

KEY = (0x9E3779B9, 0x01234567)
KINDS = {"normal16": K.KIND_NORMAL16, "rademacher": K.KIND_RADEMACHER}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = [
    ("float32", "nearest"),
    ("bfloat16", "nearest"),
    ("bfloat16", "stochastic"),
    ("float16", "nearest"),
    ("float16", "stochastic"),
]
# (start, count): unaligned heads and tails, empty, single, several kernel blocks, an
# offset near 2**32 elements, and spans crossing Philox block 2**32 (the counter's high
# word) for normal16 (8 elements per block) and rademacher (128 per block).
SPANS = [
    (0, 0),
    (5, 0),
    (0, 1),
    (3, 1),
    (5, 7),
    (1, 129),
    (127, 129),
    (77, 10_007),
    (8192 - 3, 2 * 8192 + 11),
    (2**32 - 3, 1000),
    (8 * 2**32 - 13, 301),
    (128 * 2**32 - 77, 20_000),
]
SPECIALS = [
    0.0,
    -0.0,
    float("inf"),
    -float("inf"),
    float("nan"),
    65504.0,
    -65504.0,
    65519.0,
    65520.0,
    6.1e-5,
    6.0e-5,
    5.96e-8,
    1e-40,
    -1e-40,
    3.38e38,
    -3.39e38,
    1.0,
    2.0**-24,
    2.0**-25,
    2.0**-14,
]


def _bits(a) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return a.view(np.uint32)


def _ints(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def _same(a: torch.Tensor, b: torch.Tensor, *, any_nan: bool = False) -> bool:
    """Bitwise equality. fp32 NaN payloads are unspecified (docs §10.3); stored halves
    hold the canonical NaN; perturbed copies (never stored) may hold any NaN."""
    ia, ib = _ints(a).clone(), _ints(b).clone()
    if a.dtype == torch.float32 or any_nan:
        nan = torch.isnan(a) & torch.isnan(b)
        ia[nan] = 0
        ib[nan] = 0
    return torch.equal(ia, ib)


def _schedule(seed: int, steps: int = 7, ndir: int = 2, scale: float = 2.0**-22):
    rng = np.random.default_rng(seed)
    step_ids = np.sort(rng.choice(1000, size=steps, replace=False)).astype(np.int64)
    # 13 significant bits at most. Step 2 has one zero coefficient, step 3 only decays,
    # step 5 does nothing at all (decay 1, all coefficients 0).
    coefs = (rng.integers(-8191, 8192, size=(steps, ndir)) * scale).astype(np.float32)
    coefs[2, 1] = 0.0
    coefs[3, :] = 0.0
    coefs[5, :] = 0.0
    decay = np.ones(steps, np.float32)
    decay[1] = np.float32(1 - 3e-4)
    decay[3] = np.float32(1 - 1e-3)
    decay[4] = np.float32(1 - 1e-2)
    return U.UpdateBatch(step_ids, coefs, decay)


def _compare(x: torch.Tensor, batch: U.UpdateBatch, kind: str, rounding: str, start: int):
    got, ref = x.clone(), x.clone()
    U.apply_updates(got, KEY, batch, kind=kind, rounding=rounding, start=start, backend="compiled")
    U.apply_updates(ref, KEY, batch, kind=kind, rounding=rounding, start=start, backend="reference")
    assert _same(got, ref)
    return got


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("start,count", SPANS)
def test_z_fill_matches_reference(kind, start, count):
    out = np.full(count, np.nan, np.float32)
    K.z_fill(S.normal16_table_numpy(), out, start, 7, 1, KEY[0], KEY[1], KINDS[kind])
    ref = S.z_reference(KEY, 7, 1, start, count, kind)
    np.testing.assert_array_equal(_bits(out), _bits(ref))


@pytest.mark.parametrize("kind", list(KINDS))
def test_z_fill_large_step_lane_and_threads(kind):
    import numba

    step, lane = 2**32 - 1, 5
    ref = S.z_reference(KEY, step, lane, 333, 50_000, kind)
    for threads in (1, numba.config.NUMBA_DEFAULT_NUM_THREADS):
        numba.set_num_threads(threads)
        out = np.empty(50_000, np.float32)
        K.z_fill(S.normal16_table_numpy(), out, 333, step, lane, KEY[0], KEY[1], KINDS[kind])
        np.testing.assert_array_equal(_bits(out), _bits(ref))
    numba.set_num_threads(numba.config.NUMBA_DEFAULT_NUM_THREADS)


@pytest.mark.parametrize("start,count", SPANS)
def test_rounding_bits_fill_matches_reference(start, count):
    out = np.full(count, -1, np.int64)
    K.rounding_bits_fill(out, start, 11, S.LANE_ROUNDING + 1, KEY[0], KEY[1])
    ref = S.rounding_bits_reference(KEY, 11, 1, start, count).numpy()
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype,rounding", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "start,count", [(0, 1), (3, 7), (5, 129), (77, 20_011), (128 * 2**32 - 77, 9000)]
)
def test_replay_matches_reference(dtype, rounding, kind, start, count):
    scale = 2.0**-22 if dtype == "float32" else 2.0**-14  # visible in 8/11-bit significands
    batch = _schedule(count, scale=scale)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(count).astype(np.float32))
    x = (x * 0.05).to(DTYPES[dtype])
    x.view(-1)[: min(count, len(SPECIALS))] = torch.tensor(SPECIALS[: min(count, len(SPECIALS))])
    got = _compare(x, batch, kind, rounding, start)
    if count > 100:
        assert not torch.equal(got, x)


@pytest.mark.parametrize("dtype,rounding", MODES[1:])
def test_replay_random_bit_patterns(dtype, rounding):
    """Every bf16/fp16 bit pattern class (subnormals, huge values, NaN, inf) and random
    decay multipliers and coefficient scales: compiled == reference."""
    rng = np.random.default_rng(hash((dtype, rounding)) % 2**32)
    for trial in range(8):
        x = torch.from_numpy(rng.integers(0, 65536, 20_000).astype(np.int32)).to(torch.int16)
        x = x.view(DTYPES[dtype]).clone()
        coefs = (rng.integers(-8191, 8192, (2, 1)) * 2.0 ** float(rng.integers(-40, 0))).astype(
            np.float32
        )
        batch = U.UpdateBatch(
            np.array([trial, trial + 1], np.int64),
            coefs,
            np.array([np.float32(rng.uniform(0.5, 1.0)), 1.0], np.float32),
        )
        _compare(x, batch, "rademacher" if trial % 2 else "normal16", rounding, 0)


def test_half_rounding_special_values():
    """Nearest rounding to bf16/fp16 of special fp32 values equals torch's conversion
    (NaN excepted: it is canonical, 0x7FC0 / 0x7E00, whatever torch's CPU path gives)."""
    vals = np.array(
        SPECIALS
        + [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 255.5, 256.5, 2.0**-133, 1.17e-38, 65536.0]
        + [1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2.0**-24 * 1.5, 2.0**-24 * 2.5],
        np.float32,
    )
    bits = np.concatenate(
        [vals.view(np.uint32), np.array([0x3F808000, 0x7F7FFFFF, 0x0000FFFF], np.uint32)]
    )
    y = torch.from_numpy(bits.view(np.float32).copy())
    for dtype, nan in ((torch.bfloat16, 0x7FC0), (torch.float16, 0x7E00)):
        want = y.to(dtype)
        got = U.perturbed_copy(y, KEY, 0, 0, 0.0, kind="normal16").to(dtype)
        isnan = torch.isnan(want)
        assert torch.equal(_ints(got)[~isnan], _ints(want)[~isnan])
        x = y.to(dtype)
        x[isnan] = float("nan")
        res = x.clone()
        U.apply_updates(
            res, KEY, U.UpdateBatch.single(0, [0.0], 0.5), kind="normal16", backend="compiled"
        )
        ref = x.clone()
        U.apply_updates(
            ref, KEY, U.UpdateBatch.single(0, [0.0], 0.5), kind="normal16", backend="reference"
        )
        assert torch.equal(_ints(res), _ints(ref))
        assert (_ints(res)[torch.isnan(res)].to(torch.int32) & 0xFFFF == nan).all()


def test_replay_is_thread_count_independent():
    import numba

    batch = _schedule(5)
    for dtype, rounding in MODES:
        x = torch.from_numpy(np.random.default_rng(3).standard_normal(70_001).astype(np.float32))
        x = x.to(DTYPES[dtype])
        results = []
        for threads in (1, numba.config.NUMBA_DEFAULT_NUM_THREADS):
            numba.set_num_threads(threads)
            got = x.clone()
            U.apply_updates(got, KEY, batch, kind="normal16", rounding=rounding, start=19)
            results.append(got)
        numba.set_num_threads(numba.config.NUMBA_DEFAULT_NUM_THREADS)
        assert _same(results[0], results[-1])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("start,count", [(0, 1), (3, 7), (77, 20_011), (2**32 - 3, 1000)])
def test_perturbed_copy_matches_reference(dtype, kind, start, count):
    w = torch.from_numpy(np.random.default_rng(4).standard_normal(count).astype(np.float32))
    w = (w * 0.05).to(DTYPES[dtype])
    w.view(-1)[: min(count, len(SPECIALS))] = torch.tensor(SPECIALS[: min(count, len(SPECIALS))])
    before = w.clone()
    for scale in (1e-3, -1e-3, 0.25):
        a = U.perturbed_copy(w, KEY, 9, 2, scale, kind=kind, start=start)
        b = U.perturbed_copy(w, KEY, 9, 2, scale, kind=kind, start=start, backend="reference")
        assert a.dtype == w.dtype and a.shape == w.shape
        assert _same(a, b, any_nan=True)
    assert _same(w, before)  # the source is only read


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_perturbed_rows_match_whole_copy(dtype, kind):
    w = torch.from_numpy(np.random.default_rng(5).standard_normal((300, 77)).astype(np.float32))
    w = w.to(DTYPES[dtype])
    rows = torch.tensor([299, 0, 17, 17, 150])
    whole = U.perturbed_copy(w, KEY, 4, 1, -1e-3, kind=kind)
    got = U.perturbed_rows(w, rows, KEY, 4, 1, -1e-3, kind=kind)
    ref = U.perturbed_rows(w, rows, KEY, 4, 1, -1e-3, kind=kind, backend="reference")
    assert _same(got, whole[rows], any_nan=True) and _same(ref, whole[rows], any_nan=True)
    assert U.perturbed_rows(w, rows[:0], KEY, 4, 1, 1e-3, kind=kind).shape == (0, 77)


def test_kernel_argument_checks():
    table = S.normal16_table_numpy()
    batch = _schedule(1)
    with pytest.raises(ValueError, match="storage"):
        K.replay(
            table,
            np.zeros(4, np.float32),
            0,
            1,
            2,
            batch.steps,
            batch.coefs,
            batch.decay,
            0,
            K.DT_FP32,
            0,
        )
    with pytest.raises(ValueError, match="kind"):
        K.z_fill(table, np.zeros(4, np.float32), 0, 0, 0, 1, 2, 7)
    with pytest.raises(ValueError, match="row index"):
        K.perturb_rows(
            table,
            np.zeros(8, np.uint32),
            np.array([4]),
            2,
            np.zeros(2, np.uint32),
            0,
            0,
            1,
            2,
            1e-3,
            0,
            K.DT_FP32,
        )
