"""What a run reads: the task, the train/dev/test examples, the tokenizer, and which
examples each step sees."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.data import (
    Split,
    fingerprint,
    k_shot,
    load_dataset_split,
    load_file,
    map_columns,
)
from mezo_ckpt.trainer.tasks import PromptTask, template_fields

#: Salt of the per-step batch sampler (ASCII "mezo").
BATCH_SALT = 0x6D657A6F


def batch_indices(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """The training examples of one step: a pure function of (seed, step), resume-safe."""
    rng = np.random.default_rng([seed, step, BATCH_SALT])
    return rng.choice(n, size=min(size, n), replace=False)


def build_task(cfg: TrainConfig, *, masked: bool | None = None) -> PromptTask:
    """The prompted task of ``cfg``; ``masked``: for a masked LM (a built-in task then
    uses its prompt with a ``{mask}`` slot). None, before the model is known: a template
    with a ``{mask}`` slot is taken for a masked LM's (:func:`task_for_model` settles
    it)."""
    builtin = cfg.builtin()
    if masked is None:
        masked = "mask" in template_fields(cfg.template or builtin.get("template", ""))
    default = builtin.get("masked_template" if masked else "template", "")
    return PromptTask(
        template=cfg.template or default,
        verbalizer=dict(cfg.verbalizer or builtin.get("verbalizer") or {}),
        label_field=cfg.label_field,
        options_field=cfg.options_field,
        option_template=cfg.option_template,
        target_field=cfg.target_field,
        target_template=cfg.target_template,
        max_length=cfg.max_length,
        chat_template=cfg.chat_template,
        max_new_tokens=cfg.max_new_tokens,
        stop=tuple(cfg.stop),
        masked=masked,
    )


def masked_positions(model: Any) -> int | None:
    """How many tokens a masked LM's position table holds (RoBERTa's starts after its
    padding index), or None when the model does not say."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    inner = model.get_base_model() if hasattr(model, "peft_config") else model
    pad = getattr(getattr(inner.base_model, "embeddings", None), "padding_idx", None)
    return n - pad - 1 if isinstance(pad, int) else n


def task_for_model(
    cfg: TrainConfig, task: PromptTask, splits: dict[str, Split], masked: bool, model: Any = None
) -> PromptTask:
    """The run's task once the model is known: a masked LM's when the model is one (its
    examples checked again: ``{mask}`` is a slot, not a field), else ``task``.

    Raises:
        ConfigError: a masked LM's prompts could be longer (--max-length) than its
            position table (an encoder has no sliding window: it would crash mid-run).
    """
    if masked and model is not None:
        limit = masked_positions(model)
        if limit is not None and cfg.max_length > limit:
            raise ConfigError(
                f"--max-length {cfg.max_length} is more than the {limit} positions this "
                f"masked LM has: use --max-length {limit} or less"
            )
    if masked == task.masked:
        return task
    task = build_task(cfg, masked=masked)
    for split in splits.values():
        task.validate(split)
    return task


def load_splits(
    cfg: TrainConfig, data: dict[str, Sequence[dict]] | None = None
) -> dict[str, Split]:
    """The train/dev/test examples: in memory, from files, a dataset, or the built-in task."""
    splits: dict[str, Split] = {}
    if data is not None:
        if "train" not in data or not data["train"]:
            raise DataError("data= needs a non-empty 'train' list of examples")
        for name, rows in data.items():
            rows = [dict(r) for r in rows]
            splits[name] = Split(name, rows, [f"{name} row {i + 1}" for i in range(len(rows))])
        splits["train"] = splits["train"].head(cfg.train_examples)
    elif cfg.dataset:
        train = load_dataset_split(
            cfg.dataset,
            cfg.train_split,
            name="train",
            config=cfg.dataset_config,
            limit=cfg.train_examples,
        )
        assert train is not None
        splits["train"] = train
        defaults = TrainConfig()
        for name, split in (("dev", cfg.dev_split), ("test", cfg.test_split)):
            if split:
                got = load_dataset_split(
                    cfg.dataset,
                    split,
                    name=name,
                    config=cfg.dataset_config,
                    # a split the user chose must exist; the default one may be absent
                    required=split != getattr(defaults, f"{name}_split"),
                )
                if got is not None:
                    splits[name] = got
        if cfg.dev_file:
            splits["dev"] = load_file(cfg.dev_file, name="dev")
        if cfg.test_file:
            splits["test"] = load_file(cfg.test_file, name="test")
    elif cfg.train_file:
        splits["train"] = load_file(cfg.train_file, name="train", limit=cfg.train_examples)
        if cfg.dev_file:
            splits["dev"] = load_file(cfg.dev_file, name="dev")
        if cfg.test_file:
            splits["test"] = load_file(cfg.test_file, name="test")
    elif cfg.task in ("sentiment",):
        from mezo_ckpt.data import load_split

        for name in ("train", "dev", "test"):
            rows = load_split(name)
            splits[name] = Split(
                name, rows, [f"built-in {name}.jsonl:{i + 1}" for i in range(len(rows))]
            )
        splits["train"] = splits["train"].head(cfg.train_examples)
    else:
        raise ConfigError(
            f"task {cfg.task!r} has no training data: set --train-file or --dataset "
            "(or pass data= to mezo_ckpt.train)"
        )
    splits = {k: map_columns(v, cfg.columns) for k, v in splits.items()}
    words = cfg.verbalizer or cfg.builtin().get("verbalizer") or {}
    if not (cfg.target_field or cfg.options_field) and words and "-1" not in words:
        splits = {k: v.labelled(cfg.label_field) for k, v in splits.items()}
    if cfg.k_shot:
        splits = few_shot_splits(cfg, splits)
    if "dev" in splits and cfg.eval_examples:
        splits["dev"] = splits["dev"].subset(cfg.eval_examples)
    if "test" in splits and cfg.test_examples:
        splits["test"] = splits["test"].subset(cfg.test_examples)
    return splits


