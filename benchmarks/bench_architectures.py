"""The supported-models matrix, measured: per architecture and dtype, a MeZO step's time
against two plain forwards, and the peak RSS of a step and of an evaluation against plain
inference on the same batch.

Each architecture of ``tests/tinymodels.py``'s MATRIX is built from its config at a small
but not tiny size (``--hidden``, ``--layers``, a ``--vocab``-token vocabulary: the output
layer is what dtype and scoring choices make expensive), with the portable init, in fp32
and in bf16 (stochastic rounding). Every (architecture, dtype, mode) runs in its own
subprocess that imports the same libraries and builds the same run (the recipe's setup:
model, task, trainable set, step); then the peak RSS (VmHWM) is reset and the process does
one thing:

* ``inference``: two plain forwards of the training batch, three times: the decoder, then
  the output layer on the last position's hidden state (contiguous), under
  ``torch.inference_mode``. (HF's own ``model(..., logits_to_keep=1)`` slices the hidden
  states, and torch's CPU ``linear`` then copies the whole output layer per sequence in
  bf16: a baseline that would flatter every ratio.)
* ``step``: three MeZO steps as the recipe runs them (perturbed forwards, record, update);
  the peak is read, then three more steps interleaved with two plain forwards each give
  the time ratio.
* ``eval``: one evaluation of the dev split (``--eval-examples``) as the recipe runs it.

Reported: step / two forwards (median of the 3 interleaved rounds), and peak RSS of the
step and of the evaluation / inference (the resident set after setup is common to all
three, so the ratios compare what the work adds on top of the same base).

    PYTHONPATH=. python benchmarks/bench_architectures.py                 # all, ~15 min
    PYTHONPATH=. python benchmarks/bench_architectures.py --archs llama,gemma3_text
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _machine import cpu_model  # noqa: E402


def peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM")) / 1024


def child(args) -> None:
    import tinymodels
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.core.stream import param_key, z_reference
    from mezo_ckpt.trainer.config import TrainConfig
    from mezo_ckpt.trainer.recipe import MezoRecipe
    from mezo_ckpt.trainer.step import take_step

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    common = dict(tinymodels.MATRIX_COMMON, vocab_size=args.vocab, hidden_size=args.hidden,
                  num_hidden_layers=args.layers, intermediate_size=4 * args.hidden,
                  max_position_embeddings=512)  # fmt: skip
    extra = dict(tinymodels.MATRIX[args.arch])
    for k in ("head_dim",):
        if k in extra:
            extra[k] = args.hidden // common["num_attention_heads"]
    for k in ("ffn_dim",):
        if k in extra:
            extra[k] = 4 * args.hidden
    for k in ("word_embed_proj_dim",):
        if k in extra:
            extra[k] = args.hidden
    config = AutoConfig.for_model(args.arch, **common, **extra)
    model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    with torch.no_grad():
        for name, p in canonical_parameters(model).items():
            z = z_reference(param_key(1, "init/" + name), 0, 0, 0, p.numel(), "normal16")
            scale = 0.02 if p.ndim > 1 else 0.0
            p.copy_((1.0 if p.ndim == 1 and ("norm" in name or "ln" in name) else 0.0)
                    + scale * z.view_as(p))  # fmt: skip
    model = model.to(dtype).eval().requires_grad_(False)
    tok = tinymodels.tiny_tokenizer()
    rows = tinymodels.toy_sentiment(max(64, args.batch_size), 0)
    cfg = TrainConfig(
        task="custom", template="{text} It was", verbalizer={"pos": "+", "neg": "-"},
        dtype=args.dtype, rounding="stochastic" if args.dtype == "bf16" else "nearest",
        steps=10, batch_size=args.batch_size, eval_every=0, eval_test=False,
        eval_examples=args.eval_examples, eval_batch_size=args.batch_size, fsync=False,
        output=str(Path(tempfile.mkdtemp()) / "t.zst"), threads=args.threads,
    )  # fmt: skip
    with MezoRecipe(cfg, progress=False, log=lambda s: None, model=model, tokenizer=tok,
                    data={"train": rows, "dev": rows}) as r:  # fmt: skip
        r.setup()
        train = r.splits["train"]
        enc = r.task.encode(r.tokenizer, [train.examples[i] for i in range(args.batch_size)])
        ids = enc.input_ids[:, :-1]
        mask = enc.attention_mask[:, :-1]

        head = model.get_output_embeddings()

        def forward2() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for _ in range(2):
                    h = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                    head(h[:, -1:].contiguous()).float()
            return time.perf_counter() - t

        forward2()  # warm up
        Path("/proc/self/clear_refs").write_text("5")
        out: dict = {"arch": args.arch, "dtype": args.dtype, "mode": args.mode}
        if args.mode == "inference":
            for _ in range(3):
                forward2()
        elif args.mode == "eval":
            r.run_eval(0, ["dev"])
        else:
            for s in range(3):
                take_step(r.stepper, r.writer, s, enc, 1e-6, with_losses=True)
        out["peak_mib"] = peak_mib()
        if args.mode == "step":  # then the time ratio, interleaved, outside the peak
            ratios = []
            for s in range(3, 6):
                t = time.perf_counter()
                take_step(r.stepper, r.writer, s, enc, 1e-6, with_losses=True)
                ratios.append((time.perf_counter() - t) / forward2())
            out["step_x_forward2"] = statistics.median(ratios)
        print(json.dumps(out))


def main() -> None:
    import tinymodels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(tinymodels.MATRIX))
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    rows = []
    for arch in args.archs.split(","):
        for dt in args.dtypes.split(","):
            got = {}
            for mode in ("inference", "step", "eval"):
                cmd = [sys.executable, __file__, "--arch", arch, "--dtype", dt, "--mode", mode]
                for k in ("hidden", "layers", "vocab", "batch_size", "eval_examples", "threads"):
                    cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
                env = dict(os.environ, PYTHONPATH=str(ROOT))
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    got[mode] = {"error": r.stderr.strip().splitlines()[-1][:120]}
                    continue
                got[mode] = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((arch, dt, got))
            print(f"{arch} {dt}: {json.dumps(got)}", file=sys.stderr)
    import torch

    today = datetime.date.today()
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"Python {platform.python_version()}, {args.threads} threads, {today}")  # fmt: skip
    print(f"Models: {args.layers} layers, hidden {args.hidden}, {args.vocab:,}-token vocabulary "
          f"(portable init); batch {args.batch_size}; evaluation of {args.eval_examples} "
          "examples\n")  # fmt: skip
    print("| architecture | dtype | step / two forwards | step peak MiB (x inference) | "
          "eval peak MiB (x inference) | inference peak MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for arch, dt, got in rows:
        if any("error" in v for v in got.values()):
            err = next(v["error"] for v in got.values() if "error" in v)
            print(f"| {arch} | {dt} | failed: {err} | | | |")
            continue
        base = got["inference"]["peak_mib"]
        step, ev = got["step"]["peak_mib"], got["eval"]["peak_mib"]
        ratio = got["step"]["step_x_forward2"]
        print(f"| {arch} | {dt} | {ratio:.2f} | {step:.0f} ({step / base:.2f}) | "
              f"{ev:.0f} ({ev / base:.2f}) | {base:.0f} |")  # fmt: skip
    return None


if __name__ == "__main__":
    main()
