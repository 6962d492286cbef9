"""A masked LM fine-tuned with MeZO in your own loop, the way the MeZO paper prompts
RoBERTa: "<sentence> It was [MASK] ." scored on the label words only.

The model is a tiny RoBERTa built from a config over a word-level vocabulary (no
download), given a few seconds of backprop pre-training that teaches it half of the cue
words (test accuracy about 0.78); MeZO then fine-tunes it on all of them (about 1.00 after
400 steps). The loop is yours; ``mezo_ckpt.MeZO`` makes each step from two forward passes
and records it; the run replays onto the base (a state dict), bit for bit.

    python examples/masked_lm_loop.py                                  # about 15 s on a CPU
    python examples/masked_lm_loop.py --pretrain-steps 5 --steps 4     # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import RobertaConfig, RobertaForMaskedLM

import mezo_ckpt

POSITIVE = ["good", "fine", "lovely", "superb", "bright", "warm"]
NEGATIVE = ["bad", "awful", "dull", "grim", "cold", "poor"]
FILLER = ["the", "film", "was", "a", "story", "with", "plot", "and", "cast"]
VOCAB = ["<pad>", "<s>", "</s>", "<mask>", "it", "was", ".", "great", "terrible"]
VOCAB += POSITIVE + NEGATIVE + FILLER
ID = {w: i for i, w in enumerate(VOCAB)}
LABEL_WORDS = [ID["terrible"], ID["great"]]  # the verbalizer: label 0, label 1


def build_model() -> RobertaForMaskedLM:
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=40, type_vocab_size=1, pad_token_id=0,
    )  # fmt: skip
    return RobertaForMaskedLM(config)


def examples(n: int, seed: int, cues: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts "<s> w1 .. w6 it was <mask> . </s>" and labels (1: a positive word inside)."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for _ in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        words = [FILLER[int(i)] for i in torch.randint(0, len(FILLER), (6,), generator=g)]
        cue = (POSITIVE if label else NEGATIVE)[int(torch.randint(0, cues, (1,), generator=g))]
        words[int(torch.randint(0, 6, (1,), generator=g))] = cue
        rows.append([ID["<s>"], *(ID[w] for w in words), ID["it"], ID["was"], ID["<mask>"],
                     ID["."], ID["</s>"]])  # fmt: skip
        labels.append(label)
    return torch.tensor(rows), torch.tensor(labels)


def pretrain(model: RobertaForMaskedLM, steps: int) -> None:
    """A stand-in for pre-training (MeZO fine-tunes pre-trained models): a short masked-LM
    run with backprop that sees the prompt filled in for half of the cue words only. The
    base knows the format and half of the vocabulary's sentiment; fine-tuning with MeZO on
    every cue word must teach it the rest."""
    x, y = examples(2048, seed=3, cues=3)
    x = x.clone()
    x[x == ID["<mask>"]] = torch.tensor(LABEL_WORDS)[y]  # "... it was great ."
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    model.train()
    for step in range(steps):
        batch = x[(step * 64) % len(x) :][:64]
        mask = torch.rand(batch.shape, generator=g) < 0.15
        mask[:, -3] = True  # always the label word
        loss = model(
            input_ids=batch.masked_fill(mask, ID["<mask>"]), labels=batch.masked_fill(~mask, -100)
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.requires_grad_(False)


def label_logits(model: RobertaForMaskedLM, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    at_mask = logits[ids == ID["<mask>"]]  # one mask per prompt
    return at_mask[:, LABEL_WORDS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="folder for mlm.zst (default: temp)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="mezo-mlm-"))
    out.mkdir(parents=True, exist_ok=True)

    model = build_model()
    pretrain(model, a.pretrain_steps)
    base = {k: v.clone() for k, v in model.state_dict().items()}  # what replay starts from
    train_x, train_y = examples(512, seed=1)
    test_x, test_y = examples(256, seed=2)

    def accuracy() -> float:
        with torch.no_grad():
            return (label_logits(model, test_x).argmax(1) == test_y).float().mean().item()

    print(f"test accuracy before: {accuracy():.3f}")
    with mezo_ckpt.MeZO(model, lr=1e-3, eps=1e-3, output=out / "mlm.zst", overwrite=True) as opt:
        for step in range(a.steps):
            lo = (step * 32) % len(train_x)
            x, y = train_x[lo : lo + 32], train_y[lo : lo + 32]
            loss = opt.step(lambda x=x, y=y: F.cross_entropy(label_logits(model, x), y))
            if (step + 1) % 100 == 0 or step + 1 == a.steps:
                acc = accuracy()
                opt.record_eval({"accuracy": acc}, split="test")
                print(f"step {step + 1}: loss {loss:.3f}, test accuracy {acc:.3f}")

    rebuilt = mezo_ckpt.replay(out / "mlm.zst", base)  # the base as a state dict
    trained = model.state_dict()
    same = all(torch.equal(v, trained[k]) for k, v in rebuilt.items())
    print(f"trajectory: {out / 'mlm.zst'} ({(out / 'mlm.zst').stat().st_size:,} bytes)")
    print(f"replay matches the trained weights bit for bit: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
