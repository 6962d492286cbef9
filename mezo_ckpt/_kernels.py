"""Compiled CPU kernels (numba) for the perturbation stream and the update rule.

They compute exactly what :mod:`mezo_ckpt.stream` and :mod:`mezo_ckpt.update` specify;
tests compare them bit for bit with the eager torch reference. No fast-math flags are
used, so LLVM never contracts a multiply and an add into a fused operation (and where
the product is exact, as it always is for ``c * z``, fusion would not change the bits).

Layout of the work, chosen so that LLVM vectorizes the arithmetic:

1. :func:`_philox_words` runs Philox4x32-10 for a range of consecutive counter blocks.
   The 10 rounds are written out (round keys hoisted), all values are uint64 holding
   32-bit quantities, so the 32x32->64 products become ``vpmuludq`` and the loop over
   blocks is vectorized (8 blocks per AVX-512 register). The four output words of block
   ``b`` are stored at ``words[4(b - b0) + j]``: read as little-endian uint16, that
   scratch array *is* the normal16 index of every element in order; read as a bit
   string it is the rademacher sign of every element in order; read as uint32 it is the
   stochastic-rounding word of every element in order. No per-element word selection.
2. A simple per-element loop maps the scratch to z and applies it: normal16 is a
   table lookup in the float32 table (256 KiB, L2-resident; measured as fast as or
   faster than an int16 table, a half table using the symmetry, or AVX-512 gathers: the
   scalar lookups are bound by L1 misses), rademacher selects ``+-c`` from one bit
   (vectorized: 32 elements per word, no per-element branch).

Replay is block-resident: each block of ``BLOCK`` elements (blocks aligned to global
element indices, so only the first and last block of a slice are partial) receives
every step while it is in L1/L2, so the weights stream through memory once whatever the
number of steps. bf16 replay widens a block to an fp32 working copy once, rounds it to
bf16 (nearest even, in a vectorized pass on the bit pattern) after every step, and
narrows it back once at the end.

Threads: the compiled kernels are serial functions over a range of blocks that release
the GIL (``nogil=True``); the public entry points are thin Python wrappers that split the
blocks over ``numba.get_num_threads()`` threads (set it with ``numba.set_num_threads``;
the default is ``numba.config.NUMBA_DEFAULT_NUM_THREADS``, the number of cores). Calls
with little work (below ``MIN_PARALLEL_WORK`` element-operations) run on the calling
thread alone. This is used instead of ``prange``
because a ``parallel=True`` kernel takes about 4 s longer to compile, each, and the
result is the same: every block is computed independently of the split.

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
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

M0 = np.uint64(0xD2511F53)
M1 = np.uint64(0xCD9E8D57)
W0 = np.uint64(0x9E3779B9)
W1 = np.uint64(0xBB67AE85)
MASK = np.uint64(0xFFFFFFFF)
SH32 = np.uint64(32)
#: Elements per cache-resident block (32 KiB of fp32); a multiple of 128 so that blocks
#: aligned to global element indices are also aligned to Philox blocks of either kind.
BLOCK = 8192

KIND_NORMAL16 = 0
KIND_RADEMACHER = 1

_OPTS = dict(cache=True, fastmath=False, error_model="numpy", boundscheck=False, nogil=True)


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
    return 3 if kind == KIND_NORMAL16 else 7


# ----------------------------------------------------------------- per-element mapping


@intrinsic
def _f32_bits(typingctx, x):
    """Bit pattern of a float32 as uint32 (a register bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def _f32_from_bits(typingctx, b):
    """float32 with the given uint32 bit pattern."""
    if b != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(b), codegen


@njit(inline="always")
def _round_bf16(y):
    """fp32 -> nearest-even bf16 (as fp32) exactly like torch's scalar conversion.

    ``bits + 0x7FFF + ((bits >> 16) & 1)``, keep the high half; NaN becomes 0x7FC0.
    """
    b = _f32_bits(y)
    r = (
        (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    ) << np.uint32(16)
    nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return _f32_from_bits(np.uint32(0x7FC00000) if nan else np.uint32(r))


@njit(**_OPTS)
def _bf16_round(x, n):
    """Round float32 values to bf16 in place (kept as fp32, low 16 bits zero)."""
    for i in range(n):
        x[i] = _round_bf16(x[i])


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


def _run(range_kernel, start: int, n: int, work: int, args: tuple) -> None:
    """Run ``range_kernel(start, g0, g_begin, g_end, *args)`` over the blocks of a slice.

    Blocks are BLOCK elements aligned to global element indices; block ``g`` covers
    global elements ``[(g0 + g) * BLOCK, (g0 + g + 1) * BLOCK)`` clipped to the slice.
    The compiled kernels are serial and release the GIL, so blocks are handed out in
    contiguous chunks to ``numba.get_num_threads()`` threads (the calling thread works
    too). Every block's result is independent of the split, hence of the thread count.
    """
    if n <= 0:
        return
    g0 = start // BLOCK
    nb = (start + n + BLOCK - 1) // BLOCK - g0
    threads = min(numba.get_num_threads(), nb)
    if threads <= 1 or work < MIN_PARALLEL_WORK:
        range_kernel(start, g0, 0, nb, *args)
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
            range_kernel(start, g0, cuts[i], cuts[i + 1], *args)

    pool = _executor(threads - 1)
    futures = [pool.submit(worker) for _ in range(threads - 1)]
    try:
        worker()
    finally:
        for f in futures:
            f.result()


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


def _check_schedule(steps, coefs, decay):
    if (
        steps.ndim != 1
        or coefs.ndim != 2
        or decay.ndim != 1
        or not steps.shape[0] == coefs.shape[0] == decay.shape[0]
    ):
        raise ValueError("steps [T], coefs [T, n_directions] and decay [T] must agree")


# ------------------------------------------------------------------------------ z_fill


@njit(**_OPTS)
def _z_fill_range(start, g0, gb, ge, table, out, step, lane, k0, k1, kind):
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
def _rounding_range(start, g0, gb, ge, out, step, lane, k0, k1):
    n = out.shape[0]
    words = np.empty(4 * (BLOCK // 4 + 1), dtype=np.uint32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n, g0, g)
        b_first, nblk, off = _span(start + lo, start + hi, 2)
        _philox_words(words, b_first, nblk, step, lane, k0, k1)
        ws = words[off : off + hi - lo]
        o = out[lo:hi]
        for i in range(hi - lo):
            o[i] = ws[i] >> np.uint32(8)


def rounding_bits_fill(out, start, step, lane, k0, k1):
    """out[i] = (Philox word for element start+i) >> 8, one word per element (int64 out)."""
    n = out.shape[0]
    _run(_rounding_range, int(start), n, n, (out, int(step), int(lane), int(k0), int(k1)))


# ------------------------------------------------------------------------- replay_fp32


@njit(**_OPTS)
def _replay_fp32_range(start, g0, gb, ge, table, theta, k0, k1, steps, coefs, decay, kind):
    n_all = theta.shape[0]
    sh = _shift(kind)
    words = np.empty(4 * (BLOCK // 8 + 1), dtype=np.uint32)
    for g in range(gb, ge):
        lo, hi = _bounds(start, n_all, g0, g)
        b_first, nblk, off = _span(start + lo, start + hi, sh)
        x = theta[lo:hi]
        n = hi - lo
        for t in range(steps.shape[0]):
            m = np.float32(decay[t])
            if m != np.float32(1.0):
                _scale(x, n, m)
            for j in range(coefs.shape[1]):
                c = np.float32(coefs[t, j])
                if c == np.float32(0.0):
                    continue
                _philox_words(words, b_first, nblk, steps[t], j, k0, k1)
                _sub_z(table, words, off, x, n, c, kind)


def replay_fp32(table, theta, start, k0, k1, steps, coefs, decay, kind):
    """Apply steps to an fp32 slice in place, block-resident.

    Per element and step t: ``x = x * decay[t]`` (if decay[t] != 1), then for each
    direction j with ``coefs[t, j] != 0``: ``x = x - coefs[t, j] * z_tj`` (exact product,
    one rounding), z_tj from counter (step=steps[t], lane=j).

    Args:
        table: float32 [65536] normal16 table.
        theta: float32 [n] elements [start, start + n) of one parameter, updated in place.
        steps: int64 [T]; coefs: float32 [T, n_directions]; decay: float32 [T].
        kind: 0 = normal16, 1 = rademacher.
    """
    _check_schedule(steps, coefs, decay)
    n = theta.shape[0]
    _run(
        _replay_fp32_range,
        int(start),
        n,
        n * max(1, coefs.size),
        (table, theta, int(k0), int(k1), steps, coefs, decay, _check_kind(kind)),
    )


# ------------------------------------------------------------------------- replay_bf16


@njit(**_OPTS)
def _replay_bf16_range(start, g0, gb, ge, table, theta_u16, k0, k1, steps, coefs, decay, kind):
    n_all = theta_u16.shape[0]
    sh = _shift(kind)
    words = np.empty(4 * (BLOCK // 8 + 1), dtype=np.uint32)
    x = np.empty(BLOCK, dtype=np.float32)
    ndir = coefs.shape[1]
    for g in range(gb, ge):
        lo, hi = _bounds(start, n_all, g0, g)
        b_first, nblk, off = _span(start + lo, start + hi, sh)
        n = hi - lo
        src = theta_u16[lo:hi]
        for i in range(n):
            x[i] = _f32_from_bits(np.uint32(np.uint32(src[i]) << np.uint32(16)))
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
            if changed:  # the stored weight is bf16 after every step
                _bf16_round(x, n)
        for i in range(n):
            src[i] = np.uint16(_f32_bits(x[i]) >> np.uint32(16))


def replay_bf16(table, theta_u16, start, k0, k1, steps, coefs, decay, kind):
    """Like :func:`replay_fp32` for a bfloat16 slice given as its uint16 bit view.

    Per element and step: ``y = fp32(x)`` (exact), ``y = fl32(y * decay[t])`` if
    decay[t] != 1, ``y = fl32(y - c_j * z_j)`` for each nonzero c_j, then
    ``x = bf16(y)`` (round to nearest even, NaN -> 0x7FC0), once per step; a step that
    changes nothing (decay 1 and all coefficients 0) leaves x untouched. Block-resident:
    the fp32 working copy of a block lives in cache across all steps.
    """
    _check_schedule(steps, coefs, decay)
    n = theta_u16.shape[0]
    _run(
        _replay_bf16_range,
        int(start),
        n,
        n * max(1, coefs.size),
        (table, theta_u16, int(k0), int(k1), steps, coefs, decay, _check_kind(kind)),
    )
