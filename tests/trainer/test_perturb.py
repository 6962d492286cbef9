"""Perturbed forwards (mezo_ckpt/trainer/perturb.py) compute the model at theta + s*eps*z.

The reference is a copy of the model whose trainable tensors are replaced by
``perturbed_copy`` (eager path) and run plainly: logits must be identical. Covered: GPT-2,
Llama and OPT (tied and untied heads, fp32 and bf16), a module that owns a parameter and
calls an owning child (nested scratch buffers), a module that returns a view of its weight
(the scratch buffer must not leak out), chunked big Linear layers and embedding rows.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tinymodels import tiny_model

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.core.stream import param_key
from mezo_ckpt.core.update import perturbed_copy
from mezo_ckpt.trainer import perturb as P
from mezo_ckpt.trainer.perturb import Perturber

SEED, EPS = 3, 1e-2


def explicit(model, names, step, lane, sign, kind="normal16"):
    """A copy of ``model`` with its trainable tensors set to theta + sign*eps*z."""
    m = copy.deepcopy(model)
    params = canonical_parameters(m)
    with torch.no_grad():
        for n in names:
            p = params[n]
            p.copy_(
                perturbed_copy(
                    p, param_key(SEED, n), step, lane, sign * EPS, kind=kind, backend="reference"
                )
            )
    return m


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tie", [True, False])
def test_perturbed_forward_equals_the_explicitly_perturbed_model(arch, dtype, tie):
    model = tiny_model(arch, dtype=dtype, tie=tie)
    names = sorted(canonical_parameters(model))
    pert = Perturber(model, names, SEED, "normal16", EPS)
    ids = torch.randint(1, 90, (3, 11), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in canonical_parameters(model).items()}
    for step, lane, sign in ((0, 0, 1), (0, 0, -1), (5, 2, 1)):
        with torch.inference_mode(), pert.perturbed(step, lane, sign):
            got = model(input_ids=ids).logits
        want = explicit(model, names, step, lane, sign)(input_ids=ids).logits
        assert torch.equal(got, want), (arch, step, sign)
    plain = model(input_ids=ids).logits
    assert not torch.equal(plain, got)
    for k, v in canonical_parameters(model).items():
        assert torch.equal(v, before[k]), k  # never written


def test_partial_trainable_set_perturbs_only_those():
    model = tiny_model("llama")
    names = [n for n in canonical_parameters(model) if ".layers.1." in n]
    pert = Perturber(model, names, SEED, "rademacher", EPS)
    ids = torch.arange(1, 12).view(1, -1)
    with torch.inference_mode(), pert.perturbed(1, 0, -1):
        got = model(input_ids=ids).logits
    want = explicit(model, names, 1, 0, -1, "rademacher")(input_ids=ids).logits
    assert torch.equal(got, want)


class ViewOut(torch.nn.Module):
    """Returns a view of its own weight (like a learned constant)."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.linspace(-1, 1, 24).view(4, 6))

    def forward(self, x):
        return self.table[: x.shape[0]]


