"""Replay throughput (element-steps/s): naive torch.randn replay vs eager reference vs
the fused numba kernel (every storage dtype and rounding mode, both z kinds).

* naive: per step ``torch.manual_seed(step)``; per tensor ``z = torch.randn(shape)``;
  ``p.add_(z, alpha=-c)`` (what a MeZO replay without this project does; not portable).
* eager reference: per step and tensor, ``z_reference`` (portable counter-based z, eager
  torch) and ``p.sub_(c * z)``.
* numba fused: ``update.apply_updates(..., backend="compiled")``, i.e. ``_kernels.replay``
  (block-resident: each block of weights receives every step while it is in cache), for
  fp32, bf16 and fp16 with nearest and stochastic rounding.
* eager bf16 stochastic: the reference path, which 0.1.0 fell back to for bf16 with
  stochastic rounding and every fp16 case.

The elements are split into tensors of at most ``--tensor-elements``; one direction, no
weight decay. Slow methods run fewer steps (and the eager reference fewer elements);
rates are per element-step. Methods are timed round robin (median of rounds) so that
background load hits all alike; on a shared machine compare numbers of one run only.

    PYTHONPATH=. python benchmarks/bench_replay_kernels.py --threads 1,2 \
        --elements 4194304 --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream import machine_line, timed_rounds  # noqa: E402

from mezo_ckpt.core import stream as S  # noqa: E402
from mezo_ckpt.core import update as U  # noqa: E402

KEY = (0x12345678, 0x9ABCDEF0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--elements", type=int, default=1 << 22, help="elements replayed")
    ap.add_argument("--steps", type=int, default=200, help="steps for the fused kernels")
    ap.add_argument("--naive-steps", type=int, default=10, help="steps for naive replay")
    ap.add_argument("--reference-steps", type=int, default=2, help="steps for the eager reference")
    ap.add_argument(
        "--reference-elements", type=int, default=1 << 20, help="elements for the eager reference"
    )
    ap.add_argument(
        "--tensor-elements",
        type=int,
        default=1 << 20,
        help="largest tensor (the elements are split into such tensors)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    n, T = args.elements, args.steps
    rng = np.random.default_rng(0)

    def split(total: int) -> list[int]:
        sizes = []
        while total > 0:
            sizes.append(min(total, args.tensor_elements))
            total -= sizes[-1]
        return sizes

    def schedule(steps: int):
        st = np.arange(1000, 1000 + steps, dtype=np.int64)
        coefs = (rng.integers(-8191, 8192, size=(steps, 1)) * 2.0**-24).astype(np.float32)
        return st, coefs, np.ones(steps, np.float32)

    theta = rng.standard_normal(n).astype(np.float32) * 0.02
    fp32 = [torch.from_numpy(theta[:s].copy()) for s in split(n)]
    bf16 = [t.to(torch.bfloat16) for t in fp32]
    sched = schedule(T)

    def naive():
        st, coefs, _ = schedule(args.naive_steps)
        for t in range(len(st)):
            torch.manual_seed(int(st[t]))
            c = float(coefs[t, 0])
            for p in fp32:
                z = torch.randn(p.shape)
                p.add_(z, alpha=-c)
        return n * len(st)

    ref_tensors = [
        torch.from_numpy(theta[:s].copy()) for s in split(min(n, args.reference_elements))
    ]

    def reference():
        st, coefs, _ = schedule(args.reference_steps)
        for t in range(len(st)):
            c = torch.tensor(coefs[t, 0])
            for p in ref_tensors:
                p.sub_(c * S.z_reference(KEY, int(st[t]), 0, 0, p.numel(), "normal16"))
        return sum(p.numel() for p in ref_tensors) * len(st)

    fp16 = [t.to(torch.float16) for t in fp32]

    def fused(tensors, kind, rounding="nearest", backend="compiled", steps=None, window=0):
        st, coefs, decay = sched if steps is None else schedule(steps)
        hist = None
        if window:  # a momentum run: each step also re-applies `window` earlier directions
            hist = np.repeat(coefs[:, None, :] * np.float32(0.5), window, axis=1)
            for i in range(min(window, len(st))):
                hist[i, i:] = 0.0  # nothing before step 0
        batch = U.UpdateBatch(st, coefs, decay, hist)

        def run():
            for p in tensors:
                U.apply_updates(p, KEY, batch, kind=kind, rounding=rounding, backend=backend)
            return sum(p.numel() for p in tensors) * len(st)

        return run

    small_bf16 = [t.to(torch.bfloat16) for t in ref_tensors]
    methods = {
        "naive torch.randn replay (fp32)": naive,
        "eager reference z_reference (fp32, normal16)": reference,
        "eager reference bf16 stochastic normal16 (0.1.0's fallback)": fused(
            small_bf16, "normal16", "stochastic", "reference", args.reference_steps
        ),
        "numba fused fp32 normal16": fused(fp32, "normal16"),
        "numba fused fp32 rademacher": fused(fp32, "rademacher"),
        "numba fused bf16 nearest normal16": fused(bf16, "normal16"),
        "numba fused bf16 stochastic normal16": fused(bf16, "normal16", "stochastic"),
        "numba fused bf16 stochastic rademacher": fused(bf16, "rademacher", "stochastic"),
        "numba fused fp16 nearest normal16": fused(fp16, "normal16"),
        "numba fused fp16 stochastic normal16": fused(fp16, "normal16", "stochastic"),
        # element-steps counted per *step*: with W history terms a step applies W + 1
        "numba fused fp32 normal16, momentum window 4 (5 terms/step)": fused(
            fp32, "normal16", window=4
        ),
        "numba fused fp32 normal16, momentum window 8 (9 terms/step)": fused(
            fp32, "normal16", window=8
        ),
    }
    # Compile (or load from cache) before timing; report the first-call cost.
    first = {}
    one = U.UpdateBatch(*schedule(1))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for rounding in ("nearest", "stochastic"):
            t0 = time.perf_counter()
            U.apply_updates(
                torch.zeros(10, dtype=dtype),
                KEY,
                one,
                kind="normal16",
                rounding=rounding,
                backend="compiled",
            )
            first[f"{str(dtype)[6:]}/{rounding}"] = time.perf_counter() - t0

    rates: dict[tuple[str, int], float] = {}
    cpu_share: dict[int, list[float]] = {t: [] for t in threads}
    for th in threads:
        torch.set_num_threads(th)
        numba.set_num_threads(th)
        for m, rate in timed_rounds(methods, args.rounds, cpu_share[th]).items():
            rates[(m, th)] = rate

    naive_key = "naive torch.randn replay (fp32)"
    print(f"Machine: {machine_line()}")
    print(
        f"Replay of {n} elements in tensors of <= {args.tensor_elements}; fused kernels "
        f"{T} steps, naive {args.naive_steps} steps, eager reference "
        f"{min(n, args.reference_elements)} elements x {args.reference_steps} steps; "
        f"1 direction, no decay; median of {args.rounds} rounds. First call (compile or "
        f"cache load): " + ", ".join(f"{k} {v:.2f} s" for k, v in first.items()) + "\n"
    )
    print("| method | " + " | ".join(f"{t} thr M el-steps/s | vs naive" for t in threads) + " |")
    print("|---|" + "---:|---:|" * len(threads))
    for m in methods:
        cells = []
        for t in threads:
            r = rates[(m, t)]
            cells.append(f"{r:.0f} | {r / rates[(naive_key, t)]:.1f}x")
        print(f"| {m} | " + " | ".join(cells) + " |")
    print(
        "\nCPU seconds per wall second during the numba runs (a busy machine shows less "
        "than the thread count): "
        + ", ".join(f"{t} thr {statistics.median(cpu_share[t]):.2f}" for t in threads)
    )
    best_naive = max(rates[(naive_key, t)] for t in threads)
    print(f"\nAgainst the best naive rate over all thread counts ({best_naive:.0f} M/s):")
    for m in methods:
        if m.startswith("numba"):
            best = max(rates[(m, t)] for t in threads)
            print(f"- {m}: best {best:.0f} M el-steps/s = {best / best_naive:.1f}x")


if __name__ == "__main__":
    main()
