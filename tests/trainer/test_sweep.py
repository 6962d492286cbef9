"""mezo_ckpt.trainer.sweep: grids, seeds, shards, run states, the mean (std) table.

The runs themselves (subprocesses, resume after a kill, locks) are exercised through the
command in tests/cli/test_sweep_command.py (a test module name is unique across folders).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer import sweep as sw


def test_a_grid_keeps_the_values_as_typed_and_checks_them():
    grid = sw.parse_grid(["lr=1e-7, 1e-6,1e-5", "eps=1e-3"])
    assert grid == {"lr": ["1e-7", "1e-6", "1e-5"], "eps": ["1e-3"]}
    assert sw.parse_grid({"lr": [1e-7, 1e-6], "peft": "lora"}) == {
        "lr": ["1e-07", "1e-06"],
        "peft": ["lora"],
    }
    assert sw.parse_grid(["batch-size=8,16"]) == {"batch_size": ["8", "16"]}


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["lr"], "use KEY=V1,V2"),
        (["lr="], "use KEY=V1,V2"),
        (["learning_rate=1e-5"], "did you mean 'lr'"),
        (["seed=1,2"], "use --seeds"),
        (["output=a.zst"], "each run has its own"),
        (["lr=1e-5", "lr=1e-6"], "already in the grid"),
        (["lr=1e-5,1e-5"], "repeated"),
        (["lr=1e-5,,1e-6"], "empty"),
        (["lr=fast"], "lr='fast'"),
        (["steps=0"], None),  # a value of the right type: checked when the run resolves
    ],
)
def test_a_bad_grid_is_refused_naming_the_item(items, match):
    if match is None:
        sw.parse_grid(items)
        return
    with pytest.raises(ConfigError, match=match):
        sw.parse_grid(items)


def test_seeds_and_shards():
    assert sw.parse_seeds("13, 21,42") == [13, 21, 42]
    assert sw.parse_seeds([1, 2]) == [1, 2]
    for bad in ("", "a", "1,1", "-3"):
        with pytest.raises(ConfigError, match="--seeds"):
            sw.parse_seeds(bad)
    assert sw.parse_shard(None) is None
    assert sw.parse_shard(" 2/4 ") == (2, 4)
    for bad in ("4/4", "1", "a/b", "-1/3"):
        with pytest.raises(ConfigError, match="--shard"):
            sw.parse_shard(bad)


def test_a_plan_lists_every_setting_over_every_seed(tmp_path):
    runs = sw.plan({"lr": ["1e-6", "1e-5"], "eps": ["1e-3"]}, [13, 21], tmp_path)
    assert [(r.label, r.seed) for r in runs] == [
        ("lr=1e-6,eps=1e-3", 13),
        ("lr=1e-6,eps=1e-3", 21),
        ("lr=1e-5,eps=1e-3", 13),
        ("lr=1e-5,eps=1e-3", 21),
    ]
    assert runs[3].path == tmp_path / "runs" / "lr=1e-5,eps=1e-3" / "seed-21.zst"
    assert runs[3].sets() == ["lr=1e-5", "eps=1e-3", "seed=21", "data_seed=21"]
    assert [r.index for r in runs] == [0, 1, 2, 3]
    assert sw.plan({}, [1], tmp_path)[0].path == tmp_path / "runs" / "base" / "seed-1.zst"
    with pytest.raises(ConfigError, match="same folder"):
        sw.plan({"template": ["a/b", "a:b"]}, [1], tmp_path)


def test_a_setting_names_only_a_folder_inside_the_sweep(tmp_path):
    """A grid value becomes a folder name: path characters are replaced, never followed."""
    run = sw.plan({"template": ["../../x {text}"]}, [1], tmp_path)[0]
    assert run.path.parent.parent == tmp_path / "runs"
    assert "/" not in run.path.parent.name


# ----------------------------------------------------------------------------- table


def outcome(tmp_path: Path, lr: str, seed: int, dev, test, zero=0.5, state="done"):
    run = sw.Run(0, (("lr", lr),), seed, tmp_path / f"{lr}-{seed}.zst")
    return sw.Outcome(run, state, "accuracy", dev, test, zero)


def test_mean_and_std_are_the_population_ones_computed_by_hand():
    assert sw.mean_std([]) is None
    m, s = sw.mean_std([0.9, 0.8, 0.85])
    assert math.isclose(m, 0.85)
    assert math.isclose(s, math.sqrt(((0.05**2) * 2) / 3))  # ddof = 0, as np.std
    assert sw.mean_std([0.7]) == (0.7, 0.0)


def test_the_table_picks_the_best_setting_by_dev_among_finished_ones(tmp_path):
    outs = [
        outcome(tmp_path, "1e-6", 13, 0.70, 0.90),
        outcome(tmp_path, "1e-6", 21, 0.80, 0.80),
        outcome(tmp_path, "1e-5", 13, 0.75, 0.60),
        outcome(tmp_path, "1e-5", 21, 0.75, 0.70),
        outcome(tmp_path, "1e-4", 13, 0.99, 0.99),  # better dev, but a run is missing
        outcome(tmp_path, "1e-4", 21, None, None, None, state="partial"),
    ]
    t = sw.table(outs)
    assert [r.label for r in t.rows] == ["lr=1e-6", "lr=1e-5", "lr=1e-4"]
    assert [r.done for r in t.rows] == [2, 2, 1]
    assert t.best is t.rows[0]  # 0.75 mean dev ties 1e-5: the first one wins
    assert t.rows[0].test == pytest.approx((0.85, 0.05))
    text = sw.format_table(t)
    lines = text.splitlines()
    assert lines[0].split() == ["setting", "runs", "dev", "accuracy", "test", "accuracy",
                                "zero-shot", "test"]  # fmt: skip
    assert (
        lines[1].startswith("* lr=1e-6") and "85.0 (5.0)" in lines[1] and "75.0 (5.0)" in lines[1]
    )
    assert lines[2].startswith("  lr=1e-5") and "65.0 (5.0)" in lines[2]
    assert lines[3].startswith("  lr=1e-4") and "1/2" in lines[3] and "99.0 (0.0)" in lines[3]
    data = t.as_json()
    assert data["best"] == {"lr": "1e-6"}
    assert data["settings"][0]["test"] == pytest.approx({"mean": 0.85, "std": 0.05})
    assert len(data["runs"]) == 6 and data["runs"][5]["state"] == "partial"
    json.dumps(data)  # plain JSON


def test_a_table_with_nothing_done_has_no_best(tmp_path):
    t = sw.table([outcome(tmp_path, "1e-6", 1, None, None, None, state="new")])
    assert t.best is None
    assert "  lr=1e-6  0/1" in sw.format_table(t)


# ----------------------------------------------------------------------------- manifest


def test_a_folder_holds_one_sweep(tmp_path):
    want = {"train_args": ["--steps", "3"], "grid": {"lr": ["1e-5"]}, "seeds": [1, 2]}
    sw.check_manifest(tmp_path, want, write=False)
    assert not (tmp_path / sw.MANIFEST).exists()
    sw.check_manifest(tmp_path, want, write=True)
    assert sw.read_manifest(tmp_path) == want
    sw.check_manifest(tmp_path, want, write=True)  # the same sweep again: resume
    with pytest.raises(ConfigError, match="its seeds differ"):
        sw.check_manifest(tmp_path, {**want, "seeds": [1]}, write=True)
    (tmp_path / sw.MANIFEST).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a sweep manifest"):
        sw.read_manifest(tmp_path)


def test_a_run_command_resumes_a_started_run_and_shares_the_threads(tmp_path, monkeypatch):
    run = sw.plan({"lr": ["1e-5"]}, [7], tmp_path)[0]
    cmd = sw.command(run, ["--steps", "3"], None)
    assert cmd[1:4] == ["-m", "mezo_ckpt", "train"] and cmd[-3:] == ["-o", str(run.path), "-q"]
    assert "--threads" not in cmd
    run.path.parent.mkdir(parents=True)
    run.journal.write_bytes(b"")
    cmd = sw.command(run, ["--steps", "3"], 2)
    assert cmd[-3:] == ["--resume", str(run.path), "-q"] and "--threads" in cmd
    assert sw.command(run, ["--threads", "4"], 2).count("--threads") == 1  # the user's wins
    monkeypatch.setattr(sw.os, "cpu_count", lambda: 16)
    assert sw.threads_per_run(1) is None and sw.threads_per_run(4) == 4
    assert sw.threads_per_run(32) == 1
