"""mezo_ckpt/hub/publish.py: the name a trajectory keeps on the Hub, and the base pinning
rules checked before any network access (whole pushes to a local fake Hub are in
tests/hub/test_hub_scenarios.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import GOLDEN

from mezo_ckpt.errors import PushRefusedError
from mezo_ckpt.hub.publish import DEFAULT_TRAJECTORY_NAME, pin_base, trajectory_name
from mezo_ckpt.trajectory import read_trajectory


@pytest.mark.parametrize(
    "name, kept",
    [
        ("run.zst", "run.zst"),
        ("sst2-seed3.zst", "sst2-seed3.zst"),
        (".hidden.zst", DEFAULT_TRAJECTORY_NAME),
        ("run.zst.partial", DEFAULT_TRAJECTORY_NAME),
        ("weights.bin", DEFAULT_TRAJECTORY_NAME),
    ],
)
def test_trajectory_name_keeps_only_safe_zst_names(name, kept):
    assert trajectory_name(Path("/somewhere") / name) == kept


def test_a_local_base_is_not_published_without_a_pinned_hub_copy():
    traj = read_trajectory(GOLDEN / "llama-fp32-normal16.zst")
    assert traj.header.base.kind == "local"
    notes: list[str] = []
    with pytest.raises(PushRefusedError, match="--base-repo REPO --base-revision COMMIT"):
        pin_base(traj, None, None, token=None, notes=notes)
    with pytest.raises(PushRefusedError, match="go together"):
        pin_base(traj, "me/base", None, token=None, notes=notes)
    with pytest.raises(PushRefusedError, match="not a Hub repo id"):
        pin_base(traj, "not a repo", "a" * 40, token=None, notes=notes)
