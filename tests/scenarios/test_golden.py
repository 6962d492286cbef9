"""Golden trajectories: committed files that must keep replaying to the committed hashes.

Any change to the stream, the update arithmetic, the key rule, the record encoding or
the reader that alters replayed bits fails here. Replay must also be independent of the
CPU's vector capability, the thread count, the backend and the parameter order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from paths import GOLDEN, TESTS  # noqa: E402
from tinymodels import tiny_model

from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.models.adapters import prepare
from mezo_ckpt.models.base import verify_base
from mezo_ckpt.rebuild import replay_model, replay_tensors
from mezo_ckpt.trajectory import read_trajectory

INDEX = json.loads((GOLDEN / "HASHES.json").read_text())


def base_for(case: dict):
    return tiny_model(case["arch"], dtype=getattr(torch, case["dtype"]), tie=case["tie"])


def model_for(traj, case: dict):
    """The checked tiny base, with the trajectory's adapter attached for peft cases."""
    model = base_for(case)
    verify_base(traj.header, model)  # the portable tiny base is bit-identical too
    return prepare(traj.header, model)


@pytest.mark.parametrize("name", sorted(INDEX))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_golden_replays_to_committed_hashes(name, backend):
    info = INDEX[name]
    traj = read_trajectory(GOLDEN / f"{name}.zst")
    assert traj.bound == (info["case"].get("peft") is not None or "chained" in name)
    for step, expected in info["replayed_sha256"].items():
        model = model_for(traj, info["case"])
        report = replay_model(traj, model, step=int(step), backend=backend, check_base=False)
        got = tensors_sha256(canonical_parameters(model), traj.header.trainable)
        assert got == expected, f"{name} step {step}: replay bits changed"
        assert (report.verified == "fingerprint") == (int(step) == traj.num_steps)
        if traj.bound:  # 1.1: a step without a fingerprint is covered by the chain
            assert report.verified == ("fingerprint" if int(step) == traj.num_steps else "records")


def test_golden_independent_of_parameter_order():
    name = "gpt2-fp32-rademacher-nspsa-decay"
    info = INDEX[name]
    traj = read_trajectory(GOLDEN / f"{name}.zst")
    params = canonical_parameters(base_for(info["case"]))
    names = list(traj.header.trainable)
    traj.header = dataclasses.replace(traj.header, trainable=tuple(names[::-1]))  # reversed
    replay_tensors(traj, dict(reversed(list(params.items()))))
    got = tensors_sha256(params, names)
    assert got == info["replayed_sha256"][str(traj.num_steps)]


SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from tinymodels import tiny_model
from mezo_ckpt.models.adapters import prepare
from mezo_ckpt.trajectory import read_trajectory
from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.rebuild import replay_model
from pathlib import Path
golden = Path(sys.argv[1]) / "golden"
index = json.loads((golden / "HASHES.json").read_text())
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for name, info in index.items():
    c = info["case"]
    m = tiny_model(c["arch"], dtype=getattr(torch, c["dtype"]), tie=c["tie"])
    traj = read_trajectory(golden / f"{name}.zst")
    m = prepare(traj.header, m)
    replay_model(traj, m, backend=sys.argv[2], check_base=False)
    out[name] = tensors_sha256(canonical_parameters(m), traj.header.trainable)
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "env",
    [
        {"ATEN_CPU_CAPABILITY": "default", "NUMBA_NUM_THREADS": "1"},
        {"NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
    ],
)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_golden_in_fresh_process(env, backend):
    """Same bits under the portable 'default' ATen build path, other thread counts."""
    full_env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), backend],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if env.get("ATEN_CPU_CAPABILITY") == "default":
        assert got["capability"] == "DEFAULT"
    for name, info in INDEX.items():
        final = info["replayed_sha256"][str(info["case"]["steps"])]
        assert got[name] == final, name


def test_momentum_golden_matches_the_independent_numpy_rule():
    """The history-v1 golden file's committed hashes are what the independent NumPy
    implementation of docs/FORMAT.md computes (not only what our replay computed once)."""
    import hashlib

    import numpy as np
    from reference_numpy import _to_np32, np_apply, np_key

    from mezo_ckpt.core.hashing import dtype_name

    name = "llama-fp32-momentum-chained"
    info = INDEX[name]
    traj = read_trajectory(GOLDEN / f"{name}.zst")
    assert traj.header.records.history == 3
    h = traj.header
    for step, expected in info["replayed_sha256"].items():
        batch = traj.update_batch(int(step))
        params = canonical_parameters(base_for(info["case"]))
        digest = hashlib.sha256()
        for pname in sorted(h.trainable):
            p = params[pname].detach()
            y = np_apply(
                _to_np32(p).reshape(-1), "float32", np_key(h.perturbation.seed, pname),
                batch.steps, batch.coefs, batch.decay, h.perturbation.z, h.update.rounding,
                history=batch.history,
            )  # fmt: skip
            digest.update(pname.encode() + b"\x00" + dtype_name(p.dtype).encode() + b"\x00")
            digest.update(json.dumps(list(p.shape)).encode() + b"\x00")
            digest.update(np.ascontiguousarray(y, "<f4").tobytes())
        assert digest.hexdigest() == expected, f"step {step}"
