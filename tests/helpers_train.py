"""Helpers several test modules share: data files, a run's config, weight states."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.trainer import TrainConfig


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(base: str, data: dict, out: Path, **kw) -> TrainConfig:
    settings = dict(
        model=base,
        task="custom",
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        steps=6,
        batch_size=8,
        lr=3e-3,
        eps=1e-2,
        eval_every=3,
        eval_examples=32,
        eval_test=False,
        fsync=False,
        output=str(out),
        dtype=kw.pop("dtype", "float32"),
        **data,
    )
    settings.update(kw)
    return TrainConfig(**settings)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in canonical_parameters(model).items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert torch.equal(a[k], b[k]), k
