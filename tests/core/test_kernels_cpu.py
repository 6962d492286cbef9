"""mezo_ckpt.core.kernels_cpu, called through its own entry points (bit views, codes).

tests/core/test_kernels.py compares the kernels with the eager reference through
mezo_ckpt.core.update; this module calls ``replay``, ``perturb`` and ``perturb_rows``
directly: the momentum history terms of ``replay`` against the reference (and against
the same terms written as separate fp32 steps), results independent of how a parameter
is split into slices and of serial or parallel dispatch, the thread dispatcher covering
every block exactly once and passing errors on, empty calls, and the argument checks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mezo_ckpt.core import spec
from mezo_ckpt.core import update as U

K = pytest.importorskip("mezo_ckpt.core.kernels_cpu")
from mezo_ckpt.core.kernels_cpu_round import ROUND_NEAREST  # noqa: E402  (not re-exported)

KEY = (0x0BADF00D, 0xFEEDC0DE)
TABLE = spec.normal16_table_numpy()
DTYPES = {K.DT_FP32: torch.float32, K.DT_BF16: torch.bfloat16, K.DT_FP16: torch.float16}
MODES = [
    (K.DT_FP32, ROUND_NEAREST),
    (K.DT_BF16, ROUND_NEAREST),
    (K.DT_BF16, K.ROUND_STOCHASTIC),
    (K.DT_FP16, K.ROUND_STOCHASTIC),
]
KINDS = {"normal16": K.KIND_NORMAL16, "rademacher": K.KIND_RADEMACHER}


def _bits(t: torch.Tensor) -> np.ndarray:
    return U._bits(t.view(-1))


def _weights(n: int, dt: int, seed: int) -> torch.Tensor:
    w = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * np.float32(0.05)
    w[:4] = [0.0, -0.0, 1.0, -2.5]
    return torch.from_numpy(w).to(DTYPES[dt])


def _history_batch(seed: int, dt: int, steps: int = 5, window: int = 3) -> U.UpdateBatch:
    """Steps from 0 (history terms before step 0 are skipped), 13-bit coefficients,
    some zero; one step only decays."""
    rng = np.random.default_rng(seed)
    scale = 2.0**-22 if dt == K.DT_FP32 else 2.0**-13
    step_ids = np.array([0, 1, 2, 4, 5][:steps], np.int64)
    coefs = (rng.integers(-8191, 8192, (steps, 2)) * scale).astype(np.float32)
    hist = (rng.integers(-8191, 8192, (steps, window, 2)) * scale).astype(np.float32)
    hist[1, 2, :] = 0.0
    hist[3, 0, 1] = 0.0
    coefs[2, :] = 0.0
    decay = np.ones(steps, np.float32)
    decay[2] = np.float32(1 - 1e-3)
    return U.UpdateBatch(step_ids, coefs, decay, hist)


def _replay(x: torch.Tensor, batch: U.UpdateBatch, kind: str, dt: int, mode: int, start: int):
    K.replay(
        TABLE,
        _bits(x),
        start,
        KEY[0],
        KEY[1],
        batch.steps,
        batch.coefs,
        batch.decay,
        KINDS[kind],
        dt,
        mode,
        batch.history_array(),
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return np.array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dt,mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_replay_history_terms_match_reference(dt, mode, kind):
    batch = _history_batch(1, dt)
    start = K.BLOCK - 1500  # the slice crosses a block boundary
    x = _weights(3001, dt, 2)
    got, ref = x.clone(), x.clone()
    _replay(got, batch, kind, dt, mode, start)
    rounding = "stochastic" if mode == K.ROUND_STOCHASTIC else "nearest"
    U.apply_updates(ref, KEY, batch, kind=kind, rounding=rounding, start=start, backend="reference")
    assert _same(got, ref)
    assert not _same(got, x)
    without = x.clone()
    _replay(without, U.UpdateBatch(batch.steps, batch.coefs, batch.decay), kind, dt, mode, start)
    assert not _same(got, without)  # the history terms did something


def test_fp32_history_term_is_an_extra_direction_of_an_earlier_step():
    """In fp32 (no rounding between terms) ``hist[t, k-1, j]`` is exactly a term with
    coefficient h and z of (step - k, lane j), applied after the step's own terms."""
    x = _weights(5000, K.DT_FP32, 3)
    c, h = np.float32(1234 * 2.0**-20), np.float32(-777 * 2.0**-20)
    with_hist = x.clone()
    batch = U.UpdateBatch(
        np.array([9], np.int64),
        np.array([[c, 0.0]], np.float32),
        np.ones(1, np.float32),
        np.array([[[0.0, 0.0], [0.0, h]]], np.float32),  # k = 2, j = 1: step 7, lane 1
    )
    _replay(with_hist, batch, "normal16", K.DT_FP32, ROUND_NEAREST, 11)
    explicit = x.clone()
    as_steps = U.UpdateBatch(
        np.array([9, 7], np.int64),
        np.array([[c, 0.0], [0.0, h]], np.float32),
        np.ones(2, np.float32),
    )
    _replay(explicit, as_steps, "normal16", K.DT_FP32, ROUND_NEAREST, 11)
    assert _same(with_hist, explicit)


