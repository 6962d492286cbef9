"""Tests of the embedded default sentiment data (mezo_ckpt.data)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest
from paths import ROOT

from mezo_ckpt.data import DEFAULT_TASK_DIR, LABELS, SPLITS, load_manifest, load_split

EXPECTED_COUNTS = {"train": 9066, "dev": 500, "test": 1000}
REPO = ROOT


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {name: load_split(name) for name in SPLITS}


def test_counts(splits: dict[str, list[dict]]) -> None:
    assert {k: len(v) for k, v in splits.items()} == EXPECTED_COUNTS


def test_rows_well_formed(splits: dict[str, list[dict]]) -> None:
    for rows in splits.values():
        for row in rows:
            assert set(row) == {"id", "text", "label", "score"}
            assert row["label"] in LABELS
            assert isinstance(row["text"], str) and row["text"] == " ".join(row["text"].split())
            assert row["text"]
            assert -4.0 <= row["score"] <= 4.0 and row["score"] != 0.0
            assert (row["score"] > 0) == (row["label"] == "positive")


def test_dev_test_balanced(splits: dict[str, list[dict]]) -> None:
    for name in ("dev", "test"):
        pos = sum(r["label"] == "positive" for r in splits[name])
        assert pos * 2 == len(splits[name])


def test_no_overlap(splits: dict[str, list[dict]]) -> None:
    texts = {name: {r["text"] for r in rows} for name, rows in splits.items()}
    ids = {name: {r["id"] for r in rows} for name, rows in splits.items()}
    for name, rows in splits.items():
        assert len(texts[name]) == len(rows), f"duplicate texts in {name}"
        assert len(ids[name]) == len(rows), f"duplicate ids in {name}"
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not texts[a] & texts[b], (a, b)
                assert not ids[a] & ids[b], (a, b)


def test_manifest_hashes() -> None:
    manifest = load_manifest()
    assert set(manifest["files"]) == {f"{s}.jsonl" for s in SPLITS}
    for name, info in manifest["files"].items():
        blob = (DEFAULT_TASK_DIR / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == info["sha256"], name
        assert blob.count(b"\n") == info["count"] == EXPECTED_COUNTS[name.split(".")[0]]


def test_unknown_split() -> None:
    with pytest.raises(ValueError):
        load_split("validation")


@pytest.mark.skipif(
    not os.environ.get("MEZO_VADER_SDIST"),
    reason="set MEZO_VADER_SDIST to the vaderSentiment-3.3.2.tar.gz sdist to check the build",
)
def test_build_is_reproducible() -> None:
    spec = importlib.util.spec_from_file_location("bdd", REPO / "scripts" / "build_default_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build(Path(os.environ["MEZO_VADER_SDIST"]))
    for name, blob in built.items():
        assert (DEFAULT_TASK_DIR / name).read_bytes() == blob, name
