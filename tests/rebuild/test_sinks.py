"""mezo_ckpt.rebuild.sinks: natural ordering and layer names of parameters, the diff
statistics per tensor, per layer and in total, copies of shared tensors for
safetensors, and the in-memory ModelSink."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mezo_ckpt.rebuild.sinks import (
    DeltaSink,
    DiffSink,
    ModelSink,
    _nbytes,
    _unshared,
    layer_of,
    natural_key,
)

# ----------------------------------------------------------------------------- names


def test_natural_key_orders_numbers_by_value():
    names = [
        "model.layers.10.mlp.weight",
        "model.layers.2.mlp.weight",
        "lm_head.weight",
        "model.layers.1.mlp.weight",
        "model.layers.2.attn.weight",
    ]
    assert sorted(names, key=natural_key) == [
        "lm_head.weight",
        "model.layers.1.mlp.weight",
        "model.layers.2.attn.weight",
        "model.layers.2.mlp.weight",
        "model.layers.10.mlp.weight",
    ]
    assert sorted(names) != sorted(names, key=natural_key)  # plain sorting puts 10 first
    assert natural_key("h.12.w3") == ["h.", 12, ".w", 3, ""]
    assert natural_key("norm") == ["norm"]


@pytest.mark.parametrize(
    "name, layer",
    [
        ("model.layers.3.mlp.up_proj.weight", "model.layers.3"),
        ("transformer.h.11.attn.c_attn.weight", "transformer.h.11"),
        ("model.decoder.layers.4.fc1.weight", "model.decoder.layers.4"),
        ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0"),
        ("vit.blocks.7.norm.bias", "vit.blocks.7"),
        ("model.layers.3.self_attn.layers.1.w", "model.layers.3"),  # the outermost layer
        ("lm_head.weight", "lm_head"),
        ("model.norm.weight", "model.norm"),
        ("model.layers.x.weight", "model.layers.x"),  # not a numbered layer
        ("model.layers.3", "model.layers"),  # no parameter after the index
        ("scale", "scale"),
    ],
)
def test_layer_of(name, layer):
    assert layer_of(name) == layer


# ----------------------------------------------------------------------------- diff


def test_diff_sink_statistics_per_tensor_layer_and_total():
    sink = DiffSink()
    a0 = torch.tensor([3.0, 4.0])  # |a0| = 5
    b0 = torch.tensor([3.0, 4.5])
    sink.take("model.layers.10.w", a0, [a0, b0])
    a1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # |a1| = 1
    b1 = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    sink.take("model.layers.2.w", a1, [a1, b1])
    a2 = torch.tensor([0.0, 0.0, 0.0])  # |a2| = 0
    b2 = torch.tensor([0.0, 0.0, 0.0])
    sink.take("model.layers.2.b", a2, [a2, b2])
    assert sink.per["model.layers.10.w"] == {
        "elements": 2.0,
        "norm": 0.5,
        "relative": 0.1,
        "max_abs": 0.5,
        "changed": 1.0,
    }
    row = sink.per["model.layers.2.w"]
    assert (row["norm"], row["relative"], row["max_abs"], row["changed"]) == (2.0, 2.0, 2.0, 1.0)
    zero = sink.per["model.layers.2.b"]
    assert zero["norm"] == 0.0 and zero["changed"] == 0.0 and zero["relative"] == math.inf
    out = sink.close(None, [], [], None)
    assert list(out["layers"]) == ["model.layers.2", "model.layers.10"]
    assert list(out["tensors"]) == ["model.layers.2.b", "model.layers.2.w", "model.layers.10.w"]
    assert out["layers"]["model.layers.2"] == {
        "elements": 7.0,
        "norm": 2.0,
        "relative": 2.0,  # sqrt(4 / 1): the zero tensor adds nothing to either sum
        "max_abs": 2.0,
    }
    assert out["layers"]["model.layers.10"]["relative"] == pytest.approx(0.1)
    total = out["total"]
    assert total["tensors"] == 3 and total["max_abs"] == 2.0
    assert total["norm"] == pytest.approx(math.sqrt(0.25 + 4.0))
    assert total["relative"] == pytest.approx(math.sqrt(4.25 / 26.0))


def test_diff_sink_is_exact_in_low_precision_and_for_empty_tensors():
    sink = DiffSink()
    a = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    b = torch.tensor([1.0078125, 2.0], dtype=torch.bfloat16)  # one bf16 ulp above 1
    sink.take("x.w", a, [a, b])
    assert sink.per["x.w"]["max_abs"] == 2.0**-7 and sink.per["x.w"]["changed"] == 1.0
    e = torch.empty(0)
    sink.take("y.w", e, [e, e])
    assert sink.per["y.w"]["max_abs"] == 0.0 and sink.per["y.w"]["relative"] == math.inf
    out = sink.close(None, [], [], None)
    assert out["layers"]["y"]["relative"] == math.inf and out["layers"]["y"]["elements"] == 0.0


def test_diff_sink_with_nothing_taken():
    out = DiffSink().close(None, [], [], None)
    assert out["total"] == {"norm": 0.0, "relative": math.inf, "max_abs": 0.0, "tensors": 0}
    assert out["layers"] == {} and out["tensors"] == {}


# ----------------------------------------------------------------------------- shared


def test_unshared_copies_a_tensor_under_its_second_name():
    w = torch.arange(6.0).reshape(2, 3)
    other = torch.ones(2)
    out = _unshared({"embed.weight": w, "norm.weight": other, "lm_head.weight": w})
    assert list(out) == ["embed.weight", "norm.weight", "lm_head.weight"]
    assert out["embed.weight"] is w and out["norm.weight"] is other
    assert out["lm_head.weight"] is not w and torch.equal(out["lm_head.weight"], w)
    assert out["lm_head.weight"].untyped_storage().data_ptr() != w.untyped_storage().data_ptr()


def test_unshared_views_of_one_storage_and_empty_tensors():
    base = torch.arange(8.0)
    first, second = base[:4], base[4:]
    out = _unshared({"a": first, "b": second})
    assert out["a"] is first
    assert out["b"] is not second and torch.equal(out["b"], second)
    e1, e2 = torch.empty(0), torch.empty(0)
    out = _unshared({"x": e1, "y": e2})
    assert out["x"] is e1 and out["y"] is e2  # nothing to share


def test_nbytes():
    assert _nbytes(torch.bfloat16, (3, 4)) == 24
    assert _nbytes(torch.float32, []) == 4
    assert _nbytes(torch.int8, (0, 5)) == 0


# ----------------------------------------------------------------------------- model


def test_model_sink_returns_the_model_or_the_rebuilt_state():
    sink = ModelSink()
    assert not sink.keeps_base and not sink.wants_fingerprint
    edits = [SimpleNamespace(trained=["b", "a"]), SimpleNamespace(trained=["c", "a"])]
    assert sink.names(edits) == ["a", "b", "c"]
    with sink.staging(object()):
        sink.take("a", torch.zeros(1), [torch.ones(1)])
    model = torch.nn.Linear(2, 2)
    assert sink.close(SimpleNamespace(model=model), [], [], None) is model
    state = {"w": torch.zeros(1)}
    stateful = SimpleNamespace(model=None, state_dict=lambda: state)
    assert sink.close(stateful, [], [], None) is state
    assert sink.close(SimpleNamespace(model=None), [], [], None) is None
    assert DeltaSink.keeps_base and DeltaSink.wants_fingerprint
    assert not DiffSink.keeps_base


@pytest.mark.parametrize(
    "name, layer",
    [("layers.0.attn.weight", "layers.0"), ("h.3.mlp.c_fc.weight", "h.3"),
     ("blocks.11.ff.weight", "blocks.11")],
)  # fmt: skip
def test_layers_at_the_top_level_of_a_bare_backbone(name, layer):
    assert layer_of(name) == layer
