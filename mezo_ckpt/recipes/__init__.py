"""YAML recipes for MeZO's tasks (templates, label words and hyper-parameters of the paper).

``mezo-ckpt train -c sst2 --model facebook/opt-1.3b`` loads ``sst2.yaml`` from here when no
file of that name exists. Every recipe reads its dataset's standard Hub layout through the
``datasets`` library; nothing is downloaded unless you run it with a network.
"""

from __future__ import annotations

from importlib.resources import files

#: MeZO's large-model tasks (causal LMs, Table 15), then its medium-model tasks (masked
#: LMs such as RoBERTa, Table 18: k-shot, with a `sweep:` grid over the paper's seeds).
LARGE = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")
MEDIUM = ("sst2-mlm", "sst5-mlm", "snli-mlm", "mnli-mlm", "rte-mlm", "trec-mlm")
NAMES = LARGE + MEDIUM


def path(name: str):
    """The packaged recipe ``name`` (a Traversable), or None."""
    p = files(__name__) / f"{name}.yaml"
    return p if p.is_file() else None
