"""mezo_ckpt.plot: the picture of a run (evaluation curves and training loss).

render_png gives a PNG of the documented size whose axes hold what the trajectory says:
one curve per split and metric (accuracy / f1 / exact_match preferred, else loss), the
mean step loss without skipped steps and its moving mean, a note when no losses were
recorded, a cleaned title. plot_trajectory draws a golden file into a PNG (replacing an
older one) and refuses a missing file with the typed error; without matplotlib the error
is a ConfigError that says what to install.
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
from helpers_format import make_trajectory
from paths import GOLDEN

from mezo_ckpt import plot
from mezo_ckpt.errors import ConfigError, MezoCkptError, TrajectoryNotFoundError
from mezo_ckpt.trajectory import FLAG_SKIPPED, read_trajectory

plt = pytest.importorskip("matplotlib.pyplot")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOLDEN_FILE = GOLDEN / "llama-fp32-normal16.zst"


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.fixture
def figures(monkeypatch):
    """The figures render_png closes, kept for inspection."""
    closed = []
    real_close = plt.close

    def close(fig=None):
        closed.append(fig)
        real_close(fig)

    monkeypatch.setattr(plt, "close", close)
    return closed


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
    }


def test_render_png_draws_evaluations_per_split(figures):
    evals = [
        (20, "dev", {"accuracy": 0.75, "loss": 0.5}),
        (10, "dev", {"accuracy": 0.5, "loss": 0.7}),
        (10, "test", {"accuracy": 0.25}),
        (30, "dev", {"accuracy": 0.875}),
    ]
    png = plot.render_png(make_trajectory(40, evaluations=evals, losses=True), title="run")
    assert _size(png) == (1100, 396)  # 10 x 3.6 inches at 110 dpi
    (fig,) = figures
    ax1, ax2 = fig.axes
    # accuracy is preferred to loss; points sorted by step; one line per split
    assert _lines(ax1) == {"dev": ([10, 20, 30], [0.5, 0.75, 0.875]), "test": ([10], [0.25])}
    assert ax1.get_ylabel() == "accuracy" and ax1.get_title() == "evaluation"
    assert [t.get_text() for t in ax1.get_legend().get_texts()] == ["dev", "test"]
    assert fig._suptitle.get_text() == "run"
    assert ax2.get_title() == "training loss" and ax2.get_xlabel() == "step"


def test_render_png_labels_several_metrics(figures):
    evals = [(5, "dev", {"f1": 0.4, "exact_match": 0.2}), (9, "dev", {"f1": 0.6})]
    plot.render_png(make_trajectory(12, evaluations=evals))
    ax1 = figures[0].axes[0]
    assert _lines(ax1) == {"dev exact_match": ([5], [0.2]), "dev f1": ([5, 9], [0.4, 0.6])}
    assert ax1.get_ylabel() == "f1 / exact_match"


def test_render_png_falls_back_to_loss_metric(figures):
    evals = [(3, "dev", {"loss": 1.5, "examples": 10.0}), (6, "dev", {"loss": 1.25})]
    plot.render_png(make_trajectory(8, evaluations=evals))
    ax1 = figures[0].axes[0]
    assert _lines(ax1) == {"dev": ([3, 6], [1.5, 1.25])}
    assert ax1.get_ylabel() == "loss"


def test_render_png_loss_curve_skips_skipped_steps_and_smooths(figures):
    traj = make_trajectory(40, losses=True, n_directions=2, skip=(7, 8))
    rec = traj.records
    rec.losses[7] = np.nan  # a skipped step's losses are never drawn
    assert (rec.flags[[7, 8]] & FLAG_SKIPPED).all()
    plot.render_png(traj)
    lines = _lines(figures[0].axes[1])
    live = [s for s in range(40) if s not in (7, 8)]
    mean = rec.losses.reshape(40, -1).mean(axis=1)
    xs, ys = lines["per step"]
    assert xs == live
    np.testing.assert_allclose(ys, mean[live], rtol=1e-6)
    # 38 live steps: a moving mean of max(1, 38 // 400, min(25, 38 // 10)) = 3
    sx, sy = lines["mean of 3"]
    assert sx == live[2:]
    np.testing.assert_allclose(sy, np.convolve(mean[live], np.ones(3) / 3, mode="valid"))
    assert set(lines) == {"per step", "mean of 3"}


def test_render_png_without_losses_or_evaluations(figures):
    png = plot.render_png(make_trajectory(12, evaluations=()))
    assert _size(png) == (1100, 396)
    ax1, ax2 = figures[0].axes
    assert ax1.get_lines() == [] and ax1.get_legend() is None
    assert ax2.get_lines() == []
    assert [t.get_text() for t in ax2.texts] == ["no losses recorded"]
    assert figures[0]._suptitle is None


def test_render_png_title_is_cleaned_and_shortened(figures):
    title = "run\x1b]0;owned\x07 " + "x" * 200
    plot.render_png(make_trajectory(4, losses=True), title=title)
    text = figures[0]._suptitle.get_text()
    assert "\x1b" not in text and "\x07" not in text
    assert text.startswith("run\\x1b]0;owned\\x07 x") and len(text) == 120


def test_render_png_closes_its_figure():
    before = plt.get_fignums()
    plot.render_png(make_trajectory(6, losses=True))
    assert plt.get_fignums() == before


def test_plot_trajectory_draws_a_golden_file(tmp_path, figures):
    out = tmp_path / "run.png"
    out.write_bytes(b"an older picture")
    got = plot.plot_trajectory(GOLDEN_FILE, out)
    assert got == out
    assert _size(out.read_bytes()) == (1100, 396)
    assert [p.name for p in tmp_path.iterdir()] == ["run.png"]  # no temp file left
    fig = figures[0]
    assert fig._suptitle.get_text() == GOLDEN_FILE.name
    traj = read_trajectory(GOLDEN_FILE)
    if traj.records.losses is None:
        assert [t.get_text() for t in fig.axes[1].texts] == ["no losses recorded"]
    assert len(fig.axes[0].get_lines()) == len({e.split for e in traj.evaluations})


def test_plot_trajectory_of_a_missing_file(tmp_path):
    out = tmp_path / "run.png"
    with pytest.raises(TrajectoryNotFoundError):
        plot.plot_trajectory(tmp_path / "missing.zst", out)
    assert not out.exists()


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="needs matplotlib: pip install 'mezo-ckpt\\[plot\\]'"):
        plot.render_png(make_trajectory(4))
    assert issubclass(ConfigError, MezoCkptError)


def test_dollar_signs_are_text_not_mathematics():
    """matplotlib reads $...$ as mathematics: a crafted split name or file name must not
    make the picture fail."""
    traj = make_trajectory(12, evaluations=[(0, "dev$\\frac$x", {"accuracy": 0.5})])
    assert plot.render_png(traj, title="run $\\undefinedcmd$.zst")[:8] == b"\x89PNG\r\n\x1a\n"
