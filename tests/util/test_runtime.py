"""mezo_ckpt.util.runtime: the cache folder, progress bars only on a terminal, threads,
and a Ctrl-C that finishes the step in flight."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mezo_ckpt.util.runtime import bars_wanted, cache_root, graceful_interrupt


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MEZO_CKPT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == Path.home() / ".cache" / "mezo-ckpt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mezo-ckpt"
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"


def test_no_bars_in_a_log(monkeypatch):
    class Log:
        def isatty(self) -> bool:
            return False

    class Terminal(Log):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Log())
    assert not bars_wanted(True)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert bars_wanted(True) and not bars_wanted(False)


def test_first_ctrl_c_asks_to_stop_after_the_step():
    said: list[str] = []
    with graceful_interrupt(said.append) as stop_requested:
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop_requested() and "finishing the current step" in said[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
