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
        "import mezo_ckpt.header, mezo_ckpt.replay, mezo_ckpt.rebuild\n"
        "bad = [m for m in sys.modules if m == 'click' or m.startswith('click.')\n"
        "       or m.startswith('mezo_ckpt.trainer') or m.startswith('mezo_ckpt.hub')\n"
        "       or m.startswith('mezo_ckpt.cli')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at the top or inside a function."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("trainer", ("click", "mezo_ckpt.api", "mezo_ckpt.cli", "mezo_ckpt.hub")),
        (
            "rebuild",
            ("click", "mezo_ckpt.api", "mezo_ckpt.cli", "mezo_ckpt.hub", "mezo_ckpt.trainer"),
        ),
        (
            ".",
            ("click", "mezo_ckpt.trainer", "mezo_ckpt.hub", "mezo_ckpt.cli", "mezo_ckpt.api"),
        ),
    ],
    ids=["trainer", "rebuild", "core"],
)
def test_layers_import_one_way(package, forbidden):
    """No import anywhere in a layer's files (deferred ones included) reaches up a layer:
    the trainer never imports the API, the CLI or the Hub; the core modules none of them."""
    core = ("format", "stream", "update", "hashing", "replay", "header", "errors")
    pkg = ROOT / "mezo_ckpt"
    files = (
        sorted((pkg / package).glob("*.py"))
        if package in ("trainer", "rebuild")
        else [pkg / f"{m}.py" for m in core]
    )
    bad = {
        f"{f.relative_to(ROOT)}: {m}"
        for f in files
        for m in _imported_modules(f)
        if any(m == x or m.startswith(x + ".") for x in forbidden)
    }
    assert not bad, sorted(bad)
