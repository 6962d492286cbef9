"""`mezo-ckpt sweep` (mezo_ckpt/cli/sweep.py): a grid of real `train` runs over seeds on a
tiny model, the table, resuming after a kill without rerunning finished runs, runs held
by another process, shards, and refusals before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from helpers_train import write_jsonl
from tinymodels import save_tiny, save_tiny_masked, toy_sentiment

from mezo_ckpt.cli import main
from mezo_ckpt.trainer import sweep as sw
from mezo_ckpt.trajectory import read_trajectory
from mezo_ckpt.util.fsutil import exclusive_lock

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    save_tiny(d / "llama")
    save_tiny_masked(d / "roberta")
    train = write_jsonl(d / "train.jsonl", toy_sentiment(64, 0))
    dev = write_jsonl(d / "dev.jsonl", toy_sentiment(16, 1))
    common = ["--train-file", train, "--dev-file", dev, "--verbalizer", "pos=+,neg=-",
              "--k-shot", "4", "--batch-size", "8", "--eval-every", "0",
              "--max-length", "64"]  # fmt: skip
    return d, common


def causal(setup, steps: int = 2) -> list[str]:
    d, common = setup
    return ["--model", str(d / "llama"), "--template", "{text} =", "--steps", str(steps), *common]


def sweep(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


def test_a_grid_over_seeds_runs_keeps_every_run_and_prints_the_table(setup, tmp_path):
    d, common = setup
    out = tmp_path / "g"
    model = ["--model", d / "roberta", "--template", "{text} It was{mask}.", "--steps", "2"]
    args = ["--grid", "lr=1e-2,3e-2", "--seeds", "13,21", "-o", out, "--", *model, *common]
    r = sweep(*args)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["setting", "runs", "dev"]
    assert sum(ln.startswith("* ") for ln in lines) == 1
    assert "lr=1e-2  2/2" in r.stdout and "lr=3e-2  2/2" in r.stdout
    runs = sw.plan({"lr": ["1e-2", "3e-2"]}, [13, 21], out)
    for run in runs:
        traj = read_trajectory(run.path)
        assert traj.complete
        config = traj.header.config
        assert config["lr"] == float(run.setting[0][1]) and config["seed"] == run.seed
        assert config["data"]["k_shot"]["seed"] == run.seed  # the seed draws the examples
    assert (out / "table.md").read_text().startswith("```\nsetting")
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "accuracy" and len(results["runs"]) == 4
    # the same command again: nothing reruns, the same table
    stamps = {run.path: run.path.stat().st_mtime_ns for run in runs}
    again = sweep(*args)
    assert again.exit_code == 0 and again.stdout == r.stdout
    assert again.stderr.count("done already") == 4
    assert {run.path: run.path.stat().st_mtime_ns for run in runs} == stamps
    # -o alone: that sweep; --table, --json and --list read it without running
    assert sweep("-o", out).stdout == r.stdout
    data = json.loads(sweep("-o", out, "--table", "--json").stdout)
    assert data["best"] in ({"lr": "1e-2"}, {"lr": "3e-2"})
    listing = sweep("-o", out, "--list").stdout
    assert listing.count(" done ") == 4 and "mezo-ckpt train" in listing


def test_a_killed_sweep_resumes_without_rerunning_finished_runs(setup, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the second run
    trains: that run finishes its step and keeps its journal, the sweep exits 130. The
    same command then skips the finished run (its file untouched) and resumes the stopped
    one to the end, with the records a straight run writes."""
    out = tmp_path / "k"
    args = [a for a in causal(setup) if a not in ("--steps", "2")]
    cmd = [sys.executable, "-m", "mezo_ckpt", "sweep", "--grid", "steps=2,400", "--seeds", "1",
           "-o", str(out), "--", *args]  # fmt: skip
    first, second = sw.plan({"steps": ["2", "400"]}, [1], out)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not second.journal.exists():
        time.sleep(0.1)
    time.sleep(1.0)  # some steps recorded
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    assert sw.state_of(first) == "done" and sw.state_of(second) == "partial"
    src = second.journal if second.journal.exists() else second.path  # journal or stopped file
    stopped = read_trajectory(src, allow_truncated_tail=True).num_steps
    assert 0 < stopped < 400
    stamp = first.path.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "done already" in again.stderr and "resuming" in again.stderr
    assert first.path.stat().st_mtime_ns == stamp
    resumed = read_trajectory(second.path)
    assert resumed.complete and resumed.num_steps == 400
    straight = tmp_path / "straight.zst"
    r = CliRunner().invoke(main, ["train", *args, "--steps", "400", "--set", "seed=1",
                                  "--set", "data_seed=1", "-o", str(straight), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    want = read_trajectory(straight).records
    assert (want.flags == resumed.records.flags).all()
    assert (want.coefs == resumed.records.coefs).all()
    assert (want.decay == resumed.records.decay).all()


def test_ctrl_c_with_several_jobs_stops_them_all_and_starts_no_other(setup, tmp_path):
    """--jobs 2 and Ctrl-C: each running run gets one SIGINT (they are sessions of their
    own, so the terminal's signal reaches the sweep alone), finishes its step, and no
    queued run starts."""
    out = tmp_path / "j"
    args = [a for a in causal(setup) if a not in ("--steps", "2")]
    cmd = [sys.executable, "-m", "mezo_ckpt", "sweep", "--grid", "lr=1e-2,2e-2", "--seeds", "1,2",
           "--jobs", "2", "-o", str(out), "--", *args, "--steps", "100000"]  # fmt: skip
    runs = sw.plan({"lr": ["1e-2", "2e-2"]}, [1, 2], out)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not all(r.journal.exists() for r in runs[:2]):
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert [sw.state_of(r) for r in runs] == ["partial", "partial", "new", "new"]
    assert not runs[2].log.exists() and not runs[3].log.exists()  # never started


def test_a_run_another_process_holds_is_left_to_it(setup, tmp_path):
    out = tmp_path / "b"
    runs = sw.plan({"lr": ["1e-2"]}, [1, 2], out)
    runs[0].path.parent.mkdir(parents=True)
    with exclusive_lock(runs[0].path, "testing"):
        r = sweep("--grid", "lr=1e-2", "--seeds", "1,2", "-o", out, "--", *causal(setup))
    assert r.exit_code == 1, r.output
    assert "another process is running it" in r.stderr
    assert "1 of 2 runs are not done" in r.stderr
    assert sw.state_of(runs[0]) == "new" and sw.state_of(runs[1]) == "done"


def test_shards_split_the_runs(setup, tmp_path):
    out = tmp_path / "s"
    base = ["--grid", "lr=1e-2", "--seeds", "1,2", "-o", out, "--", *causal(setup)]
    r = sweep("--shard", "1/2", *base)
    runs = sw.plan({"lr": ["1e-2"]}, [1, 2], out)
    assert [sw.state_of(x) for x in runs] == ["new", "done"]
    assert r.exit_code == 1  # the table counts the other shard's run as not done
    r = sweep("--shard", "0/2", *base)
    assert r.exit_code == 0, r.output
    assert [sw.state_of(x) for x in runs] == ["done", "done"]


@pytest.mark.parametrize(
    ("before", "after", "match"),
    [
        ([], ["--seed", "3"], "--seed: a sweep sets each run's output and seed"),
        ([], ["--output", "a.zst"], "--output: a sweep sets"),
        ([], ["--set", "seed=3"], "--set seed"),
        ([], ["--resume", "a.zst"], "--resume"),
        (["--grid", "lr=fast"], [], "lr='fast'"),
        (["--grid", "steps=0"], [], "steps=0: must be a positive integer"),
        ([], ["--stesp", "3"], "--stesp"),  # click says: No such option .. did you mean
        (["--table", "--list"], [], "pick one"),
    ],
)
def test_mistakes_are_refused_before_anything_runs(setup, tmp_path, before, after, match):
    out = tmp_path / "m"
    r = sweep("-o", out, "--seeds", "1", *before, "--", *causal(setup), *after)
    assert r.exit_code == 2, r.output
    assert match in r.output
    assert not (out / "runs").exists() and not (out / sw.MANIFEST).exists()


def test_help_has_examples():
    r = CliRunner().invoke(main, ["sweep", "--help"])
    assert r.exit_code == 0
    assert "Examples:" in r.stdout and "--shard" in r.stdout and "sweep -o g" in r.stdout


def test_a_tampered_manifest_is_refused_like_typed_arguments(tmp_path):
    """`sweep -o DIR` runs what DIR/sweep.json says: the same checks apply to it."""
    for stored, match in (
        ({"train_args": ["--overwrite"], "grid": {"lr": ["1e-2"]}, "seeds": [1]}, "--overwrite"),
        ({"train_args": [], "grid": {"lr": ["../../x"]}, "seeds": [1]}, "must be a number"),
        ({"train_args": [], "grid": {"seed": ["1"]}, "seeds": [1]}, "use --seeds"),
        ({"train_args": [], "grid": {}, "seeds": [-1]}, "--seeds"),
        ({"grid": {}}, "not a sweep manifest"),
    ):
        (tmp_path / sw.MANIFEST).write_text(json.dumps(stored))
        r = sweep("-o", tmp_path)
        assert r.exit_code == 2, r.output
        assert match in r.stderr
        assert not (tmp_path / "runs").exists()
