"""mezo_ckpt.trainer.params: parameter names (tied weights), glob selection of the
trainable set (any name selects, typo hints, nothing left), and the weight-decay set."""

from __future__ import annotations

import pytest
import torch
from tinymodels import tiny_model

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer.params import Selection, decay_params, parameter_names, select_trainable


class Toy(torch.nn.Module):
    """Embedding tied to the head (``embed.weight`` is also ``head.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


ALL = [
    "blocks.0.bias",
    "blocks.0.weight",
    "blocks.1.bias",
    "blocks.1.weight",
    "embed.weight",
    "norm.bias",
    "norm.weight",
]


def test_parameter_names_groups_tied_names_under_the_smallest():
    names = parameter_names(Toy())
    assert sorted(names) == ALL
    assert names["embed.weight"] == ["embed.weight", "head.weight"]
    assert all(v == [k] for k, v in names.items() if k != "embed.weight")
    gpt2 = parameter_names(tiny_model("gpt2"))
    assert gpt2["lm_head.weight"] == ["lm_head.weight", "transformer.wte.weight"]
    assert "transformer.wte.weight" not in gpt2


def test_select_everything_counts_a_tied_tensor_once():
    s = select_trainable(Toy(), ["*"], [])
    assert s.trainable == tuple(ALL)
    assert s.total_tensors == 7
    # embed 40 + two linears 2 * (16 + 4) + norm 8; the head shares the embedding
    assert s.trainable_elements == s.total_elements == 40 + 40 + 8
    assert s.describe() == "trainable: 7 of 7 tensors, 88 of 88 elements (100.00%)"


def test_any_name_of_a_tied_parameter_selects_or_freezes_it():
    m = Toy()
    by_alias = select_trainable(m, ["head.weight"], [])
    assert by_alias.trainable == ("embed.weight",)
    assert by_alias.trainable_elements == 40
    frozen = select_trainable(m, ["*"], ["head.*"])
    assert "embed.weight" not in frozen.trainable
    assert len(frozen.trainable) == 6 and frozen.trainable_elements == 48
    gpt2 = select_trainable(tiny_model("gpt2"), ["transformer.wte.weight"], [])
    assert gpt2.trainable == ("lm_head.weight",)


def test_include_exclude_globs_are_sorted_and_deduplicated():
    s = select_trainable(Toy(), ["blocks.1.*", "blocks.*.weight", "norm.?ias"], ["*.0.*"])
    assert s.trainable == ("blocks.1.bias", "blocks.1.weight", "norm.bias")
    assert s.trainable_elements == 4 + 16 + 4
    assert isinstance(s, Selection)


def test_a_typo_gets_a_corrected_pattern():
    with pytest.raises(ConfigError) as e:
        select_trainable(Toy(), ["blocks.*.wieght"], [])
    msg = str(e.value)
    assert msg.startswith("--trainable 'blocks.*.wieght' matches no parameter")
    assert "did you mean 'blocks.*.weight' (it matches e.g. blocks.0.weight)?" in msg
    assert "globs use * and ?" in msg
    m = tiny_model("gpt2")
    with pytest.raises(ConfigError, match=r"did you mean 'transformer\.h\.0\.attn\.\*'"):
        select_trainable(m, ["transformer.h.0.atn.*"], [])


def test_a_frozen_typo_names_the_frozen_flag():
    with pytest.raises(ConfigError, match=r"^--frozen 'nrom\.\*' matches no parameter; did you"):
        select_trainable(Toy(), ["*"], ["nrom.*"])


def test_no_corrected_pattern_falls_back_to_close_names_or_nothing():
    with pytest.raises(ConfigError, match=r"close names: blocks\.0\.weight") as e:
        select_trainable(Toy(), ["blocks0.weight"], [])
    assert "did you mean" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        select_trainable(Toy(), ["qqqqqqqqqqqq"], [])
    msg = str(e.value)
    assert "did you mean" not in msg and "close names" not in msg
    assert "names look like blocks.0.bias, blocks.0.weight, blocks.1.bias" in msg


def test_nothing_left_to_train_is_an_error():
    with pytest.raises(ConfigError, match=r"--trainable \['norm\.\*'\] minus --frozen") as e:
        select_trainable(Toy(), ["norm.*"], ["norm.*", "blocks.*"])
    assert "leaves nothing to train" in str(e.value)


def test_within_limits_the_choice_but_not_the_totals():
    m = Toy()
    s = select_trainable(m, ["*"], [], within=["blocks.1.weight", "blocks.1.bias"])
    assert s.trainable == ("blocks.1.bias", "blocks.1.weight")
    assert s.total_tensors == 7 and s.total_elements == 88 and s.trainable_elements == 20
    with pytest.raises(ConfigError, match="'norm.weight' matches no parameter"):
        select_trainable(m, ["norm.weight"], [], within=["blocks.1.weight"])


# ----------------------------------------------------------------------------- decay


def test_decay_params_skips_vectors_and_no_decay_names():
    m = Toy()
    params = dict(parameter_names(m))
    tensors = {c: dict(m.named_parameters())[c] for c in params}
    got = decay_params(tensors, ALL, 0.1, ["bias", "NORM"])
    assert got == ["blocks.0.weight", "blocks.1.weight", "embed.weight"]
    assert decay_params(tensors, ALL, 0.1, ["EMBED"]) == ["blocks.0.weight", "blocks.1.weight"]
    # only trainable names, sorted
    assert decay_params(tensors, ["embed.weight", "blocks.1.weight"], 0.1, []) == [
        "blocks.1.weight",
        "embed.weight",
    ]


def test_no_weight_decay_means_no_decay_params():
    m = Toy()
    tensors = dict(m.named_parameters())
    assert decay_params(tensors, ["blocks.0.weight"], 0.0, []) == []
    assert decay_params(tensors, ["blocks.0.weight"], 1e-4, []) == ["blocks.0.weight"]
