"""mezo-ckpt: MeZO fine-tuning with tiny, bit-exact, replayable trajectory files.

``mezo_ckpt.load(...)`` rebuilds a fine-tune (Hub repo id, trajectory file or folder) as
``(model, tokenizer)``; see :func:`mezo_ckpt.hub.fetch.load`. It is imported on first use,
so ``import mezo_ckpt`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["__version__", "load"]

if TYPE_CHECKING:  # pragma: no cover
    from mezo_ckpt.hub.fetch import load


def __dir__() -> list[str]:
    return sorted([*globals(), "load"])


def __getattr__(name: str) -> Any:
    if name == "load":
        from mezo_ckpt.hub.fetch import load

        return load
    raise AttributeError(f"module 'mezo_ckpt' has no attribute {name!r}")
