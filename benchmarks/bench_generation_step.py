"""A generation task's MeZO step: teacher-forced ``ce`` against ``f1`` on greedy generations.

The task is the README's generation example on the embedded default (SmolLM2-135M-Instruct):
answer a movie review's sentiment with a word (``--target-field label``), the built-in
sentiment data. Modes, one pre-encoded batch of ``--batch-size`` training examples:

* ``forward2``: two plain teacher-forced forwards (the floor of any MeZO step);
* ``ce``: one MeZO step with the ``ce`` objective (teacher-forced target likelihood under
  +eps and -eps, the update);
* ``f1@N``: one MeZO step with the ``f1`` objective: greedy generation of up to N new
  tokens under each perturbation (batched, stopping at a newline or EOS), scored against
  the references, the update.

Rounds are interleaved (forward2, ce, f1@2, f1@8, forward2, ...) so that background load
hits every mode alike; reported are medians and the median per-round ratio to forward2.

    PYTHONPATH=. python benchmarks/bench_generation_step.py
    PYTHONPATH=. python benchmarks/bench_generation_step.py --new-tokens 2,8,32 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import cpu_model  # noqa: E402

TEMPLATE = "Review: {text}\nIs this review positive or negative? Answer:"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", default="2,8", help="max_new_tokens values of f1 modes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.core.update import UpdateSpec
    from mezo_ckpt.data import load_split
    from mezo_ckpt.models.base import load_base
    from mezo_ckpt.trainer import TrainConfig
    from mezo_ckpt.trainer.inputs import batch_indices, build_task, load_tokenizer
    from mezo_ckpt.trainer.objectives import Objective
    from mezo_ckpt.trainer.perturb import Perturber
    from mezo_ckpt.trainer.step import MezoStep

    torch.set_num_threads(args.threads)
    loaded = load_base(None, progress=False)
    model = loaded.model
    tokenizer = load_tokenizer(loaded.folder, None)
    params = canonical_parameters(model)
    names = sorted(params)
    rows = load_split("train")
    idx = batch_indices(0, 0, len(rows), args.batch_size)
    batch = [rows[i] for i in idx]

    def stepper(objective: str, new_tokens: int):
        cfg = TrainConfig(
            template=TEMPLATE,
            target_field="label",
            max_new_tokens=new_tokens,
            stop=["\n"],
            objective=objective,
            batch_size=args.batch_size,
        )
        task = build_task(cfg)
        pert = Perturber(model, names, 0, cfg.z, cfg.eps)
        obj = Objective(task, objective, model, tokenizer, pert)
        spec = UpdateSpec(0, cfg.z, cfg.rounding, tuple(names), frozenset())
        st = MezoStep.from_config(cfg, params, pert, spec, obj)
        enc = task.encode(tokenizer, batch)
        state = {"t": 0}

        def step():
            st.apply(st.estimate(state["t"], enc, 0.0))  # lr 0: the weights stay the base
            state["t"] += 1

        return step, obj, enc

    modes: dict[str, object] = {}
    ce_step, ce_obj, ce_enc = stepper("ce", 2)

    def forward2():
        with torch.inference_mode():
            ce_obj(ce_enc)
            ce_obj(ce_enc)

    modes["forward2"] = forward2
    modes["ce"] = ce_step
    for n in [int(v) for v in args.new_tokens.split(",") if v.strip()]:
        modes[f"f1@{n}"] = stepper("f1", n)[0]

    for f in modes.values():  # warm-up
        f()
    times: dict[str, list[float]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        round_t = {}
        for m, f in modes.items():
            t0 = time.perf_counter()
            f()
            round_t[m] = time.perf_counter() - t0
            times[m].append(round_t[m])
        for m in modes:
            ratios[m].append(round_t[m] / round_t["forward2"])

    print("## bench_generation_step: a generation task's MeZO step, ce vs f1")
    print()
    print(
        f"- {cpu_model()}, {args.threads} threads, torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"- SmolLM2-135M-Instruct fp32, batch {args.batch_size} (training's step-0 batch of "
        f"the built-in sentiment data), target = the label word, template {TEMPLATE!r}"
    )
    print()
    print("| mode | median s/step | x forward2 (median of per-round ratios) | x ce step |")
    print("|---|---:|---:|---:|")
    ce_med = statistics.median(times["ce"])
    for m in modes:
        med = statistics.median(times[m])
        print(f"| {m} | {med:.3f} | {statistics.median(ratios[m]):.2f}x | {med / ce_med:.2f}x |")


if __name__ == "__main__":
    main()
