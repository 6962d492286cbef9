"""mezo-ckpt: MeZO fine-tuning with tiny, bit-exact, replayable trajectory files."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(*args, **kwargs):
    """Load a fine-tune (repo id, trajectory file or folder) as (model, tokenizer).

    See :func:`mezo_ckpt.hub.load` for the arguments.
    """
    from mezo_ckpt.hub import load as _load

    return _load(*args, **kwargs)
