"""mezo_ckpt/hub/fetch.py: what a publication record must be before anything it names is
read, how a local publication folder is found, and where rebuilt weights are cached.
(Whole pulls and loads against a local fake Hub are in tests/hub/test_hub_scenarios.py.)"""

from __future__ import annotations

import importlib
import json

import pytest

from mezo_ckpt.errors import PublishedRepoError, UnsupportedError
from mezo_ckpt.hub.record import META_FILE, SCHEMA, SCHEMA_VERSION

fetch = importlib.import_module("mezo_ckpt.hub.fetch")  # the package exports a function too

SHA = "a" * 64
COMMIT = "b" * 40


def meta(**changes) -> dict:
    m = {
        "format": SCHEMA,
        "version": SCHEMA_VERSION,
        "trajectory": {"file": "trajectory.zst", "sha256": SHA},
        "base": {"kind": "hub", "repo_id": "me/base", "revision": COMMIT,
                 "files": {"model.safetensors": SHA}},
    }  # fmt: skip
    for path, value in changes.items():
        *keys, last = path.split("__")
        cur = m
        for k in keys:
            cur = cur[k]
        cur[last] = value
    return m


def write(tmp_path, obj) -> object:
    p = tmp_path / META_FILE
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def test_a_good_record_reads_back(tmp_path):
    assert fetch.read_meta(write(tmp_path, meta()))["base"]["revision"] == COMMIT


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"format": "something-else"}, "not a mezo-ckpt publication record"),
        ({"version": "1"}, "integer version"),
        ({"trajectory__file": "../../etc/passwd"}, "unsafe trajectory file"),
        ({"trajectory__sha256": "xyz"}, "trajectory sha256"),
        ({"base__kind": "local"}, "Hub or embedded base"),
        ({"base__repo_id": "not a repo"}, "invalid base repo id"),
        ({"base__revision": "main"}, "commit sha"),
        ({"base__files": {"../x": SHA}}, "malformed base file hashes"),
    ],
)
def test_malformed_records_are_refused_before_anything_is_read(tmp_path, changes, why):
    with pytest.raises(PublishedRepoError, match=why):
        fetch.read_meta(write(tmp_path, meta(**changes)))


def test_a_newer_record_and_a_non_json_record(tmp_path):
    with pytest.raises(UnsupportedError, match="upgrade"):
        fetch.read_meta(write(tmp_path, meta(version=SCHEMA_VERSION + 1)))
    with pytest.raises(PublishedRepoError):
        fetch.read_meta(write(tmp_path, "{not json"))


def test_a_local_publication_folder_is_found_by_its_record_or_its_one_trajectory(tmp_path):
    (tmp_path / "a.zst").write_bytes(b"x")
    assert fetch._find_trajectory(tmp_path) == (tmp_path / "a.zst", None)
    (tmp_path / "b.zst").write_bytes(b"y")
    with pytest.raises(PublishedRepoError, match="2 \\*.zst files"):
        fetch._find_trajectory(tmp_path)
    write(tmp_path, meta(trajectory__file="b.zst"))
    found, record = fetch._find_trajectory(tmp_path)
    assert found == tmp_path / "b.zst" and record is not None
    write(tmp_path, meta(trajectory__file="c.zst"))
    with pytest.raises(PublishedRepoError, match="lacks c.zst"):
        fetch._find_trajectory(tmp_path)


def test_rebuilt_weights_are_cached_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "cache"))
    assert fetch.replay_cache_root() == tmp_path / "cache" / "replayed"
