"""mezo_ckpt/models/base.py: loading, the whole-base identity and its check, on tiny models
(the corpus of wrong bases against every command is in tests/scenarios/)."""

from __future__ import annotations

import json

import pytest
import torch
from tinymodels import save_tiny, tiny_model

from mezo_ckpt.errors import BaseMismatchError, ModelLoadError
from mezo_ckpt.models import base as B


@pytest.mark.parametrize(
    "name, dtype",
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("float16", torch.float16)],
)
def test_parse_dtype_takes_people_s_names(name, dtype):
    assert B.parse_dtype(name) is dtype
    assert B.parse_dtype("auto") == "auto" and B.parse_dtype(dtype) is dtype
    with pytest.raises(ValueError, match="unknown dtype"):
        B.parse_dtype("int8")


def test_the_identity_pins_every_tensor_and_the_config(tmp_path):
    model = tiny_model("gpt2")
    ident = B.describe_base(model, ["transformer.h.0.attn.c_attn.weight"])
    names = {t.name for t in ident.tensors}
    # tied weights once, under the smallest of their names, the others as aliases
    assert "lm_head.weight" in names and "transformer.wte.weight" not in names
    assert ident.tensor("lm_head.weight").aliases == ("transformer.wte.weight",)
    assert ident.pins_everything and ident.architecture == "GPT2LMHeadModel"
    assert ident.num_parameters == sum(p.numel() for p in model.parameters())
    assert B.describe_base(tiny_model("gpt2"), []).tensors_sha256 == ident.tensors_sha256
    other = B.describe_base(tiny_model("gpt2", seed=7), [])
    assert other.tensors_sha256 != ident.tensors_sha256


def test_diff_identities_names_what_differs():
    want = B.describe_base(tiny_model("gpt2"), [])
    changed = tiny_model("gpt2")
    with torch.no_grad():
        changed.transformer.h[1].mlp.c_fc.bias.add_(1e-3)
    diffs, checked = B.diff_identities(want, B.describe_base(changed, []))
    assert any("transformer.h.1.mlp.c_fc.bias" in d for d in diffs)
    assert "all" in " ".join(checked)
    assert B.diff_identities(want, want) == ([], checked)


def test_verify_base_refuses_before_anything_and_reports_when_allowed(tmp_path):
    class Header:  # what verify_base reads of a header
        def __init__(self, base):
            self.base, self.trainable, self.peft = base, (), None

    header = Header(B.describe_base(tiny_model("llama"), []))
    B.verify_base(header, tiny_model("llama"))
    with pytest.raises(BaseMismatchError):
        B.verify_base(header, tiny_model("llama", seed=5))
    check = B.verify_base(header, tiny_model("llama", seed=5), allow_mismatch=True)
    assert check.overridden


def test_locate_and_load_a_folder(tmp_path):
    save_tiny(tmp_path / "m", "gpt2")
    where = B.locate_base(str(tmp_path / "m"), progress=False)
    assert where.kind == "local" and "config.json" in where.files
    loaded = B.load_base(str(tmp_path / "m"), dtype="bf16", progress=False)
    assert next(loaded.model.parameters()).dtype is torch.bfloat16
    with pytest.raises(ModelLoadError, match="is a file"):
        B.locate_base(str(tmp_path / "m" / "config.json"), progress=False)
    with pytest.raises(ModelLoadError, match="no model folder"):
        B.locate_base(str(tmp_path / "missing"), progress=False)


def test_an_unreadable_config_is_a_model_load_error(tmp_path):
    save_tiny(tmp_path / "m", "gpt2")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError):
        B.describe_base(tiny_model("gpt2"), [], folder=tmp_path / "m")
    json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())  # the rest intact