class Outer(torch.nn.Module):
    """Owns a parameter and calls owning children inside its own forward."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.inner = torch.nn.Linear(6, 6)
        self.inner2 = torch.nn.Linear(6, 6)
        self.const = ViewOut()

    def forward(self, x):
        a = self.const(x)  # a view of a perturbed weight
        b = self.inner(x * self.scale)  # the child runs while self.scale is in use
        c = self.inner2(b)  # a sibling reuses the child's scratch buffer
        return a + c * self.scale + a


def test_nested_owners_and_views_of_weights_stay_correct():
    torch.manual_seed(0)
    model = Outer().eval()
    names = sorted(canonical_parameters(model))
    pert = Perturber(model, names, SEED, "normal16", EPS)
    x = torch.randn(3, 6)
    with torch.inference_mode(), pert.perturbed(2, 0, 1):
        got = model(x)
    want = explicit(model, names, 2, 0, 1)(x)
    assert torch.equal(got, want)
    # buffers are reused, not grown: at most one per (dtype, device, depth, slot)
    assert len(pert._scratch) <= 4


def test_chunked_linear_and_embedding_rows(monkeypatch):
    monkeypatch.setattr(P, "CHUNK_ELEMENTS", 256)  # every matrix takes the big-layer paths
    model = tiny_model("llama", tie=False)
    names = sorted(canonical_parameters(model))
    pert = Perturber(model, names, SEED, "normal16", EPS)
    ids = torch.randint(1, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), pert.perturbed(4, 1, 1):
        got = model(input_ids=ids).logits
    want = explicit(model, names, 4, 1, 1)(input_ids=ids).logits
    # chunked F.linear reorders nothing within a dot product, but BLAS may block
    # differently by shape: equal to float tolerance, and the same on every run
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.inference_mode(), pert.perturbed(4, 1, 1):
        again = model(input_ids=ids).logits
    assert torch.equal(got, again)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_embedding_subclass_reads_only_its_rows_through_its_own_forward(monkeypatch, dtype):
    """Gemma's scaled embedding (an nn.Embedding subclass with its own forward): the
    perturbed rows alone go through that forward (scale and padding_idx included), equal
    to the module run on the whole perturbed table; the big table is never copied."""
    from tinymodels import tiny_arch

    monkeypatch.setattr(P, "CHUNK_ELEMENTS", 256)
    model = tiny_arch("gemma3_text", dtype=dtype)
    emb = model.get_input_embeddings()
    assert type(emb) is not torch.nn.Embedding and emb.padding_idx == 0
    names = sorted(canonical_parameters(model))
    pert = Perturber(model, names, SEED, "normal16", EPS)
    table = emb.weight
    copies = []
    real = P.perturbed_copy
    monkeypatch.setattr(P, "perturbed_copy", lambda w, *a, **k: copies.append(w.numel()) or
                        real(w, *a, **k))  # fmt: skip
    ids = torch.tensor([[0, 5, 5, 9, 40], [3, 0, 7, 7, 1]])
    with torch.inference_mode(), pert.perturbed(2, 0, -1):
        got = emb(ids)
    assert emb.weight.numel() not in copies
    want = explicit(model, names, 2, 0, -1).get_input_embeddings()(ids)
    assert torch.equal(got, want)
    assert emb.weight is table and emb.padding_idx == 0  # restored


def test_perturbed_blocks_do_not_nest_and_need_a_sign():
    model = tiny_model("gpt2")
    pert = Perturber(model, sorted(canonical_parameters(model)), SEED, "normal16", EPS)
    with pytest.raises(ValueError), pert.perturbed(0, 0, 0):
        pass
    with (
        pert.perturbed(0, 0, 1),
        pytest.raises(RuntimeError, match="nest"),
        pert.perturbed(0, 0, -1),
    ):
        pass
    assert not pert.active


def test_an_instance_forward_and_hooks_compose_and_are_restored():
    """A forward already set on the instance (what accelerate and other wrappers do) runs
    inside the perturbation and is put back exactly; torch forward hooks still fire."""
    model = tiny_model("llama")
    names = list(canonical_parameters(model))
    mlp = model.model.layers[0].mlp.down_proj
    calls = []
    original = mlp.forward

    def wrapped(x):
        calls.append("instance")
        return original(x)

    mlp.forward = wrapped
    handle = mlp.register_forward_hook(lambda m, i, o: calls.append("hook"))
    pert = Perturber(model, names, SEED, "normal16", EPS)
    ids = torch.arange(1, 12).view(1, -1)
    with torch.inference_mode(), pert.perturbed(2, 0, 1):
        got = model(input_ids=ids).logits
    assert calls == ["instance", "hook"]
    assert mlp.__dict__["forward"] is wrapped  # restored, not deleted
    handle.remove()
    del mlp.forward
    want = explicit(model, names, 2, 0, 1)(input_ids=ids).logits
    assert torch.equal(got, want)
    with torch.inference_mode():  # and outside the block the plain model is back
        assert torch.equal(model(input_ids=ids).logits, tiny_model("llama")(input_ids=ids).logits)
