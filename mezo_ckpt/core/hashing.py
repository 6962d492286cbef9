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
        feed_named(h, name, tensors[name])
    return h.hexdigest()


def feed_named(h, name: str, t) -> None:
    """Feed one named tensor to a hash as every fingerprint lays it out:
    ``name NUL dtype NUL shape NUL raw-little-endian-bytes``."""
    t = (t() if callable(t) else t).detach()
    h.update(name.encode("utf-8") + b"\x00")
    h.update(dtype_name(t.dtype).encode() + b"\x00")
    h.update(json.dumps(list(t.shape)).encode() + b"\x00")
    _feed(h, t)


class Fingerprint:
    """:func:`tensors_sha256` of ``names``, fed one tensor at a time in sorted order (a
    rebuild that streams tensors never holds them all)."""

    def __init__(self, names) -> None:
        self._todo = sorted(names)
        self._at = 0
        self._h = hashlib.sha256()

    def wants(self, name: str) -> bool:
        return self._at < len(self._todo) and self._todo[self._at] == name

    def add(self, name: str, t) -> None:
        if not self.wants(name):
            raise ValueError(f"fingerprint fed {name!r} out of sorted order")
        feed_named(self._h, name, t)
        self._at += 1

    def hexdigest(self) -> str | None:
        """The fingerprint, or None when a name was never fed (missing from the base)."""
        return self._h.hexdigest() if self._at == len(self._todo) else None


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """Streaming sha256 (hex) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- whole base

#: Domain tag of ``base.tensors_sha256`` (docs/FORMAT.md §11.4).
TENSORS_TAG = b"mezo-ckpt/tensors/v1\x00"
#: Keys of config.json / generation_config.json that describe how a file was written,
#: not the model (left out of the semantic fingerprint).
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "torch_dtype",
        "dtype",
        "_attn_implementation_autoset",
        "_from_model_config",
    }
)
#: Tokenizer files of a model folder (top level), by name prefix or suffix.
TOKENIZER_PREFIXES = (
    "tokenizer",
    "special_tokens_map",
    "added_tokens",
    "vocab",
    "merges",
    "chat_template",
)
TOKENIZER_SUFFIXES = (".model", ".tiktoken", ".jinja")
#: Tokenizer sub-folders transformers reads (named chat templates).
TOKENIZER_DIRS = ("additional_chat_templates",)


def _feed(h, t) -> None:
    """Feed a tensor's raw little-endian bytes (row-major) to a hash, without copies when
    it is a contiguous CPU tensor (hashlib releases the GIL on large buffers). ``t`` may
    be a function returning the tensor (read when hashed: offloaded weights)."""
    if callable(t):
        t = t()
    flat = t.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.is_contiguous():
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
        return
    per = max(1, _HASH_CHUNK // max(1, t.element_size()))
    for lo in range(0, flat.numel(), per):
        chunk = flat[lo : lo + per].to("cpu").contiguous()
        h.update(chunk.view(torch.uint8).numpy())


def tensor_digest(name: str, t) -> bytes:
    """sha256 (32 bytes) of one tensor, encoded as in :func:`tensors_sha256`."""
    h = hashlib.sha256()
    feed_named(h, name, t)
    return h.digest()


def tensors_root(digests: Mapping[str, bytes]) -> str:
    """``base.tensors_sha256``: sha256 over the tag and, by sorted name, name NUL digest."""
    h = hashlib.sha256(TENSORS_TAG)
    for name in sorted(digests):
        h.update(name.encode("utf-8") + b"\x00" + digests[name])
    return h.hexdigest()


def state_tensors(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, tuple[str, ...], bool]]:
    """Every tensor of a model's state: canonical name -> (tensor, aliases, is_buffer).

    Parameters under their canonical names (tied ones once), plus persistent buffers.
    """
    out: dict[str, tuple[torch.Tensor, tuple[str, ...], bool]] = {}
    for names, p in _alias_groups(module):
        out[names[0]] = (p, tuple(names[1:]), False)
    persistent = set(module.state_dict(keep_vars=True))
    groups: dict[int, list[str]] = {}
    bufs: dict[int, torch.Tensor] = {}
    for name, b in module.named_buffers(remove_duplicate=False):
        if name in persistent:
            groups.setdefault(id(b), []).append(name)
            bufs[id(b)] = b
    for bid, names in groups.items():
        names.sort()
        out[names[0]] = (bufs[bid], tuple(names[1:]), True)
    return dict(sorted(out.items()))


def fingerprint_tensors(
    tensors: Mapping[str, torch.Tensor], *, threads: int | None = None
) -> dict[str, bytes]:
    """Full sha256 of every named tensor, hashed in parallel (hashlib releases the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    items = sorted(tensors.items(), key=lambda kv: 0 if callable(kv[1]) else -kv[1].numel())
    n = max(1, min(threads or os.cpu_count() or 1, len(items)))
    if n == 1:
        return {k: tensor_digest(k, t) for k, t in items}
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="mezo-hash") as pool:
        futures = {k: pool.submit(tensor_digest, k, t) for k, t in items}
        return {k: f.result() for k, f in futures.items()}


def semantic_json(obj: Mapping, drop: Iterable[str] = VOLATILE_CONFIG_KEYS) -> dict:
    """A config object without the keys that only describe how it was written."""
    skip = set(drop)
    return {k: v for k, v in sorted(obj.items()) if k not in skip}


def json_sha256(obj) -> str:
    """sha256 of canonical JSON: sorted keys, ``,``/``:`` separators, ASCII escapes."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def is_tokenizer_file(name: str) -> bool:
    return name.startswith(TOKENIZER_PREFIXES) or name.endswith(TOKENIZER_SUFFIXES)


def tokenizer_digests(folder) -> dict[str, str]:
    """sha256 of every tokenizer file at the top of a model folder (its bytes: tokenizer
    files are data, read as they are; configs are compared by content instead)."""
    from pathlib import Path

    out = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and is_tokenizer_file(p.name):
            out[p.name] = file_sha256(p)
        elif p.is_dir() and p.name in TOKENIZER_DIRS:
            for q in sorted(p.rglob("*")):
                if q.is_file():
                    out[str(q.relative_to(folder))] = file_sha256(q)
    return out