@pytest.mark.parametrize("dt,mode", MODES)
def test_replay_of_slices_equals_replay_of_the_whole(dt, mode):
    batch = _history_batch(4, dt)
    x = _weights(2 * K.BLOCK + 300, dt, 5)
    whole = x.clone()
    _replay(whole, batch, "rademacher", dt, mode, 7)
    parts = x.clone()
    for lo, hi in ((0, 1), (1, 131), (131, K.BLOCK + 9), (K.BLOCK + 9, x.numel())):
        _replay(parts[lo:hi], batch, "rademacher", dt, mode, 7 + lo)
    assert _same(parts, whole)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_perturb_serial_parallel_and_sliced_agree(dt, kind):
    """Large enough to be split over threads: serial, parallel and slice-by-slice give
    the same bits; the source is only read."""
    n = K.MIN_PARALLEL_WORK + 1000
    src = _weights(n, dt, 6)
    before = src.clone()
    outs = []
    for parallel in (True, False):
        out = torch.empty_like(src)
        K.perturb(TABLE, _bits(src), _bits(out), 5, 3, 1, *KEY, -2e-3, KINDS[kind], dt, parallel)
        outs.append(out)
    assert _same(outs[0], outs[1])
    sliced = torch.empty_like(src)
    for lo, hi in ((0, 77), (77, n)):
        K.perturb(
            TABLE,
            _bits(src[lo:hi]),
            _bits(sliced[lo:hi]),
            5 + lo,
            3,
            1,
            *KEY,
            -2e-3,
            KINDS[kind],
            dt,
            False,
        )
    assert _same(sliced, outs[0])
    assert _same(src, before)
    ref = U.perturbed_copy(src[:2000], KEY, 3, 1, -2e-3, kind=kind, start=5, backend="reference")
    assert torch.equal(torch.isnan(ref), torch.isnan(outs[0][:2000]))
    assert _same(outs[0][:2000], ref)


def test_perturb_scale_zero_and_sign():
    src = _weights(1000, K.DT_FP32, 7)
    outs = {}
    for scale in (0.0, 1e-2, -1e-2):
        out = torch.empty_like(src)
        K.perturb(TABLE, _bits(src), _bits(out), 0, 1, 0, *KEY, scale, 0, K.DT_FP32, True)
        outs[scale] = out
    z = torch.from_numpy(np.empty(1000, np.float32))
    K.z_fill(TABLE, z.numpy(), 0, 1, 0, KEY[0], KEY[1], K.KIND_NORMAL16)
    assert torch.equal(outs[0.0], src)  # the same values (a -0 may become +0, as in torch)
    assert _same(outs[0.0], src + np.float32(0.0) * z)
    assert torch.equal(outs[1e-2], src + np.float32(1e-2) * z)
    assert torch.equal(outs[-1e-2], src + np.float32(-1e-2) * z)


@pytest.mark.parametrize("dt", list(DTYPES))
def test_perturb_rows_equals_rows_of_the_whole_copy(dt):
    rows_n, dim = 50, 333
    w = _weights(rows_n * dim, dt, 8)
    whole = torch.empty_like(w)
    K.perturb(TABLE, _bits(w), _bits(whole), 0, 4, 2, *KEY, 1e-3, K.KIND_NORMAL16, dt, False)
    rows = [49, 0, 13, 13, 25]  # any order, repeats, a python list
    out = torch.empty(len(rows) * dim, dtype=w.dtype)
    K.perturb_rows(TABLE, _bits(w), rows, dim, _bits(out), 4, 2, *KEY, 1e-3, 0, dt, True)
    assert _same(out.view(len(rows), dim), whole.view(rows_n, dim)[rows])
    empty = torch.empty(0, dtype=w.dtype)
    K.perturb_rows(TABLE, _bits(w), [], dim, _bits(empty), 4, 2, *KEY, 1e-3, 0, dt, True)


def test_empty_calls_do_nothing():
    x = _weights(10, K.DT_BF16, 9)
    before = x.clone()
    none = U.UpdateBatch(
        np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    )
    _replay(x, none, "normal16", K.DT_BF16, K.ROUND_STOCHASTIC, 0)
    assert _same(x, before)
    empty = np.empty(0, np.uint16)
    batch = _history_batch(1, K.DT_BF16)
    K.replay(TABLE, empty, 0, *KEY, batch.steps, batch.coefs, batch.decay, 0, K.DT_BF16, 0)
    K.perturb(TABLE, empty, empty.copy(), 0, 0, 0, *KEY, 1.0, 1, K.DT_BF16)
    K.z_fill(TABLE, np.empty(0, np.float32), 0, 0, 0, *KEY, 0)
    K.rounding_bits_fill(np.empty(0, np.int64), 0, 0, 0, *KEY)


