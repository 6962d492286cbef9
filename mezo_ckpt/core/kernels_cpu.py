"""Compiled CPU kernels (numba) for the perturbation stream and the update rule.

They compute exactly what :mod:`mezo_ckpt.core.stream` and :mod:`mezo_ckpt.core.update` specify
(the constants are imported from there, never restated); tests compare them bit for bit
with the eager torch reference. No fast-math flags are used, so LLVM never contracts a
multiply and an add into a fused operation (and where the product is exact, as it always
is for ``c * z``, fusion would not change the bits anyway).

Layout of the work, chosen so that LLVM vectorizes the arithmetic:

1. :func:`_philox_words` runs Philox4x32-10 for a range of consecutive counter blocks.
   The 10 rounds are written out (round keys hoisted), all values are uint64 holding
   32-bit quantities, so the 32x32->64 products become ``vpmuludq`` and the loop over
   blocks is vectorized. The four output words of block ``b`` are stored at
   ``words[4(b - b0) + j]``: read as little-endian uint16, that scratch array *is* the
   normal16 index of every element in order; read as a bit string it is the rademacher
   sign of every element in order; read as uint32 it is the stochastic-rounding word of
   every element in order. No per-element word selection.
2. A simple per-element loop maps the scratch to z and applies it: normal16 is a table
   lookup in the float32 table (256 KiB, L2-resident), rademacher selects ``+-c`` from one
   bit (vectorized: 32 elements per word, no per-element branch).

One replay kernel serves every storage dtype (fp32, bf16, fp16) and rounding mode
(nearest, stochastic). It is block-resident: each block of ``BLOCK`` elements (aligned to
global element indices, so only the first and last block of a slice are partial) is
widened once into an fp32 working copy, receives every step while it is in L1/L2 (for
half precision: rounded to the dtype after every step, as the rule says), and is narrowed
back once, so the weights stream through memory once whatever the number of steps.
Tensors travel as their raw bit patterns (uint32 for fp32, uint16 for bf16/fp16).

Threads: the compiled kernels are serial functions over a range of blocks that release
the GIL (``nogil=True``); the public entry points are thin Python wrappers that split the
blocks over ``numba.get_num_threads()`` threads. Calls with little work (below
``MIN_PARALLEL_WORK`` element-operations) run on the calling thread alone. Every block is
computed independently of the split, so results do not depend on the thread count.

All kernels are compiled with ``cache=True``: the first use in a fresh environment
compiles them (several seconds in all), later processes load the machine code from
``__pycache__`` (or ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from mezo_ckpt.core import spec as _S
from mezo_ckpt.core.kernels_cpu_round import (
    _OPTS,
    DT_BF16,
    DT_FP16,
    DT_FP32,
    ROUND_STOCHASTIC,
    ROUNDING_DROP,
    _f32_bits,
    _f32_from_bits,
    _narrow,
    _round_block,
    _widen,
)

M0 = np.uint64(_S.PHILOX_M0)
M1 = np.uint64(_S.PHILOX_M1)
W0 = np.uint64(_S.PHILOX_W0)
W1 = np.uint64(_S.PHILOX_W1)
MASK = np.uint64(_S.MASK32)
SH32 = np.uint64(32)
LANE_ROUNDING = _S.LANE_ROUNDING
#: Elements per cache-resident block (32 KiB of fp32); a multiple of 128 so that blocks
#: aligned to global element indices are also aligned to Philox blocks of either kind.
BLOCK = 8192

KIND_NORMAL16 = _S.KIND_CODES["normal16"]
KIND_RADEMACHER = _S.KIND_CODES["rademacher"]
SHIFT_NORMAL16 = _S.ELEMENT_SHIFT["normal16"]
SHIFT_RADEMACHER = _S.ELEMENT_SHIFT["rademacher"]
SHIFT_ROUNDING = 2  # log2(stream.ROUNDING_PER_BLOCK)
assert 1 << SHIFT_ROUNDING == _S.ROUNDING_PER_BLOCK
assert BLOCK % (1 << max(SHIFT_NORMAL16, SHIFT_RADEMACHER)) == 0


# ----------------------------------------------------------------------------- Philox


@njit(inline="always")
def _rnd(c0, c1, c2, c3, k0, k1):
    p0 = c0 * M0
    p1 = c2 * M1
    return (p1 >> SH32) ^ c1 ^ k0, p1 & MASK, (p0 >> SH32) ^ c3 ^ k1, p0 & MASK


@njit(**_OPTS)
def _philox_words(words, b0, nblk, step, lane, k0, k1):
    """words[4k + j] = word j of Philox4x32-10(counter=(b0+k, step, lane), key=(k0, k1))."""
    c2 = np.uint64(step) & MASK
    c3 = np.uint64(lane) & MASK
    a0 = np.uint64(k0) & MASK
    d0 = np.uint64(k1) & MASK
    a1 = (a0 + W0) & MASK
    d1 = (d0 + W1) & MASK
    a2 = (a1 + W0) & MASK
    d2 = (d1 + W1) & MASK
    a3 = (a2 + W0) & MASK
    d3 = (d2 + W1) & MASK
    a4 = (a3 + W0) & MASK
    d4 = (d3 + W1) & MASK
    a5 = (a4 + W0) & MASK
    d5 = (d4 + W1) & MASK
    a6 = (a5 + W0) & MASK
    d6 = (d5 + W1) & MASK
    a7 = (a6 + W0) & MASK
    d7 = (d6 + W1) & MASK
    a8 = (a7 + W0) & MASK
    d8 = (d7 + W1) & MASK
    a9 = (a8 + W0) & MASK
    d9 = (d8 + W1) & MASK
    base = np.uint64(b0)
    for k in range(nblk):
        b = base + np.uint64(k)
        x0, x1, x2, x3 = _rnd(b & MASK, b >> SH32, c2, c3, a0, d0)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a1, d1)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a2, d2)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a3, d3)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a4, d4)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a5, d5)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a6, d6)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a7, d7)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a8, d8)
        x0, x1, x2, x3 = _rnd(x0, x1, x2, x3, a9, d9)
        words[4 * k] = np.uint32(x0)
        words[4 * k + 1] = np.uint32(x1)
        words[4 * k + 2] = np.uint32(x2)
        words[4 * k + 3] = np.uint32(x3)


@njit(inline="always")
def _span(e_lo, e_hi, shift):
    """First Philox block, block count and element offset for global elements [e_lo, e_hi)."""
    per = np.int64(1) << shift
    b_first = e_lo >> shift
    nblk = ((e_hi + per - 1) >> shift) - b_first
    return b_first, nblk, e_lo - (b_first << shift)


@njit(inline="always")
def _shift(kind):
    return SHIFT_NORMAL16 if kind == KIND_NORMAL16 else SHIFT_RADEMACHER


# ----------------------------------------------------------------- per-element mapping


@njit(**_OPTS)
def _normal16_store(table, u16, off, out, n):
    us = u16[off : off + n]
    for i in range(n):
        out[i] = table[us[i]]


@njit(**_OPTS)
def _normal16_sub(table, u16, off, x, n, c):
    """x[i] = x[i] - c * z[i] with z[i] = table[u16[off + i]] (one fp32 rounding)."""
    us = u16[off : off + n]
    for i in range(n):
        x[i] = x[i] - c * table[us[i]]


@njit(**_OPTS)
def _normal16_perturb_f32(table, u16, off, src, out, base, n, c):
    """out[base + i] = bits(fp32(src[base + i]) - c * table[u16[off + i]]) (fp32 storage):
    the same single rounding as widen, :func:`_normal16_sub` and narrow in turn."""
    us = u16[off : off + n]
    s = src[base : base + n]
    o = out[base : base + n]
    for i in range(n):
        o[i] = _f32_bits(_f32_from_bits(np.uint32(s[i])) - c * table[us[i]])


@njit(**_OPTS)
def _rademacher_sub(w32, off, x, n, c):
    """x[i] = x[i] - c * z[i], z[i] = -1 if bit (off + i) of the word stream is set else +1.

    ``c * z`` is exactly ``+-c``; the aligned middle handles 32 elements per word in a
    branch-free loop LLVM vectorizes; the unaligned head and tail go element by element.
    """
    nc = -c
    i = 0
    g = off
    while i < n and (g & 31) != 0:
        bit = (w32[g >> 5] >> (g & 31)) & 1
        x[i] = x[i] - (nc if bit != 0 else c)
        i += 1
        g += 1
    nw = (n - i) >> 5
    xm = x[i : i + 32 * nw]
    wm = w32[g >> 5 : (g >> 5) + nw]
    for w in range(nw):
        word = wm[w]
        for k in range(32):
            bit = (word >> np.int32(k)) & np.int32(1)
            xm[32 * w + k] = xm[32 * w + k] - (nc if bit != 0 else c)
    i += 32 * nw
    g += 32 * nw
    while i < n:
        bit = (w32[g >> 5] >> (g & 31)) & 1
        x[i] = x[i] - (nc if bit != 0 else c)
        i += 1
        g += 1


@njit(**_OPTS)
def _rademacher_store(w32, off, out, n):
    i = 0
    g = off
    while i < n and (g & 31) != 0:
        bit = (w32[g >> 5] >> (g & 31)) & 1
        out[i] = np.float32(1 - 2 * bit)
        i += 1
        g += 1
    nw = (n - i) >> 5
    om = out[i : i + 32 * nw]
    wm = w32[g >> 5 : (g >> 5) + nw]
    for w in range(nw):
        word = wm[w]
        for k in range(32):
            bit = (word >> np.int32(k)) & np.int32(1)
            om[32 * w + k] = np.float32(np.int32(1) - np.int32(2) * bit)
    i += 32 * nw
    g += 32 * nw
    while i < n:
        bit = (w32[g >> 5] >> (g & 31)) & 1
        out[i] = np.float32(1 - 2 * bit)
        i += 1
        g += 1


@njit(**_OPTS)
def _sub_z(table, words, off, x, n, c, kind):
    if kind == KIND_NORMAL16:
        _normal16_sub(table, words.view(np.uint16), off, x, n, c)
    else:
        _rademacher_sub(words.view(np.int32), off, x, n, c)


@njit(**_OPTS)
def _scale(x, n, m):
    for i in range(n):
        x[i] = x[i] * m


# ------------------------------------------------------------------- thread dispatch

#: Below this many element-operations a call runs on the calling thread only (handing
#: work to another thread costs tens of microseconds).
MIN_PARALLEL_WORK = 1 << 18
#: Chunks per thread: a few, so that a briefly busy core does not hold the others up.
CHUNKS_PER_THREAD = 4

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """After fork the child has none of the parent's threads: start a fresh pool there."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mezo-kernels")
            _pool_size = size
        return _pool


