"""The tree is lint- and format-clean (ruff check, ruff format --check), in CI too.

ruff is pinned in the test extra, so a new ruff release cannot turn CI red by itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return [exe]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=" ".join)
def test_ruff_is_clean(args):
    r = subprocess.run([*_ruff(), *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_core_never_imports_the_cli_the_trainer_or_the_hub():
    """Format, stream, update, hashing and replay stand alone (one-way dependencies)."""
    code = (
        "import sys\n"
        "import mezo_ckpt.format, mezo_ckpt.stream, mezo_ckpt.update, mezo_ckpt.hashing\n"
        "import mezo_ckpt.header, mezo_ckpt.replay, mezo_ckpt.sharded\n"
        "bad = [m for m in sys.modules if m == 'click' or m.startswith('click.')\n"
        "       or m.startswith('mezo_ckpt.trainer') or m.startswith('mezo_ckpt.hub')\n"
        "       or m.startswith('mezo_ckpt.cli')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
