"""Trajectory sizes: bytes per step for lean and full trajectories, as the writer makes them.

Prints a markdown table. Coefficients are realistic: lr * g with g ~ N(0, 1) scaled like
a MeZO run (lr 1e-5, |g| ~ 1..100), rounded to 13 significant bits as training does;
losses drift slowly like real ones.

    python benchmarks/bench_sizes.py [--steps 20000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from mezo_ckpt.core.update import decay_multiplier, round_coefficient
from mezo_ckpt.trajectory import (
    StepRecords,
    Trajectory,
    TrajectoryWriter,
    read_trajectory,
    write_trajectory,
)


def header(steps: int, n: int, *, losses: bool, decay: bool) -> dict:
    names = sorted(f"model.layers.{i}.w" for i in range(30))
    return {
        "requires": [],
        "tool": {"name": "mezo-ckpt", "version": "bench"},
        "created": "2026-11-22T00:00:00Z",
        "base": {
            "kind": "hub",
            "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision": "0" * 40,
            "files": {"model.safetensors": "1" * 64},
            "architecture": "LlamaForCausalLM",
            "model_type": "llama",
            "dtype": "float32",
            "tie_word_embeddings": True,
            "num_parameters": 134515008,
            "manifest_sha256": "2" * 64,
            "trainable_sha256": "3" * 64,
        },
        "trainable": names,
        "perturbation": {
            "generator": "philox4x32-10",
            "key_rule": "sha256-seed-name-v1",
            "z": "normal16",
            "seed": 0,
            "eps": 1e-3,
            "n_directions": n,
        },
        "update": {
            "arithmetic": "exact-v1",
            "rounding": "nearest",
            "weight_decay": 0.1 if decay else 0.0,
            "decay_params": names if decay else [],
        },
        "optimizer": {"lr": 1e-5, "schedule": "constant"},
        "records": {"decay": decay, "losses": losses},
        "total_steps": steps,
        "config": {},
    }


def records(steps: int, n: int, *, losses: bool, decay: bool) -> StepRecords:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((steps, n)) * 10.0 ** rng.uniform(0, 2, (steps, n))
    coefs = np.array([[round_coefficient(1e-5 * x) for x in row] for row in g], np.float32)
    base = 0.7 * np.exp(-np.arange(steps) / steps)[:, None, None]
    ls = (base + 0.05 * rng.standard_normal((steps, n, 2))).astype(np.float32) if losses else None
    dec = np.full(steps, decay_multiplier(1e-5, 0.1) if decay else 1.0, np.float32)
    return StepRecords(np.zeros(steps, np.uint8), coefs, dec, ls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    args = ap.parse_args()
    t = args.steps
    print(f"# Trajectory sizes ({t} steps)\n")
    print(f"{datetime.date.today()}, {platform.machine()}, python {platform.python_version()}\n")
    print("| records | directions | compact file (bytes) | bytes/step | journal (bytes/step) |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for losses, decay, n in (
            (False, False, 1),
            (True, False, 1),
            (False, True, 1),
            (True, False, 4),
        ):
            h = header(t, n, losses=losses, decay=decay)
            rec = records(t, n, losses=losses, decay=decay)
            out = Path(d) / "t.zst"
            write_trajectory(out, Trajectory(h, rec))
            size = out.stat().st_size
            assert read_trajectory(out).num_steps == t
            journal = Path(d) / "j.zst"  # one frame per step, as training writes it
            w = TrajectoryWriter.create(journal, h, fsync=False)
            k = min(t, 2000)
            for i in range(k):
                w.append_steps(rec.slice(i, i + 1))
            w.close()
            per_journal = journal.stat().st_size / k
            what = "coefficients" + (" + losses" if losses else "") + (" + decay" if decay else "")
            print(f"| {what} | {n} | {size:,} | {size / t:.2f} | {per_journal:.1f} |")
            os.remove(journal)
    print(
        "\nThe compact file is what training leaves; the journal (`.partial`, one frame per "
        "step, crash-safe) exists only while a run is in progress."
    )


if __name__ == "__main__":
    main()
