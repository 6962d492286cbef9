"""Forward passes at theta + eps*z or theta - eps*z that never write to theta.

The official MeZO code perturbs weights in place (+eps, -2 eps, +eps), which does not
restore them in floating point. Here every module that owns trainable parameters gets a
temporary forward that builds its perturbed weights on the fly from the original
(untouched) tensors, uses them, and drops them. Extra memory is one layer's weights at a
time (large matrices in row chunks, embeddings by gathered rows): training stays at
inference-level memory. Each sign is its own forward pass over the batch, so activations
are those of an ordinary inference pass too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mezo_ckpt.hashing import canonical_parameters
from mezo_ckpt.stream import (
    KIND_CODES,
    compiled_available,
    generate_z,
    normal16_table_numpy,
    param_key,
)

#: Parameters larger than this are perturbed in row chunks (Linear) or rows (Embedding).
CHUNK_ELEMENTS = 1 << 20


@dataclass
class _State:
    step: int
    lane: int
    scale: float  # +eps or -eps


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

    # ------------------------------------------------------------------ perturbed weights
    def _perturbed(
        self, p: torch.Tensor, name: str, start: int = 0, count: int | None = None
    ) -> torch.Tensor:
        """Elements [start, start + count) of ``p`` (flattened) plus scale * z, as a new
        tensor; ``p`` itself is only read."""
        st = self._state
        assert st is not None
        flat = p.detach().reshape(-1)
        count = flat.numel() - start if count is None else count
        w = flat[start : start + count]
        key = self.keys[name]
        if w.dtype == torch.float32 and w.device.type == "cpu" and compiled_available():
            from mezo_ckpt import _kernels

            out = w.clone()
            coefs = np.zeros((1, st.lane + 1), np.float32)
            coefs[0, st.lane] = -st.scale  # the kernel computes x - c * z
            _kernels.replay_fp32(
                normal16_table_numpy(),
                out.numpy(),
                start,
                key[0],
                key[1],
                np.array([st.step], np.int64),
                coefs,
                np.ones(1, np.float32),
                KIND_CODES[self.kind],
            )
            return out
        z = generate_z(key, st.step, st.lane, start, count, self.kind).to(w.device)
        return (w.float() + z.mul_(st.scale)).to(w.dtype)

    # ------------------------------------------------------------------ forwards
    def _generic(self, mod, own, orig, args, kwargs):
        """Swap perturbed tensors into the module for one call, then restore."""
        saved = {attr: mod._parameters[attr] for attr, _ in own}
        try:
            for attr, name in own:
                mod._parameters[attr] = self._perturbed(saved[attr], name).view_as(saved[attr])
            return orig(mod, *args, **kwargs)
        finally:
            for attr, p in saved.items():
                mod._parameters[attr] = p

    def _linear_chunked(self, mod: torch.nn.Linear, own, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b, perturbing W in row chunks (bounded extra memory)."""
        names = dict(own)
        w = mod.weight
        n_out, n_in = w.shape
        out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
        bias = mod.bias
        if bias is not None and "bias" in names:
            bias = self._perturbed(bias, names["bias"])
        rows = max(1, CHUNK_ELEMENTS // n_in)
        for r0 in range(0, n_out, rows):
            r1 = min(n_out, r0 + rows)
            if "weight" in names:
                wc = self._perturbed(w, names["weight"], r0 * n_in, (r1 - r0) * n_in)
                wc = wc.view(r1 - r0, n_in)
            else:
                wc = w[r0:r1]
            out[..., r0:r1] = F.linear(x, wc, None if bias is None else bias[r0:r1])
        return out

    def _embedding_rows(
        self, mod: torch.nn.Embedding, name: str, ids: torch.Tensor
    ) -> torch.Tensor:
        """Look up perturbed rows only: z for row r covers elements [r*D, (r+1)*D)."""
        dim = mod.weight.shape[1]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        rows = torch.stack(
            [self._perturbed(mod.weight, name, int(r) * dim, dim) for r in uniq.tolist()]
        )
        return F.embedding(inverse, rows)

    def _make_forward(self, mod: torch.nn.Module, own: list[tuple[str, str]]):
        orig = type(mod).forward
        perturber = self

        def forward(*args, **kwargs):
            if perturber._state is None:
                return orig(mod, *args, **kwargs)
            attrs = dict(own)
            big = mod._parameters[own[0][0]].numel() > CHUNK_ELEMENTS
            simple = not kwargs and len(args) == 1
            if big and simple and type(mod) is torch.nn.Embedding:
                return perturber._embedding_rows(mod, attrs["weight"], args[0])
            if big and simple and type(mod) is torch.nn.Linear and "weight" in attrs:
                return perturber._linear_chunked(mod, own, args[0])
            return perturber._generic(mod, own, orig, args, kwargs)

        return forward

    @contextlib.contextmanager
    def perturbed(self, step: int, lane: int, sign: int) -> Iterator[None]:
        """Within this block the model computes at theta + sign * eps * z(step, lane)."""
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        for mod, own in self._owned:
            mod.forward = self._make_forward(mod, own)
        self._state = _State(step, lane, sign * self.eps)
        try:
            yield
        finally:
            self._state = None
            for mod, _ in self._owned:
                with contextlib.suppress(AttributeError):
                    del mod.forward
