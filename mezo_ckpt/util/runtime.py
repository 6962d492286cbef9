"""Process-wide settings a command makes once: threads, device, library chatter."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from mezo_ckpt.errors import ConfigError


def cache_root() -> Path:
    """``$MEZO_CKPT_CACHE``, else ``$XDG_CACHE_HOME/mezo-ckpt``, else ``~/.cache/mezo-ckpt``:
    the converted embedded model, the replay cache and the run locks live there."""
    if env := os.environ.get("MEZO_CKPT_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "mezo-ckpt"
    return Path.home() / ".cache" / "mezo-ckpt"


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and the compiled kernels (None: all cores)."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; refuses cuda without one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available")
    return device


def bars_wanted(progress: bool) -> bool:
    """Whether to draw progress bars: asked for, and stderr is a terminal (in a log file a
    bar is a line of carriage returns)."""
    import sys

    return progress and bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextlib.contextmanager
def quiet_progress(progress: bool) -> Iterator[None]:
    """Silence huggingface_hub's and transformers' progress bars (and transformers' info
    logging) unless ``progress`` and stderr is a terminal; restore them afterwards."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    if bars_wanted(progress):
        yield
        return
    hub_was_on = not are_progress_bars_disabled()
    tf_was_on = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        with warnings.catch_warnings():  # hub warns when HF_HUB_DISABLE_PROGRESS_BARS is set
            warnings.simplefilter("ignore")
            if hub_was_on:
                enable_progress_bars()
            if tf_was_on:
                hf_logging.enable_progress_bar()


@contextlib.contextmanager
def graceful_interrupt(message: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current step, then stop cleanly. Second: stop now."""
    hits = {"n": 0}

    def handler(signum, frame):  # noqa: ARG001
        hits["n"] += 1
        if hits["n"] > 1:
            raise KeyboardInterrupt
        message(
            "Interrupted: finishing the current step and saving a valid trajectory "
            "(Ctrl-C again to stop at once)."
        )

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: hits["n"] > 0
    finally:
        signal.signal(signal.SIGINT, previous)
