"""Synthetic trajectory headers shared by the benchmark scripts (stdlib only)."""

from __future__ import annotations

from typing import Any


def plain_header(
    base: dict[str, Any],
    trainable: list[str],
    total_steps: int,
    *,
    z: str = "normal16",
    seed: int = 0,
    tool: tuple[str, str] = ("bench", "0"),
) -> dict[str, Any]:
    """A header for plain SPSA steps (one direction, nearest rounding, no decay, no
    losses) over ``trainable`` of the base described by ``base`` (its JSON identity)."""
    return {
        "requires": [],
        "tool": {"name": tool[0], "version": tool[1]},
        "base": base,
        "trainable": trainable,
        "perturbation": {
            "generator": "philox4x32-10",
            "key_rule": "sha256-seed-name-v1",
            "z": z,
            "seed": seed,
            "eps": 1e-3,
            "n_directions": 1,
        },
        "update": {
            "arithmetic": "exact-v1",
            "rounding": "nearest",
            "weight_decay": 0.0,
            "decay_params": [],
        },
        "records": {"decay": False, "losses": False},
        "total_steps": total_steps,
        "optimizer": {},
        "config": {},
    }
