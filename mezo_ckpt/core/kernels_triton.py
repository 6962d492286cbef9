"""Fused Triton kernels (GPU) for the perturbation stream and the update rule.

They compute exactly what :mod:`mezo_ckpt.core.stream` and :mod:`mezo_ckpt.core.update` specify
(docs/FORMAT.md §9 and §10), with the same bits as the eager torch reference and the
compiled CPU kernels (:mod:`mezo_ckpt.core.kernels_cpu`); the constants come from
:mod:`mezo_ckpt.core.stream`, never restated. Under ``TRITON_INTERPRET=1`` the same kernels
run on CPU tensors (slowly), which is how the tests prove the bits without a GPU.

Exactness, point by point:

* Philox4x32-10 runs in ``tl.uint32`` registers: ``tl.umulhi`` gives the high half of each
  32x32-bit product, the plain (wrapping) product the low half.
* Half-precision rounding (bf16/fp16, nearest-even and stochastic) and widening are
  integer bit manipulation only, rule for rule the helpers of :mod:`mezo_ckpt.core.kernels_cpu`
  (NaN canonical, subnormals, overflow, ties); no ``.to(tl.bfloat16)``. The update's own
  fp32 operations keep subnormals: the compiled code has no ``.ftz`` (tests check it).
* Every launch passes ``enable_fp_fusion=False`` (:data:`LAUNCH_OPTIONS`): the multiply
  and the add/subtract are emitted as separate ``mul.rn.f32`` / ``sub.rn.f32`` (and ptxas
  gets ``--fmad=false``). For the update ``x - c*z`` the product is exact so fusion could
  not matter, but ``fl32(x*m) - c*z`` after a decay, and the perturbed copy's
  ``x + fl32(scale*z)``, would change under fusion. :func:`cuda_asm` compiles a kernel
  for a CUDA target without a GPU, so tests can check the instructions (PTX and SASS).

Work layout: program ``g`` owns the ``BLOCK`` consecutive *global* element indices
``[(g0 + g) * BLOCK, (g0 + g + 1) * BLOCK)`` of the parameter (``g0 = start // BLOCK``),
masked to the slice. ``BLOCK`` is a power of two >= 128, so a program's elements are whole
Philox blocks of either z kind (8 or 128 elements) and of the rounding stream (4): each
program runs Philox once per counter block (no redundant work) and spreads the four words
over its elements with ``tl.join`` / ``tl.reshape`` (word order = element order, as in
docs §9.3).

Replay is block-resident: a program loads its elements once into an fp32 register copy,
applies all T steps (loop inside the kernel over small device tensors of steps,
coefficients and decay), rounding to the storage dtype after every step that changed
something, and stores once. Tensors travel as their raw bit patterns (int32 views for
fp32, int16 for bf16/fp16).
"""

import os
from functools import lru_cache

import numpy as np
import torch

from mezo_ckpt.core import spec as _S
from mezo_ckpt.core.triton_device import (
    _DT_FP32,
    _IMPORT_ERROR,
    _LANE_ROUNDING,
    _MODE_STOCHASTIC,
    DT_BF16,
    DT_FP16,
    DT_FP32,
    ROUND_NEAREST,
    ROUND_STOCHASTIC,
    _load_fp32,
    _round_half,
    _rounding_ints,
    _store_rounded,
    _sub_cz,
    _widen,
    _z,
    tl,
    triton,
)

#: Default elements per program (a power of two >= 128) and warps per program.
BLOCK = 1024
NUM_WARPS = 4
#: Options of every launch: never contract a multiply and an add into an FMA.
LAUNCH_OPTIONS = {"enable_fp_fusion": False}
#: Smallest block: whole rademacher Philox blocks (128 elements) per program.
MIN_BLOCK = 1 << max(_S.ELEMENT_SHIFT.values())

#: Storage codes by dtype (same numbering as mezo_ckpt.core.kernels_cpu) and the bit view.
_STORAGE = {
    torch.float32: (DT_FP32, torch.int32),
    torch.bfloat16: (DT_BF16, torch.int16),
    torch.float16: (DT_FP16, torch.int16),
}
# ----------------------------------------------------------------------------- kernels

_INTS = ["n", "start", "g0", "step", "lane", "k0", "k1"]