def _parallel(range_kernel, nb: int, work: int, args: tuple) -> None:
    """Run ``range_kernel(g_begin, g_end, *args)`` over units ``[0, nb)`` on the threads.

    The compiled kernels are serial and release the GIL, so units are handed out in
    contiguous chunks to ``numba.get_num_threads()`` threads (the calling thread works
    too). Every unit's result is independent of the split, hence of the thread count.
    """
    if nb <= 0:
        return
    threads = min(numba.get_num_threads(), nb)
    if threads <= 1 or work < MIN_PARALLEL_WORK:
        range_kernel(0, nb, *args)
        return
    nchunks = min(nb, threads * CHUNKS_PER_THREAD)
    cuts = [nb * i // nchunks for i in range(nchunks + 1)]
    todo = iter(range(nchunks))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            range_kernel(cuts[i], cuts[i + 1], *args)

    pool = _executor(threads - 1)
    futures = [pool.submit(worker) for _ in range(threads - 1)]
    try:
        worker()
    finally:
        for f in futures:
            f.result()


def _run(range_kernel, start: int, n: int, work: int, args: tuple) -> None:
    """Run ``range_kernel(gb, ge, start, g0, *args)`` over the BLOCK-aligned blocks of the
    slice of global elements ``[start, start + n)``; block ``g`` covers global elements
    ``[(g0 + g) * BLOCK, (g0 + g + 1) * BLOCK)`` clipped to the slice."""
    if n <= 0:
        return
    g0 = start // BLOCK
    nb = (start + n + BLOCK - 1) // BLOCK - g0
    _parallel(range_kernel, nb, work, (start, g0, *args))


@njit(inline="always")
def _bounds(start, n, g0, g):
    lo = max((g0 + g) * BLOCK - start, 0)
    hi = min((g0 + g + 1) * BLOCK - start, n)
    return lo, hi


def _check_kind(kind) -> int:
    kind = int(kind)
    if kind not in (KIND_NORMAL16, KIND_RADEMACHER):
        raise ValueError(f"unknown z kind code {kind}")
    return kind


def _check_storage(bits: np.ndarray, dt: int) -> int:
    dt = int(dt)
    want = {DT_FP32: np.uint32, DT_BF16: np.uint16, DT_FP16: np.uint16}.get(dt)
    if want is None:
        raise ValueError(f"unknown storage code {dt}")
    if bits.dtype != want or bits.ndim != 1:
        raise ValueError(f"storage {dt} needs a 1-D {np.dtype(want).name} bit view")
    return dt


def _check_schedule(steps, coefs, decay, hist=None):
    if (
        steps.ndim != 1
        or coefs.ndim != 2
        or decay.ndim != 1
        or not steps.shape[0] == coefs.shape[0] == decay.shape[0]
    ):
        raise ValueError("steps [T], coefs [T, n_directions] and decay [T] must agree")
    if hist is not None and (
        hist.ndim != 3 or hist.shape[0] != coefs.shape[0] or hist.shape[2] != coefs.shape[1]
    ):
        raise ValueError("history must be [T, W, n_directions]")


# ------------------------------------------------------------------------------ z_fill


@njit(**_OPTS)
def _z_fill_range(gb, ge, start, g0, table, out, step, lane, k0, k1, kind):
    n = out.shape[0]
    sh = _shift(kind)
    words = np.empty(4 * (BLOCK // 8 + 1), dtype=np.uint32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n, g0, g)
        b_first, nblk, off = _span(start + lo, start + hi, sh)
        _philox_words(words, b_first, nblk, step, lane, k0, k1)
        o = out[lo:hi]
        if kind == KIND_NORMAL16:
            _normal16_store(table, words.view(np.uint16), off, o, hi - lo)
        else:
            _rademacher_store(words.view(np.int32), off, o, hi - lo)


def z_fill(table, out, start, step, lane, k0, k1, kind):
    """out[i] = z(start + i) for the given key/step/lane (parallel over blocks).

    Args:
        table: float32 [65536] normal16 table (z values, :func:`stream.normal16_table_numpy`).
        out: float32 [n] destination (a 1-D array; contiguous is fastest).
        start: global index of out[0] within the parameter.
        step, lane: the counter's step and lane words; k0, k1: the Philox key.
        kind: 0 = normal16, 1 = rademacher.
    """
    n = out.shape[0]
    _run(
        _z_fill_range,
        int(start),
        n,
        n,
        (table, out, int(step), int(lane), int(k0), int(k1), _check_kind(kind)),
    )


# ------------------------------------------------------------------ rounding_bits_fill


@njit(**_OPTS)
def _rounding_range(gb, ge, start, g0, out, step, lane, k0, k1):
    n = out.shape[0]
    words = np.empty(4 * (BLOCK // 4 + 1), dtype=np.uint32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n, g0, g)
        b_first, nblk, off = _span(start + lo, start + hi, SHIFT_ROUNDING)
        _philox_words(words, b_first, nblk, step, lane, k0, k1)
        ws = words[off : off + hi - lo]
        o = out[lo:hi]
        for i in range(hi - lo):
            o[i] = ws[i] >> ROUNDING_DROP


def rounding_bits_fill(out, start, step, lane, k0, k1):
    """out[i] = (Philox word for element start+i) >> 8, one word per element (int64 out)."""
    n = out.shape[0]
    _run(_rounding_range, int(start), n, n, (out, int(step), int(lane), int(k0), int(k1)))


# ------------------------------------------------------------------------------ replay


@njit(**_OPTS)
def _steps_on_block(
    x, n, table, words, rwords, sp, rsp, k0, k1, steps, coefs, decay, hist, kind, dt, mode
):
    """All T steps on one block's fp32 working values ``x[:n]``, in place (§10.1)."""
    b_first, nblk, off = sp
    rb_first, rnblk, roff = rsp
    ndir = coefs.shape[1]
    half = dt != DT_FP32
    for t in range(steps.shape[0]):
        changed = False
        m = np.float32(decay[t])
        if m != np.float32(1.0):
            _scale(x, n, m)
            changed = True
        for j in range(ndir):
            c = np.float32(coefs[t, j])
            if c == np.float32(0.0):
                continue
            _philox_words(words, b_first, nblk, steps[t], j, k0, k1)
            _sub_z(table, words, off, x, n, c, kind)
            changed = True
        for k in range(hist.shape[1]):  # momentum: direction j of step t - (k + 1)
            s = steps[t] - (k + 1)
            if s < 0:
                continue
            for j in range(ndir):
                c = np.float32(hist[t, k, j])
                if c == np.float32(0.0):
                    continue
                _philox_words(words, b_first, nblk, s, j, k0, k1)
                _sub_z(table, words, off, x, n, c, kind)
                changed = True
        if half and changed:  # the stored weight has the dtype after every step
            if mode == ROUND_STOCHASTIC:
                _philox_words(rwords, rb_first, rnblk, steps[t], LANE_ROUNDING, k0, k1)
            _round_block(x, n, dt, mode, rwords, roff)


@njit(**_OPTS)
def _replay_range(
    gb, ge, start, g0, table, theta, k0, k1, steps, coefs, decay, hist, kind, dt, mode
):
    """Half-precision storage: widen each block to fp32, apply, round back."""
    n_all = theta.shape[0]
    sh = _shift(kind)
    words = np.empty(4 * (BLOCK // 8 + 1), dtype=np.uint32)
    rwords = np.empty(4 * (BLOCK // 4 + 1), dtype=np.uint32)
    x = np.empty(BLOCK, dtype=np.float32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n_all, g0, g)
        sp = _span(start + lo, start + hi, sh)
        rsp = _span(start + lo, start + hi, SHIFT_ROUNDING)
        n = hi - lo
        src = theta[lo:hi]
        for i in range(n):
            x[i] = _widen(src[i], dt)
        _steps_on_block(
            x, n, table, words, rwords, sp, rsp, k0, k1, steps, coefs, decay, hist, kind, dt, mode
        )
        for i in range(n):
            src[i] = _narrow(x[i], dt)


@njit(**_OPTS)
def _replay_range_f32(
    gb, ge, start, g0, table, theta, k0, k1, steps, coefs, decay, hist, kind, dt, mode
):
    """fp32 storage: the block of ``theta`` (an fp32 view) is the working copy itself."""
    n_all = theta.shape[0]
    sh = _shift(kind)
    words = np.empty(4 * (BLOCK // 8 + 1), dtype=np.uint32)
    rwords = np.empty(4, dtype=np.uint32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n_all, g0, g)
        sp = _span(start + lo, start + hi, sh)
        rsp = _span(start + lo, start + hi, SHIFT_ROUNDING)
        _steps_on_block(
            theta[lo:hi],
            hi - lo,
            table,
            words,
            rwords,
            sp,
            rsp,
            k0,
            k1,
            steps,
            coefs,
            decay,
            hist,
            kind,
            dt,
            mode,
        )


def replay(table, theta_bits, start, k0, k1, steps, coefs, decay, kind, dt, mode, hist=None):
    """Apply steps to a slice of one parameter in place, block-resident.

    Per element and step t: ``y = fp32(x)`` (exact), ``y = fl32(y * decay[t])`` if
    decay[t] != 1, then for each direction j with ``coefs[t, j] != 0``:
    ``y = fl32(y - coefs[t, j] * z_tj)`` (exact product, one rounding), z_tj from counter
    (step=steps[t], lane=j); for bf16/fp16 ``x = R(y)`` after every step that changed
    something (nearest even, or stochastic with the rounding lane of steps[t]). NaN in a
    half-precision result is stored canonical. With ``hist`` [T, W, n], after the
    directions of step t come ``y = fl32(y - hist[t, k-1, j] * z)`` with z of step
    ``steps[t] - k`` (k = 1..W; zero coefficients and negative steps skipped), before the
    rounding.

    Args:
        table: float32 [65536] normal16 table.
        theta_bits: the slice's bit view, uint32 [n] (fp32) or uint16 [n] (bf16/fp16):
            elements [start, start + n) of one parameter, updated in place.
        steps: int64 [T]; coefs: float32 [T, n_directions]; decay: float32 [T].
        kind: z kind code; dt: storage code (DT_FP32/DT_BF16/DT_FP16);
        mode: ROUND_NEAREST or ROUND_STOCHASTIC.
    """
    if hist is None:
        t, n = coefs.shape if coefs.ndim == 2 else (len(steps), 0)  # a wrong shape: below
        hist = np.zeros((t, 0, n), np.float32)
    _check_schedule(steps, coefs, decay, hist)
    dt = _check_storage(theta_bits, dt)
    n = theta_bits.shape[0]
    if dt == DT_FP32:  # work on the fp32 values in place (no widening copy)
        kernel, theta = _replay_range_f32, theta_bits.view(np.float32)
    else:
        kernel, theta = _replay_range, theta_bits
    _run(
        kernel,
        int(start),
        n,
        n * max(1, coefs.size + hist.size),
        (
            table,
            theta,
            int(k0),
            int(k1),
            steps,
            coefs,
            decay,
            hist,
            _check_kind(kind),
            dt,
            int(mode),
        ),
    )


# ----------------------------------------------------------------------------- perturb


@njit(**_OPTS)
def _perturb_span(table, src, out, e0, step, lane, k0, k1, c, kind, dt, words, x):
    """out[:n] = round(src[:n] - c * z) for global elements [e0, e0 + n) of a parameter."""
    n = src.shape[0]
    sh = _shift(kind)
    done = 0
    while done < n:
        m = min(BLOCK, n - done)
        b_first, nblk, off = _span(e0 + done, e0 + done + m, sh)
        _philox_words(words, b_first, nblk, step, lane, k0, k1)
        if dt == DT_FP32 and kind == KIND_NORMAL16:
            # the common case in one loop: no working copy, no per-element dtype branches
            _normal16_perturb_f32(table, words.view(np.uint16), off, src, out, done, m, c)
            done += m
            continue
        if dt == DT_FP32:
            for i in range(m):
                x[i] = _f32_from_bits(np.uint32(src[done + i]))
        else:
            for i in range(m):
                x[i] = _widen(src[done + i], dt)
        _sub_z(table, words, off, x, m, c, kind)
        if dt == DT_FP32:
            for i in range(m):
                out[done + i] = _f32_bits(x[i])
        else:
            for i in range(m):
                out[done + i] = _narrow(x[i], dt)
        done += m


@njit(**_OPTS)
def _perturb_range(gb, ge, start, g0, table, src, out, step, lane, k0, k1, c, kind, dt):
    n = src.shape[0]
    words = np.empty(4 * (BLOCK // 8 + 2), dtype=np.uint32)
    x = np.empty(BLOCK, dtype=np.float32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n, g0, g)
        _perturb_span(
            table, src[lo:hi], out[lo:hi], start + lo, step, lane, k0, k1, c, kind, dt, words, x
        )


def perturb(table, src_bits, out_bits, start, step, lane, k0, k1, scale, kind, dt, parallel=True):
    """out = R(src + scale * z): the perturbed copy of a slice (src is only read).

    ``parallel=False`` runs on the calling thread only: between the layers of a forward
    pass, torch's own threads are still spinning and a second kernel thread would only
    fight them for the cores (measured: the step is faster serial).

    ``scale * z`` is rounded to fp32, then added with one rounding, then rounded to the
    dtype to nearest even (the reference is ``(w.float() + z * scale).to(dtype)``).
    """
    dt = _check_storage(src_bits, dt)
    _check_storage(out_bits, dt)
    n = src_bits.shape[0]
    if out_bits.shape[0] != n:
        raise ValueError("src and out must have the same length")
    c = np.float32(-scale)  # the span kernel computes x - c * z
    args = (table, src_bits, out_bits, int(step), int(lane), int(k0), int(k1), c)
    _run(_perturb_range, int(start), n, n if parallel else 0, (*args, _check_kind(kind), dt))


@njit(**_OPTS)
def _perturb_rows_range(rb, re, table, w, rows, dim, out, step, lane, k0, k1, c, kind, dt):
    words = np.empty(4 * (BLOCK // 8 + 2), dtype=np.uint32)
    x = np.empty(BLOCK, dtype=np.float32)
    for i in range(rb, re):
        r = rows[i]
        e0 = r * dim
        _perturb_span(
            table,
            w[e0 : e0 + dim],
            out[i * dim : (i + 1) * dim],
            e0,
            step,
            lane,
            k0,
            k1,
            c,
            kind,
            dt,
            words,
            x,
        )


def perturb_rows(
    table, w_bits, rows, dim, out_bits, step, lane, k0, k1, scale, kind, dt, parallel=True
):
    """out[i] = R(W[rows[i]] + scale * z) for rows of a row-major [R, dim] parameter.

    Args:
        w_bits: the whole parameter's bit view, flat; rows: int64 row indices.
        out_bits: flat [len(rows) * dim] destination (same storage).
    """
    dt = _check_storage(w_bits, dt)
    _check_storage(out_bits, dt)
    rows = np.ascontiguousarray(rows, np.int64)
    if out_bits.shape[0] != rows.shape[0] * dim:
        raise ValueError("out must hold len(rows) * dim elements")
    if rows.size and (rows.min() < 0 or (rows.max() + 1) * dim > w_bits.shape[0]):
        raise ValueError("row index out of range")
    c = np.float32(-scale)
    args = (table, w_bits, rows, int(dim), out_bits, int(step), int(lane), int(k0), int(k1))
    work = rows.shape[0] * dim if parallel else 0
    _parallel(_perturb_rows_range, rows.shape[0], work, (*args, c, _check_kind(kind), dt))
