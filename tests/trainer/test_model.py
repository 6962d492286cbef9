"""mezo_ckpt.trainer.model: the header a new run writes (whole base, what trains, the
features it needs) and its recorded config."""

from __future__ import annotations

from tinymodels import tiny_model, tiny_tokenizer

from mezo_ckpt.models.base import LoadedBase
from mezo_ckpt.trainer import TrainConfig
from mezo_ckpt.trainer.inputs import build_task
from mezo_ckpt.trainer.model import attach_adapter, build_header, identity_of, run_config
from mezo_ckpt.trajectory.header import HISTORY_FEATURE, PEFT_FEATURE

CUSTOM = dict(task="custom", template="{text} =", verbalizer={"pos": " p", "neg": " n"})


def test_a_new_header_pins_the_whole_base_and_records_the_run():
    model = tiny_model("llama")
    loaded = LoadedBase(model, "local")
    cfg = TrainConfig(**CUSTOM, momentum=0.5, momentum_window=3)
    identity = identity_of(loaded, model, tiny_tokenizer(), ["model.norm.weight"])
    config = run_config(cfg, {"train_sha256": "x"}, build_task(cfg), None, world=2)
    h = build_header(cfg, identity, ["model.norm.weight"], [], config, None)
    assert h.base.pins_everything and h.chain is not None
    assert h.records.history == 3 and HISTORY_FEATURE in h.requires
    assert h.config["world"] == 2 and h.config["data"] == {"train_sha256": "x"}
    assert h.config["lr"] == cfg.lr and h.total_steps == cfg.steps


def test_an_adapter_run_pins_the_plain_base_and_its_adapter():
    cfg = TrainConfig(**CUSTOM, peft="lora", lora_r=2, lora_targets=["q_proj", "v_proj"])
    loaded = LoadedBase(tiny_model("llama"), "local")
    model, identity, adapter = attach_adapter(cfg, loaded, tiny_tokenizer())
    assert adapter.type == "lora" and adapter.config["r"] == 2
    assert identity.trainable_sha256 is not None  # the base without its adapter
    config = run_config(cfg, {}, build_task(cfg), None)
    h = build_header(cfg, identity, ["a"], [], config, adapter)
    assert PEFT_FEATURE in h.requires and h.peft == adapter
