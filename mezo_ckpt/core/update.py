"""The update rule: one exactly specified per-element update, shared by training and replay.

For one step t with decay multiplier ``m``, coefficients ``c_j`` (one per direction j) and,
in a run with a momentum window of W steps, history coefficients ``h_kj`` (direction j of
step t-k, k = 1..W), each element ``x`` of a trainable tensor becomes::

    y = fp32(x)                      # exact widening
    if m != 1: y = fl32(y * m)       # weight decay, one rounding
    for j: y = fl32(y - c_j * z_tj)  # c_j * z_j is exact, so one rounding, fused or not
    for k, j: y = fl32(y - h_kj * z_(t-k)j)   # history terms (0 and t-k < 0: skipped)
    x = round_to_dtype(y)            # identity for fp32; nearest-even or stochastic otherwise

``c_j`` has at most 13 significant bits and ``z_j`` is a multiple of 1/256 below 8 in
magnitude (11 significant bits), so the product fits in fp32's 24-bit significand: the
result is the same whether the hardware fuses multiply and add or not.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mezo_ckpt.core.backends import compiled_kernels, triton_kernels, use_compiled
from mezo_ckpt.core.spec import (
    CANONICAL_NAN,
    COEF_MAX,
    COEF_MIN,
    COEF_SIGNIFICANT_BITS,
    KIND_CODES,
    ROUNDING_MODES,
    normal16_table_numpy,
)
from mezo_ckpt.core.stream import generate_rounding_bits, generate_z, param_key

#: Elements per chunk on the generic (non-fused) path.
CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class UpdateBatch:
    """Consecutive applied steps, as stored (no schedule is ever re-evaluated).

    Attributes:
        steps: int64 [T], 0-based step indices (the Philox counter's step word);
            skipped steps are simply absent.
        coefs: float32 [T, n], one coefficient per direction (<= 13 significant bits).
        decay: float32 [T], weight-decay multipliers ``1 - lr * wd`` (1.0 means none).
        history: float32 [T, W, n] or None: ``history[t, k-1, j]`` applies direction j of
            step ``steps[t] - k`` at step ``steps[t]`` (a momentum window of W steps).
    """

    steps: np.ndarray
    coefs: np.ndarray
    decay: np.ndarray
    history: np.ndarray | None = None

    @classmethod
    def single(
        cls,
        step: int,
        coefs: Sequence[float],
        decay: float = 1.0,
        history: Sequence[Sequence[float]] | None = None,
    ) -> UpdateBatch:
        return cls(
            np.array([step], np.int64),
            np.array([list(coefs)], np.float32),
            np.array([decay], np.float32),
            None if history is None else np.array([history], np.float32).reshape(1, -1, len(coefs)),
        )

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    @property
    def window(self) -> int:
        """W: how many earlier steps each step may re-apply (0 without history)."""
        return 0 if self.history is None else int(self.history.shape[1])

    def has_history(self) -> bool:
        """Whether any step applies an earlier step's direction."""
        return self.history is not None and bool(np.any(self.history != 0))

    def select(self, mask: np.ndarray) -> UpdateBatch:
        """The steps where ``mask`` is true (their history terms with them)."""
        return UpdateBatch(
            self.steps[mask],
            self.coefs[mask],
            self.decay[mask],
            None if self.history is None else self.history[mask],
        )

    def without_decay(self) -> UpdateBatch:
        """The same steps with every decay multiplier 1 (parameters outside decay_params)."""
        return dataclasses.replace(self, decay=np.ones_like(self.decay))

    def history_array(self) -> np.ndarray:
        """``history`` as a contiguous float32 [T, W, n] array ([T, 0, n] without one)."""
        if self.history is None:
            return np.zeros((len(self), 0, self.coefs.shape[1]), np.float32)
        return np.ascontiguousarray(self.history, np.float32)


def to_fp32(x: float) -> float:
    """Round a Python float to the nearest fp32 value (ties to even)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def round_coefficient(x: float) -> float:
    """Round ``x`` to an fp32 value with at most 13 significant bits (ties to even).

    Values below COEF_MIN in magnitude flush to 0.

    Raises:
        ValueError: if x is not finite or too large (|x| >= COEF_MAX).
    """
    if not math.isfinite(x):
        raise ValueError(f"coefficient is not finite: {x}")
    if x == 0.0 or abs(x) < COEF_MIN:
        return 0.0
    if abs(x) >= COEF_MAX:
        raise ValueError(f"coefficient {x} is out of range (|c| < 2**100)")
    mant, exp = math.frexp(x)  # x = mant * 2**exp, 0.5 <= |mant| < 1, exact
    scaled = mant * 2.0**COEF_SIGNIFICANT_BITS  # exact
    r = round(scaled)  # Python rounds half to even
    c = math.ldexp(float(r), exp - COEF_SIGNIFICANT_BITS)
    if abs(c) >= COEF_MAX:
        raise ValueError(f"coefficient {x} is out of range (|c| < 2**100)")
    return c


def is_valid_coefficient(c: float) -> bool:
    """Whether ``c`` could have come out of :func:`round_coefficient`."""
    if not math.isfinite(c):
        return False
    if c == 0.0:
        return True
    if not COEF_MIN <= abs(c) < COEF_MAX:
        return False
    mant, _ = math.frexp(c)
    return (mant * 2.0**COEF_SIGNIFICANT_BITS).is_integer()


def decay_multiplier(lr: float, weight_decay: float) -> float:
    """fp32(1 - lr * weight_decay), computed with basic float64 operations only."""
    if weight_decay == 0.0 or lr == 0.0:
        return 1.0
    m = to_fp32(1.0 - lr * weight_decay)
    if not 0.0 < m <= 1.0:
        raise ValueError(f"decay multiplier 1 - lr*wd = {m} is outside (0, 1]")
    return m


def stochastic_round(y: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round fp32 ``y`` to ``dtype`` stochastically with 24-bit integers ``bits``.

    With ``a`` = y rounded toward zero in ``dtype`` and ``b`` the next value away from
    zero, the result is ``b`` iff ``bits < (|y| - |a|) / (|b| - |a|) * 2**24``, evaluated
    exactly in float64; otherwise ``a``. Non-finite values round to nearest.
    """
    near = y.to(dtype)
    yd = y.double()
    over = near.double().abs() > yd.abs()
    a = torch.where(over, torch.nextafter(near, torch.zeros_like(near)), near)
    away = torch.where(yd < 0, torch.full_like(a, -math.inf), torch.full_like(a, math.inf))
    b = torch.nextafter(a, away)
    ad = a.double().abs()
    gap = b.double().abs() - ad
    frac = (yd.abs() - ad) / gap * 2.0**24
    up = bits.to(torch.float64) < frac
    out = torch.where(up, b, a)
    finite = torch.isfinite(y)
    return torch.where(finite, out, near)


def _canonicalize_nan(t: torch.Tensor) -> None:
    """Rewrite any NaN in a bf16/fp16 tensor to the canonical quiet NaN, in place."""
    nan = torch.isnan(t)
    if bool(nan.any()):
        bits = t.view(torch.int16)
        bits[nan] = CANONICAL_NAN[t.dtype] - (1 << 16 if CANONICAL_NAN[t.dtype] >= 1 << 15 else 0)


def _apply_generic(
    flat: torch.Tensor,
    key: tuple[int, int],
    start: int,
    batch: UpdateBatch,
    kind: str,
    rounding: str,
) -> None:
    """Reference path: chunked, any dtype, any device (z from the compiled kernel on CPU)."""
    n = flat.numel()
    dtype = flat.dtype
    for lo in range(0, n, CHUNK_ELEMENTS):
        hi = min(n, lo + CHUNK_ELEMENTS)
        y = flat[lo:hi].to(torch.float32, copy=True)
        hist = batch.history_array().tolist()
        for t, (step, coefs, m) in enumerate(
            zip(batch.steps.tolist(), batch.coefs.tolist(), batch.decay.tolist())
        ):
            if m != 1.0:
                y = y * m
            terms = [(step, j, c) for j, c in enumerate(coefs)]
            terms += [
                (step - k - 1, j, c) for k, row in enumerate(hist[t]) for j, c in enumerate(row)
            ]
            for s, j, c in terms:
                if c == 0.0 or s < 0:
                    continue
                z = generate_z(key, s, j, start + lo, hi - lo, kind, flat.device)
                y = y - z * c
            if dtype != torch.float32:
                if rounding == "stochastic":
                    bits = generate_rounding_bits(key, step, 0, start + lo, hi - lo, flat.device)
                    y = stochastic_round(y, bits, dtype).to(torch.float32)
                else:
                    y = y.to(dtype).to(torch.float32)
        flat[lo:hi].copy_(y.to(dtype))
        if dtype != torch.float32:  # one NaN encoding everywhere (torch's varies by CPU path)
            _canonicalize_nan(flat[lo:hi])


#: Storage codes of the compiled kernels by dtype, and the integer view of the bits.
_STORAGE = {
    torch.float32: (0, torch.int32, np.uint32),
    torch.bfloat16: (1, torch.int16, np.uint16),
    torch.float16: (2, torch.int16, np.uint16),
}
_ROUNDING_CODES = {"nearest": 0, "stochastic": 1}
#: Where the update rule and perturbed copies run: "auto" (Triton on CUDA, numba on CPU,
#: eager torch otherwise), or one of them by name ("reference" is the eager torch code).
BACKENDS = ("auto", "compiled", "reference", "triton")


def _bits(t: torch.Tensor) -> np.ndarray:
    """The raw bit pattern of a contiguous CPU float tensor as an unsigned numpy view."""
    _, view, unsigned = _STORAGE[t.dtype]
    return t.detach().view(view).numpy().view(unsigned)


def _compiled_ok(t: torch.Tensor) -> bool:
    return t.dtype in _STORAGE and use_compiled(t.device)


def _triton_for(t: torch.Tensor, backend: str):
    """The Triton kernels for ``t`` under ``backend``, or None.

    "auto" uses them for CUDA tensors; "triton" asks for them explicitly (also on CPU
    tensors under ``TRITON_INTERPRET=1``, which is how tests run them without a GPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if t.dtype not in _STORAGE or backend in ("reference", "compiled"):
        if backend == "triton":
            raise ValueError("the triton backend needs an fp32/bf16/fp16 tensor")
        return None
    if backend == "auto" and t.device.type != "cuda":
        return None  # CPU work never imports triton
    kernels = triton_kernels()
    if backend == "triton":
        if kernels is None:
            raise ValueError("the triton backend needs triton and a CUDA device")
        return kernels
    return kernels


def apply_updates(
    tensor: torch.Tensor,
    key: tuple[int, int],
    batch: UpdateBatch,
    *,
    kind: str,
    rounding: str = "nearest",
    start: int = 0,
    backend: str = "auto",
) -> None:
    """Apply consecutive step updates to a contiguous tensor (or slice), in place.

    Args:
        tensor: contiguous floating tensor holding elements ``[start, start + numel)`` of
            one parameter (flattened in row-major order).
        key: the parameter's Philox key (:func:`mezo_ckpt.core.stream.param_key`).
        batch: the steps to apply, in training order.
        kind: z kind ("normal16" or "rademacher").
        rounding: "nearest" or "stochastic" (matters for non-fp32 tensors only).
        start: flat index of ``tensor``'s first element within the parameter.
        backend: one of :data:`BACKENDS` ("auto": Triton for CUDA tensors, the numba kernel
            on CPU, eager torch otherwise).
    """
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {rounding!r}")
    if not tensor.is_contiguous():
        raise ValueError("apply_updates needs a contiguous tensor")
    if len(batch) == 0:
        return
    flat = tensor.view(-1)
    gpu = _triton_for(flat, backend)
    if gpu is not None and batch.has_history():
        if backend == "triton":
            raise ValueError("the Triton replay kernel has no history terms (momentum runs)")
        _apply_generic(flat, key, start, batch, kind, rounding)  # exact, z from Triton
        return
    if gpu is not None:
        gpu.replay(
            flat,
            start,
            key[0],
            key[1],
            batch.steps,
            batch.coefs,
            batch.decay,
            KIND_CODES[kind],
            _ROUNDING_CODES[rounding],
        )
        return
    fused = backend != "reference" and _compiled_ok(flat)
    if backend == "compiled" and not fused:
        raise ValueError("the compiled backend needs a CPU fp32/bf16/fp16 tensor and numba")
    if not fused:
        _apply_generic(flat, key, start, batch, kind, rounding)
        return
    kernels = compiled_kernels()
    assert kernels is not None
    kernels.replay(
        normal16_table_numpy(),
        _bits(flat),
        start,
        key[0],
        key[1],
        np.ascontiguousarray(batch.steps, np.int64),
        np.ascontiguousarray(batch.coefs, np.float32),
        np.ascontiguousarray(batch.decay, np.float32),
        KIND_CODES[kind],
        _STORAGE[flat.dtype][0],
        _ROUNDING_CODES[rounding],
        batch.history_array(),
    )


def perturbed_copy(
    w: torch.Tensor,
    key: tuple[int, int],
    step: int,
    lane: int,
    scale: float,
    *,
    kind: str,
    start: int = 0,
    backend: str = "auto",
    out: torch.Tensor | None = None,
    parallel: bool = True,
) -> torch.Tensor:
    """``round(w + scale * z)``: the perturbed weights of a forward pass.

    ``w`` holds elements ``[start, start + numel)`` of one parameter and is only read;
    z is direction ``lane`` of ``step``. Per element ``fl32(fl32(w) + fl32(scale * z))``
    rounded to ``w``'s dtype (nearest even), on every backend. ``out``: a contiguous
    tensor of ``w``'s dtype, device and size to write into (a reused scratch buffer; no
    allocation), else a new tensor. ``parallel=False``: the CPU kernel runs on the calling
    thread only (inside a forward pass; same bits).
    """
    src = w.detach().reshape(-1)
    if out is not None:
        if (
            out.dtype != src.dtype
            or out.device != src.device
            or out.numel() != src.numel()
            or not out.is_contiguous()
        ):
            raise ValueError("out must be a contiguous tensor of w's dtype, device and size")
        out = out.view(-1)
    gpu = _triton_for(src, backend)
    if gpu is not None:
        src = src.contiguous()
        out = torch.empty_like(src) if out is None else out
        gpu.perturb(src, out, start, step, lane, key[0], key[1], scale, KIND_CODES[kind])
        return out.view(w.shape)
    if backend != "reference" and _compiled_ok(src):
        src = src.contiguous()
        out = torch.empty_like(src) if out is None else out
        kernels = compiled_kernels()
        assert kernels is not None
        kernels.perturb(
            normal16_table_numpy(),
            _bits(src),
            _bits(out),
            start,
            step,
            lane,
            key[0],
            key[1],
            scale,
            KIND_CODES[kind],
            _STORAGE[src.dtype][0],
            parallel,
        )
        return out.view(w.shape)
    z = generate_z(key, step, lane, start, src.numel(), kind, src.device)
    got = (src.float() + z.mul_(scale)).to(w.dtype)
    if out is None:
        return got.view(w.shape)
    out.copy_(got)
    return out.view(w.shape)


def perturbed_rows(
    w: torch.Tensor,
    rows: torch.Tensor,
    key: tuple[int, int],
    step: int,
    lane: int,
    scale: float,
    *,
    kind: str,
    backend: str = "auto",
    parallel: bool = True,
) -> torch.Tensor:
    """Rows ``rows`` of a 2-D parameter, perturbed as :func:`perturbed_copy` would: a new
    ``[len(rows), dim]`` tensor (row ``r`` covers elements ``[r*dim, (r+1)*dim)``)."""
    dim = w.shape[1]
    src = w.detach()
    gpu = _triton_for(src, backend)
    if gpu is not None:
        out = torch.empty(len(rows), dim, dtype=src.dtype, device=src.device)
        gpu.perturb_rows(
            src.contiguous(),
            rows.to(device=src.device, dtype=torch.int64),
            out,
            step,
            lane,
            key[0],
            key[1],
            scale,
            KIND_CODES[kind],
        )
        return out
    if backend != "reference" and _compiled_ok(src) and src.is_contiguous():
        out = torch.empty(len(rows), dim, dtype=src.dtype)
        kernels = compiled_kernels()
        assert kernels is not None
        kernels.perturb_rows(
            normal16_table_numpy(),
            _bits(src.view(-1)),
            rows.to(torch.int64).numpy(),
            dim,
            _bits(out.view(-1)),
            step,
            lane,
            key[0],
            key[1],
            scale,
            KIND_CODES[kind],
            _STORAGE[src.dtype][0],
            parallel,
        )
        return out
    return (
        torch.stack(
            [
                perturbed_copy(src[r], key, step, lane, scale, kind=kind, start=r * dim)
                for r in rows.tolist()
            ]
        )
        if len(rows)
        else src[:0].clone()
    )


@dataclass(frozen=True)
class UpdateSpec:
    """Everything besides the records that decides how steps change the weights."""

    seed: int
    kind: str
    rounding: str
    trainable: tuple[str, ...]
    decay_params: frozenset[str]

    @classmethod
    def from_header(cls, header) -> UpdateSpec:
        """From a :class:`mezo_ckpt.trajectory.header.Header`."""
        return cls(
            seed=header.perturbation.seed,
            kind=header.perturbation.z,
            rounding=header.update.rounding,
            trainable=tuple(header.trainable),
            decay_params=frozenset(header.update.decay_params),
        )


def apply_to_tensors(
    tensors: Mapping[str, torch.Tensor],
    spec: UpdateSpec,
    batch: UpdateBatch,
    *,
    progress: Callable[[int], None] | None = None,
    backend: str = "auto",
) -> int:
    """Apply a batch of steps to every trainable tensor (canonical names), in place.

    Parameters outside ``spec.decay_params`` get the same steps without decay. This is
    the single entry point both the trainer (one step at a time) and replay (all steps
    at once) use.

    Returns:
        element-steps performed.
    """
    total = 0
    for name in spec.trainable:
        done = replay_tensor(tensors[name], name, spec, batch, backend=backend)
        total += done
        if progress is not None:
            progress(done)
    return total


def replay_tensor(
    tensor: torch.Tensor,
    name: str,
    spec: UpdateSpec,
    batch: UpdateBatch,
    *,
    backend: str = "auto",
) -> int:
    """Apply a batch of steps to one trainable tensor (canonical ``name``), in place.

    The one place that decides what a tensor receives: its Philox key from the name, the
    decay multipliers only for ``spec.decay_params``, the history terms of a momentum run
    always. Training, every replay path and diff call this.

    Returns:
        element-steps performed (history terms not counted).
    """
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    apply_updates(
        data,
        param_key(spec.seed, name),
        batch if name in spec.decay_params else batch.without_decay(),
        kind=spec.kind,
        rounding=spec.rounding,
        backend=backend,
    )
    return tensor.numel() * len(batch)
