"""End-to-end replay speed on a real model, side by side with a naive torch.randn replay.

Builds a synthetic trajectory of --steps steps for the model (realistic 13-bit
coefficients), replays it through mezo-ckpt's engine for each z kind, and replays the same
number of element-steps the naive way (per step: torch.manual_seed(step); per tensor
torch.randn(shape); p.add_(z, alpha=-c)) over fewer steps. Prints a markdown table of
element-steps per second and the speed-up. Default model: the embedded SmolLM2-135M.

    python benchmarks/bench_replay.py [--steps 100] [--naive-steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.core.update import round_coefficient
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trajectory import StepRecords, Trajectory
from mezo_ckpt.util.runtime import set_threads

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import plain_header  # noqa: E402


def synthetic(model, steps: int, kind: str, dtype: str) -> Trajectory:
    from mezo_ckpt.models.base import describe_base

    params = canonical_parameters(model)
    names = sorted(params)
    rng = np.random.default_rng(0)
    coefs = np.array(
        [[round_coefficient(1e-5 * x)] for x in rng.standard_normal(steps)], np.float32
    )
    header = plain_header(
        describe_base(model, names).to_json(),
        names,
        steps,
        z=kind,
        seed=1,
        tool=("mezo-ckpt", "bench"),
    )
    header["created"] = "2026-11-22T00:00:00Z"
    rec = StepRecords(np.zeros(steps, np.uint8), coefs, np.ones(steps, np.float32), None)
    return Trajectory(header, rec)


def naive(model, steps: int) -> float:
    params = list(canonical_parameters(model).values())
    t0 = time.perf_counter()
    with torch.no_grad():
        for step in range(steps):
            torch.manual_seed(step)
            for p in params:
                z = torch.randn(p.shape, dtype=p.dtype)
                p.add_(z, alpha=-1e-5)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: embedded SmolLM2)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--naive-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    set_threads(args.threads)
    model = load_base(args.model, dtype=args.dtype, progress=False).model
    n = sum(p.numel() for p in canonical_parameters(model).values())
    load = os.getloadavg()
    rows = []
    t_naive = naive(model, args.naive_steps)
    naive_rate = n * args.naive_steps / t_naive
    rows.append(("naive torch.randn + add_", args.naive_steps, t_naive, naive_rate))
    for kind in ("normal16", "rademacher"):
        traj = synthetic(model, args.steps, kind, args.dtype)
        replay_model(traj, model, step=1, check_base=False, verify=False)  # warm-up/compile
        t0 = time.perf_counter()
        replay_model(traj, model, check_base=False, verify=False)
        dt = time.perf_counter() - t0
        rows.append((f"mezo-ckpt replay, {kind}", args.steps, dt, n * args.steps / dt))
    print(
        f"# Replay throughput ({n / 1e6:.1f} M parameters, {args.dtype}, {args.threads} threads)\n"
    )
    print(
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cores, torch {torch.__version__}, load average before "
        f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f} (shared machine: compare ratios)\n"
    )
    print("| method | steps | seconds | M element-steps/s | vs naive |")
    print("|---|---:|---:|---:|---:|")
    for name, steps, sec, rate in rows:
        print(f"| {name} | {steps} | {sec:.2f} | {rate / 1e6:,.0f} | {rate / naive_rate:.1f}x |")


if __name__ == "__main__":
    main()