@triton.jit(do_not_specialize=_INTS)
def _z_fill_kernel(
    out_ptr, table_ptr, n, start, g0, step, lane, k0, k1, KIND: tl.constexpr, BLOCK: tl.constexpr
):
    base = (g0.to(tl.int64) + tl.program_id(0).to(tl.int64)) * BLOCK
    local = base + tl.arange(0, BLOCK).to(tl.int64) - start.to(tl.int64)
    mask = (local >= 0) & (local < n.to(tl.int64))
    ku0 = k0.to(tl.uint32, bitcast=True)
    ku1 = k1.to(tl.uint32, bitcast=True)
    z = _z(
        table_ptr,
        base,
        step.to(tl.uint32, bitcast=True),
        lane.to(tl.uint32, bitcast=True),
        ku0,
        ku1,
        KIND,
        BLOCK,
    )
    tl.store(out_ptr + local, z, mask=mask)


@triton.jit(do_not_specialize=_INTS)
def _rounding_kernel(out_ptr, n, start, g0, step, lane, k0, k1, BLOCK: tl.constexpr):
    base = (g0.to(tl.int64) + tl.program_id(0).to(tl.int64)) * BLOCK
    local = base + tl.arange(0, BLOCK).to(tl.int64) - start.to(tl.int64)
    mask = (local >= 0) & (local < n.to(tl.int64))
    r = _rounding_ints(
        base,
        step.to(tl.uint32, bitcast=True),
        lane.to(tl.uint32, bitcast=True),
        k0.to(tl.uint32, bitcast=True),
        k1.to(tl.uint32, bitcast=True),
        BLOCK,
    )
    tl.store(out_ptr + local, r.to(tl.int64), mask=mask)


