"""The tree is lint- and format-clean (ruff check, ruff format --check), in CI too.

ruff is pinned in the test extra, so a new ruff release cannot turn CI red by itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT  # noqa: E402


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
        "import mezo_ckpt.trajectory, mezo_ckpt.core.stream, mezo_ckpt.core.update\n"
        "import mezo_ckpt.core.hashing\n"
        "import mezo_ckpt.trajectory.header, mezo_ckpt.trajectory.steps, mezo_ckpt.rebuild\n"
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


#: The package's layers, lowest first: a module imports only from its own layer or below
#: (deferred imports included). Siblings in one layer do not import each other unless
#: they are the same folder.
LAYERS = [
    ("errors",),
    ("util",),
    ("core",),
    ("trajectory",),
    ("models",),
    ("rebuild", "plot", "data", "recipes"),
    ("trainer", "hub"),
    ("api",),
    ("cli",),
    ("__init__", "__main__"),  # the package's own entry points (mezo_ckpt.load, python -m)
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mezo_ckpt" or len(parts) == 1 or parts[1] == "__version__":
        return None
    return parts[1]


def test_layers_import_one_way():
    """Folders are layers: nothing imports a higher layer or a sibling folder, anywhere
    (the trainer never reaches the Hub, the API or the CLI; the core none of the rest)."""
    pkg = ROOT / "mezo_ckpt"
    bad = set()
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(ROOT)
        me = _layer_of(".".join(rel.with_suffix("").parts))
        if me is None:
            continue
        assert me in RANK, f"{rel}: folder {me} is in no layer of LAYERS"
        for m in _imported_modules(f):
            them = _layer_of(m)
            if them is None or them == me:
                continue
            if m == "mezo_ckpt." + them and them not in RANK:
                continue  # `from mezo_ckpt import __version__`
            if RANK.get(them, 99) >= RANK[me]:
                bad.add(f"{rel}: {me} imports {m}")
    assert not bad, sorted(bad)


def test_no_import_circles_and_no_module_over_800_lines():

    pkg = ROOT / "mezo_ckpt"
    deps: dict[str, set[str]] = {}
    for f in pkg.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps[name] = {
            m
            for m in _imported_modules(f)
            if m.startswith("mezo_ckpt.") and m != name and not name.startswith(m + ".")
        }
        assert f.read_text().count("\n") <= 800, f"{f.relative_to(ROOT)} is over 800 lines"
    known = set(deps)

    def visit(n: str, stack: list[str], done: set[str]) -> None:
        if n in stack:
            raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(n) :], n]))
        if n in done:
            return
        for d in sorted(deps.get(n, ())):
            if d in known:
                visit(d, [*stack, n], done)
        done.add(n)

    done: set[str] = set()
    for n in sorted(deps):
        visit(n, [], done)


def test_test_module_names_are_unique_across_folders():
    """pytest imports test modules by their basename (no packages under tests/): two
    test_x.py in two folders stop the whole suite at collection."""
    from collections import Counter

    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
