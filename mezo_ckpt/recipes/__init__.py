"""YAML recipes for MeZO's tasks (templates, label words and hyper-parameters of the paper).

``mezo-ckpt train -c sst2 --model facebook/opt-1.3b`` loads ``sst2.yaml`` from here when no
file of that name exists. Every recipe reads its dataset's standard Hub layout through the
``datasets`` library; nothing is downloaded unless you run it with a network.
"""

from __future__ import annotations

from importlib.resources import files

NAMES = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")


def path(name: str):
    """The packaged recipe ``name`` (a Traversable), or None."""
    p = files(__name__) / f"{name}.yaml"
    return p if p.is_file() else None
