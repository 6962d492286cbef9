"""What pinning the whole base costs: loading a model vs fingerprinting all of it.

Format 1.1 fingerprints every tensor of the base (frozen ones too), its config and its
tokenizer files, on every path (train, replay, pull, load, resume). This script loads the
base and computes its identity, round robin, and prints the medians side by side:

* load: ``mezo_ckpt.models.base.load_base`` (from_pretrained of the cached fp32 folder);
* identity: ``describe_base`` (sha256 of every tensor in parallel, config, tokenizer);
* check: ``verify_base`` against a header holding that identity (what replay runs).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_base_identity.py            # embedded
    PYTHONPATH=. .venv/bin/python benchmarks/bench_base_identity.py --model DIR --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model  # noqa: E402
from _synthetic import plain_header  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: embedded SmolLM2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.models.base import describe_base, load_base, verify_base
    from mezo_ckpt.trajectory.header import Header
    from mezo_ckpt.util.runtime import set_threads

    set_threads(args.threads)
    times: dict[str, list[float]] = {"load": [], "load + read": [], "identity": [], "check": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        loaded = load_base(args.model, progress=False)
        times["load"].append(time.perf_counter() - t)
        params = canonical_parameters(loaded.model)
        # safetensors maps the file lazily: the first pass over the weights reads them
        with torch.no_grad():
            float(sum(p.detach().sum() for p in params.values()))
        times["load + read"].append(time.perf_counter() - t)
        trainable = sorted(params)
        t = time.perf_counter()
        ident = describe_base(
            loaded.model,
            trainable,
            kind=loaded.kind,
            folder=loaded.folder,
            embedded=loaded.embedded,
            files=loaded.files,
        )
        times["identity"].append(time.perf_counter() - t)
        header = Header.from_json(plain_header(ident.to_json(), trainable, 0))
        t = time.perf_counter()
        verify_base(header, loaded.model, offered=loaded)
        times["check"].append(time.perf_counter() - t)
        del loaded
    n_el = sum(p.numel() for p in params.values())
    nbytes = sum(p.numel() * p.element_size() for p in params.values())
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"model: {args.model or 'embedded SmolLM2-135M-Instruct'}, {n_el:,} parameters, "
        f"{nbytes / 1e6:.0f} MB, {len(ident.tensors or ())} tensors, "
        f"{len(ident.tokenizer or {})} tokenizer files; median of {args.rounds} rounds\n"
    )
    load = statistics.median(times["load + read"])
    print("| step | seconds | x (load + read) | GB/s |")
    print("|---|---:|---:|---:|")
    for k, v in times.items():
        med = statistics.median(v)
        rate = f"{nbytes / med / 1e9:.2f}" if k != "load" else "-"  # noqa: SIM108
        print(f"| {k} | {med:.3f} | {med / load:.2f} | {rate} |")


if __name__ == "__main__":
    main()
