"""Compiled kernels (numba) against the eager torch reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mezo_ckpt import stream as S

K = pytest.importorskip("mezo_ckpt._kernels")

KEY = (0x9E3779B9, 0x01234567)
KINDS = {"normal16": K.KIND_NORMAL16, "rademacher": K.KIND_RADEMACHER}
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


def _bits(a) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return a.view(np.uint32)


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


def _schedule(seed: int, steps: int = 7, ndir: int = 2):
    rng = np.random.default_rng(seed)
    step_ids = np.sort(rng.choice(1000, size=steps, replace=False)).astype(np.int64)
    # 13 significant bits at most. Step 2 has one zero coefficient, step 3 only decays,
    # step 5 does nothing at all (decay 1, all coefficients 0).
    coefs = (rng.integers(-8191, 8192, size=(steps, ndir)) * 2.0**-22).astype(np.float32)
    coefs[2, 1] = 0.0
    coefs[3, :] = 0.0
    coefs[5, :] = 0.0
    decay = np.ones(steps, np.float32)
    decay[1] = np.float32(1 - 3e-4)
    decay[3] = np.float32(1 - 1e-3)
    decay[4] = np.float32(1 - 1e-2)
    return step_ids, coefs, decay


def _eager_fp32(theta, start, steps, coefs, decay, kind):
    x = torch.from_numpy(theta.copy())
    for t in range(len(steps)):
        if decay[t] != 1.0:
            x = x * torch.tensor(decay[t], dtype=torch.float32)
        for j in range(coefs.shape[1]):
            c = torch.tensor(coefs[t, j], dtype=torch.float32)
            if c == 0:
                continue
            z = S.z_reference(KEY, int(steps[t]), j, start, x.numel(), kind)
            x = x - c * z
    return x.numpy()


def _eager_bf16(theta_bf16, start, steps, coefs, decay, kind):
    x = theta_bf16.clone()
    for t in range(len(steps)):
        y = x.float()
        touched = False
        if decay[t] != 1.0:
            y = y * torch.tensor(decay[t], dtype=torch.float32)
            touched = True
        for j in range(coefs.shape[1]):
            c = torch.tensor(coefs[t, j], dtype=torch.float32)
            if c == 0:
                continue
            z = S.z_reference(KEY, int(steps[t]), j, start, x.numel(), kind)
            y = y - c * z
            touched = True
        if touched:
            x = y.to(torch.bfloat16)
    return x


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "start,count", [(0, 0), (3, 7), (5, 129), (77, 20_011), (128 * 2**32 - 77, 9000)]
)
def test_replay_fp32_matches_eager(kind, start, count):
    steps, coefs, decay = _schedule(count)
    theta = np.random.default_rng(1).standard_normal(count).astype(np.float32) * 0.05
    expected = _eager_fp32(theta, start, steps, coefs, decay, kind)
    got = theta.copy()
    K.replay_fp32(
        S.normal16_table_numpy(), got, start, KEY[0], KEY[1], steps, coefs, decay, KINDS[kind]
    )
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    if count:
        assert not np.array_equal(got, theta)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("start,count", [(0, 0), (3, 7), (5, 129), (77, 20_011)])
def test_replay_bf16_matches_eager(kind, start, count):
    steps, coefs, decay = _schedule(count + 1)
    coefs *= 64  # bf16 has 8 significant bits: make updates visible
    theta = (
        torch.from_numpy(np.random.default_rng(2).standard_normal(count).astype(np.float32)) * 0.05
    ).to(torch.bfloat16)
    expected = _eager_bf16(theta, start, steps, coefs, decay, kind)
    got = theta.clone()
    K.replay_bf16(
        S.normal16_table_numpy(),
        got.view(torch.uint16).numpy(),
        start,
        KEY[0],
        KEY[1],
        steps,
        coefs,
        decay,
        KINDS[kind],
    )
    np.testing.assert_array_equal(
        got.view(torch.uint16).numpy(), expected.view(torch.uint16).numpy()
    )
    if count > 100:
        assert not torch.equal(got, theta)


def test_bf16_rounding_special_values():
    specials = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            np.inf,
            -np.inf,
            3.4e38,
            -3.4e38,  # last two round to inf
            1e-40,
            -1e-40,
            1.17e-38,
            2.0**-133,
            1.0 + 2.0**-8,
            1.0 + 3 * 2.0**-8,
            1.0 + 2.0**-8 + 2.0**-20,
            255.5,
            256.5,
        ],
        dtype=np.float32,
    )
    bits = np.concatenate(
        [
            specials.view(np.uint32),
            np.array(
                [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x0000FFFF, 0x80008000, 0x00018000], np.uint32
            ),
        ]
    )
    x = bits.view(np.float32).copy()
    K._bf16_round(x, x.shape[0])
    expected = torch.from_numpy(bits.view(np.float32).copy()).to(torch.bfloat16)
    assert (x.view(np.uint32) & 0xFFFF == 0).all()
    np.testing.assert_array_equal(
        (x.view(np.uint32) >> 16).astype(np.uint16), expected.view(torch.uint16).numpy()
    )
    # NaN -> 0x7FC0 as c10's scalar round_to_nearest_even. Note: tensor.to(bfloat16) on
    # CPU (torch 2.13) gives 0xFFFF for NaN instead; the update rule never makes NaN.
    nans = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0xFFFFFFFF], np.uint32)
    x = nans.view(np.float32).copy()
    K._bf16_round(x, 4)
    assert (x.view(np.uint32) == 0x7FC00000).all()


def test_replay_is_thread_count_independent():
    import numba

    steps, coefs, decay = _schedule(5)
    theta = np.random.default_rng(3).standard_normal(70_001).astype(np.float32)
    results = []
    for threads in (1, numba.config.NUMBA_DEFAULT_NUM_THREADS):
        numba.set_num_threads(threads)
        got = theta.copy()
        K.replay_fp32(
            S.normal16_table_numpy(), got, 19, KEY[0], KEY[1], steps, coefs, decay, K.KIND_NORMAL16
        )
        results.append(got)
    numba.set_num_threads(numba.config.NUMBA_DEFAULT_NUM_THREADS)
    np.testing.assert_array_equal(_bits(results[0]), _bits(results[-1]))
