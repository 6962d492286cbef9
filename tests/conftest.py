"""Shared fixtures. Tests never touch the network: the Hub is faked on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton's kernels run in its CPU interpreter (tests/core/test_triton.py). Triton
# reads TRITON_INTERPRET when it is first imported, and transformers imports it while
# other test modules load, so it is set here, before any of them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

from hubserver import fake_hub  # noqa: E402,F401  (fixture)

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's mezo-ckpt cache away from the user's (the embedded model's
    conversion cache is shared per session so it is paid once)."""
    if "MEZO_CKPT_CACHE" not in os.environ:
        monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path_factory.getbasetemp() / "mezo-cache"))
