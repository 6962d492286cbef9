"""The runnable examples in examples/, at tiny sizes: each trains with the public API and
ends by replaying its trajectory and checking bit-for-bit equality (exit code 1 if not)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from paths import ROOT

EXAMPLES = {
    "plain_loop_cnn.py": ["--steps", "6"],
    "trainer_causal_lm.py": ["--steps", "4"],
    "masked_lm_loop.py": ["--pretrain-steps", "5", "--steps", "4"],
    "masked_lm_sweep.py": ["--pretrain-steps", "5", "--steps", "4", "--seeds", "1,2"],
}


def test_every_example_is_run_here():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_replays_bit_for_bit(name, tmp_path):
    cmd = [sys.executable, str(ROOT / "examples" / name), *EXAMPLES[name], "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "bit for bit: True" in r.stdout
    assert list(tmp_path.rglob("*.zst")), "the trajectories are where --out says"


def test_the_readmes_plain_loop_snippet_runs_as_printed(tmp_path, monkeypatch):
    """The README's `mezo_ckpt.MeZO` block, copied and pasted: it trains, records, and
    its last line asserts replay == the trained weights."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (snippet,) = [b for b in blocks if "mezo_ckpt.MeZO(model" in b]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["accuracy"] > 0.4  # above chance (0.25) after 300 steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init.safetensors", "run.zst"]
