"""Forward passes at theta + eps*z or theta - eps*z that never write to theta.

The official MeZO code perturbs weights in place (+eps, -2 eps, +eps), which does not
restore them in floating point. Here every module that owns trainable parameters builds
its perturbed weights on the fly from the original (untouched) tensors, uses them and
drops them: extra memory is one layer's weights at a time (large matrices in row chunks,
embeddings by gathered rows), so training stays at inference-level memory. The perturbed
weights are written into scratch buffers reused from layer to layer (one per nesting
depth, per dtype and device): no allocation, no fresh pages per layer and pass. Each sign
is its own forward pass over the batch, so activations are those of an inference pass too.

How it hooks in: the perturbation wraps the *innermost* forward of each owning module,
for the duration of a :meth:`Perturber.perturbed` block only. A module without hooks
gets an instance-level ``forward`` that calls the previous one (any instance-level
forward already there is kept and restored exactly). A module under an accelerate hook
(``_hf_hook``, with the module's own forward in ``_old_forward``) gets the wrapper around
``_old_forward``, so it runs after accelerate has brought the weights to the execution
device and before they are offloaded again. torch forward hooks (pre and post) keep
running outside, untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.core.stream import param_key
from mezo_ckpt.core.update import perturbed_copy, perturbed_rows

#: Parameters larger than this are perturbed in row chunks (Linear) or rows (Embedding).
CHUNK_ELEMENTS = 1 << 20
#: accelerate keeps the module's own forward here when it adds a hook.
_ACCELERATE_INNER = "_old_forward"


@dataclass(frozen=True)
class _State:
    step: int
    lane: int
    scale: float  # +eps or -eps


def _detach_from(result, buffers: list[torch.Tensor]):
    """``result``, with any top-level tensor that shares memory with a scratch buffer
    copied out (a module returning a view of its weight must not see it overwritten)."""
    ptrs = {b.untyped_storage().data_ptr() for b in buffers}

    def fix(t):
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in ptrs:
            return t.clone()
        return t

    if isinstance(result, torch.Tensor):
        return fix(result)
    if isinstance(result, tuple) and not hasattr(result, "_fields"):
        return tuple(fix(t) for t in result)
    if isinstance(result, list):
        return [fix(t) for t in result]
    return result


class Perturber:
    """Perturbed forwards for the modules that own trainable parameters.

    Args:
        model: the model (its parameters are never modified by this class).
        trainable: canonical names of the parameters to perturb.
        seed: run seed (parameter keys come from it and the canonical names).
        kind: z kind.
        eps: perturbation scale.
    """

    def __init__(
        self, model: torch.nn.Module, trainable: Sequence[str], seed: int, kind: str, eps: float
    ) -> None:
        self.model = model
        self.kind = kind
        self.eps = float(eps)
        params = canonical_parameters(model)
        name_of = {id(p): n for n, p in params.items()}
        wanted = set(trainable)
        self.keys = {n: param_key(seed, n) for n in trainable}
        self._owned: list[tuple[torch.nn.Module, dict[str, str]]] = []
        seen: set[int] = set()
        for mod in model.modules():
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            own = {
                attr: name_of[id(p)]
                for attr, p in mod._parameters.items()
                if p is not None and name_of.get(id(p)) in wanted
            }
            if own:
                self._owned.append((mod, own))
        self._state: _State | None = None
        #: (dtype, device, depth) -> reused buffer; depth = how many perturbed module
        #: calls are open (a module whose forward calls another owning module)
        self._scratch: dict[tuple, torch.Tensor] = {}
        self._depth = 0

    @property
    def active(self) -> bool:
        return self._state is not None

    def _buffer(self, like: torch.Tensor, numel: int, slot: int) -> torch.Tensor:
        """A contiguous scratch tensor of ``numel`` elements (``like``'s dtype/device)."""
        k = (like.dtype, like.device, self._depth, slot)
        buf = self._scratch.get(k)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._scratch[k] = buf
        return buf[:numel]

    def release(self) -> None:
        """Drop the scratch buffers (they are rebuilt on the next perturbed forward)."""
        self._scratch.clear()

    # ------------------------------------------------------------------ perturbed weights
    def _copy(
        self,
        p: torch.Tensor,
        name: str,
        start: int = 0,
        count: int | None = None,
        slot: int | None = None,
    ):
        """Elements [start, start + count) of ``p`` (flattened) plus scale * z: in scratch
        buffer ``slot`` when given (valid until the next copy into that slot at this
        depth), else a new tensor."""
        st = self._state
        assert st is not None
        flat = p.detach().reshape(-1)
        w = flat[start:] if count is None else flat[start : start + count]
        key = self.keys[name]
        out = None if slot is None else self._buffer(w, w.numel(), slot)
        return perturbed_copy(
            w,
            key,
            st.step,
            st.lane,
            st.scale,
            kind=self.kind,
            start=start,
            out=out,
            parallel=False,  # torch's threads are busy between layers: faster serial
        )

    def rows(self, p: torch.Tensor, name: str | None, rows: torch.Tensor) -> torch.Tensor:
        """Rows of a 2-D parameter as the current forward sees them: perturbed inside a
        :meth:`perturbed` block when ``name`` is trainable, the stored rows otherwise."""
        st = self._state
        if st is None or name not in self.keys:
            return p.detach()[rows.to(p.device)]
        key = self.keys[name]
        rows = rows.to(p.device)  # on a GPU the Triton kernel reads the rows in place
        return perturbed_rows(
            p, rows, key, st.step, st.lane, st.scale, kind=self.kind, parallel=False
        )

    def name_of(self, module: torch.nn.Module, attr: str = "weight") -> str | None:
        """Canonical name of ``module.<attr>`` if it is trainable."""
        for mod, own in self._owned:
            if mod is module:
                return own.get(attr)
        return None

    # ------------------------------------------------------------------ forwards
    def _generic(self, mod, own: dict[str, str], inner: Callable, args, kwargs):
        """Swap perturbed tensors into the module for one call, then restore."""
        saved = {attr: mod._parameters[attr] for attr in own}
        buffers = []
        try:
            for slot, (attr, name) in enumerate(own.items()):
                t = self._copy(saved[attr], name, slot=slot).view_as(saved[attr])
                buffers.append(t)
                mod._parameters[attr] = t
            self._depth += 1
            try:
                result = inner(*args, **kwargs)
            finally:
                self._depth -= 1
            return _detach_from(result, buffers)
        finally:
            for attr, p in saved.items():
                mod._parameters[attr] = p

    def _linear_chunked(self, mod: torch.nn.Linear, own: dict[str, str], x: torch.Tensor):
        """y = x W^T + b, perturbing W in row chunks (bounded extra memory)."""
        w = mod.weight
        n_out, n_in = w.shape
        out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
        bias = mod.bias
        if bias is not None and "bias" in own:
            bias = self._copy(bias, own["bias"])
        rows = max(1, CHUNK_ELEMENTS // n_in)
        for r0 in range(0, n_out, rows):
            r1 = min(n_out, r0 + rows)
            if "weight" in own:
                wc = self._copy(w, own["weight"], r0 * n_in, (r1 - r0) * n_in, slot=0)
                wc = wc.view(r1 - r0, n_in)
            else:
                wc = w[r0:r1]
            out[..., r0:r1] = F.linear(x, wc, None if bias is None else bias[r0:r1])
        return out

    def _embedding_rows(self, mod: torch.nn.Embedding, name: str, inner: Callable, ids):
        """Look up perturbed rows only: z for row r covers elements [r*D, (r+1)*D). The
        module's own forward runs on a weight of just those rows (re-indexed), so an
        embedding subclass that scales or transforms its rows (Gemma's scaled embedding)
        computes what it computes on the whole perturbed table."""
        uniq, inverse = torch.unique(ids, return_inverse=True)
        rows = self.rows(mod.weight, name, uniq)
        if type(mod) is torch.nn.Embedding:
            return F.embedding(inverse, rows)
        saved, padding = mod._parameters["weight"], mod.padding_idx
        try:
            mod._parameters["weight"] = rows
            mod.padding_idx = None  # a forward-only lookup: padding_idx only shapes gradients
            self._depth += 1
            try:
                return _detach_from(inner(inverse), [rows])
            finally:
                self._depth -= 1
        finally:
            mod._parameters["weight"], mod.padding_idx = saved, padding

    def _wrap(self, mod: torch.nn.Module, own: dict[str, str], inner: Callable) -> Callable:
        perturber = self

        def forward(*args, **kwargs):
            if perturber._state is None:
                return inner(*args, **kwargs)
            first = mod._parameters[next(iter(own))]
            big = first is not None and first.numel() > CHUNK_ELEMENTS
            simple = not kwargs and len(args) == 1
            if big and simple and isinstance(mod, torch.nn.Embedding) and "weight" in own:
                return perturber._embedding_rows(mod, own["weight"], inner, args[0])
            if big and simple and type(mod) is torch.nn.Linear and "weight" in own:
                return perturber._linear_chunked(mod, own, args[0])
            return perturber._generic(mod, own, inner, args, kwargs)

        return forward

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        restore: list[tuple[torch.nn.Module, str, bool, object]] = []
        try:
            for mod, own in self._owned:
                attr = "forward"
                if hasattr(mod, "_hf_hook") and _ACCELERATE_INNER in mod.__dict__:
                    attr = _ACCELERATE_INNER
                had = attr in mod.__dict__
                previous = mod.__dict__.get(attr)
                inner = getattr(mod, attr)
                restore.append((mod, attr, had, previous))
                mod.__dict__[attr] = self._wrap(mod, own, inner)
            yield
        finally:
            for mod, attr, had, previous in reversed(restore):
                if had:
                    mod.__dict__[attr] = previous
                else:
                    mod.__dict__.pop(attr, None)

    @contextlib.contextmanager
    def perturbed(self, step: int, lane: int, sign: int) -> Iterator[None]:
        """Within this block the model computes at theta + sign * eps * z(step, lane)."""
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        if self._state is not None:
            raise RuntimeError("perturbed() blocks do not nest")
        with self._installed():
            self._state = _State(step, lane, sign * self.eps)
            try:
                yield
            finally:
                self._state = None
