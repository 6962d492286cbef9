"""Embedded default data: a binary sentiment task (Rotten Tomatoes sentences).

Built by ``scripts/build_default_data.py`` from the vaderSentiment 3.3.2 sdist; see
``sentiment/README.md`` for provenance, license and split details. Files are read
through :mod:`importlib.resources`, so this works from an installed wheel or zip.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["DEFAULT_TASK_DIR", "LABELS", "SPLITS", "load_manifest", "load_split"]

#: Folder holding the default task (a ``pathlib.Path`` for regular installs, otherwise a
#: :class:`~importlib.resources.abc.Traversable`).
DEFAULT_TASK_DIR: Traversable = files(__name__) / "sentiment"
SPLITS: tuple[str, ...] = ("train", "dev", "test")
LABELS: tuple[str, ...] = ("negative", "positive")


def load_split(name: str) -> list[dict]:
    """Rows of one split (``train``, ``dev`` or ``test``) of the default task.

    Each row is ``{"id": str, "text": str, "label": "positive" | "negative",
    "score": float}``, in the fixed file order.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    text = (DEFAULT_TASK_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def load_manifest() -> dict:
    """The task's ``MANIFEST.json`` (source hashes, per-file sha256 and counts)."""
    return json.loads((DEFAULT_TASK_DIR / "MANIFEST.json").read_text(encoding="utf-8"))
