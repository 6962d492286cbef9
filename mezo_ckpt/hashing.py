"""Canonical parameter names, the parameter manifest, and content fingerprints.

A parameter's canonical name is the lexicographically smallest of the names under which
the module tree exposes it, so tied weights (e.g. ``lm_head.weight`` and
``model.embed_tokens.weight``) form one parameter with one name, one key and one z.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

#: Bytes hashed per update when fingerprinting large tensors.
_HASH_CHUNK = 1 << 24


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a model, under its canonical name."""

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "shape": list(self.shape),
            "dtype": self.dtype,
        }


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ... (torch's name without the module prefix)."""
    return str(dtype).removeprefix("torch.")


def _alias_groups(module: torch.nn.Module) -> list[tuple[list[str], torch.nn.Parameter]]:
    """(sorted names, parameter) for each distinct parameter object."""
    groups: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        params[id(p)] = p
    return [(sorted(names), params[pid]) for pid, names in groups.items()]


def canonical_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Map canonical name -> parameter, one entry per distinct parameter, sorted by name."""
    return dict(sorted(((names[0], p) for names, p in _alias_groups(module)), key=lambda kv: kv[0]))


def parameter_manifest(module: torch.nn.Module) -> list[ParamInfo]:
    """Every parameter (trainable or not) with aliases, shape and dtype, sorted by name."""
    infos = [
        ParamInfo(names[0], tuple(names[1:]), tuple(p.shape), dtype_name(p.dtype))
        for names, p in _alias_groups(module)
    ]
    return sorted(infos, key=lambda i: i.name)


def manifest_sha256(manifest: Iterable[ParamInfo]) -> str:
    """sha256 (hex) of the canonical JSON of a manifest: names, shapes, dtypes, tying."""
    doc = [i.as_json() for i in manifest]
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> str:
    """Content fingerprint of named tensors: sha256 over, for each name in sorted order,
    ``name NUL dtype NUL shape NUL raw-little-endian-bytes``.

    Args:
        tensors: name -> tensor (any device; copied to CPU in chunks).
        names: subset to hash (default: all).
    """
    h = hashlib.sha256()
    for name in sorted(tensors if names is None else names):
        t = tensors[name].detach()
        h.update(name.encode("utf-8") + b"\x00")
        h.update(dtype_name(t.dtype).encode() + b"\x00")
        h.update(json.dumps(list(t.shape)).encode() + b"\x00")
        flat = t.reshape(-1)
        per = max(1, _HASH_CHUNK // max(1, t.element_size()))
        for lo in range(0, flat.numel(), per):
            chunk = flat[lo : lo + per].to("cpu").contiguous()
            h.update(chunk.view(torch.uint8).numpy())
    return h.hexdigest()


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """Streaming sha256 (hex) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
