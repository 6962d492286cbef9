"""mezo_ckpt.models.export: exact deltas, state-dict files with tied names, and exported
folders that can tell when a file changed since."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tinymodels import tiny_model

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import OutputError
from mezo_ckpt.models.export import (
    PROVENANCE_FILE,
    apply_delta,
    check_exported,
    delta_tensors,
    export_hf,
    export_safetensors,
    state_dict_tensors,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_delta_is_exact_even_where_float_arithmetic_is_not(dtype):
    base = torch.tensor([1.0, -2.0, 3e-3, 0.0, 65000.0, -1e-4], dtype=dtype)
    tuned = torch.tensor([1.5, 2.0, -3e-3, 1e-30, 64000.0, 1e-4], dtype=dtype)  # sign flips
    delta, fixes = delta_tensors({"w": base}, {"w": tuned}, ["w"])
    back = (base.float() + delta["w"]).to(dtype)
    if "w::fix_index" in delta:
        back[delta["w::fix_index"]] = delta["w::fix_value"]
    bits = torch.int16 if dtype != torch.float32 else torch.int32
    assert torch.equal(back.view(bits), tuned.view(bits))
    assert fixes == int(delta.get("w::fix_index", torch.empty(0)).numel())


def test_apply_delta_to_a_model_and_refuse_a_misfit():
    model = tiny_model("llama")
    params = canonical_parameters(model)
    name = sorted(params)[0]
    tuned = params[name].detach().clone() + 0.125
    delta, _ = delta_tensors({name: params[name].detach()}, {name: tuned}, [name])
    apply_delta(model, delta)
    assert torch.equal(canonical_parameters(model)[name], tuned)
    with pytest.raises(OutputError, match="does not fit"):
        apply_delta(model, {"no.such.tensor": torch.zeros(2)})


def test_state_dict_file_holds_tied_weights_under_each_name(tmp_path):
    model = tiny_model("llama", tie=True)
    tensors = state_dict_tensors(model)
    export_safetensors(tensors, tmp_path / "w.safetensors", {"kind": "weights"})
    back = load_file(str(tmp_path / "w.safetensors"))
    assert "lm_head.weight" in back and "model.embed_tokens.weight" in back
    assert torch.equal(back["lm_head.weight"], back["model.embed_tokens.weight"])
    model.load_state_dict(back)


def test_an_exported_folder_knows_when_it_changed(tmp_path):
    out = tmp_path / "o"
    export_hf(tiny_model("llama"), out, tokenizer_from=None, meta={"tool": "t"})
    assert (out / PROVENANCE_FILE).is_file() and check_exported(out) == []
    (out / "config.json").write_text((out / "config.json").read_text() + " ")
    (out / "extra.txt").write_text("added")
    bad = check_exported(out)
    assert "config.json" in bad and "extra.txt (not recorded)" in bad
