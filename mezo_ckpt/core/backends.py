"""Where the stream and the update rule run, decided once per process: the compiled CPU
kernels (numba), the Triton kernels (CUDA), or the eager torch reference (same bits)."""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from types import ModuleType

import torch


@lru_cache(maxsize=1)
def compiled_kernels() -> ModuleType | None:
    """The compiled CPU kernels (numba), or None where they cannot load.

    Decided once per process; a fallback to the eager torch path (same bits, slower) is
    announced once with a warning.
    """
    try:
        from mezo_ckpt.core import kernels_cpu as _kernels
    except Exception as e:  # numba missing or broken: fall back, say so once
        warnings.warn(
            f"mezo-ckpt: compiled CPU kernels unavailable ({type(e).__name__}: {e}); using "
            "the eager torch path (same bits, slower). Install numba to speed it up.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _kernels


def use_compiled(device: str | torch.device) -> bool:
    """Whether work on ``device`` runs in the compiled CPU kernels."""
    return torch.device(device).type == "cpu" and compiled_kernels() is not None


def triton_kernels() -> ModuleType | None:
    """The Triton kernels (:mod:`mezo_ckpt.core.kernels_triton`) when they can run here, else None.

    ``MEZO_CKPT_TRITON=0`` turns them off (CUDA work then runs in eager torch, slower but
    with the same bits)."""
    if os.environ.get("MEZO_CKPT_TRITON", "1").strip() == "0":
        return None
    return _triton_module()


@lru_cache(maxsize=1)
def _triton_module() -> ModuleType | None:
    try:
        from mezo_ckpt.core import kernels_triton as _triton
    except Exception:  # noqa: BLE001 - no triton, or a triton that cannot import here
        return None
    return _triton if _triton.available() else None


def use_triton(device: str | torch.device) -> bool:
    """Whether work on ``device`` runs in the Triton kernels (CUDA devices with triton)."""
    return torch.device(device).type == "cuda" and triton_kernels() is not None
