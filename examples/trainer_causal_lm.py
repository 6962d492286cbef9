"""MezoTrainer: fine-tune a causal LM with ``transformers.Trainer`` and MeZO steps.

The model is a small Llama built from a config (no download; pass ``--model FOLDER`` for a
local checkpoint of your own). Everything is a ``TrainingArguments`` setting: learning rate
and scheduler, gradient accumulation (micro-batches under one MeZO direction), evaluation,
``save_steps``. The checkpoints are trajectories of a few kilobytes, and the run ends with
``OUT/trajectory.zst``, which ``mezo-ckpt replay`` and ``mezo-ckpt push`` take as it is.

    python examples/trainer_causal_lm.py               # about a minute on a laptop CPU
    python examples/trainer_causal_lm.py --steps 4     # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainingArguments

import mezo_ckpt

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "the",
    "dog",
    "ran",
    "to",
    "the",
    "red",
    "ball",
    "in",
    "the",
    "park",
]


def build_model(folder: str | None):
    if folder:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def sentences(n: int, seed: int) -> list[dict]:
    """Token ids of word sequences that follow WORDS cyclically from a random start."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        start = int(torch.randint(0, len(WORDS), (1,), generator=g))
        ids = torch.tensor([2 + (start + i) % len(WORDS) for i in range(16)])
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", default=None, help="a local model folder (default: tiny Llama)")
    ap.add_argument("--out", type=Path, default=None, help="output_dir (default: temp)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="mezo-trainer-"))

    model = build_model(a.model)
    args = TrainingArguments(
        str(out),
        max_steps=a.steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,  # one MeZO step over 2 micro-batches
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=max(1, a.steps // 20),
        eval_strategy="steps",
        eval_steps=max(2, a.steps // 3),
        save_steps=max(2, a.steps // 2),
        logging_steps=max(1, a.steps // 10),
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = mezo_ckpt.MezoTrainer(
        model=model,
        args=args,
        train_dataset=sentences(512, seed=1),
        eval_dataset=sentences(64, seed=2),
        mezo={"eps": 1e-3},
    )
    print("eval loss before:", round(trainer.evaluate()["eval_loss"], 4))
    trainer.train()
    print("eval loss after: ", round(trainer.evaluate()["eval_loss"], 4))

    trajectory = out / "trajectory.zst"
    rebuilt = mezo_ckpt.replay(trajectory, build_model(a.model))  # a fresh base
    trained = model.state_dict()
    same = all(torch.equal(v, trained[k]) for k, v in rebuilt.state_dict().items())
    weights = sum(t.numel() * t.element_size() for t in trained.values())
    print(f"trajectory: {trajectory} ({trajectory.stat().st_size:,} bytes; weights {weights:,})")
    for ckpt in sorted(out.glob("checkpoint-*")):
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        print(f"{ckpt.name}: {size:,} bytes")
    print(f"replay matches the trained weights bit for bit: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
