"""The supported-models matrix: a tiny model of every architecture in tinymodels.MATRIX
is trained through the CLI's recipe and replayed bit for bit (fp32, and bf16 with
stochastic rounding), lr = 0 leaves it identical, and candidate-row scoring is used for
each (decided by what the model is: mezo_ckpt/trainer/heads.py)."""

from __future__ import annotations

import pytest
import torch
from helpers_train import assert_same, config, state, write_jsonl
from tinymodels import MATRIX, tiny_arch, tiny_tokenizer, toy_sentiment

import mezo_ckpt
from mezo_ckpt.trainer import train
from mezo_ckpt.trainer.tasks import head_rows_supported

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    return {
        "train_file": write_jsonl(d / "train.jsonl", toy_sentiment(64, 0)),
        "dev_file": write_jsonl(d / "dev.jsonl", toy_sentiment(16, 1)),
    }


def folder_of(tmp_path, model_type: str, dtype: torch.dtype):
    folder = tmp_path / f"{model_type}-{dtype}".replace("torch.", "")
    model = tiny_arch(model_type, dtype=dtype)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder), model


def run(folder, data, out, **kw):
    cfg = config(folder, data, out, steps=3, eval_every=0, eval_examples=16, **kw)
    return train(cfg, progress=False, keep_model=True, log=lambda s: None)


@pytest.mark.parametrize("model_type", sorted(MATRIX))
def test_architecture_trains_and_replays_bit_for_bit(model_type, data, tmp_path):
    for dtype, name, rounding in (
        (torch.float32, "float32", "nearest"),
        (torch.bfloat16, "bfloat16", "stochastic"),
    ):
        folder, base = folder_of(tmp_path, model_type, dtype)
        assert head_rows_supported(base), "candidate-row scoring applies"
        result = run(folder, data, tmp_path / f"{name}.zst", dtype=name, rounding=rounding)
        trained = state(result.model)
        assert any(not torch.equal(trained[k], v) for k, v in state(base).items())
        rebuilt = mezo_ckpt.replay(tmp_path / f"{name}.zst", folder)
        assert rebuilt.mezo_ckpt["verified"] == "fingerprint"
        assert_same(state(rebuilt), trained)
    # lr = 0: the perturbed forwards never write the weights (bf16, stochastic rounding)
    result = run(folder, data, tmp_path / "lr0.zst", dtype="bfloat16", rounding="stochastic",
                 lr=0.0)  # fmt: skip
    assert_same(state(result.model), state(base))


#: Attention projections LoRA adapts in each architecture (peft's module names).
LORA_TARGETS = {
    "phi3": ["qkv_proj"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "gpt2": ["c_attn"],
}


@pytest.mark.parametrize("model_type", sorted(MATRIX))
def test_architecture_trains_a_lora_adapter_and_replays_it(model_type, data, tmp_path):
    folder, base = folder_of(tmp_path, model_type, torch.float32)
    targets = LORA_TARGETS.get(model_type, ["q_proj", "v_proj"])
    result = run(folder, data, tmp_path / "lora.zst", peft="lora", lora_targets=targets,
                 lr=3e-2)  # fmt: skip
    trained = state(result.model)
    rebuilt = mezo_ckpt.replay(tmp_path / "lora.zst", folder)
    assert rebuilt.mezo_ckpt["verified"] == "fingerprint"
    assert_same(state(rebuilt), trained)
    assert any("lora" in k for k in trained)
