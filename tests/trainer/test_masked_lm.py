"""Masked LMs (RoBERTa, BERT: MeZO's medium models) in `train` and the Python API.

Prompt-based fine-tuning as MeZO does it: the template holds a ``{mask}`` slot, the label
words' logits at the mask are the scores, cross-entropy over them the loss. Tiny models
built from configs (tests/tinymodels.py) train and replay bit for bit (full, LoRA,
prefix; fp32 and bf16 with stochastic rounding), lr = 0 leaves them identical, the head is
read at the mask only and at the label rows only, and a perturbed forward scores what the
explicitly perturbed model scores.
"""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from helpers_train import assert_same, config, state, write_jsonl
from tinymodels import EOS, MASK, masked_tokenizer, save_tiny_masked, tiny_masked, toy_sentiment

import mezo_ckpt
from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.core.stream import param_key
from mezo_ckpt.core.update import perturbed_copy
from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.models.base import MASKED, is_masked_lm, lm_kind
from mezo_ckpt.trainer import train
from mezo_ckpt.trainer.heads import masked_head
from mezo_ckpt.trainer.objectives import Objective
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.tasks import PromptTask, _keep_mask, score_candidates

pytestmark = pytest.mark.filterwarnings("ignore")

TEMPLATE = "{text} It was{mask}."
VERBALIZER = {"pos": "+", "neg": "-"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    return {
        "train_file": write_jsonl(d / "train.jsonl", toy_sentiment(64, 0)),
        "dev_file": write_jsonl(d / "dev.jsonl", toy_sentiment(16, 1)),
    }


def folder_of(tmp_path, model_type: str, dtype: torch.dtype = torch.float32):
    folder = tmp_path / f"{model_type}-{dtype}".replace("torch.", "")
    return str(folder), save_tiny_masked(folder, model_type, dtype=dtype)


def run(folder, data, out, **kw):
    kw.setdefault("template", TEMPLATE)
    kw.setdefault("max_length", 64)  # the tiny models have 71/72 positions
    cfg = config(folder, data, out, steps=3, eval_every=0, eval_examples=16, **kw)
    return train(cfg, progress=False, keep_model=True, log=lambda s: None)


def task() -> PromptTask:
    return PromptTask(template=TEMPLATE, verbalizer=VERBALIZER, masked=True)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_a_masked_lm_trains_and_replays_bit_for_bit(model_type, data, tmp_path):
    for dtype, name, rounding in (
        (torch.float32, "float32", "nearest"),
        (torch.bfloat16, "bfloat16", "stochastic"),
    ):
        folder, base = folder_of(tmp_path, model_type, dtype)
        assert is_masked_lm(base) and masked_head(base) is not None
        out = tmp_path / f"{name}.zst"
        result = run(folder, data, out, dtype=name, rounding=rounding, lr=3e-2)
        trained = state(result.model)
        assert type(result.model).__name__.endswith("ForMaskedLM")
        assert any(not torch.equal(trained[k], v) for k, v in state(base).items())
        rebuilt = mezo_ckpt.replay(out, folder)
        assert rebuilt.mezo_ckpt["verified"] == "fingerprint"
        assert type(rebuilt).__name__ == type(base).__name__
        assert_same(state(rebuilt), trained)
        loaded, tokenizer = mezo_ckpt.load(out, base=folder, progress=False)
        assert type(loaded).__name__ == type(base).__name__ and tokenizer.mask_token_id == MASK
        assert_same(state(loaded), trained)
    result = run(folder, data, tmp_path / "lr0.zst", dtype="bfloat16", rounding="stochastic",
                 lr=0.0)  # fmt: skip
    assert_same(state(result.model), state(base))


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
@pytest.mark.parametrize("peft", ["lora", "prefix"])
def test_a_masked_lm_adapter_trains_and_replays(model_type, peft, data, tmp_path):
    """The default LoRA targets (q_proj, v_proj) become peft's for the type (query,
    value); peft wraps a masked LM as a feature extractor; the adapter replays."""
    folder, _ = folder_of(tmp_path, model_type)
    out = tmp_path / f"{peft}.zst"
    result = run(folder, data, out, peft=peft, lr=3e-1 if peft == "prefix" else 3e-2, eps=1e-1)
    trained = state(result.model)
    rebuilt = mezo_ckpt.replay(out, folder)
    assert rebuilt.mezo_ckpt["verified"] == "fingerprint"
    assert_same(state(rebuilt), trained)
    header = mezo_ckpt.trajectory.read_trajectory(out).header
    if peft == "lora":
        assert header.peft.config["target_modules"] == ["query", "value"]
        assert all(".query." in n or ".value." in n for n in header.trainable)


def test_the_header_records_a_masked_prompt(data, tmp_path):
    folder, _ = folder_of(tmp_path, "roberta")
    out = tmp_path / "r.zst"
    run(folder, data, out)
    config = mezo_ckpt.trajectory.read_trajectory(out).header.config
    assert config["resolved_task"]["masked_lm"] is True
    assert config["resolved_task"]["template"] == TEMPLATE


def test_the_built_in_task_uses_its_masked_prompt_for_a_masked_lm(tmp_path):
    """`train --model <masked LM>` with the embedded task: MeZO's SST-2 prompt with the
    mask where the word goes (the causal prompt has no slot)."""
    folder, _ = folder_of(tmp_path, "roberta")
    settings = dict(model=folder, steps=1, eval_every=0, eval_examples=4, eval_test=False,
                    train_examples=8, batch_size=4, verbalizer={"positive": "+", "negative": "-"},
                    output=str(tmp_path / "b.zst"))  # fmt: skip
    with pytest.raises(ConfigError, match="--max-length 96 is more than the 71 positions"):
        train(progress=False, log=lambda s: None, **settings)  # RoBERTa's start after pad
    result = train(progress=False, log=lambda s: None, max_length=71, **settings)
    assert result.steps == 1
    header = mezo_ckpt.trajectory.read_trajectory(tmp_path / "b.zst").header
    assert header.config["resolved_task"]["template"] == "{text} It was{mask}."


def test_the_cli_trains_a_masked_lm(data, tmp_path):
    folder, _ = folder_of(tmp_path, "bert")
    out = tmp_path / "cli.zst"
    args = ["train", "--model", folder, "--train-file", data["train_file"], "--dev-file",
            data["dev_file"], "--template", TEMPLATE, "--verbalizer", "pos=+,neg=-",
            "--steps", "2", "--batch-size", "4", "--eval-every", "0", "--eval-examples", "8",
            "--no-eval-test", "--max-length", "64", "-o", str(out), "-q"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["replay", str(out), "--base", folder, "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert lm_kind({"architectures": ["BertForMaskedLM"]}) == MASKED


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_label_rows_at_the_mask_equal_the_models_logits(model_type):
    model = tiny_masked(model_type)
    tok = masked_tokenizer()
    enc = task().encode(tok, toy_sentiment(5))
    asked = []

    def rows(head, ids):
        asked.append(ids.tolist())
        return head.weight[ids]

    with torch.inference_mode():
        fast = score_candidates(model, enc, rows=rows)
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    want = logits[torch.arange(5), enc.mask_pos][:, enc.cand_ids.view(5, 2)[0]].reshape(-1)
    assert asked == [sorted(tok(["+", "-"], add_special_tokens=False)["input_ids"][i][0]
                            for i in range(2))]  # fmt: skip
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score_candidates(model, enc), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_a_perturbed_forward_scores_what_the_perturbed_model_scores(model_type):
    """The head's transform, the label rows of the tied output layer and its bias are all
    perturbed (the bias through its own rows): the same scores as a copy of the model
    whose every tensor is theta + eps z, read from its full logits."""
    model = tiny_masked(model_type)
    tok = masked_tokenizer()
    enc = task().encode(tok, toy_sentiment(6))
    names = sorted(canonical_parameters(model))
    pert = Perturber(model, names, 3, "normal16", 0.05)
    obj = Objective(task(), "ce", model, tok, pert)
    with torch.inference_mode(), pert.perturbed(2, 0, -1):
        fast = obj.scores(enc)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in canonical_parameters(moved).items():
            p.copy_(perturbed_copy(p, param_key(3, n), 2, 0, -0.05, kind="normal16"))
    with torch.inference_mode():
        want = score_candidates(moved, enc)
        plain = obj.scores(enc)
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, want)


def test_a_head_that_does_not_reproduce_the_logits_is_not_used():
    model = tiny_masked("roberta")
    model.lm_head.forward = lambda features, **kw: torch.zeros(*features.shape[:-1], 99)
    assert masked_head(model) is None


# ----------------------------------------------------------------------------- encoding


def test_rows_are_right_padded_with_the_mask_in_its_slot():
    tok = masked_tokenizer()
    enc = task().encode(tok, [{"text": "ab", "label": "pos"}, {"text": "abcdef", "label": "neg"}])
    assert enc.input_ids.shape[0] == 2 and enc.n_cands == [2, 2]
    for row, pos, att in zip(enc.input_ids, enc.mask_pos, enc.attention_mask):
        assert int(row[int(pos)]) == MASK
        n = int(att.sum())
        assert att[:n].all() and not att[n:].any()  # right padding
        assert int(row[n - 1]) == EOS
    assert enc.gold.tolist() == [0, 1]


def test_truncation_keeps_the_mask_and_the_special_tokens():
    assert _keep_mask(list(range(10)), 7, 6) == ([0, 5, 6, 7, 8, 9], True)
    assert _keep_mask(list(range(10)), 1, 6) == ([0, 1, 2, 3, 4, 9], True)
    assert _keep_mask(list(range(10)), 3, 5) == ([0, 3, 4, 5, 9], True)  # both sides
    assert _keep_mask(list(range(4)), 2, 8) == ([0, 1, 2, 3], False)
    tok = masked_tokenizer()
    long = PromptTask(template="{mask}: {text}", verbalizer=VERBALIZER, masked=True, max_length=8)
    enc = long.encode(tok, [{"text": "x" * 40, "label": "pos"}])
    assert enc.truncated == 1 and enc.input_ids.shape[1] == 8
    assert int(enc.input_ids[0, int(enc.mask_pos[0])]) == MASK


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"template": "{text} It was"}, "one {mask} slot"),
        ({"template": "{mask} {text} {mask}"}, "one {mask} slot"),
        ({"target_field": "answer"}, "classification task"),
        ({"options_field": "options"}, "classification task"),
        ({"chat_template": True}, "not masked LMs"),
    ],
)
def test_a_masked_task_refuses_what_a_mask_cannot_score(kw, match):
    with pytest.raises(ConfigError, match=match):
        PromptTask(**{"template": TEMPLATE, "verbalizer": VERBALIZER, "masked": True, **kw})


