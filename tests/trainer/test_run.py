"""mezo_ckpt.trainer.run: ``train()`` from Python: settings as keywords or a config,
``model=`` as a folder or a loaded model, examples in memory, ``keep_model``, and the
output-exists and unknown-setting refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_train import assert_same, config, state, write_jsonl
from tinymodels import save_tiny, tiny_model, tiny_tokenizer, toy_sentiment

from mezo_ckpt.errors import ConfigError, OutputExistsError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trainer import TrainConfig, train
from mezo_ckpt.trainer.outputs import TrainResult
from mezo_ckpt.trajectory import read_trajectory

QUIET = dict(progress=False, log=lambda s: None)
#: A small custom classification run (everything but the model, data and output).
RUN = dict(
    template="{text} =",
    verbalizer={"pos": "+", "neg": "-"},
    steps=2,
    batch_size=4,
    lr=3e-3,
    eps=1e-2,
    eval_every=0,
    eval_examples=4,
    eval_test=False,
    fsync=False,
)
DATA = {"train": toy_sentiment(16, 0), "dev": toy_sentiment(4, 1)}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("run") / "base"
    save_tiny(folder, "llama")
    return str(folder)


def test_keyword_settings_and_a_folder_model(base, tmp_path):
    d = tmp_path
    files = {
        "train_file": write_jsonl(d / "train.jsonl", DATA["train"]),
        "dev_file": write_jsonl(d / "dev.jsonl", DATA["dev"]),
    }
    out = d / "kw.zst"
    r = train(model=base, task="custom", output=str(out), **files, **RUN, **QUIET)
    assert isinstance(r, TrainResult)
    assert r.output == out and r.steps == r.total_steps == 2 and not r.interrupted
    assert r.model is None and r.tokenizer is None  # keep_model=False
    assert [(e.step, e.split) for e in r.evaluations] == [(0, "dev"), (2, "dev")]
    assert r.selection is not None and len(r.selection.trainable) == 20
    traj = read_trajectory(out)
    assert traj.complete and traj.num_steps == 2
    assert traj.header.config["model"] == base  # model= a folder is the `model` setting
    assert traj.header.config["data"]["source"] == "files"
    assert traj.checkpoints[2] == r.fingerprint
    # the same run from a config gives the same file's fingerprint
    r2 = train(config(base, files, d / "cfg.zst", **RUN), **QUIET)
    assert r2.fingerprint == r.fingerprint


def test_in_memory_data_and_keep_model(base, tmp_path):
    out = tmp_path / "mem.zst"
    logged: list[str] = []
    r = train(
        model=base,
        data=DATA,
        output=str(out),
        keep_model=True,
        progress=False,
        log=logged.append,
        **RUN,
    )
    assert r.steps == 2
    assert isinstance(r.model, torch.nn.Module) and r.tokenizer is not None
    assert any(line.startswith("trainable: 20 of 20 tensors") for line in logged)
    traj = read_trajectory(out)
    assert traj.header.config["task"] == "custom"  # examples in memory: a custom task
    data = traj.header.config["data"]
    assert data["source"] == "memory" and data["train_examples"] == 16
    # the kept model is the trained one: replaying the file onto the base gives it
    before = state(load_base(base).model)
    model = load_base(base).model
    assert replay_model(traj, model).verified
    assert_same(state(r.model), state(model))
    assert any(not torch.equal(before[k], v) for k, v in state(r.model).items())


def test_a_loaded_model_is_trained_in_place_like_its_folder(base, tmp_path):
    from_folder = train(model=base, data=DATA, output=str(tmp_path / "f.zst"), **RUN, **QUIET)
    model = tiny_model("llama")
    r = train(
        model=model,
        tokenizer=tiny_tokenizer(),
        data=DATA,
        output=str(tmp_path / "m.zst"),
        keep_model=True,
        **RUN,
        **QUIET,
    )
    assert r.model is model
    assert r.fingerprint == from_folder.fingerprint
    assert read_trajectory(tmp_path / "m.zst").header.base.files == {}


def test_a_config_with_keywords_overrides_without_mutating(base, tmp_path):
    cfg = TrainConfig(model=base, task="custom", output=str(tmp_path / "c.zst"), **RUN)
    frozen = dataclasses.replace(cfg)
    r = train(cfg, steps=1, data=DATA, **QUIET)
    assert r.steps == r.total_steps == 1
    assert cfg == frozen
    assert read_trajectory(tmp_path / "c.zst").header.config["steps"] == 1


def test_an_existing_output_needs_overwrite(base, tmp_path):
    out = tmp_path / "o.zst"
    first = train(model=base, data=DATA, output=str(out), **RUN, **QUIET)
    with pytest.raises(OutputExistsError, match="pass --overwrite to start over"):
        train(model=base, data=DATA, output=str(out), **RUN, **QUIET)
    again = train(model=base, data=DATA, output=str(out), overwrite=True, **RUN, **QUIET)
    assert again.fingerprint == first.fingerprint


def test_unknown_or_invalid_keywords_are_config_errors(base, tmp_path):
    with pytest.raises(ConfigError, match=r"train\(\): unknown setting 'stepz'; did you mean"):
        train(model=base, data=DATA, stepz=3, output=str(tmp_path / "x.zst"), **QUIET)
    assert not (tmp_path / "x.zst").exists()
