"""mezo_ckpt.core.backends: where the stream and the update rule run.

The compiled CPU kernels load (and are decided once); a missing numba falls back to the
eager path with one RuntimeWarning; only CPU devices use them. The Triton kernels are
offered for CUDA devices only, can be switched off with MEZO_CKPT_TRITON=0, and are
absent where they cannot import or cannot run (no GPU and no interpreter).
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import mezo_ckpt.core as core_pkg
from mezo_ckpt.core import backends


@pytest.fixture
def fresh():
    """Forget the per-process decisions before and after the test."""
    backends.compiled_kernels.cache_clear()
    backends._triton_module.cache_clear()
    yield
    backends.compiled_kernels.cache_clear()
    backends._triton_module.cache_clear()


def _hide_module(monkeypatch, name: str) -> None:
    """Make ``from mezo_ckpt.core import <name>`` fail with ImportError."""
    monkeypatch.delattr(core_pkg, name, raising=False)
    monkeypatch.setitem(sys.modules, f"mezo_ckpt.core.{name}", None)


def test_compiled_kernels_load_once(fresh):
    pytest.importorskip("numba")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading them warns about nothing
        mod = backends.compiled_kernels()
    assert mod is not None and mod.__name__ == "mezo_ckpt.core.kernels_cpu"
    assert callable(mod.replay) and callable(mod.z_fill)
    assert backends.compiled_kernels() is mod
    assert backends.compiled_kernels.cache_info().misses == 1


@pytest.mark.parametrize(
    "device,want",
    [
        ("cpu", True),
        (torch.device("cpu"), True),
        ("cuda", False),
        ("cuda:1", False),
        ("meta", False),
    ],
)
def test_use_compiled_only_on_cpu(fresh, device, want):
    pytest.importorskip("numba")
    assert backends.use_compiled(device) is want


def test_compiled_kernels_fall_back_with_one_warning(fresh, monkeypatch):
    """numba missing: the kernels module fails to import, the eager path is announced."""
    for name in ("kernels_cpu", "kernels_cpu_round"):
        monkeypatch.delattr(core_pkg, name, raising=False)
        monkeypatch.delitem(sys.modules, f"mezo_ckpt.core.{name}", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)
    with pytest.warns(RuntimeWarning, match="compiled CPU kernels unavailable") as caught:
        assert backends.compiled_kernels() is None
        assert backends.compiled_kernels() is None  # decided once: no second warning
        assert backends.use_compiled("cpu") is False
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "ModuleNotFoundError" in msg and "numba" in msg and "eager torch path" in msg


def test_use_compiled_rejects_unknown_device_strings(fresh):
    with pytest.raises(RuntimeError):
        backends.use_compiled("not-a-device")


def test_triton_switch_turns_the_kernels_off(fresh, monkeypatch):
    for value in ("0", " 0 ", "0\n"):
        monkeypatch.setenv("MEZO_CKPT_TRITON", value)
        assert backends.triton_kernels() is None
        assert backends.use_triton("cuda") is False
    assert backends._triton_module.cache_info().currsize == 0  # never even imported


def test_triton_kernels_under_the_interpreter(fresh, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("MEZO_CKPT_TRITON", raising=False)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = backends.triton_kernels()
    assert mod is not None and mod.__name__ == "mezo_ckpt.core.kernels_triton"
    assert backends.triton_kernels() is mod
    monkeypatch.setenv("MEZO_CKPT_TRITON", "1")
    assert backends.triton_kernels() is mod
    assert backends.use_triton("cuda") is True
    assert backends.use_triton(torch.device("cuda", 0)) is True
    assert backends.use_triton("cpu") is False  # CPU tensors never take the Triton path


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU makes the kernels available")
def test_triton_kernels_absent_without_gpu_or_interpreter(fresh, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("MEZO_CKPT_TRITON", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert backends.triton_kernels() is None
    assert backends.use_triton("cuda") is False


def test_triton_kernels_absent_when_they_cannot_import(fresh, monkeypatch):
    monkeypatch.delenv("MEZO_CKPT_TRITON", raising=False)
    _hide_module(monkeypatch, "kernels_triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently absent
        assert backends.triton_kernels() is None
    assert backends.use_triton("cuda") is False
