"""Models bigger than one device: accelerate's big-model machinery, with MeZO on top.

A model loaded with ``device_map`` (``--device-map auto|FILE.json``, ``--max-memory``,
``--offload-folder``) has its layers spread over GPUs, the CPU and the disk. accelerate
keeps a disk-offloaded parameter on the meta device and brings it in for each forward
through the module's ``AlignDevicesHook`` (its ``weights_map``); mezo-ckpt's perturbed
forward wraps the module's own forward *inside* that hook, so it perturbs the weight
accelerate brought in.

The update must change a weight where it lives. accelerate reads an offloaded weight
straight from the base's safetensors file, which must never be written, so each
*trained* offloaded parameter gets a writable copy: a memory-mapped file in
``<offload folder>/mezo-writable/``, registered in the hook's weights map (which accelerate
consults first); updates are applied to it in place, streaming through the page cache,
with the same bits as in memory. Frozen offloaded weights are read from the base's files
(for the fingerprint of every tensor) one at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import ConfigError
from mezo_ckpt.util.fsutil import os_errors

WRITABLE = "mezo-writable"
_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


def parse_device_map(value: str | None) -> Any:
    """``auto`` / ``balanced`` / ``sequential`` / a JSON file mapping module names to
    devices (``cpu``, ``disk``, ``0``, ``cuda:1``)."""
    if value is None:
        return None
    if value in ("auto", "balanced", "balanced_low_0", "sequential"):
        return value
    p = Path(value)
    if not p.is_file():
        raise ConfigError(f"--device-map {value!r}: use auto, balanced, sequential or a JSON file")
    try:
        mapping = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"--device-map {p}: not JSON ({e})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--device-map {p}: must map module names to devices")
    return {
        str(k): (int(v) if isinstance(v, str) and v.isdigit() else v) for k, v in mapping.items()
    }


def parse_max_memory(value: dict[str, str] | None) -> dict[Any, str] | None:
    """``{"0": "10GiB", "cpu": "30GiB"}`` with GPU indices as integers (accelerate's form)."""
    if not value:
        return None
    return {(int(k) if k.isdigit() else k): v for k, v in value.items()}


def _offloaded(model: torch.nn.Module) -> dict[str, tuple[Any, str, torch.nn.Module, str]]:
    """canonical name -> (weights loader, key in it, owning module, attribute) for every
    parameter accelerate keeps off the model (on the meta device)."""
    name_of = {id(p): n for n, p in canonical_parameters(model).items()}
    out: dict[str, tuple[Any, str, torch.nn.Module, str]] = {}
    for mod in model.modules():
        hook = getattr(mod, "_hf_hook", None)
        wm = getattr(hook, "weights_map", None)
        if not getattr(hook, "offload", False) or wm is None:
            continue
        loader = getattr(wm, "dataset", wm)
        prefix = getattr(wm, "prefix", "")
        for attr, p in mod._parameters.items():
            if p is not None and p.is_meta and id(p) in name_of:
                out.setdefault(name_of[id(p)], (loader, prefix + attr, mod, attr))
    return out


class OffloadedWeights:
    """The real tensors of a (possibly offloaded) model, by canonical name.

    ``tensors`` maps every parameter to a tensor holding its values: the parameter itself
    where it is materialised, a writable memory-mapped copy for a trained offloaded one.
    ``read(name)`` gives any parameter's values (frozen offloaded ones from the base's
    files, on demand).
    """

    def __init__(self, model: torch.nn.Module, trainable: Iterable[str], folder: Path | None):
        self.model = model
        self.params = canonical_parameters(model)
        self.off = _offloaded(model)
        self.tensors: dict[str, torch.Tensor] = {
            n: p for n, p in self.params.items() if not p.is_meta
        }
        want = set(trainable)
        writable = [n for n in self.off if n in want]
        if writable and folder is None:
            raise ConfigError("trained offloaded parameters need a folder for their copies")
        self.store: Path | None = Path(folder) / WRITABLE if writable and folder else None
        for name in writable:
            assert self.store is not None
            self.tensors[name] = self._writable_copy(name, self.store)

    @property
    def active(self) -> bool:
        return bool(self.off)

    def _writable_copy(self, name: str, store: Path) -> torch.Tensor:
        loader, key, _, _ = self.off[name]
        p = self.params[name]
        value = loader[key].to(p.dtype).contiguous()
        with os_errors(store, "create the writable offload store"):
            store.mkdir(parents=True, exist_ok=True)
            path = store / f"{name}.bin"
            mm = np.memmap(path, dtype=_NP[p.dtype], mode="w+", shape=tuple(p.shape))
        t = torch.from_numpy(mm)
        if p.dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        t.copy_(value)
        mm.flush()
        state = getattr(loader, "state_dict", None)
        if not isinstance(state, dict):
            raise ConfigError(f"cannot make the offloaded {name} writable (unknown loader)")
        state[key] = t  # accelerate reads this first from now on
        return t

    def discard(self) -> None:
        """Remove the writable copies (scratch: the trajectory holds the run)."""
        import shutil

        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)
            parent = self.store.parent
            if parent.name.endswith(".offload") and not any(parent.iterdir()):
                parent.rmdir()

    def read(self, name: str) -> torch.Tensor:
        if name in self.tensors:
            return self.tensors[name]
        loader, key, _, _ = self.off[name]
        return loader[key].to(self.params[name].dtype)

    def resolve(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """For hashing: a meta tensor's real values."""
        return self.read(name) if t.is_meta else t
