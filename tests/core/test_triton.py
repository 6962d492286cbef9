"""Triton kernels (mezo_ckpt.core.kernels_triton) against the eager torch reference, bit for bit.

Without a CUDA device the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1,
set before triton is imported) on CPU tensors; with one they run compiled on the GPU,
the same tests. Coverage: the z stream and rounding bits (both kinds, odd offsets, counter
high words), replay for every storage dtype and rounding mode (decay, several
directions, steps that do nothing, special values, random half bit patterns, any block
size and split), the perturbed copy and rows, the rounding helpers at their exact
thresholds, and the absence of multiply-add fusion (numerically, and in the compiled
PTX/SASS for a CUDA target, which needs no GPU).

Run: ``pytest -m triton tests/core/test_triton.py`` (the interpreter is slow: small sizes).
"""

import importlib
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
pytest.importorskip("triton")

from paths import ROOT  # noqa: E402

from mezo_ckpt.core import backends  # noqa: E402
from mezo_ckpt.core import kernels_triton as TT  # noqa: E402
from mezo_ckpt.core import stream as S  # noqa: E402
from mezo_ckpt.core import update as U  # noqa: E402

if not CUDA and not TT.interpreting():  # pragma: no cover - imported before the env was set
    TT = importlib.reload(TT)

pytestmark = [
    pytest.mark.triton,
    # numpy, running the interpreter, warns about inf * 0 and NaN inputs
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DEVICE = "cuda" if CUDA else "cpu"
KEY = (0x9E3779B9, 0x01234567)
KINDS = list(S.KIND_CODES)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = [
    ("float32", "nearest"),
    ("bfloat16", "nearest"),
    ("bfloat16", "stochastic"),
    ("float16", "nearest"),
    ("float16", "stochastic"),
]
ROUNDING = {"nearest": TT.ROUND_NEAREST, "stochastic": TT.ROUND_STOCHASTIC}
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
    2.0**-133,
    1.17e-38,
]
# (start, count): unaligned heads and tails, a single element, several programs, a
# program boundary (8192 = 8 * 1024), spans crossing Philox block 2**32 (the counter's
# high word) for normal16 (8 elements per block) and rademacher (128 per block).
SPANS = [
    (0, 1),
    (3, 1),
    (5, 7),
    (1, 129),
    (127, 129),
    (77, 3000),
    (8190, 1500),
    (2**32 - 3, 1000),
    (8 * 2**32 - 13, 301),
    (128 * 2**32 - 77, 2000),
]


