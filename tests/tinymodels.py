"""Tiny causal LMs built from configs, initialised from the portable Philox stream.

torch's own initialisers use torch.randn, whose bits differ across CPU capabilities and
devices; initialising from mezo_ckpt.core.stream makes the tiny bases (and so the golden
trajectories' fingerprints) identical on every machine.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
)

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.core.stream import param_key, z_reference

VOCAB = 96


def tiny_config(arch: str, *, tie: bool = True):
    if arch == "gpt2":
        return GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=64,
            tie_word_embeddings=tie,
        )
    if arch == "llama":
        return LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            tie_word_embeddings=tie,
        )
    if arch == "opt":
        return OPTConfig(
            num_hidden_layers=2,
            hidden_size=32,
            ffn_dim=64,
            num_attention_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
            tie_word_embeddings=tie,
        )
    raise ValueError(arch)


def tiny_model(
    arch: str = "llama", *, dtype: torch.dtype = torch.float32, tie: bool = True, seed: int = 1234
):
    """A tiny model whose weights depend only on (arch, tie, seed), on any machine."""
    config = tiny_config(arch, tie=tie)
    config.architectures = [
        {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "opt": "OPTForCausalLM"}[arch]
    ]
    return portable_init(AutoModelForCausalLM.from_config(config), dtype=dtype, seed=seed)


def portable_init(model, *, dtype: torch.dtype = torch.float32, seed: int = 1234):
    """Every parameter from the portable stream (norm weights around 1), cast to
    ``dtype``, in eval mode and frozen: the same bits on every machine."""
    with torch.no_grad():
        for name, p in canonical_parameters(model).items():
            z = z_reference(param_key(seed, "init/" + name), 0, 0, 0, p.numel(), "normal16")
            if p.ndim == 1 and ("norm" in name or "ln" in name):
                p.copy_((1.0 + 0.0625 * z).view_as(p))
            else:
                p.copy_((0.0625 * z).view_as(p))
    model = model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def tiny_tokenizer():
    """A character-level tokenizer over printable ASCII (VOCAB entries), no download."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]  # 95 printable characters
    vocab = {"<pad>": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>", eos_token="<pad>"
    )


#: Masked LMs (MeZO's medium models): model_type -> its ...ForMaskedLM class name.
MASKED = {"roberta": "RobertaForMaskedLM", "bert": "BertForMaskedLM"}
#: The masked tokenizer's special tokens, after the VOCAB characters.
BOS, EOS, MASK = VOCAB, VOCAB + 1, VOCAB + 2


def masked_tokenizer(words: tuple[str, ...] = ()):
    """tiny_tokenizer's characters plus <s>, </s> and <mask>; every prompt is wrapped in
    <s> ... </s>, as RoBERTa's tokenizer wraps it. ``words`` are added as whole tokens
    after those (label words such as " great" are then one token, as in RoBERTa)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    vocab.update({"<s>": BOS, "</s>": EOS, "<mask>": MASK})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>", bos_token="<s>",
        eos_token="</s>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )  # fmt: skip
    if words:
        out.add_tokens(list(words))
    return out


def tiny_masked(
    model_type: str = "roberta",
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 1234,
    vocab_size: int = VOCAB + 3,
):
    """A tiny masked LM of ``model_type`` (a key of MASKED) with the portable init."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.for_model(
        model_type, vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=72,
        type_vocab_size=1, pad_token_id=0,
    )  # fmt: skip
    config.architectures = [MASKED[model_type]]
    return portable_init(AutoModelForMaskedLM.from_config(config), dtype=dtype, seed=seed)


def save_tiny_masked(
    folder, model_type: str = "roberta", *, dtype=torch.float32, words: tuple[str, ...] = ()
):
    """Write a tiny masked LM + its tokenizer folder (see :func:`save_tiny`); ``words``:
    extra whole-word tokens (see :func:`masked_tokenizer`)."""
    tok = masked_tokenizer(words)
    model = tiny_masked(model_type, dtype=dtype, vocab_size=len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def save_tiny(
    folder,
    arch: str = "llama",
    *,
    dtype: torch.dtype = torch.float32,
    tie: bool = True,
    seed: int = 1234,
):
    """Write a tiny model + tokenizer folder that `from_pretrained` (and our CLI) loads."""
    model = tiny_model(arch, dtype=dtype, tie=tie, seed=seed)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


def toy_sentiment(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy task: texts made of 'good'/'bad' words; label = majority."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(["good", "bad", "fine", "dull", "nice", "poor"]) for _ in range(5)]
        pos = sum(w in ("good", "fine", "nice") for w in words)
        out.append({"text": " ".join(words), "label": "pos" if pos >= 3 else "neg"})
    return out


#: Tiny configs of the architectures people fine-tune with MeZO (model_type -> extra
#: settings over MATRIX_COMMON); tests/trainer/test_architectures.py trains each.
MATRIX_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    pad_token_id=0,
)
MATRIX = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "gemma2": {"head_dim": 8},
    "gemma3_text": {"head_dim": 8},
    "phi3": {},
    "olmo": {},
    "olmo2": {},
    "gpt_neox": {},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "gpt2": {},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "bloom": {},
    "stablelm": {},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
    },
}


def tiny_arch(model_type: str, *, dtype: torch.dtype = torch.float32, seed: int = 1234):
    """A tiny model of ``model_type`` (a key of MATRIX) with the portable init."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **MATRIX_COMMON, **MATRIX[model_type])
    model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    return portable_init(model, dtype=dtype, seed=seed)