def few_shot_splits(cfg: TrainConfig, splits: dict[str, Split]) -> dict[str, Split]:
    """The --k-shot splits (LM-BFF's protocol, which MeZO follows): train and dev drawn
    from the train split (K per class each, :func:`~mezo_ckpt.trainer.data.k_shot`); the
    given test split, or else the given dev split, is the test split."""
    assert cfg.k_shot
    classes = not (cfg.target_field or cfg.options_field)
    seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    train, dev, _ = k_shot(splits["train"], cfg.k_shot, seed, cfg.label_field if classes else None)
    out = {"train": train, "dev": dev}
    test = splits.get("test") or splits.get("dev")
    if test is not None:
        out["test"] = dataclasses.replace(test, name="test")
    return out


def load_tokenizer(folder: Path | None, model_spec: str | None):
    from transformers import AutoTokenizer

    src = str(folder) if folder is not None else model_spec
    try:
        return AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load a tokenizer for {src}: {e}") from None


def data_info(
    cfg: TrainConfig, splits: dict[str, Split], task: PromptTask, in_memory: bool
) -> dict[str, Any]:
    """What the header records of the data: its source and each split's fingerprint (a
    resume checks the data it is given against them)."""
    if in_memory:
        source = "memory"
    else:
        source = "dataset" if cfg.dataset else ("files" if cfg.train_file else "builtin")
    return {
        "source": source,
        "train_sha256": fingerprint(splits["train"].examples),
        "train_examples": len(splits["train"]),
        **{f"{k}_sha256": fingerprint(v.examples) for k, v in splits.items() if k != "train"},
        "task_kind": task.kind,
        **({"k_shot": splits["train"].drawn.info()} if splits["train"].drawn else {}),
        **(
            {"unlabelled_left_out": {k: v.unlabelled for k, v in splits.items() if v.unlabelled}}
            if any(v.unlabelled for v in splits.values())
            else {}
        ),
    }


def count_truncated(task: PromptTask, tokenizer: Any, split: Split) -> int:
    """How many prompts of ``split`` --max-length cuts."""
    return sum(
        task.encode(tokenizer, split.examples[lo : lo + 64]).truncated
        for lo in range(0, len(split.examples), 64)
    )


def cut_note(cut: int, n: int, what: str, max_length: int) -> str:
    """The note a run prints once when --max-length cuts prompts ('' when none is)."""
    if not cut:
        return ""
    return (
        f"Note: {cut} of {n} {what} prompts are longer than --max-length {max_length} "
        "tokens and are cut from the left"
    )


@dataclass(frozen=True)
class RunData:
    """The data side of a run: its task, its splits, what the header records of them, and
    the user's objective function if one is named."""

    task: PromptTask
    splits: dict[str, Split]
    info: dict[str, Any]
    user: Any


def load_run_data(cfg: TrainConfig, data: dict[str, Sequence[dict]] | None) -> RunData:
    """Build the task, load and check the splits, and load a ``python:`` objective."""
    from mezo_ckpt.trainer.objectives import load_user_objective

    task = build_task(cfg)
    splits = load_splits(cfg, data)
    for split in splits.values():
        task.validate(split)
    user = load_user_objective(cfg.objective) if cfg.objective.startswith("python:") else None
    return RunData(task, splits, data_info(cfg, splits, task, data is not None), user)
