"""MezoTrainer and mezo_ckpt.MeZO side by side: step time, peak memory, checkpoint bytes.

Same model (a Llama built from a config, fp32, or ``--model FOLDER``), same batch of
token sequences, same loss (the model's causal-LM loss), 2 threads by default:

* ``forward2``: two plain forwards of the batch under ``torch.inference_mode`` (what the
  two loss evaluations of any MeZO step cost at least).
* ``optimizer``: one ``mezo_ckpt.MeZO.step`` (the step machinery ``mezo-ckpt train``
  runs: ``take_step`` over ``MezoStep`` and ``Perturber``, the journal write included)
  on a second copy of the model.
* ``trainer``: one ``MezoTrainer`` step as ``Trainer.train`` runs it (data loader,
  collation, callbacks, logging, the MeZO step), timed by a callback from
  ``on_step_begin`` to ``on_step_end``. The callback runs one ``forward2`` and one
  ``optimizer`` step right after each trainer step, so the three are interleaved and
  background load hits them alike; reported are medians over rounds of the per-round
  ratios.

Memory: each of ``inference`` (forwards only) and ``trainer`` (3 steps) runs in its own
subprocess that imports the same libraries and builds the same model and data; peak RSS
(VmHWM) is then reset, so the peak is the resident set plus what the work adds.
Checkpoint bytes: ``checkpoint-1`` of a MezoTrainer vs of a standard ``Trainer`` (AdamW,
one backprop step) of the same model.

    PYTHONPATH=. python benchmarks/bench_trainer.py              # ~20M-parameter Llama
    PYTHONPATH=. python benchmarks/bench_trainer.py --model embedded   # SmolLM2-135M
    PYTHONPATH=. python benchmarks/bench_trainer.py --tiny       # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model  # noqa: E402


def build(args):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if args.model:
        folder = args.model
        if folder == "embedded":
            from mezo_ckpt.models.embedded import default_model_dir

            folder = default_model_dir(progress=False)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.manual_seed(0)
    size = (32, 2, 64) if args.tiny else (384, 6, 1024)
    hidden, layers, inter = size
    config = LlamaConfig(
        vocab_size=1024 if args.tiny else 8192, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def dataset(args, n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (n, args.seq_len), generator=g)
    return [{"input_ids": r, "labels": r.clone()} for r in ids]


def batch_of(args):
    import torch

    rows = dataset(args, args.batch_size)
    ids = torch.stack([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids.clone()}


def training_args(out, args, steps, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(
        str(out), max_steps=steps, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-6, report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=1000,
        seed=0, **{"save_steps": 10**6, **kw},
    )  # fmt: skip


def time_steps(args) -> list[dict]:
    import torch
    from transformers import TrainerCallback

    import mezo_ckpt

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    model, shadow = build(args), build(args)
    batch = batch_of(args)
    opt = mezo_ckpt.MeZO(shadow, lr=1e-6, output=tmp / "opt.zst")
    rounds: list[dict] = []

    def forward2() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(2):
                shadow(**batch).loss.item()
        return time.perf_counter() - t

    def optimizer() -> float:
        t = time.perf_counter()
        opt.step(lambda: shadow(**batch).loss)
        return time.perf_counter() - t

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            took = time.perf_counter() - self.t
            rounds.append({"trainer": took, "forward2": forward2(), "optimizer": optimizer()})

    trainer = mezo_ckpt.MezoTrainer(
        model=model,
        args=training_args(tmp / "tr", args, args.repeats + 1),
        train_dataset=dataset(args, args.batch_size * (args.repeats + 1)),
        callbacks=[Clock()],
    )
    trainer.train()
    opt.close()
    return rounds[1:]  # the first round warms up


def memory_child(args) -> None:
    """One subprocess: build, reset the peak, run the mode, print JSON."""
    import torch

    torch.set_num_threads(args.threads)
    import mezo_ckpt

    mezo_ckpt.MezoTrainer  # noqa: B018 - both modes import the same libraries first
    model = build(args)
    data = dataset(args, args.batch_size * 3)
    batch = batch_of(args)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    if args.measure == "inference":
        with torch.inference_mode():
            for _ in range(6):
                model(**batch).loss.item()
    else:
        out = Path(tempfile.mkdtemp(prefix="bench-trainer-mem-"))
        trainer = mezo_ckpt.MezoTrainer(model=model, args=training_args(out, args, 3),
                                        train_dataset=data)  # fmt: skip
        trainer.train()
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"mode": args.measure, "peak_kib": hwm}))


def memory(args) -> dict[str, int]:
    out = {}
    for mode in ("inference", "trainer"):
        cmd = [sys.executable, __file__, "--measure", mode, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]  # fmt: skip
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--model", args.model] if args.model else []
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])["peak_kib"]
    return out


def checkpoint_bytes(args) -> dict[str, int]:
    import torch
    from transformers import Trainer

    import mezo_ckpt

    torch.set_num_threads(args.threads)
    sizes = {}
    for name, cls in (("MezoTrainer", mezo_ckpt.MezoTrainer), ("Trainer (AdamW)", Trainer)):
        out = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
        model = build(args)
        if cls is Trainer:
            model.train()
        trainer = cls(model=model, args=training_args(out, args, 1, save_steps=1),
                      train_dataset=dataset(args, args.batch_size))  # fmt: skip
        trainer.train()
        ckpt = out / "checkpoint-1"
        sizes[name] = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a smoke test (numbers mean nothing)")
    ap.add_argument(
        "--model", default=None, help="a local model folder, or 'embedded' (SmolLM2-135M)"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", choices=("inference", "trainer"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        return memory_child(args)
    import torch

    rounds = time_steps(args)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratio = {
        k: statistics.median(r[k] / r["forward2"] for r in rounds) for k in ("optimizer", "trainer")
    }
    tr_vs_opt = statistics.median(r["trainer"] / r["optimizer"] for r in rounds)
    mem = memory(args)
    ck = checkpoint_bytes(args)
    n = sum(p.numel() for p in build(args).parameters())
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"Python {platform.python_version()}, {args.threads} threads, "
          f"{datetime.date.today()}")  # fmt: skip
    kind = args.model or ("tiny Llama from a config" if args.tiny else "Llama from a config")
    print(f"Model: {kind}, {n / 1e6:.1f} M parameters, fp32; batch "
          f"{args.batch_size} x {args.seq_len} tokens; {len(rounds)} rounds\n")  # fmt: skip
    print("| step | median s | x two forwards | x MeZO.step |")
    print("|---|---|---|---|")
    print(f"| two plain forwards | {med['forward2']:.4f} | 1.00 | |")
    print(f"| `MeZO.step` (the CLI's step machinery) | {med['optimizer']:.4f} | "
          f"{ratio['optimizer']:.3f} | 1.00 |")  # fmt: skip
    print(f"| `MezoTrainer` step | {med['trainer']:.4f} | {ratio['trainer']:.3f} | "
          f"{tr_vs_opt:.3f} |\n")  # fmt: skip
    print("| peak RSS in the steps | MiB | x inference |")
    print("|---|---|---|")
    for k in ("inference", "trainer"):
        print(f"| {k} | {mem[k] / 1024:.0f} | {mem[k] / mem['inference']:.2f} |")
    print("\n| checkpoint-1 | bytes |")
    print("|---|---|")
    for k, v in ck.items():
        print(f"| {k} | {v:,} |")
    return None


if __name__ == "__main__":
    main()
