"""The MeZO paper's protocol on a masked LM, end to end: k-shot draws, an lr grid over
seeds, and the mean (std) table, with `mezo-ckpt sweep`.

A tiny RoBERTa over a word-level vocabulary (no download) is given a few seconds of
backprop pre-training (see masked_lm_loop.py) and saved as a model folder with its
tokenizer; the movie-review-like data goes to JSONL files. `mezo-ckpt sweep` then runs
`train` for every (lr, seed): 16 examples per class drawn from the train file by the
seed, prompts "<s> ... it was <mask> . </s>" scored on the label words at the mask. The
best setting's first run is replayed and checked against the fingerprint the trainer
recorded of its trained weights.

    python examples/masked_lm_sweep.py                      # a few minutes on a CPU
    python examples/masked_lm_sweep.py --pretrain-steps 5 --steps 4 --seeds 1,2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from masked_lm_loop import ID, VOCAB, build_model, examples, pretrain

import mezo_ckpt


def tokenizer():
    """A word-level tokenizer over VOCAB that wraps prompts in <s> ... </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=ID, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", ID["<s>"]), ("</s>", ID["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>", bos_token="<s>",
        eos_token="</s>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )  # fmt: skip


def write_split(path: Path, n: int, seed: int) -> None:
    x, y = examples(n, seed=seed)
    with open(path, "w", encoding="utf-8") as f:
        for row, label in zip(x.tolist(), y.tolist()):
            words = [VOCAB[i] for i in row[1:7]]  # the six words before "it was <mask> ."
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--seeds", default="13,21,42")
    ap.add_argument("--out", type=Path, default=None, help="folder for everything (default: temp)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="mezo-sweep-"))
    out.mkdir(parents=True, exist_ok=True)

    model = build_model()
    pretrain(model, a.pretrain_steps)
    model.config.architectures = ["RobertaForMaskedLM"]
    model.save_pretrained(out / "base")
    tokenizer().save_pretrained(out / "base")
    write_split(out / "train.jsonl", 512, seed=1)
    write_split(out / "test.jsonl", 256, seed=2)

    cmd = [sys.executable, "-m", "mezo_ckpt", "sweep", "--grid", "lr=3e-4,1e-3",
           "--seeds", a.seeds, "-o", str(out / "grid"), "--",
           "--model", str(out / "base"), "--train-file", str(out / "train.jsonl"),
           "--test-file", str(out / "test.jsonl"), "--template", "{text} it was {mask} .",
           "--verbalizer", "0=terrible,1=great", "--k-shot", "16", "--batch-size", "32",
           "--steps", str(a.steps), "--eval-every", "0", "--max-length", "32"]  # fmt: skip
    subprocess.run(cmd, check=True)

    table = json.loads((out / "grid" / "results.json").read_text())
    best = next(s for s in table["settings"] if s["best"])
    run = next(r for r in table["runs"] if r["setting"] == best["setting"])
    rebuilt = mezo_ckpt.replay(run["trajectory"], str(out / "base"))
    same = rebuilt.mezo_ckpt["verified"] == "fingerprint"
    print(f"best setting by dev: {best['setting']}; replayed {run['trajectory']}")
    print(f"replay matches the trained weights bit for bit: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