@triton.jit(do_not_specialize=["n", "start", "g0", "k0", "k1", "T", "ndir"])
def _replay_kernel(
    theta_ptr,
    table_ptr,
    steps_ptr,
    coefs_ptr,
    decay_ptr,
    n,
    start,
    g0,
    k0,
    k1,
    T,
    ndir,
    KIND: tl.constexpr,
    DT: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    base = (g0.to(tl.int64) + tl.program_id(0).to(tl.int64)) * BLOCK
    local = base + tl.arange(0, BLOCK).to(tl.int64) - start.to(tl.int64)
    mask = (local >= 0) & (local < n.to(tl.int64))
    ku0 = k0.to(tl.uint32, bitcast=True)
    ku1 = k1.to(tl.uint32, bitcast=True)
    x = _load_fp32(theta_ptr + local, mask, DT)
    for t in range(T):
        step = tl.load(steps_ptr + t).to(tl.uint32)  # the counter's step word: mod 2^32
        m = tl.load(decay_ptr + t)
        changed = m != 1.0
        if m != 1.0:
            x = x * m
        for j in range(ndir):
            c = tl.load(coefs_ptr + t * ndir + j)
            if c != 0.0:  # +0 and -0 both skip the direction
                x = _sub_cz(
                    x, c, table_ptr, base, step, tl.cast(j, tl.uint32), ku0, ku1, KIND, BLOCK
                )
            changed = changed | (c != 0.0)
        if DT != _DT_FP32:  # noqa: SIM102 (static test, then a run-time one)
            if changed:  # the stored weight has the dtype after every step
                if MODE == _MODE_STOCHASTIC:
                    r = _rounding_ints(base, step, _LANE_ROUNDING, ku0, ku1, BLOCK)
                else:
                    r = x.to(tl.uint32, bitcast=True)  # unused
                x = _widen(_round_half(x, r, DT, MODE), DT)
    _store_rounded(theta_ptr + local, x, mask, DT)


@triton.jit(do_not_specialize=_INTS)
def _perturb_kernel(
    src_ptr,
    out_ptr,
    table_ptr,
    n,
    start,
    g0,
    step,
    lane,
    k0,
    k1,
    c,
    KIND: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    base = (g0.to(tl.int64) + tl.program_id(0).to(tl.int64)) * BLOCK
    local = base + tl.arange(0, BLOCK).to(tl.int64) - start.to(tl.int64)
    mask = (local >= 0) & (local < n.to(tl.int64))
    x = _load_fp32(src_ptr + local, mask, DT)
    y = _sub_cz(
        x,
        c,
        table_ptr,
        base,
        step.to(tl.uint32, bitcast=True),
        lane.to(tl.uint32, bitcast=True),
        k0.to(tl.uint32, bitcast=True),
        k1.to(tl.uint32, bitcast=True),
        KIND,
        BLOCK,
    )
    _store_rounded(out_ptr + local, y, mask, DT)


@triton.jit(do_not_specialize=["dim", "step", "lane", "k0", "k1"])
def _perturb_rows_kernel(
    w_ptr,
    rows_ptr,
    out_ptr,
    table_ptr,
    dim,
    step,
    lane,
    k0,
    k1,
    c,
    KIND: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    dim64 = dim.to(tl.int64)
    e0 = tl.load(rows_ptr + i).to(tl.int64) * dim64  # the row's first global element
    base = (e0 // BLOCK + tl.program_id(1).to(tl.int64)) * BLOCK
    if base < e0 + dim64:
        e = base + tl.arange(0, BLOCK).to(tl.int64)
        mask = (e >= e0) & (e < e0 + dim64)
        x = _load_fp32(w_ptr + e, mask, DT)
        y = _sub_cz(
            x,
            c,
            table_ptr,
            base,
            step.to(tl.uint32, bitcast=True),
            lane.to(tl.uint32, bitcast=True),
            k0.to(tl.uint32, bitcast=True),
            k1.to(tl.uint32, bitcast=True),
            KIND,
            BLOCK,
        )
        _store_rounded(out_ptr + i * dim64 + (e - e0), y, mask, DT)


@triton.jit
def _round_kernel(
    y_ptr, r_ptr, out_ptr, n, DT: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if MODE == _MODE_STOCHASTIC:
        r = tl.load(r_ptr + offs, mask=mask, other=0).to(tl.uint32)
    else:
        r = y
    h = _round_half(y.to(tl.float32, bitcast=True), r, DT, MODE)
    tl.store(out_ptr + offs, h.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)


# ----------------------------------------------------------------------------- wrappers


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether these kernels can run: Triton importable and a CUDA device (or, under
    ``TRITON_INTERPRET=1``, on CPU tensors)."""
    if _IMPORT_ERROR is not None:
        return False
    return interpreting() or torch.cuda.is_available()


def _i32(v: int) -> int:
    """A 32-bit word as a signed int32 value (kernels bitcast it back to uint32)."""
    v = int(v) & _S.MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def _block(block: int | None) -> int:
    b = BLOCK if block is None else int(block)
    if b < MIN_BLOCK or b & (b - 1):
        raise ValueError(f"block must be a power of two >= {MIN_BLOCK}, got {b}")
    return b


def _kind(kind: int) -> int:
    kind = int(kind)
    if kind not in _S.KIND_CODES.values():
        raise ValueError(f"unknown z kind code {kind}")
    return kind


def _flat(t: torch.Tensor, what: str) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous")
    return t.view(-1)


def _bits(t: torch.Tensor, what: str) -> tuple[torch.Tensor, int]:
    """The raw-bit view of a float tensor and its storage code."""
    if t.dtype not in _STORAGE:
        raise ValueError(f"{what} must be float32, bfloat16 or float16, not {t.dtype}")
    dt, view = _STORAGE[t.dtype]
    return _flat(t, what).view(view), dt


@lru_cache(maxsize=8)
def _table_on(device: str) -> torch.Tensor:
    return torch.from_numpy(_S.normal16_table_numpy().copy()).to(device)


def _table(t: torch.Tensor) -> torch.Tensor:
    return _table_on(str(t.device))


def _grid(start: int, n: int, block: int) -> tuple[int, int]:
    """(g0, number of programs) for global elements [start, start + n)."""
    g0 = start // block
    return g0, (start + n + block - 1) // block - g0


def _launch(kernel, grid, args, *, device: torch.device, **constexprs):
    if device.type == "cuda":
        with torch.cuda.device(device):
            return kernel[grid](*args, num_warps=NUM_WARPS, **LAUNCH_OPTIONS, **constexprs)
    return kernel[grid](*args, num_warps=NUM_WARPS, **LAUNCH_OPTIONS, **constexprs)


def _check_start(start: int, n: int) -> int:
    start = int(start)
    if start < 0 or start + n > 1 << 62:
        raise ValueError(f"element range [{start}, {start + n}) out of range")
    return start


def z_fill(
    out: torch.Tensor,
    start: int,
    step: int,
    lane: int,
    k0: int,
    k1: int,
    kind: int,
    *,
    block: int | None = None,
) -> None:
    """out[i] = z(start + i) for counter (step, lane) and key (k0, k1).

    Args:
        out: float32, contiguous, any shape (filled in flat order).
        start: global index of out's first element within the parameter.
        kind: z kind code (stream.KIND_CODES).
        block: elements per program (power of two >= 128); default :data:`BLOCK`.
    """
    if out.dtype != torch.float32:
        raise ValueError("z_fill needs a float32 output")
    flat = _flat(out, "out")
    n = flat.numel()
    if n == 0:
        return
    b = _block(block)
    start = _check_start(start, n)
    g0, programs = _grid(start, n, b)
    args = (flat, _table(flat), n, start, g0, _i32(step), _i32(lane), _i32(k0), _i32(k1))
    _launch(_z_fill_kernel, (programs,), args, device=flat.device, KIND=_kind(kind), BLOCK=b)


def rounding_bits_fill(
    out: torch.Tensor,
    start: int,
    step: int,
    lane: int,
    k0: int,
    k1: int,
    *,
    block: int | None = None,
) -> None:
    """out[i] = (Philox word of element start+i) >> 8: the 24-bit stochastic-rounding
    integers (``lane`` = stream.LANE_ROUNDING + direction); out: int64."""
    if out.dtype != torch.int64:
        raise ValueError("rounding_bits_fill needs an int64 output")
    flat = _flat(out, "out")
    n = flat.numel()
    if n == 0:
        return
    b = _block(block)
    start = _check_start(start, n)
    g0, programs = _grid(start, n, b)
    args = (flat, n, start, g0, _i32(step), _i32(lane), _i32(k0), _i32(k1))
    _launch(_rounding_kernel, (programs,), args, device=flat.device, BLOCK=b)


def _small(a, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A schedule array (numpy or torch) as a contiguous tensor on ``device``."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device=device, dtype=dtype).contiguous()
    np_dtype = {torch.int64: np.int64, torch.float32: np.float32}[dtype]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np_dtype)).to(device)


def replay(
    theta: torch.Tensor,
    start: int,
    k0: int,
    k1: int,
    steps,
    coefs,
    decay,
    kind: int,
    rounding: int,
    *,
    block: int | None = None,
) -> None:
    """Apply T steps to a slice of one parameter in place, block-resident.

    Per element and step t: ``y = fp32(x)`` (exact); ``y = fl32(y * decay[t])`` if
    decay[t] != 1; for each direction j with ``coefs[t, j] != 0``:
    ``y = fl32(y - coefs[t, j] * z_tj)`` (z_tj from counter step = steps[t], lane = j);
    for bf16/fp16 ``x = R(y)`` after every step that changed something (nearest even, or
    stochastic with the rounding lane of steps[t]); a NaN stored in a half is canonical.

    Args:
        theta: fp32/bf16/fp16, contiguous: elements [start, start + numel) of one
            parameter, updated in place.
        start: global index of theta's first element.
        k0, k1: the parameter's Philox key.
        steps: int64 [T] (numpy or torch; step words are taken mod 2^32).
        coefs: float32 [T, n_directions]; decay: float32 [T]. Torch tensors already on
            theta's device avoid a host-to-device copy.
        kind: z kind code; rounding: 0 nearest, 1 stochastic (ignored for fp32).
        block: elements per program (power of two >= 128); default :data:`BLOCK`.
    """
    bits, dt = _bits(theta, "theta")
    n = bits.numel()
    if (
        len(steps) != len(coefs)
        or len(coefs) != len(decay)
        or np.ndim(coefs) != 2
        or np.ndim(decay) != 1
        or np.ndim(steps) != 1
    ):
        raise ValueError("steps [T], coefs [T, n_directions] and decay [T] must agree")
    if int(rounding) not in (ROUND_NEAREST, ROUND_STOCHASTIC):
        raise ValueError(f"unknown rounding code {rounding}")
    T = len(steps)
    if n == 0 or T == 0:
        return
    b = _block(block)
    start = _check_start(start, n)
    dev = bits.device
    steps_t = _small(steps, torch.int64, dev)
    coefs_t = _small(coefs, torch.float32, dev)
    decay_t = _small(decay, torch.float32, dev)
    g0, programs = _grid(start, n, b)
    args = (bits, _table(bits), steps_t, coefs_t, decay_t, n, start, g0)
    args += (_i32(k0), _i32(k1), T, int(coefs_t.shape[1]))
    _launch(
        _replay_kernel,
        (programs,),
        args,
        device=dev,
        KIND=_kind(kind),
        DT=dt,
        MODE=int(rounding) if dt != DT_FP32 else ROUND_NEAREST,
        BLOCK=b,
    )


def _neg_scale(scale: float) -> float:
    """The kernels compute ``x - c * z`` with ``c = fp32(-scale)`` (like _kernels)."""
    return float(np.float32(-scale))


def perturb(
    src: torch.Tensor,
    out: torch.Tensor,
    start: int,
    step: int,
    lane: int,
    k0: int,
    k1: int,
    scale: float,
    kind: int,
    *,
    block: int | None = None,
) -> None:
    """out = R(fl32(fl32(src) + fl32(scale * z))), nearest even: the perturbed copy.

    ``src`` (elements [start, start + numel) of one parameter) is only read; ``out`` has
    its dtype and size. Computed as ``src - c * z`` with ``c = fp32(-scale)``, unfused.
    """
    src_bits, dt = _bits(src, "src")
    out_bits, dt_out = _bits(out, "out")
    if dt_out != dt or out_bits.numel() != src_bits.numel() or out.device != src.device:
        raise ValueError("src and out must have the same dtype, size and device")
    n = src_bits.numel()
    if n == 0:
        return
    b = _block(block)
    start = _check_start(start, n)
    g0, programs = _grid(start, n, b)
    args = (src_bits, out_bits, _table(src_bits), n, start, g0, _i32(step), _i32(lane))
    args += (_i32(k0), _i32(k1), _neg_scale(scale))
    _launch(_perturb_kernel, (programs,), args, device=src.device, KIND=_kind(kind), DT=dt, BLOCK=b)


def perturb_rows(
    w: torch.Tensor,
    rows: torch.Tensor,
    out: torch.Tensor,
    step: int,
    lane: int,
    k0: int,
    k1: int,
    scale: float,
    kind: int,
    *,
    block: int | None = None,
    check: bool = True,
) -> None:
    """out[i] = R(W[rows[i]] + scale * z) for rows of a row-major [R, dim] parameter
    (row r covers global elements [r*dim, (r+1)*dim)), as :func:`perturb` computes them.

    Args:
        w: [R, dim] parameter, contiguous (only read); rows: int64 indices on w's device;
        out: [len(rows), dim], same dtype, contiguous.
        check: validate the row indices (a device synchronization on CUDA).
    """
    if w.ndim != 2:
        raise ValueError("perturb_rows needs a 2-D parameter")
    n_rows, dim = int(w.shape[0]), int(w.shape[1])
    w_bits, dt = _bits(w, "w")
    out_bits, dt_out = _bits(out, "out")
    rows = rows.reshape(-1)
    if dt_out != dt or out_bits.numel() != rows.numel() * dim or out.device != w.device:
        raise ValueError("out must be [len(rows), dim] of w's dtype, on w's device")
    if rows.numel() == 0 or dim == 0:
        return
    if rows.dtype != torch.int64 or rows.device != w.device:
        rows = rows.to(device=w.device, dtype=torch.int64)
    rows = rows.contiguous()
    if check and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise ValueError("row index out of range")
    b = _block(block)
    grid = (rows.numel(), (dim + b - 1) // b + 1)
    args = (w_bits, rows, out_bits, _table(w_bits), dim, _i32(step), _i32(lane))
    args += (_i32(k0), _i32(k1), _neg_scale(scale))
    _launch(_perturb_rows_kernel, grid, args, device=w.device, KIND=_kind(kind), DT=dt, BLOCK=b)


def round_to_half(
    y: torch.Tensor, dtype: torch.dtype, rbits: torch.Tensor | None = None
) -> torch.Tensor:
    """fp32 ``y`` rounded to bf16/fp16 by the kernels' rule (for tests): nearest even, or
    stochastic with 24-bit integers ``rbits`` (int64, same size); NaN canonical."""
    if y.dtype != torch.float32 or dtype not in (torch.bfloat16, torch.float16):
        raise ValueError("round_to_half maps float32 to bfloat16 or float16")
    flat = _flat(y, "y").view(torch.int32)
    n = flat.numel()
    out = torch.empty(y.shape, dtype=dtype, device=y.device)
    if n == 0:
        return out
    mode = ROUND_NEAREST if rbits is None else ROUND_STOCHASTIC
    r = flat if rbits is None else _flat(rbits.to(torch.int64), "rbits")
    if r.numel() != n:
        raise ValueError(f"rbits holds {r.numel()} values for {n} elements")
    b = 1024
    _launch(
        _round_kernel,
        ((n + b - 1) // b,),
        (flat, r, out.view(-1).view(torch.int16), n),
        device=y.device,
        DT=_STORAGE[dtype][0],
        MODE=mode,
        BLOCK=b,
    )
    return out


# ----------------------------------------------------------------------------- inspection

_SIGNATURES = {
    "z_fill": (
        _z_fill_kernel,
        ["*fp32", "*fp32", "i64", "i64", "i64", "i32", "i32", "i32", "i32"],
        ("KIND", "BLOCK"),
    ),
    "rounding_bits": (
        _rounding_kernel,
        ["*i64", "i64", "i64", "i64", "i32", "i32", "i32", "i32"],
        ("BLOCK",),
    ),
    "replay": (
        _replay_kernel,
        ["*DT", "*fp32", "*i64", "*fp32", "*fp32", "i64", "i64", "i64"]
        + ["i32", "i32", "i32", "i32"],
        ("KIND", "DT", "MODE", "BLOCK"),
    ),
    "perturb": (
        _perturb_kernel,
        ["*DT", "*DT", "*fp32", "i64", "i64", "i64", "i32", "i32", "i32", "i32", "fp32"],
        ("KIND", "DT", "BLOCK"),
    ),
    "round_half": (_round_kernel, ["*i32", "*i64", "*i16", "i64"], ("DT", "MODE", "BLOCK")),
    "perturb_rows": (
        _perturb_rows_kernel,
        ["*DT", "*i64", "*DT", "*fp32", "i32", "i32", "i32", "i32", "i32", "fp32"],
        ("KIND", "DT", "BLOCK"),
    ),
}


def cuda_asm(
    name: str,
    *,
    kind: int = 0,
    dt: int = DT_FP32,
    mode: int = ROUND_NEAREST,
    block: int = BLOCK,
    arch: int = 90,
    fp_fusion: bool = LAUNCH_OPTIONS["enable_fp_fusion"],
) -> dict[str, str]:
    """One kernel compiled for CUDA ``sm_<arch>`` without a GPU (not under the
    interpreter): ``{"ptx": ..., "sass": ...}`` (PTX and disassembled machine code).

    ``fp_fusion`` defaults to what every launch uses; ``name`` is one of ``z_fill``,
    ``rounding_bits``, ``replay``, ``perturb``, ``perturb_rows``, ``round_half``.
    """
    if interpreting():
        raise RuntimeError("cuda_asm() needs the compiler: unset TRITON_INTERPRET")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.tools.disasm import get_sass

    kernel, types, const_names = _SIGNATURES[name]
    bits_type = "i32" if dt == DT_FP32 else "i16"
    values = {"KIND": kind, "DT": dt, "MODE": mode, "BLOCK": block}
    sig = {p: t.replace("DT", bits_type) for p, t in zip(kernel.arg_names, types)}
    sig.update({c: "constexpr" for c in const_names})
    src = ASTSource(fn=kernel, signature=sig, constexprs={c: values[c] for c in const_names})
    options = {**LAUNCH_OPTIONS, "enable_fp_fusion": fp_fusion, "num_warps": NUM_WARPS}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return {"ptx": compiled.asm["ptx"], "sass": get_sass(compiled.asm["cubin"])}