def _ints(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def _same(a: torch.Tensor, b: torch.Tensor, *, any_nan: bool = False) -> bool:
    """Bitwise equality. fp32 NaN payloads are unspecified (docs §10.3); stored halves
    hold the canonical NaN; perturbed copies (never stored) may hold any NaN."""
    a, b = a.cpu(), b.cpu()
    assert a.dtype == b.dtype and a.shape == b.shape
    ia, ib = _ints(a).clone(), _ints(b).clone()
    if a.dtype == torch.float32 or any_nan:
        nan = torch.isnan(a) & torch.isnan(b)
        ia[nan] = 0
        ib[nan] = 0
    return torch.equal(ia, ib)


def _schedule(seed: int, steps: int = 7, ndir: int = 2, scale: float = 2.0**-22):
    rng = np.random.default_rng(seed)
    step_ids = np.sort(rng.choice(1000, size=steps, replace=False)).astype(np.int64)
    # 13 significant bits at most. Step 2 has one zero coefficient (a -0 one with three
    # directions), step 3 only decays, step 5 does nothing at all (decay 1, all zero).
    coefs = (rng.integers(-8191, 8192, size=(steps, ndir)) * scale).astype(np.float32)
    coefs[2, 1] = 0.0
    if ndir > 2:
        coefs[2, 2] = -0.0
    coefs[3, :] = 0.0
    coefs[5, :] = 0.0
    decay = np.ones(steps, np.float32)
    decay[1] = np.float32(1 - 3e-4)
    decay[3] = np.float32(1 - 1e-3)
    decay[4] = np.float32(1 - 1e-2)
    return U.UpdateBatch(step_ids, coefs, decay)


def _replay(x: torch.Tensor, batch: U.UpdateBatch, kind: str, rounding: str, start: int, **kw):
    got = x.to(DEVICE, copy=True)
    TT.replay(
        got,
        start,
        KEY[0],
        KEY[1],
        batch.steps,
        batch.coefs,
        batch.decay,
        S.KIND_CODES[kind],
        ROUNDING[rounding],
        **kw,
    )
    return got.cpu()


def _reference(x: torch.Tensor, batch: U.UpdateBatch, kind: str, rounding: str, start: int):
    ref = x.clone()
    U.apply_updates(ref, KEY, batch, kind=kind, rounding=rounding, start=start, backend="reference")
    return ref


def _compare(x: torch.Tensor, batch, kind: str, rounding: str, start: int, **kw):
    got = _replay(x, batch, kind, rounding, start, **kw)
    ref = _reference(x, batch, kind, rounding, start)
    assert _same(got, ref)
    if x.dtype != torch.float32:  # halves hold the canonical NaN after replay
        nan = torch.isnan(got)
        canonical = U.CANONICAL_NAN[x.dtype]
        assert ((_ints(got)[nan].to(torch.int32) & 0xFFFF) == canonical).all()
    return got


def _test_values(count: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(count).astype(np.float32))
    x = (x * 0.05).to(dtype)
    k = min(count, len(SPECIALS))
    x[:k] = torch.tensor(SPECIALS[:k]).to(dtype)
    return x


# ----------------------------------------------------------------------------- stream


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("start,count", SPANS)
def test_z_fill_matches_reference(kind, start, count):
    for block in (None, 128) if count < 1500 else (None,):
        out = torch.full((count,), float("nan"), device=DEVICE)
        TT.z_fill(out, start, 7, 1, KEY[0], KEY[1], S.KIND_CODES[kind], block=block)
        ref = S.z_reference(KEY, 7, 1, start, count, kind)
        assert torch.equal(_ints(out.cpu()), _ints(ref))


@pytest.mark.parametrize("kind", KINDS)
def test_z_fill_large_step_and_lane_words(kind):
    """Step and lane use all 32 bits; a step beyond 2**32 is taken mod 2**32 (as the
    reference's counter word); a 2-D output is filled in flat order."""
    for step, lane in ((2**32 - 1, 5), (2**31 + 3, 2**31 + 1), (2**32 + 9, 0)):
        out = torch.empty(37, 11, device=DEVICE)
        TT.z_fill(out, 333, step, lane, KEY[0], KEY[1], S.KIND_CODES[kind])
        ref = S.z_reference(KEY, step & S.MASK32, lane, 333, 37 * 11, kind)
        assert torch.equal(_ints(out.cpu().view(-1)), _ints(ref))


@pytest.mark.parametrize("start,count", SPANS)
def test_rounding_bits_fill_matches_reference(start, count):
    out = torch.full((count,), -1, dtype=torch.int64, device=DEVICE)
    TT.rounding_bits_fill(out, start, 11, S.LANE_ROUNDING + 1, KEY[0], KEY[1], block=256)
    ref = S.rounding_bits_reference(KEY, 11, 1, start, count)
    assert torch.equal(out.cpu(), ref)


# ----------------------------------------------------------------------------- rounding


def _rounding_inputs(seed: int) -> np.ndarray:
    """fp32 bit patterns: random ones, every exponent with random significands, and the
    values next to every rounding boundary that matters for bf16/fp16."""
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, 2**32, 40_000, dtype=np.uint64).astype(np.uint32)]
    exps = np.repeat(np.arange(256, dtype=np.uint32), 40)
    parts.append((exps << 23) | rng.integers(0, 2**23, exps.size).astype(np.uint32))
    # halfway cases and their neighbours, bf16 (16 dropped bits) and fp16 normal (13)
    hi = rng.integers(0, 2**16, 2000).astype(np.uint32) << 16
    for off in (0x7FFF, 0x8000, 0x8001, 0xFFFF, 1):
        parts.append(hi | off)
    mid = (rng.integers(0x38800000, 0x47800000, 2000).astype(np.uint32) >> 13) << 13
    for off in (0xFFF, 0x1000, 0x1001, 0x1FFF, 1):
        parts.append(mid | off)
    # fp16 subnormal range and its edge (y = k/2 ulps, ties), overflow edges
    sub = (np.arange(2048, dtype=np.float32) * np.float32(2.0**-25)).view(np.uint32)
    parts += [sub, sub + 1, sub - 1]
    edges = np.array(
        [0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000]
        + [0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x387FF000, 0x38800000]
        + [0x33000000, 0x33000001, 0x32FFFFFF, 0x00000001, 0x007FFFFF, 0x00800000],
        np.uint32,
    )
    parts += [edges, edges | np.uint32(0x80000000)]
    return np.concatenate(parts)


