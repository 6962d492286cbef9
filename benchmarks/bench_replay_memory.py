"""Peak memory of a streaming (shard-by-shard) replay vs a whole-model replay.

The base (default: the embedded SmolLM2-135M, 538 MB of fp32) is saved in shards of
``--shard-size``; a trajectory with ``--steps`` synthetic steps over every tensor is
written for it; then ``mezo-ckpt replay`` runs in two fresh subprocesses, ``--stream`` and
``--no-stream``, each timed and measured by its peak RSS (VmHWM from /proc, reported by
the child itself), alternating ``--rounds`` times. Both outputs are compared tensor by
tensor (they must be identical).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_replay_memory.py --shard-size 50MB
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model  # noqa: E402
from _synthetic import plain_header  # noqa: E402

CHILD = r"""
import json, sys, time
t = time.perf_counter()
from mezo_ckpt.api import replay_to
import transformers, numba, mezo_ckpt.core.kernels_cpu, mezo_ckpt.rebuild  # what both modes import
base_kib = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        base_kib = int(line.split()[1])
r = replay_to(sys.argv[1], base=sys.argv[2], output=sys.argv[3], stream=sys.argv[4] == "1",
              progress=False)
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1])
print(json.dumps({"seconds": time.perf_counter() - t, "hwm_kib": hwm, "base_kib": base_kib,
                  "verified": r["verified"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="base folder (default: embedded SmolLM2)")
    ap.add_argument("--shard-size", default="50MB")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.core.update import round_coefficient
    from mezo_ckpt.models.base import describe_base, load_base
    from mezo_ckpt.trajectory import StepRecords, Trajectory
    from mezo_ckpt.trajectory.header import CHAIN_RULE

    work = Path(tempfile.mkdtemp(prefix="mezo-bench-mem-"))
    loaded = load_base(args.model, progress=False)
    base = work / "base"
    loaded.model.save_pretrained(base, max_shard_size=args.shard_size)
    for p in (loaded.folder or Path()).glob("tokenizer*"):
        (base / p.name).write_bytes(p.read_bytes())
    shards = sorted(base.glob("*.safetensors"))
    del loaded
    from mezo_ckpt.models.base import load_folder

    model = load_folder(base, "float32")
    trainable = sorted(canonical_parameters(model))
    ident = describe_base(model, trainable, folder=base)
    rng = np.random.default_rng(0)
    coefs = np.array(
        [[round_coefficient(v)] for v in rng.standard_normal(args.steps) * 1e-4], np.float32
    )
    rec = StepRecords(np.zeros(args.steps, np.uint8), coefs, np.ones(args.steps, np.float32), None)
    header = plain_header(ident.to_json(), trainable, args.steps)
    header["integrity"] = {"chain": CHAIN_RULE}
    traj = Trajectory(header, rec)
    from mezo_ckpt.rebuild import replay_model

    replay_model(traj, model, verify=False, check_base=False, allow_unverified=True)
    from mezo_ckpt.core.hashing import tensors_sha256
    from mezo_ckpt.trajectory import TrajectoryWriter, compact

    with TrajectoryWriter.create(work / "t.partial", header, fsync=False) as w:
        w.append_steps(rec)
        w.append_checkpoint(args.steps, tensors_sha256(canonical_parameters(model), trainable))
    compact(work / "t.partial", work / "t.zst")
    del model
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    results: dict[str, list[dict]] = {"stream": [], "whole": []}
    for i in range(args.rounds):
        for mode in ("stream", "whole") if i % 2 == 0 else ("whole", "stream"):
            out = work / f"out-{mode}-{i}"
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(work / "t.zst"),
                    str(base),
                    str(out),
                    "1" if mode == "stream" else "0",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            results[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(work / "out-stream-0").state_dict()
    b = AutoModelForCausalLM.from_pretrained(work / "out-whole-0").state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    total = sum(p.stat().st_size for p in shards)
    biggest = max(p.stat().st_size for p in shards)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(
        f"base: {args.model or 'embedded SmolLM2-135M-Instruct'} fp32, {total / 1e6:.0f} MB in "
        f"{len(shards)} shards (largest {biggest / 1e6:.0f} MB); {args.steps} steps over every "
        f"tensor; outputs identical: {same}; median of {args.rounds} runs each\n"
    )
    print(
        "| replay | peak RSS (MiB) | x whole-model | above the imports (MiB) | seconds | verified |"
    )
    print("|---|---:|---:|---:|---:|---|")
    whole = statistics.median(r["hwm_kib"] for r in results["whole"])
    for mode, label in (
        ("whole", "whole model (--no-stream)"),
        ("stream", "shard by shard (--stream)"),
    ):
        rs = results[mode]
        hwm = statistics.median(r["hwm_kib"] for r in rs)
        above = statistics.median(r["hwm_kib"] - r["base_kib"] for r in rs)
        secs = statistics.median(r["seconds"] for r in rs)
        print(
            f"| {label} | {hwm / 1024:.0f} | {hwm / whole:.2f} | {above / 1024:.0f} | "
            f"{secs:.1f} | {rs[0]['verified']} |"
        )


if __name__ == "__main__":
    main()
