#!/usr/bin/env python
"""Zero-shot probe of the embedded model on the embedded sentiment task.

For each prompt template, the prediction is the label word whose next-token
log-probability at the answer position is higher. Label words must be single tokens.

    python scripts/probe_zero_shot.py --split dev --n 500 --threads 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from mezo_ckpt.data import load_split
from mezo_ckpt.models.embedded import default_model_dir

CHAT_PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n"
)


@dataclass(frozen=True)
class Template:
    """A prompt format plus the verbalizer of each label."""

    name: str
    fmt: str
    positive: str
    negative: str


TEMPLATES = [
    Template("it_was", "{text} It was", " great", " terrible"),
    Template("review_sentiment", "Review: {text}\nSentiment:", " positive", " negative"),
    Template("movie_was", "{text} Overall, the movie was", " good", " bad"),
    Template(
        "question",
        'Review: "{text}"\nQuestion: Is this review positive or negative?\nAnswer:',
        " positive",
        " negative",
    ),
    Template(
        "chat",
        CHAT_PREFIX + "Is the sentiment of this movie review positive or negative? "
        "Answer with one word.\n\n{text}<|im_end|>\n<|im_start|>assistant\n",
        "positive",
        "negative",
    ),
]


def single_token(tok, word: str) -> int:
    """Token id of ``word``; raises if it is not exactly one token."""
    ids = tok(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"label word {word!r} is {len(ids)} tokens: {ids}")
    return ids[0]


@torch.inference_mode()
def score(model, tok, prompts: list[str], label_ids: list[int], batch: int) -> torch.Tensor:
    """Log-probs (len(prompts), len(label_ids)) of the label tokens after each prompt."""
    enc = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out = torch.empty(len(enc), len(label_ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):  # right padding: positions of real tokens unchanged
            ids[r, : len(enc[i])] = torch.tensor(enc[i])
            mask[r, : len(enc[i])] = 1
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(idx)), mask.sum(1) - 1]
        logp = model.lm_head(last).float().log_softmax(-1)
        out[idx] = logp[:, label_ids]
    return out


def auroc(margin: torch.Tensor, gold: torch.Tensor) -> float:
    """Area under the ROC curve of ``margin`` for ``gold`` (ties count one half)."""
    pos, neg = margin[gold], margin[~gold]
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return (greater + 0.5 * ties).item()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--templates", nargs="*", help="subset of template names")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    folder = default_model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    rows = load_split(args.split)[: args.n]
    gold = torch.tensor([r["label"] == "positive" for r in rows])

    print("| template | verbalizer | accuracy | pred. positive | acc. @ median | AUROC | seconds |")
    print("|---|---|---|---|---|---|---|")
    for t in TEMPLATES:
        if args.templates and t.name not in args.templates:
            continue
        label_ids = [single_token(tok, t.positive), single_token(tok, t.negative)]
        prompts = [t.fmt.format(text=r["text"]) for r in rows]
        merged = sum(  # the answer token must not merge with the prompt's last token
            tok(p + t.positive, add_special_tokens=False).input_ids
            != tok(p, add_special_tokens=False).input_ids + label_ids[:1]
            for p in prompts
        )
        if merged:
            print(f"warning: {t.name}: {merged} prompts merge with the label token")
        t0 = time.perf_counter()
        logp = score(model, tok, prompts, label_ids, args.batch)
        secs = time.perf_counter() - t0
        margin = logp[:, 0] - logp[:, 1]
        pred = margin > 0
        acc = (pred == gold).float().mean().item()
        acc_med = ((margin > margin.median()) == gold).float().mean().item()
        verb = f"`{t.positive!r}`/`{t.negative!r}`"
        print(
            f"| {t.name} | {verb} | {acc:.3f} | {pred.float().mean().item():.3f} "
            f"| {acc_med:.3f} | {auroc(margin, gold):.3f} | {secs:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
