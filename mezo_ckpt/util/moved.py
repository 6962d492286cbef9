"""Old module paths of 0.2 (before the package was split into layers), kept importable for
one release with a DeprecationWarning: ``from mezo_ckpt.export import apply_delta`` still
works and says where the module lives now."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: 0.2 module path -> where it lives now (removed in 0.4).
MOVED = {
    "mezo_ckpt.stream": "mezo_ckpt.core.stream",
    "mezo_ckpt.update": "mezo_ckpt.core.update",
    "mezo_ckpt.hashing": "mezo_ckpt.core.hashing",
    "mezo_ckpt.header": "mezo_ckpt.trajectory.header",
    "mezo_ckpt.format": "mezo_ckpt.trajectory",
    "mezo_ckpt.base": "mezo_ckpt.models.base",
    "mezo_ckpt.adapters": "mezo_ckpt.models.adapters",
    "mezo_ckpt.offload": "mezo_ckpt.models.offload",
    "mezo_ckpt.embedded": "mezo_ckpt.models.embedded",
    "mezo_ckpt.export": "mezo_ckpt.models.export",
    "mezo_ckpt.stfile": "mezo_ckpt.models.stfile",
    "mezo_ckpt.fsutil": "mezo_ckpt.util.fsutil",
    "mezo_ckpt.runtime": "mezo_ckpt.util.runtime",
    "mezo_ckpt.text": "mezo_ckpt.util.text",
    "mezo_ckpt.hub.client": "mezo_ckpt.models.remote",
}


class _Loader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):  # noqa: ANN001 - importlib's API
        warnings.warn(
            f"{spec.name} moved to {self.new} in mezo-ckpt 0.3; the old path goes away in 0.4",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # noqa: ANN001 - already executed
        pass


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old paths in :data:`MOVED` and hands back the module that moved."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib's API
        new = MOVED.get(name)
        if new is None:
            return None
        return importlib.util.spec_from_loader(name, _Loader(new))


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
