"""mezo_ckpt.trainer.inputs: which examples each step sees, the splits a run loads, what
the header records of them, and the truncation note."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers_train import write_jsonl
from tinymodels import tiny_tokenizer, toy_sentiment

from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.trainer import TrainConfig
from mezo_ckpt.trainer.inputs import (
    batch_indices,
    build_task,
    count_truncated,
    cut_note,
    load_run_data,
    load_splits,
)

CUSTOM = dict(task="custom", template="{text} =", verbalizer={"pos": " p", "neg": " n"})


def test_batches_are_a_pure_function_of_seed_and_step():
    a = batch_indices(7, 12, 100, 16)
    assert np.array_equal(a, batch_indices(7, 12, 100, 16))  # resume-safe
    assert len(set(a.tolist())) == 16 and a.max() < 100  # without replacement
    assert not np.array_equal(a, batch_indices(7, 13, 100, 16))
    assert len(batch_indices(0, 0, 5, 16)) == 5  # a batch larger than the data: all of it


def test_in_memory_splits_and_their_fingerprints(tmp_path):
    rows = toy_sentiment(12)
    cfg = TrainConfig(**CUSTOM, eval_examples=3)
    data = load_run_data(cfg, {"train": rows, "dev": rows[:6]})
    assert len(data.splits["train"]) == 12 and len(data.splits["dev"]) == 3
    assert data.info["source"] == "memory" and data.info["train_examples"] == 12
    again = load_run_data(cfg, {"train": rows, "dev": rows[:6]})
    assert again.info == data.info  # fingerprints are deterministic
    other = load_run_data(cfg, {"train": rows[::-1], "dev": rows[:6]})
    assert other.info["train_sha256"] != data.info["train_sha256"]


def test_files_and_refusals(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", toy_sentiment(8))
    cfg = TrainConfig(**CUSTOM, train_file=f, train_examples=5)
    assert len(load_splits(cfg)["train"]) == 5
    with pytest.raises(DataError):
        load_splits(TrainConfig(**CUSTOM), {"train": []})
    with pytest.raises(ConfigError, match="no training data"):
        load_splits(TrainConfig(**CUSTOM))


def test_truncation_is_counted_and_said_once():
    cfg = TrainConfig(**CUSTOM, max_length=4)
    task = build_task(cfg)
    rows = toy_sentiment(10)
    from mezo_ckpt.trainer.data import Split

    split = Split("train", rows, [str(i) for i in range(10)])
    cut = count_truncated(task, tiny_tokenizer(), split)
    assert cut == 10
    assert cut_note(cut, 10, "training", 4).startswith("Note: 10 of 10 training prompts")
    assert cut_note(0, 10, "training", 4) == ""


def test_k_shot_splits_follow_the_protocol(tmp_path):
    """Train and dev are drawn from the train split; the given dev split becomes the test
    split when there is no test split; --data-seed defaults to --seed; the header's data
    info names the rows drawn."""
    rows = toy_sentiment(80)
    f = write_jsonl(tmp_path / "t.jsonl", rows)
    d = write_jsonl(tmp_path / "d.jsonl", toy_sentiment(12, 5))
    cfg = TrainConfig(**CUSTOM, train_file=f, dev_file=d, k_shot=3, seed=7, eval_examples=0)
    splits = load_splits(cfg)
    assert len(splits["train"]) == 6 and len(splits["dev"]) == 6
    assert splits["test"].examples == toy_sentiment(12, 5)
    assert sorted(ex["label"] for ex in splits["train"].examples) == ["neg"] * 3 + ["pos"] * 3
    same = load_splits(dataclasses.replace(cfg, data_seed=7))
    assert same["train"].examples == splits["train"].examples
    other = load_splits(dataclasses.replace(cfg, data_seed=8))
    assert other["train"].examples != splits["train"].examples
    data = load_run_data(cfg, None)
    assert data.info["k_shot"]["seed"] == 7 and len(data.info["k_shot"]["train_rows"]) == 6
    assert data.info["train_examples"] == 6
    with pytest.raises(ConfigError, match="drop one of them"):
        TrainConfig(**CUSTOM, train_file=f, k_shot=3, train_examples=10)
