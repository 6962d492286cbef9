"""Generate golden trajectories in tests/golden/ (run only on purpose).

Each golden trajectory has synthetic, deterministic step records over a tiny base whose
weights come from the portable stream, so the files and the hashes they replay to are
the same on every machine. tests/scenarios/test_golden.py checks that every later version of
mezo-ckpt still replays them to exactly these hashes.

    python tests/make_golden.py            # writes only the cases whose file is missing
    python tests/make_golden.py --all      # rewrites every file (never do this casually)

The 1.0 files of 0.1.0 are frozen: their bytes and hashes must stay as committed. Cases
added later (format 1.1 with the record chain and the whole-base identity, adapters)
are appended, never replacing the older ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tinymodels import tiny_model  # noqa: E402

from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256  # noqa: E402
from mezo_ckpt.core.update import decay_multiplier, round_coefficient  # noqa: E402
from mezo_ckpt.models.base import describe_base  # noqa: E402
from mezo_ckpt.rebuild import replay_model  # noqa: E402
from mezo_ckpt.trajectory import StepRecords, Trajectory, write_trajectory  # noqa: E402

HERE = Path(__file__).parent / "golden"

CASES = {
    "llama-fp32-normal16": dict(
        arch="llama",
        dtype="float32",
        tie=True,
        z="normal16",
        rounding="nearest",
        n=1,
        wd=0.0,
        steps=40,
    ),
    "gpt2-fp32-rademacher-nspsa-decay": dict(
        arch="gpt2",
        dtype="float32",
        tie=True,
        z="rademacher",
        rounding="nearest",
        n=3,
        wd=0.1,
        steps=25,
    ),
    "opt-bf16-normal16-stochastic": dict(
        arch="opt",
        dtype="bfloat16",
        tie=False,
        z="normal16",
        rounding="stochastic",
        n=1,
        wd=0.0,
        steps=30,
    ),
    "llama-fp16-normal16-nearest-decay": dict(
        arch="llama",
        dtype="float16",
        tie=False,
        z="normal16",
        rounding="nearest",
        n=2,
        wd=0.05,
        steps=20,
    ),
}


#: Format 1.1 cases: chained records, whole-base identity, and adapters (peft-v1).
CASES_V11 = {
    "llama-bf16-stochastic-chained": dict(
        arch="llama",
        dtype="bfloat16",
        tie=True,
        z="normal16",
        rounding="stochastic",
        n=2,
        wd=0.0,
        steps=24,
    ),
    "llama-fp32-lora-chained": dict(
        arch="llama",
        dtype="float32",
        tie=True,
        z="normal16",
        rounding="nearest",
        n=1,
        wd=0.0,
        steps=20,
        peft="lora",
    ),
    "llama-fp32-momentum-chained": dict(
        arch="llama",
        dtype="float32",
        tie=True,
        z="normal16",
        rounding="nearest",
        n=2,
        wd=0.0,
        steps=18,
        history=3,
    ),
    "gpt2-fp32-prefix-rademacher-chained": dict(
        arch="gpt2",
        dtype="float32",
        tie=True,
        z="rademacher",
        rounding="nearest",
        n=1,
        wd=0.0,
        steps=20,
        peft="prefix",
    ),
}


def synthetic_records(steps: int, n: int, wd: float, seed: int, history: int = 0) -> StepRecords:
    """Deterministic coefficients of realistic scale (integer arithmetic only); with a
    momentum window, history coefficients for every earlier step the window reaches."""
    coefs = np.zeros((steps, n), np.float32)
    flags = np.zeros(steps, np.uint8)
    decay = np.ones(steps, np.float32)
    hist = np.zeros((steps, history, n), np.float32) if history else None
    state = seed

    def draw() -> float:
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        mant = ((state >> 33) % 8191) - 4095  # [-4095, 4095]
        return round_coefficient(mant * 2.0**-21)  # |c| < 2e-3

    for t in range(steps):
        for j in range(n):
            coefs[t, j] = draw()
        if wd:
            decay[t] = decay_multiplier(1e-2, wd)
    if hist is not None:  # drawn after the coefficients: the plain cases keep their bits
        for t in range(steps):
            for k in range(1, history + 1):
                for j in range(n):
                    hist[t, k - 1, j] = draw() if t - k >= 0 else 0.0
    flags[steps // 3] = 1  # one skipped step
    coefs[steps // 3] = 0.0
    decay[steps // 3] = 1.0
    if hist is not None:
        hist[steps // 3] = 0.0
    return StepRecords(flags, coefs, decay, None, hist)


def build(name: str, c: dict) -> tuple[Trajectory, dict]:
    model = tiny_model(c["arch"], dtype=getattr(torch, c["dtype"]), tie=c["tie"])
    params = canonical_parameters(model)
    trainable = sorted(n for n in params if not n.endswith("bias") or c["arch"] != "opt")
    decay = sorted(n for n in trainable if params[n].ndim > 1) if c["wd"] else []
    header = {
        "requires": [],
        "tool": {"name": "mezo-ckpt", "version": "golden"},
        "created": "2026-11-22T00:00:00Z",
        "base": describe_base(model, trainable).to_json(),
        "trainable": trainable,
        "perturbation": {
            "generator": "philox4x32-10",
            "key_rule": "sha256-seed-name-v1",
            "z": c["z"],
            "seed": 20261122,
            "eps": 1e-3,
            "n_directions": c["n"],
        },
        "update": {
            "arithmetic": "exact-v1",
            "rounding": c["rounding"],
            "weight_decay": c["wd"],
            "decay_params": decay,
        },
        "optimizer": {"lr": 1e-2, "schedule": "constant"},
        "records": {"decay": bool(c["wd"]), "losses": False},
        "total_steps": c["steps"],
        "config": {"golden": name},
    }
    traj = Trajectory(header, synthetic_records(c["steps"], c["n"], c["wd"], seed=len(name)))
    expected = {}
    for step in (c["steps"] // 2, c["steps"]):
        m = tiny_model(c["arch"], dtype=getattr(torch, c["dtype"]), tie=c["tie"])
        replay_model(traj, m, step=step, verify=False)
        expected[str(step)] = tensors_sha256(canonical_parameters(m), trainable)
    traj.checkpoints[c["steps"]] = expected[str(c["steps"])]
    return traj, {"case": c, "replayed_sha256": expected}


def golden_model(c: dict):
    """The tiny base of a case (with its adapter attached for peft cases)."""
    model = tiny_model(c["arch"], dtype=getattr(torch, c["dtype"]), tie=c["tie"])
    if c.get("peft"):
        from mezo_ckpt.models.adapters import adapter_config, attach

        conf = (
            adapter_config("lora", r=2, lora_alpha=4.0, target_modules=["q_proj", "v_proj"])
            if c["peft"] == "lora"
            else adapter_config("prefix", num_virtual_tokens=3)
        )
        model = attach(model, c["peft"], conf, SEED)
        return model, conf
    return model, None


SEED = 20261122


def build_v11(name: str, c: dict) -> tuple[bytes, dict]:
    """A 1.1 file written by the journal writer (chain digests) and compacted."""
    import tempfile

    from mezo_ckpt.models.adapters import adapter_names, info_for
    from mezo_ckpt.trajectory import TrajectoryWriter, compact
    from mezo_ckpt.trajectory.header import CHAIN_RULE

    plain = tiny_model(c["arch"], dtype=getattr(torch, c["dtype"]), tie=c["tie"])
    base = describe_base(plain, [] if c.get("peft") else sorted(canonical_parameters(plain)))
    model, conf = golden_model(c)
    params = canonical_parameters(model)
    trainable = adapter_names(model) if c.get("peft") else sorted(params)
    peft = info_for(model, c["peft"], conf) if c.get("peft") else None
    window = c.get("history", 0)
    header = {
        "requires": (["peft-v1"] if peft else []) + (["history-v1"] if window else []),
        "tool": {"name": "mezo-ckpt", "version": "golden"},
        "created": "2026-12-01T00:00:00Z",
        "base": base.to_json(),
        "trainable": trainable,
        "perturbation": {
            "generator": "philox4x32-10",
            "key_rule": "sha256-seed-name-v1",
            "z": c["z"],
            "seed": SEED,
            "eps": 1e-3,
            "n_directions": c["n"],
        },
        "update": {
            "arithmetic": "exact-v1",
            "rounding": c["rounding"],
            "weight_decay": c["wd"],
            "decay_params": [],
        },
        "optimizer": {"lr": 1e-2, "schedule": "constant"},
        "records": {"decay": False, "losses": False, **({"history": window} if window else {})},
        "total_steps": c["steps"],
        "config": {"golden": name},
        "integrity": {"chain": CHAIN_RULE},
    }
    if peft:
        header["peft"] = peft.to_json()
    rec = synthetic_records(c["steps"], c["n"], c["wd"], seed=len(name), history=window)
    expected = {}
    for step in (c["steps"] // 2, c["steps"]):
        m, _ = golden_model(c)
        t = Trajectory(header, rec.slice(0, step))
        replay_model(t, m, step=step, verify=False, check_base=False, allow_unverified=True)
        expected[str(step)] = tensors_sha256(canonical_parameters(m), trainable)
    with tempfile.TemporaryDirectory() as d:
        j = Path(d) / "j.partial"
        with TrajectoryWriter.create(j, header, fsync=False) as w:
            w.append_steps(rec)
            w.append_checkpoint(c["steps"], expected[str(c["steps"])])
        compact(j, Path(d) / "out.zst")
        data = (Path(d) / "out.zst").read_bytes()
    return data, {"case": c, "replayed_sha256": expected}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    rewrite = "--all" in sys.argv[1:]
    path = HERE / "HASHES.json"
    index = json.loads(path.read_text()) if path.exists() and not rewrite else {}
    for name, c in CASES.items():
        if name in index and (HERE / f"{name}.zst").exists():
            continue
        traj, info = build(name, c)
        write_trajectory(HERE / f"{name}.zst", traj)
        index[name] = info
        print(name, info["replayed_sha256"])
    for name, c in CASES_V11.items():
        if name in index and (HERE / f"{name}.zst").exists():
            continue
        data, info = build_v11(name, c)
        (HERE / f"{name}.zst").write_bytes(data)
        index[name] = info
        print(name, info["replayed_sha256"])
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