def test_label_words_must_be_one_token_and_examples_hold_no_mask():
    tok = masked_tokenizer()
    two = PromptTask(template=TEMPLATE, verbalizer={"pos": " ++", "neg": "-"}, masked=True)
    with pytest.raises(ConfigError, match="one token at its mask"):
        two.check_tokens(tok)
    with pytest.raises(ConfigError, match="one token at its mask"):
        two.encode(tok, [{"text": "a", "label": "pos"}])
    with pytest.raises(DataError, match="2 mask tokens"):
        task().encode(tok, [{"text": "a <mask> b", "label": "pos"}])


def test_a_causal_model_with_a_mask_slot_is_told_why(data, tmp_path):
    from tinymodels import save_tiny

    folder = tmp_path / "causal"
    save_tiny(folder)
    with pytest.raises(DataError, match="a causal LM continues the prompt instead"):
        run(str(folder), data, tmp_path / "c.zst")
    assert not (tmp_path / "c.zst").exists()


def test_a_masked_lm_generation_task_is_refused_for_what_it_is(data, tmp_path):
    folder, _ = folder_of(tmp_path, "roberta")
    with pytest.raises(ConfigError, match="use a classification task"):
        run(folder, data, tmp_path / "g.zst", target_field="label", verbalizer=None)
    assert not (tmp_path / "g.zst").exists()


def test_a_masked_lm_without_a_slot_in_a_custom_template_is_refused(data, tmp_path):
    folder, _ = folder_of(tmp_path, "roberta")
    with pytest.raises(ConfigError, match="one {mask} slot"):
        run(folder, data, tmp_path / "m.zst", template="{text} It was")
