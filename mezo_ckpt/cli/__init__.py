"""The `mezo-ckpt` command line: train, replay, info, push, pull."""

from __future__ import annotations

from mezo_ckpt.cli.main import main

__all__ = ["main"]
