"""Throughput of z generation: torch.randn vs the eager reference vs the numba kernels.

Prints a markdown table (method x threads -> M samples/s). Methods are timed round
robin (every method once per round, median over rounds), so background load hits all
of them alike; on a shared machine compare numbers from the same run only.

    PYTHONPATH=. python benchmarks/bench_stream.py --threads 1,2 --elements 4194304
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import numba
import numpy as np
import torch
from _machine import cpu_model

from mezo_ckpt.core import kernels_cpu as K
from mezo_ckpt.core import stream as S

KEY = (0x12345678, 0x9ABCDEF0)


def timed_rounds(methods: dict, rounds: int, cpu_share: list[float]) -> dict[str, float]:
    """Run the methods interleaved for ``rounds`` rounds; each returns its work count.

    Returns M work units per second per method (median round); appends the numba
    methods' CPU-seconds per wall-second to ``cpu_share``.
    """
    times: dict[str, list[float]] = {m: [] for m in methods}
    work: dict[str, int] = {}
    for _ in range(rounds):
        for m, f in methods.items():
            t, c = time.perf_counter(), time.process_time()
            work[m] = f()
            times[m].append(time.perf_counter() - t)
            if m.startswith("numba"):
                cpu_share.append((time.process_time() - c) / times[m][-1])
    return {m: work[m] / statistics.median(times[m]) / 1e6 for m in methods}


def machine_line() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"numba {numba.__version__}, numpy {np.__version__}, "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--elements", type=int, default=1 << 22, help="samples per z vector")
    ap.add_argument(
        "--steps", type=int, default=4, help="z vectors (consecutive step counters) per timed run"
    )
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    ap.add_argument(
        "--reference-elements",
        type=int,
        default=1 << 20,
        help="samples per vector for the (slow) eager reference",
    )
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    n, steps = args.elements, args.steps
    n_ref = min(n, args.reference_elements)
    table = S.normal16_table_numpy()
    out = np.empty(n, np.float32)
    buf = torch.empty(n, dtype=torch.float32)

    t0 = time.perf_counter()
    K.z_fill(table, out[:10], 0, 0, 0, *KEY, K.KIND_NORMAL16)  # compile or load cache
    first_call = time.perf_counter() - t0

    def randn():
        for _ in range(steps):
            torch.randn(n, out=buf)
        return n * steps

    def reference(kind):
        def run():
            S.z_reference(KEY, 0, 0, 3, n_ref, kind)
            return n_ref

        return run

    def numba_fill(kind):
        def run():
            for s in range(steps):
                K.z_fill(table, out, 3, s, 0, *KEY, kind)
            return n * steps

        return run

    methods = {
        "torch.randn fp32 (mt19937, Box-Muller)": randn,
        "eager reference z_reference, normal16": reference("normal16"),
        "eager reference z_reference, rademacher": reference("rademacher"),
        "numba z_fill normal16": numba_fill(K.KIND_NORMAL16),
        "numba z_fill rademacher": numba_fill(K.KIND_RADEMACHER),
    }
    rates: dict[tuple[str, int], float] = {}
    cpu_share: dict[int, list[float]] = {t: [] for t in threads}
    for th in threads:
        torch.set_num_threads(th)
        numba.set_num_threads(th)
        for f in methods.values():  # warm-up
            f()
        for m, rate in timed_rounds(methods, args.rounds, cpu_share[th]).items():
            rates[(m, th)] = rate

    print(f"Machine: {machine_line()}")
    print(
        f"z generation, {n} samples x {steps} vectors per run (reference: {n_ref} x 1), "
        f"median of {args.rounds} rounds; numba first call in this process "
        f"{first_call:.2f} s; numba default threads "
        f"{numba.config.NUMBA_DEFAULT_NUM_THREADS}\n"
    )
    print("| method | " + " | ".join(f"{t} thr M samples/s" for t in threads) + " |")
    print("|---|" + "---:|" * len(threads))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{rates[(m, t)]:.0f}" for t in threads) + " |")
    base = "torch.randn fp32 (mt19937, Box-Muller)"
    print(
        "\nCPU seconds per wall second during the numba runs (a busy machine shows less "
        "than the thread count): "
        + ", ".join(f"{t} thr {statistics.median(cpu_share[t]):.2f}" for t in threads)
    )
    for t in threads:
        print(
            f"- {t} thread(s): numba normal16 / torch.randn = "
            f"{rates[('numba z_fill normal16', t)] / rates[(base, t)]:.1f}x"
        )


if __name__ == "__main__":
    main()
