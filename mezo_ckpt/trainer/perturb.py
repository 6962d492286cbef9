"""Forward passes at theta + eps*z and theta - eps*z that never write to theta.

The official MeZO code perturbs weights in place (+eps, -2 eps, +eps), which does not
restore them in floating point. Here every module that owns trainable parameters gets a
temporary forward that builds its perturbed weights on the fly from the original
(untouched) tensors, uses them, and drops them. Both signs run in one pass over a
doubled batch: the first half of the batch sees theta + eps*z, the second theta - eps*z,
so z is generated once per step for the perturbation. Extra memory is one layer's
weights at a time (large matrices are processed in row chunks, embeddings by gathered
rows), which keeps training at inference-level memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mezo_ckpt.hashing import canonical_parameters
from mezo_ckpt.stream import generate_z, param_key

#: Parameters larger than this are perturbed in row chunks (Linear) or rows (Embedding).
CHUNK_ELEMENTS = 1 << 20


@dataclass
class _State:
    step: int
    lane: int
    half: int  # examples per sign


class Perturber:
    """Installs perturbed forwards on the modules that own trainable parameters.

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
        self._owned: list[tuple[torch.nn.Module, list[tuple[str, str]]]] = []
        seen: set[int] = set()
        for mod in model.modules():
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            own = [
                (attr, name_of[id(p)])
                for attr, p in mod._parameters.items()
                if p is not None and name_of.get(id(p)) in wanted
            ]
            if own:
                self._owned.append((mod, own))
        self._state: _State | None = None

    # ------------------------------------------------------------------ z and weights
    def _z(self, name: str, start: int, count: int, device: torch.device) -> torch.Tensor:
        st = self._state
        assert st is not None
        z = generate_z(self.keys[name], st.step, st.lane, start, count, self.kind)
        return z.to(device)

    def _pair(
        self, p: torch.Tensor, name: str, start: int = 0, rows: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(W+, W-) for elements [start, start + count) of ``p`` flattened (all by default)."""
        flat = p.detach().reshape(-1)
        count = flat.numel() - start if rows is None else rows
        w = flat[start : start + count].float()
        ez = self._z(name, start, count, p.device).mul_(self.eps)
        return (w + ez).to(p.dtype), (w - ez).to(p.dtype)

    # ------------------------------------------------------------------ forwards
    def _split(self, value, half: int, which: int):
        """The + (which=0) or - half of a batch-major tensor.

        Leading dims that are a multiple of the doubled batch (e.g. OPT flattens
        [batch, seq] into rows) split in the middle; anything else is shared.
        """
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] % (2 * half) == 0:
            mid = value.shape[0] // 2
            return value[:mid] if which == 0 else value[mid:]
        return value

    def _generic(self, mod, own, orig, args, kwargs):
        """Swap perturbed tensors into the module, run each half, restore."""
        st = self._state
        assert st is not None
        pairs = {attr: self._pair(mod._parameters[attr], name) for attr, name in own}
        saved = {attr: mod._parameters[attr] for attr, _ in own}
        outs = []
        try:
            for which in (0, 1):
                for attr, (wp, wm) in pairs.items():
                    mod._parameters[attr] = (wp if which == 0 else wm).view_as(saved[attr])
                a = tuple(self._split(x, st.half, which) for x in args)
                k = {kk: self._split(v, st.half, which) for kk, v in kwargs.items()}
                outs.append(orig(mod, *a, **k))
        finally:
            for attr, p in saved.items():
                mod._parameters[attr] = p
        return _merge(outs[0], outs[1], st.half)

    def _linear_chunked(self, mod: torch.nn.Linear, own, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b for each half, perturbing W in row chunks."""
        st = self._state
        assert st is not None
        names = dict(own)
        w = mod.weight
        n_out, n_in = w.shape
        halves = [self._split(x, st.half, 0), self._split(x, st.half, 1)]
        outs = [torch.empty(*h.shape[:-1], n_out, dtype=x.dtype, device=x.device) for h in halves]
        bias = None
        if mod.bias is not None:
            bias = self._pair(mod.bias, names["bias"]) if "bias" in names else (mod.bias, mod.bias)
        rows = max(1, CHUNK_ELEMENTS // n_in)
        for r0 in range(0, n_out, rows):
            r1 = min(n_out, r0 + rows)
            if "weight" in names:
                wp, wm = self._pair(w, names["weight"], r0 * n_in, (r1 - r0) * n_in)
                ws = (wp.view(r1 - r0, n_in), wm.view(r1 - r0, n_in))
            else:
                ws = (w[r0:r1], w[r0:r1])
            for i in (0, 1):
                b = None if bias is None else bias[i][r0:r1]
                outs[i][..., r0:r1] = F.linear(halves[i], ws[i], b)
        return _merge(outs[0], outs[1], st.half)

    def _embedding_rows(
        self, mod: torch.nn.Embedding, name: str, ids: torch.Tensor
    ) -> torch.Tensor:
        """Look up perturbed rows only: z for row r covers elements [r*D, (r+1)*D)."""
        st = self._state
        assert st is not None
        dim = mod.weight.shape[1]
        outs = []
        for which in (0, 1):
            part = self._split(ids, st.half, which)
            uniq, inverse = torch.unique(part, return_inverse=True)
            w = mod.weight.detach()[uniq].float()
            z = torch.stack([self._z(name, int(r) * dim, dim, w.device) for r in uniq.tolist()])
            sign = 1.0 if which == 0 else -1.0
            rows = (w + sign * self.eps * z).to(mod.weight.dtype)
            outs.append(F.embedding(inverse, rows))
        return _merge(outs[0], outs[1], st.half)

    def _make_forward(self, mod: torch.nn.Module, own: list[tuple[str, str]]):
        orig = type(mod).forward
        perturber = self

        def forward(*args, **kwargs):
            if perturber._state is None:
                return orig(mod, *args, **kwargs)
            attrs = dict(own)
            big = mod._parameters[own[0][0]].numel() > CHUNK_ELEMENTS
            if big and type(mod) is torch.nn.Embedding and not kwargs and len(args) == 1:
                return perturber._embedding_rows(mod, attrs["weight"], args[0])
            if (
                big
                and type(mod) is torch.nn.Linear
                and not kwargs
                and len(args) == 1
                and "weight" in attrs
            ):
                return perturber._linear_chunked(mod, own, args[0])
            return perturber._generic(mod, own, orig, args, kwargs)

        return forward

    @contextlib.contextmanager
    def perturbed(self, step: int, lane: int, half: int) -> Iterator[None]:
        """Within this block, a forward on a batch of 2*half rows runs the first half at
        theta + eps*z(step, lane) and the second half at theta - eps*z(step, lane)."""
        for mod, own in self._owned:
            mod.forward = self._make_forward(mod, own)
        self._state = _State(step, lane, half)
        try:
            yield
        finally:
            self._state = None
            for mod, _ in self._owned:
                with contextlib.suppress(AttributeError):
                    del mod.forward


def _merge(a, b, half: int):
    """Concatenate the two halves' outputs along the batch dim (broadcast rows expand)."""
    if isinstance(a, torch.Tensor):
        if a.dim() > 0 and a.shape[0] == 1 and half != 1:
            a = a.expand(half, *a.shape[1:])
            b = b.expand(half, *b.shape[1:])
        return torch.cat([a, b], dim=0)
    if isinstance(a, tuple):
        return tuple(_merge(x, y, half) for x, y in zip(a, b))
    if a is None:
        return None
    raise TypeError(f"cannot merge perturbed outputs of type {type(a).__name__}")
