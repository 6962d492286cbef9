"""mezo_ckpt.util.moved: the module paths of 0.2 keep working for a release, with a
DeprecationWarning that says where each module lives now."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mezo_ckpt.util.moved import MOVED

CODE = r"""
import importlib, sys, warnings
old, new = sys.argv[1], sys.argv[2]
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    mod = importlib.import_module(old)
assert mod is importlib.import_module(new), (mod, new)
msgs = [str(w.message) for w in seen if w.category is DeprecationWarning]
assert any(old in m and new in m for m in msgs), msgs
print("ok")
"""


@pytest.mark.parametrize("old", ["mezo_ckpt.export", "mezo_ckpt.format", "mezo_ckpt.hub.client"])
def test_an_old_module_path_still_imports_and_says_where_it_went(old):
    r = subprocess.run(
        [sys.executable, "-c", CODE, old, MOVED[old]], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_every_moved_path_points_at_a_real_module():
    import importlib

    for new in MOVED.values():
        importlib.import_module(new)


def test_the_name_apply_delta_help_advertised():
    r = subprocess.run(
        [sys.executable, "-W", "ignore", "-c",
         "from mezo_ckpt.export import apply_delta, load_delta; print(apply_delta.__module__)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "mezo_ckpt.models.export", r.stderr
