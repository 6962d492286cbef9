"""``train()``: a run from Python, with settings as keywords or a config."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.outputs import TrainResult
from mezo_ckpt.trainer.recipe import MezoRecipe
from mezo_ckpt.trainer.step import Reduce


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    keep_model: bool = False,
    log: Callable[[str], None] = print,
    model: Any = None,
    tokenizer: Any = None,
    data: dict[str, Sequence[dict]] | None = None,
    reduce: Reduce | None = None,
    **settings: Any,
) -> TrainResult:
    """Run MeZO and write the trajectory (see ``mezo-ckpt train --help``).

    Args:
        cfg: the configuration; or pass settings as keywords (``train(steps=50, lr=1e-5)``).
        resume: continue the run whose trajectory (or ``.partial`` journal) this is; the
            settings then come from the file (paths must be passed again, see
            :mod:`mezo_ckpt.trainer.resume`).
        overwrite: replace an existing output, journal and log.
        progress: show progress.
        keep_model: return the trained model and tokenizer in the result.
        log: where human-readable messages go.
        model: an already loaded base model (with ``tokenizer``), or a folder / repo id
            (the ``model`` setting).
        data: examples in memory: ``{"train": [...], "dev": [...], "test": [...]}``.
        reduce: sums loss terms across data-parallel ranks (see mezo_ckpt.trainer.dist).
    """
    if isinstance(model, (str, os.PathLike)):  # a folder or repo id: the `model` setting
        settings["model"] = str(model)
        model = None
    in_memory = data is not None
    if in_memory and resume is None and cfg is None:  # examples in memory: a custom task
        settings.setdefault("task", "custom")
    if resume is not None:
        from mezo_ckpt.trainer.resume import resume_config

        # A config given with resume= must agree with the file (paths it names count as
        # named by the caller); keywords are what changes, e.g. train(resume=p, steps=200).
        given = {**(cfg.to_dict() if cfg is not None else {}), **settings}
        given.pop("output", None)
        cfg, _, notes = resume_config(resume, given)
        for n in notes:
            log(f"Note: {n}")
    elif cfg is None:
        cfg = TrainConfig.from_dict(settings, where="train()")
    elif settings or in_memory:  # a checked copy
        cfg = dataclasses.replace(cfg, **settings, **({"task": "custom"} if in_memory else {}))
    with MezoRecipe(
        cfg,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        log=log,
        model=model,
        tokenizer=tokenizer,
        data=data,
        reduce=reduce,
    ) as recipe:
        recipe.setup()
        recipe.loop()
        result = recipe.finish()
        if keep_model:
            result.model, result.tokenizer = recipe.model, recipe.tokenizer
    return result
