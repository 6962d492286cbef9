"""mezo_ckpt.core.triton_device: the Triton device functions, called from small kernels
defined here (on CPU tensors in Triton's interpreter when there is no GPU).

Philox words, the normal16 / rademacher z and the stochastic-rounding integers equal the
eager reference of mezo_ckpt.core.stream (also across the counter's high word); ``x - c*z``
is one fp32 rounding; widening every bf16/fp16 bit pattern is exact; rounding to a half
(nearest even, stochastic) equals torch's conversion and update.stochastic_round, with
canonical NaNs. Without triton the module still imports (kernels defined, never run)
and records why.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from mezo_ckpt.core import kernels_cpu_round as R  # noqa: E402
from mezo_ckpt.core import spec  # noqa: E402
from mezo_ckpt.core import stream as S  # noqa: E402
from mezo_ckpt.core import triton_device as D  # noqa: E402
from mezo_ckpt.core import update as U  # noqa: E402

pytestmark = [
    pytest.mark.triton,
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DEVICE = "cuda" if CUDA else "cpu"
KEY = (0x9E3779B9, 0x7F4A7C15)
HALF = {D.DT_BF16: torch.bfloat16, D.DT_FP16: torch.float16}


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _words_kernel(out_ptr, b0, step, lane, k0, k1, NB: tl.constexpr):
    w = D._philox_words(
        b0, NB, step.to(tl.uint32), lane.to(tl.uint32), k0.to(tl.uint32), k1.to(tl.uint32)
    )
    offs = tl.arange(0, NB)[:, None] * 4 + tl.arange(0, 4)[None, :]
    tl.store(out_ptr + offs, w.to(tl.int64))


@triton.jit
def _z_kernel(
    out_ptr, table_ptr, base, step, lane, k0, k1, KIND: tl.constexpr, BLOCK: tl.constexpr
):
    z = D._z(
        table_ptr,
        base + tl.program_id(0).to(tl.int64) * BLOCK,
        step.to(tl.uint32),
        lane.to(tl.uint32),
        k0.to(tl.uint32),
        k1.to(tl.uint32),
        KIND,
        BLOCK,
    )
    tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), z)


@triton.jit
def _sub_kernel(
    x_ptr, out_ptr, table_ptr, c, base, k0, k1, KIND: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    y = D._sub_cz(
        x,
        c,
        table_ptr,
        base,
        tl.full([], 3, tl.uint32),
        tl.full([], 1, tl.uint32),
        k0.to(tl.uint32),
        k1.to(tl.uint32),
        KIND,
        BLOCK,
    )
    tl.store(out_ptr + offs, y)


@triton.jit
def _rounding_kernel(out_ptr, base, step, k0, k1, BLOCK: tl.constexpr):
    lane = tl.full([], D._LANE_ROUNDING, tl.uint32)
    r = D._rounding_ints(base, step.to(tl.uint32), lane, k0.to(tl.uint32), k1.to(tl.uint32), BLOCK)
    tl.store(out_ptr + tl.arange(0, BLOCK), r.to(tl.int64))


@triton.jit
def _widen_kernel(in_ptr, out_ptr, DT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, D._widen(tl.load(in_ptr + offs).to(tl.uint32), DT))


@triton.jit
def _round_kernel(y_ptr, r_ptr, out_ptr, DT: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    y = tl.load(y_ptr + offs)
    r = tl.load(r_ptr + offs).to(tl.uint32)
    tl.store(out_ptr + offs, D._round_half(y, r, DT, MODE).to(tl.int32))


@triton.jit
def _load_store_kernel(in_ptr, out_ptr, n, DT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    D._store_rounded(out_ptr + offs, D._load_fp32(in_ptr + offs, mask, DT), mask, DT)


# ----------------------------------------------------------------------------- helpers


def _table() -> torch.Tensor:
    return torch.from_numpy(spec.normal16_table_numpy().copy()).to(DEVICE)


def _pad(a: np.ndarray, block: int) -> np.ndarray:
    return np.concatenate([a, np.zeros(-len(a) % block, a.dtype)])


def _inputs(seed: int) -> np.ndarray:
    """fp32 values: random bit patterns, bf16/fp16 ties and neighbours, fp16 subnormals,
    overflow edges, infinities and NaNs (both signs)."""
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32)]
    hi = rng.integers(0, 2**16, 200).astype(np.uint32) << 16
    parts += [hi | off for off in (0x7FFF, 0x8000, 0x8001)]
    mid = (rng.integers(0x38800000, 0x47800000, 200).astype(np.uint32) >> 13) << 13
    parts += [mid | off for off in (0xFFF, 0x1000, 0x1001)]
    parts.append((np.arange(0, 2048, 5, dtype=np.float32) * np.float32(2.0**-25)).view(np.uint32))
    edges = np.array(
        [0x477FE000, 0x477FF000, 0x7F7F8000, 0x7F7FFFFF, 0x7F800000, 0x7FC00001, 0x38800000]
        + [0x387FFFFF, 0x33000000, 0x33000001, 0x00000001, 0],
        np.uint32,
    )
    parts += [edges, edges | np.uint32(0x80000000)]
    return np.concatenate(parts).view(np.float32)


def _round(y: np.ndarray, r: np.ndarray, dt: int, mode: int) -> torch.Tensor:
    """Half bits (as the half dtype) of ``y`` rounded by the device functions."""
    n, block = len(y), 1024
    yt = torch.from_numpy(_pad(y, block)).to(DEVICE)
    rt = torch.from_numpy(_pad(r.astype(np.int64), block)).to(DEVICE)
    out = torch.empty(yt.numel(), dtype=torch.int32, device=DEVICE)
    _round_kernel[(yt.numel() // block,)](yt, rt, out, DT=dt, MODE=mode, BLOCK=block)
    return out[:n].cpu().to(torch.int16).view(HALF[dt])


def _check_half(got: torch.Tensor, want: torch.Tensor) -> None:
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))
    canonical = spec.CANONICAL_NAN[want.dtype]
    assert ((got[nan].view(torch.int16).to(torch.int32) & 0xFFFF) == canonical).all()


# ----------------------------------------------------------------------------- tests


def test_codes_and_constants_match_the_spec():
    assert D._IMPORT_ERROR is None
    assert (D.DT_FP32, D.DT_BF16, D.DT_FP16) == (R.DT_FP32, R.DT_BF16, R.DT_FP16)
    assert (D.ROUND_NEAREST, D.ROUND_STOCHASTIC) == (R.ROUND_NEAREST, R.ROUND_STOCHASTIC)
    pairs = [
        (D._M0, spec.PHILOX_M0),
        (D._M1, spec.PHILOX_M1),
        (D._W0, spec.PHILOX_W0),
        (D._W1, spec.PHILOX_W1),
        (D._ROUNDS, 10),
        (D._PER_NORMAL16, 8),
        (D._PER_RADEMACHER, 128),
        (D._PER_ROUNDING, 4),
        (D._SHIFT_ROUNDING, 2),
        (D._ROUNDING_DROP, 8),
        (D._LANE_ROUNDING, 2**31),
        (D._NAN_BF16, 0x7FC0),
        (D._NAN_FP16, 0x7E00),
    ]
    for const, want in pairs:
        assert getattr(const, "value", const) == want


@pytest.mark.parametrize("b0", [0, 5, 2**32 - 3], ids=["zero", "five", "high-word"])
def test_philox_words_match_the_reference(b0):
    nb = 16
    out = torch.zeros(nb * 4, dtype=torch.int64, device=DEVICE)
    _words_kernel[(1,)](out, b0, 3, 1, KEY[0], KEY[1], NB=nb)
    ref = S.philox_blocks_torch(b0, nb, 3, 1, KEY, "cpu")
    assert torch.equal(out.cpu().view(nb, 4), ref)


@pytest.mark.parametrize("kind", list(spec.KIND_CODES))
@pytest.mark.parametrize("base", [0, 256, 8 * 2**32 - 256, 128 * 2**32 - 256])
def test_z_matches_the_reference(kind, base):
    block, programs = 256, 2
    out = torch.full((block * programs,), float("nan"), device=DEVICE)
    code = spec.KIND_CODES[kind]
    _z_kernel[(programs,)](out, _table(), base, 7, 2, KEY[0], KEY[1], KIND=code, BLOCK=block)
    ref = S.z_reference(KEY, 7, 2, base, block * programs, kind)
    assert torch.equal(out.cpu().view(torch.int32), ref.view(torch.int32))


@pytest.mark.parametrize("kind", list(spec.KIND_CODES))
def test_sub_cz_is_one_fp32_rounding(kind):
    block, base = 512, 1024
    x = np.random.default_rng(1).uniform(-2, 2, block).astype(np.float32)
    c = np.float32(-1357 * 2.0**-17)
    out = torch.empty(block, device=DEVICE)
    code = spec.KIND_CODES[kind]
    xt = torch.from_numpy(x).to(DEVICE)
    _sub_kernel[(1,)](xt, out, _table(), float(c), base, KEY[0], KEY[1], KIND=code, BLOCK=block)
    z = S.z_reference(KEY, 3, 1, base, block, kind).numpy()
    want = x - c * z  # float32: c * z is exact, then one rounding
    np.testing.assert_array_equal(out.cpu().numpy().view(np.uint32), want.view(np.uint32))
    assert not np.array_equal(want, x)


@pytest.mark.parametrize("base", [0, 4 * 2**32 - 128])
def test_rounding_ints_match_the_reference(base):
    block = 256
    out = torch.empty(block, dtype=torch.int64, device=DEVICE)
    _rounding_kernel[(1,)](out, base, 11, KEY[0], KEY[1], BLOCK=block)
    ref = S.rounding_bits_reference(KEY, 11, 0, base, block)
    assert torch.equal(out.cpu(), ref)
    assert int(out.max()) < 2**24


@pytest.mark.parametrize("dt", [D.DT_BF16, D.DT_FP16])
def test_widen_every_half_bit_pattern(dt):
    patterns = torch.arange(65536, dtype=torch.int32)
    out = torch.empty(65536, device=DEVICE)
    _widen_kernel[(64,)](patterns.to(DEVICE), out, DT=dt, BLOCK=1024)
    want = patterns.to(torch.int16).view(HALF[dt]).float()
    got = out.cpu()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


def test_widen_fp32_is_the_bit_pattern():
    bits = torch.tensor([0x3F800000, -(2**31), 1, 0x7F7FFFFF, 0x7F800000], dtype=torch.int32)
    padded = torch.zeros(128, dtype=torch.int32)
    padded[:5] = bits
    out = torch.empty(128, device=DEVICE)
    _widen_kernel[(1,)](padded.to(DEVICE), out, DT=D.DT_FP32, BLOCK=128)
    assert torch.equal(out.cpu().view(torch.int32)[:5], bits)


@pytest.mark.parametrize("dt", [D.DT_BF16, D.DT_FP16])
def test_round_half_nearest_equals_torch(dt):
    y = _inputs(2)
    got = _round(y, np.zeros(len(y), np.int64), dt, D.ROUND_NEAREST)
    _check_half(got, torch.from_numpy(y).to(HALF[dt]))


@pytest.mark.parametrize("dt", [D.DT_BF16, D.DT_FP16])
def test_round_half_stochastic_equals_the_reference(dt):
    y = _inputs(3)
    rng = np.random.default_rng(4)
    for r in (
        rng.integers(0, 2**24, len(y)),
        np.zeros(len(y), np.int64),
        np.full(len(y), 2**24 - 1, np.int64),
    ):
        got = _round(y, r, dt, D.ROUND_STOCHASTIC)
        want = U.stochastic_round(torch.from_numpy(y), torch.from_numpy(r), HALF[dt])
        _check_half(got, want)


@pytest.mark.parametrize("dt", [D.DT_BF16, D.DT_FP16])
def test_load_and_store_round_trip_halves(dt):
    """Loading half bits, widening and storing rounded gives the bits back (NaN payloads
    become the canonical NaN); the masked tail is left alone."""
    n = 100
    bits = torch.from_numpy(np.random.default_rng(5).integers(0, 65536, n).astype(np.int32))
    src = bits.to(torch.int16)
    src[:2] = torch.tensor([-1, 0x7C01 if dt == D.DT_FP16 else 0x7F81], dtype=torch.int16)
    out = torch.full((n + 28,), 123, dtype=torch.int16, device=DEVICE)
    src_dev = torch.cat([src, torch.zeros(28, dtype=torch.int16)]).to(DEVICE)
    _load_store_kernel[(1,)](src_dev, out, n, DT=dt, BLOCK=128)
    got = out.cpu()
    assert (got[n:] == 123).all()
    _check_half(got[:n].view(HALF[dt]), src.view(HALF[dt]))
    nan = torch.isnan(src.view(HALF[dt]))
    assert nan[:2].all()


def test_module_imports_without_triton(monkeypatch):
    """Without triton the kernels are still defined (plain functions), the constants are
    plain values, and the import error is kept for kernels_triton.available()."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    mod_spec = importlib.util.spec_from_file_location("_triton_device_copy", D.__file__)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    assert isinstance(mod._IMPORT_ERROR, ImportError)
    assert mod._M0 == spec.PHILOX_M0 and mod._NAN_FP16 == 0x7E00
    assert mod._ROUNDING_DROP == 8 and mod._SHIFT_NORMAL16 == 3
    assert callable(mod._philox) and mod._philox.__name__ == "_philox"
    assert not isinstance(mod._philox, type(D._philox))
    assert mod.triton.jit(do_not_specialize=["n"])(len) is len
    assert mod.triton.jit(len) is len
    assert mod.tl.constexpr(5) == 5