def test_argument_checks():
    f32 = np.zeros(8, np.uint32)
    u16 = np.zeros(8, np.uint16)
    steps, coefs, decay = (
        np.zeros(2, np.int64),
        np.zeros((2, 1), np.float32),
        np.ones(2, np.float32),
    )
    with pytest.raises(ValueError, match="unknown storage code 5"):
        K.replay(TABLE, f32, 0, *KEY, steps, coefs, decay, 0, 5, 0)
    with pytest.raises(ValueError, match="storage 1 needs a 1-D uint16 bit view"):
        K.replay(TABLE, f32, 0, *KEY, steps, coefs, decay, 0, K.DT_BF16, 0)
    with pytest.raises(ValueError, match="storage 0 needs a 1-D uint32 bit view"):
        K.replay(TABLE, f32.reshape(2, 4), 0, *KEY, steps, coefs, decay, 0, K.DT_FP32, 0)
    with pytest.raises(ValueError, match="must agree"):
        K.replay(TABLE, u16, 0, *KEY, steps[:1], coefs, decay, 0, K.DT_BF16, 0)
    with pytest.raises(ValueError, match="must agree"):
        no_hist = np.zeros((2, 0, 1), np.float32)
        K.replay(TABLE, u16, 0, *KEY, steps, coefs[:, 0], decay, 0, K.DT_BF16, 0, no_hist)
    with pytest.raises(ValueError, match="must agree"):  # without hist too (was IndexError)
        K.replay(TABLE, u16, 0, *KEY, steps, coefs[:, 0], decay, 0, K.DT_BF16, 0)
    with pytest.raises(ValueError, match="history must be"):
        bad_hist = np.zeros((2, 3, 2), np.float32)  # 2 directions, coefs have 1
        K.replay(TABLE, u16, 0, *KEY, steps, coefs, decay, 0, K.DT_BF16, 0, bad_hist)
    with pytest.raises(ValueError, match="unknown z kind code 3"):
        K.replay(TABLE, u16, 0, *KEY, steps, coefs, decay, 3, K.DT_BF16, 0)
    with pytest.raises(ValueError, match="same length"):
        K.perturb(TABLE, u16, u16[:4].copy(), 0, 0, 0, *KEY, 0.1, 0, K.DT_FP16)
    with pytest.raises(ValueError, match="uint16"):
        K.perturb(TABLE, u16, f32, 0, 0, 0, *KEY, 0.1, 0, K.DT_FP16)
    with pytest.raises(ValueError, match="len\\(rows\\) \\* dim"):
        K.perturb_rows(TABLE, u16, [0], 4, u16, 0, 0, *KEY, 0.1, 0, K.DT_FP16)
    with pytest.raises(ValueError, match="row index out of range"):
        K.perturb_rows(TABLE, u16, [-1], 4, u16[:4].copy(), 0, 0, *KEY, 0.1, 0, K.DT_FP16)
    with pytest.raises(ValueError, match="unknown z kind"):
        K.perturb_rows(TABLE, u16, [1], 4, u16[:4].copy(), 0, 0, *KEY, 0.1, 2, K.DT_FP16)


def _record(calls):
    def kernel(gb, ge, tag):
        assert tag == "arg"
        calls.append((gb, ge))

    return kernel


def test_parallel_dispatch_covers_every_unit_once(monkeypatch):
    calls: list[tuple[int, int]] = []
    K._parallel(_record(calls), 10, K.MIN_PARALLEL_WORK - 1, ("arg",))
    assert calls == [(0, 10)]  # little work: the calling thread alone
    monkeypatch.setattr(K.numba, "get_num_threads", lambda: 3)
    for nb in (1, 2, 7, 100):
        calls.clear()
        K._parallel(_record(calls), nb, K.MIN_PARALLEL_WORK, ("arg",))
        covered = sorted(u for gb, ge in calls for u in range(gb, ge))
        assert covered == list(range(nb))
        assert all(ge > gb for gb, ge in calls)
        assert len(calls) == min(nb, 3 * K.CHUNKS_PER_THREAD) or nb == 1
    calls.clear()
    K._parallel(_record(calls), 0, K.MIN_PARALLEL_WORK, ("arg",))
    assert calls == []


def test_parallel_dispatch_passes_errors_on(monkeypatch):
    monkeypatch.setattr(K.numba, "get_num_threads", lambda: 2)

    def failing(gb, ge):
        if gb > 0:
            raise ArithmeticError(f"block {gb}")

    with pytest.raises(ArithmeticError, match="block"):
        K._parallel(failing, 8, K.MIN_PARALLEL_WORK, ())
