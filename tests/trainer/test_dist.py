"""Data parallelism on torch.distributed (gloo, 2 CPU processes under torchrun).

Each run is a real ``torchrun --nproc-per-node 2 -m mezo_ckpt train ...``: ranks shard the
batch (or share the n-SPSA directions), all-reduce loss sums, check each other's weight
fingerprints at every evaluation; rank 0 alone writes the file. A rank that stops
answering ends the run with a typed error after the timeout, and the journal resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.trajectory import read_trajectory

pytestmark = pytest.mark.slow

ARGS = [
    "--template",
    "{text} =",
    "--verbalizer",
    "pos= p,neg= n",
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--batch-size",
    "8",
    "--lr",
    "1e-2",
    "-q",
    "--set",
    "fsync=false",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import json

    d = tmp_path_factory.mktemp("dist")
    save_tiny(d / "base", "llama")
    rows = toy_sentiment(80)
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:64]))
    (d / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows[64:]))
    return d


def common(d: Path) -> list[str]:
    return [
        "--model",
        str(d / "base"),
        "--train-file",
        str(d / "train.jsonl"),
        "--dev-file",
        str(d / "dev.jsonl"),
    ]


def torchrun(d: Path, entry: list[str], *args: str, timeout: int = 240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *entry,
        *args,
    ]
    return subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=timeout)


def single(d: Path, *args: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mezo_ckpt", *args],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_data_parallel_matches_one_process_and_replays(setup):
    d = setup
    r = torchrun(d, ["-m", "mezo_ckpt"], "train", *common(d), *ARGS, "-o", "dp.zst")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("Wrote dp.zst") == 1  # rank 0 speaks for the run
    assert r.stdout.count("data parallel: 2 ranks (gloo), each a share of the batch") == 1
    s = single(d, "train", *common(d), *ARGS, "-o", "sp.zst")
    assert s.returncode == 0, s.stderr[-2000:]
    a, b = read_trajectory(d / "dp.zst"), read_trajectory(d / "sp.zst")
    # same global batch: same losses within float tolerance (here even the same bits)
    np.testing.assert_allclose(a.records.losses, b.records.losses, rtol=1e-5, atol=1e-6)
    # every rank held the weights the file replays to (checked at each evaluation)
    rep = single(d, "replay", "dp.zst", "--base", "base", "-o", "dp-out", "--json")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert '"verified": "fingerprint"' in rep.stdout


def test_directions_across_ranks(setup):
    d = setup
    r = torchrun(
        d,
        ["-m", "mezo_ckpt"],
        "train",
        *common(d),
        *ARGS,
        "-o",
        "dir.zst",
        "--n-directions",
        "2",
        "--dist-mode",
        "directions",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = single(d, "train", *common(d), *ARGS, "-o", "dir1.zst", "--n-directions", "2")
    assert s.returncode == 0, s.stderr[-2000:]
    a, b = read_trajectory(d / "dir.zst"), read_trajectory(d / "dir1.zst")
    np.testing.assert_allclose(a.records.losses, b.records.losses, rtol=1e-5, atol=1e-6)
    assert a.records.coefs.shape == (6, 2)


def test_a_silent_rank_ends_the_run_typed_and_resumable(setup):
    d = setup
    hang = d / "hang.py"
    hang.write_text(
        textwrap.dedent("""
        import os, time
        from mezo_ckpt.trainer.config import TrainConfig
        real = TrainConfig.lr_at
        def lr_at(self, step):
            if step == 4 and os.environ.get("RANK") == "1":
                time.sleep(600)  # rank 1 stops answering in the middle of the run
            return real(self, step)
        TrainConfig.lr_at = lr_at
        from mezo_ckpt.cli import main
        main()
    """)
    )
    r = torchrun(
        d, [str(hang)], "train", *common(d), *ARGS, "-o", "dead.zst", "--dist-timeout", "8"
    )
    assert r.returncode != 0
    assert "DistributedError" in r.stdout + r.stderr
    assert "--resume" in r.stdout + r.stderr
    assert (d / "dead.zst.partial").exists() and not (d / "dead.zst").exists()
    assert read_trajectory(d / "dead.zst.partial", allow_truncated_tail=True).num_steps == 4
    r = torchrun(d, ["-m", "mezo_ckpt"], "train", "--resume", "dead.zst", *common(d), "-q")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    single(d, "train", *common(d), *ARGS, "-o", "straight.zst")
    a, b = read_trajectory(d / "dead.zst"), read_trajectory(d / "straight.zst")
    assert a.checkpoints == b.checkpoints and a.complete


def _patched_entry(d: Path, name: str, body: str) -> Path:
    """A launcher script: patch TrainConfig.lr_at with ``body`` (a function of self, step,
    real), then run the CLI, so one rank can misbehave at a chosen step."""
    script = d / name
    script.write_text(
        "import os, signal, time\n"
        "from mezo_ckpt.trainer.config import TrainConfig\n"
        "real = TrainConfig.lr_at\n"
        "def lr_at(self, step):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
        "TrainConfig.lr_at = lr_at\n"
        "from mezo_ckpt.cli import main\n"
        "main()\n"
    )
    return script


def test_a_killed_rank_ends_the_run_and_the_journal_resumes(setup):
    """SIGKILL of rank 1 mid-run (not a hang): the run stops, rank 0's journal holds the
    steps decided before, and a resumed run ends on the straight run's checkpoints."""
    d = setup
    kill = _patched_entry(
        d,
        "kill.py",
        """
        if step == 4 and os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, step)
        """,
    )
    r = torchrun(
        d, [str(kill)], "train", *common(d), *ARGS, "-o", "killed.zst", "--dist-timeout", "20"
    )
    assert r.returncode != 0
    assert (d / "killed.zst.partial").exists() and not (d / "killed.zst").exists()
    assert read_trajectory(d / "killed.zst.partial", allow_truncated_tail=True).num_steps <= 4
    r = torchrun(d, ["-m", "mezo_ckpt"], "train", "--resume", "killed.zst", *common(d), "-q")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if not (d / "straight.zst").exists():
        single(d, "train", *common(d), *ARGS, "-o", "straight.zst")
    a, b = read_trajectory(d / "killed.zst"), read_trajectory(d / "straight.zst")
    assert a.checkpoints == b.checkpoints and a.complete


