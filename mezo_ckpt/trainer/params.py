"""Choosing the trained parameters by the names people see.

A parameter is known by several names: its ``named_parameters()`` names (a tied weight
has one per module that owns it, e.g. GPT-2's ``transformer.wte.weight`` and
``lm_head.weight``), which are also its state-dict names, and mezo-ckpt's canonical name
(the smallest of them). A glob selects a parameter when it matches any of its names, and
a glob that matches nothing is an error (a typo must not silently select nothing, nor
everything).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from mezo_ckpt.errors import ConfigError


def parameter_names(module: torch.nn.Module) -> dict[str, list[str]]:
    """Canonical name -> every name of that parameter (sorted; canonical first)."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {min(names): sorted(names) for names in groups.values()}


@dataclass(frozen=True)
class Selection:
    """The trainable set and how it was chosen."""

    trainable: tuple[str, ...]
    total_tensors: int
    trainable_elements: int
    total_elements: int

    def describe(self) -> str:
        share = 100.0 * self.trainable_elements / max(1, self.total_elements)
        return (
            f"trainable: {len(self.trainable)} of {self.total_tensors} tensors, "
            f"{self.trainable_elements:,} of {self.total_elements:,} elements ({share:.2f}%)"
        )


def _hint(pattern: str, every: list[str]) -> str:
    """A corrected pattern for a typo: each literal piece of the glob that is not part of
    any name is replaced by the closest name component."""
    import re

    components = sorted({c for n in every for c in n.split(".")})
    fixed = pattern
    for piece in (p for p in re.split(r"[*?\[\].]+", pattern) if p):
        if any(piece in n for n in every):
            continue
        close = difflib.get_close_matches(piece, components, n=1, cutoff=0.6)
        if close:
            fixed = fixed.replace(piece, close[0])
    if fixed != pattern:
        hit = next((n for n in every if fnmatchcase(n, fixed)), None)
        if hit is not None:
            return f"; did you mean {fixed!r} (it matches e.g. {hit})?"
    close = difflib.get_close_matches(pattern, every, n=3, cutoff=0.4)
    return f"; close names: {', '.join(close)}" if close else ""


def _matching(pattern: str, names: dict[str, list[str]]) -> set[str]:
    return {c for c, all_names in names.items() if any(fnmatchcase(n, pattern) for n in all_names)}


def select_trainable(
    module: torch.nn.Module,
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    within: Sequence[str] | None = None,
) -> Selection:
    """Canonical names of the parameters matching any ``include`` glob and no ``exclude``.

    Args:
        within: choose only among these canonical names (an adapter's parameters).

    Raises:
        ConfigError: a pattern matches no parameter (with the closest names), or nothing
            is left to train.
    """
    all_params = parameter_names(module)
    names = all_params if within is None else {c: all_params[c] for c in within}
    every = sorted({n for all_names in names.values() for n in all_names})
    chosen: set[str] = set()
    dropped: set[str] = set()
    for flag, patterns, into in (("--trainable", include, chosen), ("--frozen", exclude, dropped)):
        for pat in patterns:
            hit = _matching(pat, names)
            if not hit:
                hint = _hint(pat, every)
                raise ConfigError(
                    f"{flag} {pat!r} matches no parameter{hint} (names look like "
                    f"{', '.join(every[:3])}; globs use * and ?)"
                )
            into |= hit
    trainable = sorted(chosen - dropped)
    if not trainable:
        raise ConfigError(
            f"--trainable {list(include)} minus --frozen {list(exclude)} leaves nothing to train"
        )
    params = dict(module.named_parameters(remove_duplicate=False))
    sizes = {c: params[all_names[0]].numel() for c, all_names in all_params.items()}
    return Selection(
        tuple(trainable),
        len(all_params),
        sum(sizes[n] for n in trainable),
        sum(sizes.values()),
    )


def decay_params(
    params: dict[str, torch.nn.Parameter],
    trainable: Sequence[str],
    weight_decay: float,
    no_decay: Sequence[str],
) -> list[str]:
    """Trainable parameters that get weight decay: not 1-D, no no_decay substring."""
    if weight_decay == 0:
        return []
    return sorted(
        n
        for n in trainable
        if params[n].ndim > 1 and not any(s.lower() in n.lower() for s in no_decay)
    )
