"""mezo_ckpt/trainer/heads.py: logits of the positions and rows scoring needs, for any
causal LM, decided by what the model is and checked against its own forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

from mezo_ckpt.trainer import heads
from mezo_ckpt.trainer.tasks import PromptTask, cross_entropy_terms, score_candidates

pytestmark = pytest.mark.filterwarnings("ignore")


def transformed(model_type: str, **kw):
    """A tiny model whose logits the architecture transforms (large enough to matter)."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, head_dim=8, pad_token_id=0, **kw,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)  # logits of several units
    return model


@pytest.mark.parametrize(
    "model_type,kw,attr",
    [
        ("gemma2", {"final_logit_softcapping": 0.5}, "softcap"),
        ("cohere", {"logit_scale": 3.0}, "scale"),
        ("granite", {"logits_scaling": 4.0}, "scale"),
    ],
)
def test_logit_transforms_are_applied_and_the_probe_sees_them(model_type, kw, attr):
    model = transformed(model_type, **kw)
    core = heads.lm_core(model)
    assert core is not None and getattr(core, attr) is not None
    ids = torch.randint(1, 96, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).logits[:, -2:]
        torch.testing.assert_close(heads.last_logits(model, ids, mask, 2), want)
        # without the transform the pieces disagree with the model: the probe refuses them
        assert not heads._agrees(model, dataclasses.replace(core, softcap=None, scale=None))


def test_candidate_rows_equal_the_full_head_under_a_transform():
    """Soft-capping is elementwise: the candidates' capped logits give the same candidate
    cross-entropy as the model's full log-probabilities."""
    model = transformed("gemma2", final_logit_softcapping=0.5)
    task = PromptTask(template="{text} =", verbalizer={"a": "+", "b": "-"})
    enc = task.encode(tiny_tokenizer(), [{"text": t, "label": "a"} for t in ("ab", "xyz", "q")])
    with torch.inference_mode():
        fast = score_candidates(model, enc, rows=lambda head, ids: head.weight[ids])
        model_logp = torch.log_softmax(model(input_ids=enc.input_ids[::2, :-1]).logits[:, -1], -1)
    full = model_logp[:, enc.cand_ids.view(3, 2)[0]].reshape(-1)
    torch.testing.assert_close(
        cross_entropy_terms(fast, enc), cross_entropy_terms(full, enc), rtol=1e-5, atol=1e-5
    )


def test_the_head_gets_contiguous_hidden_states():
    """A strided bf16 input made torch's CPU linear copy the whole head per sequence
    (781 MiB for 64 rows of a 100k vocabulary); the head now sees a contiguous input."""
    model = tiny_model("llama", dtype=torch.bfloat16)
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].is_contiguous())
    )
    ids = torch.randint(1, 96, (4, 9))
    with torch.inference_mode():
        heads.last_logits(model, ids, torch.ones_like(ids), 3)
    hook.remove()
    assert seen and all(seen)


class Wrapped(torch.nn.Module):
    """A causal LM without the usual pieces (no base_model / output embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model("gpt2")
        self.config = self.inner.config

    def forward(self, **kw):
        kw.pop("logits_to_keep", None)
        return self.inner(**kw)


def test_a_model_without_the_pieces_falls_back_to_its_forward():
    model = Wrapped()
    assert heads.lm_core(model) is None and not heads.takes_logits_to_keep(model)
    ids = torch.randint(1, 96, (2, 5))
    with torch.inference_mode():
        got = heads.last_logits(model, ids, torch.ones_like(ids), 2)
        want = model.inner(input_ids=ids).logits[:, -2:]
    torch.testing.assert_close(got, want)


def test_generation_feeds_the_head_contiguous_inputs():
    """generate() slices the last position's hidden state; the head gets it contiguous
    (and the hook is gone afterwards)."""
    from mezo_ckpt.trainer.tasks import generate

    model = tiny_model("llama", dtype=torch.bfloat16)
    head = model.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(args[0].is_contiguous()))
    task = PromptTask(template="{q} ->", target_field="a")
    enc = task.encode(tiny_tokenizer(), [{"q": "ab", "a": "c"}, {"q": "xyz w", "a": "d"}])
    generate(model, tiny_tokenizer(), enc, max_new_tokens=3, stop=[])
    hook.remove()
    assert seen and all(seen)
    assert not head._forward_pre_hooks
