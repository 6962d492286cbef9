"""A picture of a run: the evaluation curve and the training loss (optional matplotlib)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trajectory import FLAG_SKIPPED, Trajectory, read_trajectory
from mezo_ckpt.util.fsutil import atomic_write_bytes
from mezo_ckpt.util.text import clean

#: Steps averaged per point of the smoothed loss curve (at most this many points).
MAX_LOSS_POINTS = 400


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "drawing a plot needs matplotlib: pip install 'mezo-ckpt[plot]' (or matplotlib)"
        ) from None
    return plt


def _text(value: str) -> str:
    """``value`` as plain text in a figure: cleaned, and ``$`` escaped (matplotlib reads
    the text between two ``$`` as mathematics, and fails on what it cannot parse)."""
    return clean(value).replace("$", r"\$")


def render_png(traj: Trajectory, title: str | None = None) -> bytes:
    """PNG bytes: per-split evaluation metrics against steps, and the mean step loss."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    present = {k for e in traj.evaluations for k in e.metrics}
    metrics = [m for m in ("accuracy", "f1", "exact_match") if m in present] or ["loss"]
    splits: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in traj.evaluations:
        for m in metrics:
            if m in e.metrics:
                splits.setdefault((e.split, m), []).append((e.step, e.metrics[m]))
    for (split, m), pts in sorted(splits.items()):
        pts.sort()
        label = _text(split) if len(metrics) == 1 else f"{_text(split)} {_text(m)}"
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel(" / ".join(metrics))
    ax1.set_title("evaluation")
    if splits:
        ax1.legend()
    rec = traj.records
    if rec.losses is not None and len(rec):
        live = (rec.flags & FLAG_SKIPPED) == 0
        loss = rec.losses.reshape(len(rec), -1).mean(axis=1)
        steps = np.arange(len(rec))[live]
        loss = loss[live]
        ax2.plot(steps, loss, alpha=0.3, linewidth=0.8, label="per step")
        w = max(1, len(loss) // MAX_LOSS_POINTS, min(25, len(loss) // 10 or 1))
        if len(loss) >= w > 1:
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax2.plot(steps[w - 1 :], smooth, label=f"mean of {w}")
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no losses recorded", ha="center", va="center")
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean of L+ and L-")
    ax2.set_title("training loss")
    if title:
        fig.suptitle(_text(title)[:120])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_trajectory(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Draw ``path``'s run into the PNG ``out`` (written atomically)."""
    traj = read_trajectory(path)
    data = render_png(traj, title=Path(path).name)
    atomic_write_bytes(out, data)
    return Path(out)