def test_ranks_whose_weights_drift_apart_stop_with_rank_mismatch(setup):
    """Rank 1 applies another learning rate at step 2: at the next evaluation the
    fingerprints differ and the run stops with RankMismatchError naming the rank."""
    d = setup
    drift = _patched_entry(
        d,
        "drift.py",
        """
        lr = real(self, step)
        return lr * 2 if step == 2 and os.environ.get("RANK") == "1" else lr
        """,
    )
    r = torchrun(d, [str(drift)], "train", *common(d), *ARGS, "-o", "drift.zst")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "RankMismatchError" in out, out[-3000:]
    assert "rank(s) [1]" in out and "at step 3" in out
    assert not (d / "drift.zst").exists()


def test_accelerate_launch_with_the_console_script(setup):
    """The README's `accelerate launch --multi_gpu --num_processes N --no_python mezo-ckpt`
    line starts N ranks (accelerate hands it to torchrun) and trains data parallel. Without
    --multi_gpu (or an `accelerate config`), accelerate starts one process."""
    bindir = Path(sys.executable).parent
    accelerate, console = bindir / "accelerate", bindir / "mezo-ckpt"
    if not (accelerate.exists() and console.exists()):
        pytest.skip("accelerate or the mezo-ckpt console script is not installed here")
    d = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--no_python"]
    cmd += [str(console), "train", *common(d), *ARGS, "-o", "acc.zst"]
    r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("Wrote acc.zst") == 1
    assert "data parallel: 2 ranks (gloo)" in r.stdout  # not one process in disguise
    s = d / "sp.zst"
    if not s.exists():
        single(d, "train", *common(d), *ARGS, "-o", "sp.zst")
    a, b = read_trajectory(d / "acc.zst"), read_trajectory(s)
    np.testing.assert_allclose(a.records.losses, b.records.losses, rtol=1e-5, atol=1e-6)