def _check_rounded(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    got = got.cpu()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(_ints(got)[~nan], _ints(want)[~nan])
    assert ((_ints(got)[nan].to(torch.int32) & 0xFFFF) == U.CANONICAL_NAN[dtype]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_to_half_nearest(dtype):
    """Nearest-even to bf16/fp16 equals torch's conversion (NaN: canonical)."""
    y = torch.from_numpy(_rounding_inputs(1).view(np.float32).copy())
    _check_rounded(TT.round_to_half(y.to(DEVICE), dtype), y.to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_to_half_stochastic_thresholds(dtype):
    """Stochastic rounding equals update.stochastic_round, with random integers and with
    the integers on both sides of each element's exact threshold frac * 2**24."""
    y = torch.from_numpy(_rounding_inputs(2).view(np.float32).copy())
    rng = np.random.default_rng(3)
    # exact threshold (binary64 is exact here): r < thr rounds away from zero
    near = y.to(dtype)
    yd = y.double()
    over = near.double().abs() > yd.abs()
    a = torch.where(over, torch.nextafter(near, torch.zeros_like(near)), near)
    b = torch.nextafter(a, torch.where(yd < 0, -torch.inf, torch.inf).to(dtype))
    frac = (yd.abs() - a.double().abs()) / (b.double().abs() - a.double().abs())
    thr = torch.nan_to_num(torch.ceil(frac * 2.0**24), nan=0.0, posinf=0.0, neginf=0.0)
    thr = thr.clamp(0, 2**24).to(torch.int64)
    candidates = [
        torch.from_numpy(rng.integers(0, 2**24, y.numel())),
        (thr - 1).clamp(0, 2**24 - 1),
        thr.clamp(0, 2**24 - 1),
        torch.zeros_like(thr),
        torch.full_like(thr, 2**24 - 1),
    ]
    for r in candidates:
        want = U.stochastic_round(y, r, dtype)
        _check_rounded(TT.round_to_half(y.to(DEVICE), dtype, r.to(DEVICE)), want, dtype)


# ----------------------------------------------------------------------------- replay


@pytest.mark.parametrize("dtype,rounding", MODES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("start,count", [(3, 7), (77, 2500), (128 * 2**32 - 77, 1200)])
def test_replay_matches_reference(dtype, rounding, kind, start, count):
    scale = 2.0**-22 if dtype == "float32" else 2.0**-14  # visible in 8/11-bit significands
    batch = _schedule(count, scale=scale)
    x = _test_values(count, DTYPES[dtype], 1)
    got = _compare(x, batch, kind, rounding, start)
    if count > 100:
        assert not torch.equal(got, x)


@pytest.mark.parametrize("dtype,rounding", MODES)
def test_replay_three_directions_odd_offsets(dtype, rounding):
    """Three directions (one coefficient -0), small blocks, starts that are not block
    or Philox aligned, a span across the counter's high word."""
    scale = 2.0**-22 if dtype == "float32" else 2.0**-14
    batch = _schedule(5, steps=6, ndir=3, scale=scale)
    for i, (start, count) in enumerate([(0, 1), (8190, 300), (2**32 - 3, 260)]):
        kind = KINDS[i % 2]
        _compare(_test_values(count, DTYPES[dtype], 2), batch, kind, rounding, start, block=128)


@pytest.mark.parametrize("dtype,rounding", MODES[1:])
def test_replay_random_bit_patterns(dtype, rounding):
    """Every bf16/fp16 bit pattern class (subnormals, huge values, NaN, inf) and random
    decay multipliers and coefficient scales: triton == reference."""
    rng = np.random.default_rng(zlib.crc32(f"{dtype}/{rounding}".encode()))
    for trial in range(4):
        x = torch.from_numpy(rng.integers(0, 65536, 4096).astype(np.int32)).to(torch.int16)
        x = x.view(DTYPES[dtype]).clone()
        coefs = (rng.integers(-8191, 8192, (2, 1)) * 2.0 ** float(rng.integers(-40, 0))).astype(
            np.float32
        )
        batch = U.UpdateBatch(
            np.array([trial, trial + 1], np.int64),
            coefs,
            np.array([np.float32(rng.uniform(0.5, 1.0)), 1.0], np.float32),
        )
        _compare(x, batch, KINDS[trial % 2], rounding, 13 * trial, block=2048)


@pytest.mark.parametrize("dtype,rounding", MODES)
def test_replay_special_values_and_noop_steps(dtype, rounding):
    """Specials under decay 0.5 and a huge coefficient; an all-noop schedule leaves the
    bits alone (halves: NaN canonicalized); huge fp32 values overflow alike."""
    x = torch.tensor(SPECIALS * 6, dtype=torch.float32).to(DTYPES[dtype])
    x[len(SPECIALS) :] *= torch.linspace(-3, 3, x.numel() - len(SPECIALS)).to(x.dtype)
    if dtype != "float32":
        x[-1] = torch.tensor(-1).to(torch.int16).view(x.dtype)  # a NaN with payload
    for coefs, decay in (([0.0], 0.5), ([2.0**90 * 3], 1.0), ([1.5, -0.0], 0.75)):
        _compare(x, U.UpdateBatch.single(3, coefs, decay), "normal16", rounding, 5)
    noop = U.UpdateBatch(
        np.array([0, 1, 2], np.int64), np.zeros((3, 2), np.float32), np.ones(3, np.float32)
    )
    got = _compare(x, noop, "rademacher", rounding, 0)
    ok = ~torch.isnan(x)
    assert torch.equal(_ints(got)[ok], _ints(x)[ok])


@pytest.mark.parametrize("dtype,rounding", [("float32", "nearest"), ("bfloat16", "stochastic")])
def test_replay_is_split_and_block_independent(dtype, rounding):
    """Any block size and any split of the tensor into slices give the same bits; the
    schedule may come as device tensors; an empty schedule does nothing."""
    batch = _schedule(9, steps=6, scale=2.0**-14)
    x = _test_values(2000, DTYPES[dtype], 4)
    whole = _replay(x, batch, "normal16", rounding, 19)
    assert _same(whole, _reference(x, batch, "normal16", rounding, 19))
    for block in (128, 4096):
        assert _same(_replay(x, batch, "normal16", rounding, 19, block=block), whole)
    parts = x.to(DEVICE, copy=True)
    dev = {
        "steps": torch.from_numpy(batch.steps).to(DEVICE),
        "coefs": torch.from_numpy(batch.coefs).to(DEVICE),
        "decay": torch.from_numpy(batch.decay).to(DEVICE),
    }
    for lo, hi in ((0, 1001), (1001, 1002), (1002, 2000)):
        TT.replay(
            parts[lo:hi],
            19 + lo,
            KEY[0],
            KEY[1],
            dev["steps"],
            dev["coefs"],
            dev["decay"],
            S.KIND_CODES["normal16"],
            ROUNDING[rounding],
        )
    assert _same(parts, whole)
    empty = x.to(DEVICE, copy=True)
    TT.replay(empty, 0, 1, 2, np.zeros(0, np.int64), np.zeros((0, 1), np.float32), [], 0, 0)
    assert torch.equal(_ints(empty.cpu()), _ints(x))


# ----------------------------------------------------------------------------- perturb


def _perturb(w: torch.Tensor, start: int, step: int, lane: int, scale: float, kind: str, **kw):
    src = w.to(DEVICE)
    out = torch.empty_like(src)
    TT.perturb(src, out, start, step, lane, KEY[0], KEY[1], scale, S.KIND_CODES[kind], **kw)
    assert torch.equal(_ints(src.cpu()), _ints(w))  # the source is only read
    return out.cpu()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("start,count", [(0, 1), (3, 7), (77, 2500), (2**32 - 3, 1000)])
def test_perturbed_copy_matches_reference(dtype, kind, start, count):
    w = _test_values(count, DTYPES[dtype], 5)
    for scale in (1e-3, -1e-3, 0.25, 0.0):
        a = _perturb(w, start, 9, 2, scale, kind, block=256 if count < 1000 else None)
        b = U.perturbed_copy(w, KEY, 9, 2, scale, kind=kind, start=start, backend="reference")
        assert _same(a, b, any_nan=True)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
def test_perturbed_rows_match_reference(dtype, kind):
    """Rows (repeated, unordered, unaligned starts, rows longer than a block) perturbed as
    the whole copy would be, in any order."""
    for shape, block in (((300, 77), None), ((40, 300), 128)):
        w = _test_values(shape[0] * shape[1], DTYPES[dtype], 6).view(shape)
        rows = torch.tensor([shape[0] - 1, 0, 17, 17, 3])
        out = torch.empty(len(rows), shape[1], dtype=w.dtype, device=DEVICE)
        TT.perturb_rows(
            w.to(DEVICE),
            rows.to(DEVICE),
            out,
            4,
            1,
            KEY[0],
            KEY[1],
            -1e-3,
            S.KIND_CODES[kind],
            block=block,
        )
        ref = U.perturbed_rows(w, rows, KEY, 4, 1, -1e-3, kind=kind, backend="reference")
        assert _same(out.cpu(), ref, any_nan=True)


# ----------------------------------------------------------------------------- fusion


def _fused_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fl32(a * b + c) rounded once: the binary64 sum is exact for these magnitudes
    (24 + 24-bit product, addend within a few binades), then one rounding to fp32."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def test_no_multiply_add_fusion_numerically():
    """The perturbed copy's ``x + fl32(scale * z)`` and replay's ``fl32(x * m) - c * z``
    are rounded after the multiply; on these values a fused multiply-add gives other
    bits in many elements (so the test would catch fusion on a GPU)."""
    n = 4096
    rng = np.random.default_rng(7)
    x = rng.uniform(0.5, 2.0, n).astype(np.float32)
    z = S.z_reference(KEY, 1, 0, 0, n, "normal16").numpy()
    scale = np.float32(1.0 / 3.0)
    got = _perturb(torch.from_numpy(x), 0, 1, 0, float(scale), "normal16").numpy()
    unfused = x + scale * z  # numpy float32: the product is rounded, then the sum
    fused = _fused_f32(scale, z, x)
    assert np.array_equal(got.view(np.uint32), unfused.view(np.uint32))
    assert (fused != unfused).mean() > 0.05

    m = np.float32(1.0 - 1.0 / 3.0)
    c = np.float32(8191 * 2.0**-20)  # 13 significant bits: c * z is exact
    batch = U.UpdateBatch.single(1, [float(c)], float(m))
    got = _replay(torch.from_numpy(x), batch, "normal16", "nearest", 0).numpy()
    unfused = x * m - c * z
    fused = _fused_f32(x, np.full(n, m), -c * z)
    assert np.array_equal(got.view(np.uint32), unfused.view(np.uint32))
    assert (fused != unfused).mean() > 0.05


_ASM_SCRIPT = r"""
import json, re
from mezo_ckpt.core import kernels_triton as T
variants = [("perturb", dict(kind=0, dt=0)), ("perturb", dict(kind=1, dt=1)),
            ("perturb_rows", dict(kind=0, dt=2)), ("replay", dict(kind=0, dt=0)),
            ("replay", dict(kind=1, dt=0)), ("replay", dict(kind=0, dt=1, mode=1)),
            ("replay", dict(kind=1, dt=2, mode=1)), ("z_fill", dict(kind=0)),
            ("rounding_bits", dict())]
out = []
for name, kw in variants:
    asm = T.cuda_asm(name, **kw)
    ptx, sass = asm["ptx"], asm["sass"]
    fused_sass = T.cuda_asm(name, fp_fusion=True, **kw)["sass"]
    out.append(dict(name=name, kw=kw,
        ptx_fma=len(re.findall(r"\bfma\.[a-z.]*f32", ptx)),
        ptx_ftz=len(re.findall(r"\.ftz\b", ptx)),
        ptx_mul_rn=len(re.findall(r"\bmul\.rn\.f32", ptx)),
        sass_ffma=len(re.findall(r"\bFFMA\b", sass)),
        sass_fmul=len(re.findall(r"\bFMUL\b", sass)),
        fused_ffma=len(re.findall(r"\bFFMA\b", fused_sass))))
print("RESULT" + json.dumps(out))
"""


def test_compiled_kernels_have_no_fma():
    """Compile every kernel family for sm_90 (no GPU needed) exactly as launched
    (LAUNCH_OPTIONS): no fma in the PTX, no FFMA in the machine code, no flush-to-zero;
    and the same kernels compiled with fusion allowed do contain FFMA, so the check
    sees what it is meant to see."""
    assert TT.LAUNCH_OPTIONS == {"enable_fp_fusion": False}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = ROOT
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _ASM_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and (
        "ptxas" in proc.stderr
        or (CUDA and any(e in proc.stderr for e in ("TypeError", "ImportError", "AttributeError")))
    ):  # no ptxas, or (where launches compile anyway) another Triton's compile API
        pytest.skip(f"cannot compile for a CUDA target here: {proc.stderr[-500:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.split("RESULT", 1)[1])
    for r in rows:
        assert r["ptx_fma"] == 0 and r["sass_ffma"] == 0 and r["ptx_ftz"] == 0, r
    by = {(r["name"], r["kw"].get("kind"), r["kw"].get("dt")): r for r in rows}
    for key in (("perturb", 0, 0), ("replay", 0, 0), ("perturb_rows", 0, 2)):
        assert by[key]["ptx_mul_rn"] > 0 and by[key]["fused_ffma"] > 0, by[key]


# ----------------------------------------------------------------------------- checks


def test_available_and_argument_checks():
    assert TT.available()
    x = torch.zeros(8, device=DEVICE)
    with pytest.raises(ValueError, match="block"):
        TT.z_fill(x, 0, 0, 0, 1, 2, 0, block=64)
    with pytest.raises(ValueError, match="kind"):
        TT.z_fill(x, 0, 0, 0, 1, 2, 7)
    with pytest.raises(ValueError, match="float32"):
        TT.z_fill(x.double(), 0, 0, 0, 1, 2, 0)
    with pytest.raises(ValueError, match="int64"):
        TT.rounding_bits_fill(x, 0, 0, 0, 1, 2)
    with pytest.raises(ValueError, match="must agree"):
        TT.replay(x, 0, 1, 2, np.zeros(2, np.int64), np.zeros((1, 1), np.float32), [1.0], 0, 0)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        TT.replay(x.double(), 0, 1, 2, [0], np.zeros((1, 1), np.float32), [1.0], 0, 0)
    with pytest.raises(ValueError, match="contiguous"):
        TT.perturb(torch.zeros(4, 4, device=DEVICE).t(), torch.zeros(16), 0, 0, 0, 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="same dtype"):
        TT.perturb(x, x.half(), 0, 0, 0, 1, 2, 0.1, 0)
    w = torch.zeros(3, 4, device=DEVICE)
    rows, out = torch.tensor([3], device=DEVICE), torch.zeros(1, 4, device=DEVICE)
    with pytest.raises(ValueError, match="row index"):
        TT.perturb_rows(w, rows, out, 0, 0, 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="len\\(rows\\)"):
        TT.perturb_rows(w, rows - 3, torch.zeros(2, 4, device=DEVICE), 0, 0, 1, 2, 0.1, 0)


# ----------------------------------------------------------------------------- dispatch


@pytest.fixture
def dispatch():
    """The package's own entry points, routed to these kernels (backend="triton")."""
    backends._triton_module.cache_clear()
    assert S.triton_kernels() is not None
    yield
    backends._triton_module.cache_clear()


@pytest.mark.parametrize("dtype,rounding", MODES)
def test_update_entry_points_dispatch_to_triton(dispatch, dtype, rounding):
    """apply_updates / perturbed_copy / perturbed_rows / generate_z with backend="triton"
    (the path CUDA tensors take under "auto") give the reference's bits."""
    scale = 2.0**-22 if dtype == "float32" else 2.0**-14
    batch = _schedule(700, steps=6, ndir=2, scale=scale)
    x = _test_values(700, DTYPES[dtype], 8).to(DEVICE)
    a, b = x.clone(), x.cpu().clone()
    U.apply_updates(a, KEY, batch, kind="normal16", rounding=rounding, start=5, backend="triton")
    U.apply_updates(b, KEY, batch, kind="normal16", rounding=rounding, start=5, backend="reference")
    assert _same(a.cpu(), b, any_nan=True) and not torch.equal(b, x.cpu())
    w = x.view(35, 20)
    got = U.perturbed_copy(w, KEY, 3, 1, 1e-3, kind="rademacher", backend="triton")
    ref = U.perturbed_copy(w.cpu(), KEY, 3, 1, 1e-3, kind="rademacher", backend="reference")
    assert _same(got.cpu(), ref, any_nan=True)
    rows = torch.tensor([34, 0, 7, 7])
    got = U.perturbed_rows(w, rows, KEY, 3, 1, 1e-3, kind="normal16", backend="triton")
    ref = U.perturbed_rows(w.cpu(), rows, KEY, 3, 1, 1e-3, kind="normal16", backend="reference")
    assert got.shape == (4, 20) and _same(got.cpu(), ref, any_nan=True)


def test_auto_backend_keeps_cpu_tensors_on_numba_and_honours_the_switch(dispatch, monkeypatch):
    x = torch.zeros(10)
    assert U._triton_for(x, "auto") is None  # CPU tensors never take the Triton path
    assert U._triton_for(x, "triton") is not None
    monkeypatch.setenv("MEZO_CKPT_TRITON", "0")
    assert S.triton_kernels() is None and not S.use_triton("cuda")
    with pytest.raises(ValueError, match="triton"):
        U._triton_for(x, "triton")
    with pytest.raises(ValueError, match="unknown backend"):
        U._triton_for(x, "cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_generate_z_and_rounding_bits_use_triton(dispatch):
    for kind in KINDS:
        z = S.generate_z(KEY, 7, 1, 13, 5000, kind, "cuda")
        assert torch.equal(z.cpu(), S.z_reference(KEY, 7, 1, 13, 5000, kind))
    r = S.generate_rounding_bits(KEY, 7, 0, 13, 5000, "cuda")
    assert torch.equal(r.cpu(), S.rounding_bits_reference(KEY, 7, 0, 13, 5000, "cpu"))
