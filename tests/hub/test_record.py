"""The publication record (mezo_ckpt/hub/record.py): the name, ``format`` and schema
version of ``mezo_ckpt.json``, as push writes them and pull reads them back."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest
from paths import GOLDEN

import mezo_ckpt.hub as hub
from mezo_ckpt.errors import PublishedRepoError, UnsupportedError
from mezo_ckpt.hub import publish, record
from mezo_ckpt.hub.record import META_FILE, SCHEMA, SCHEMA_VERSION
from mezo_ckpt.trajectory import read_trajectory

#: The pull side (``mezo_ckpt.hub.fetch`` is also the name of a function of the package).
fetch = importlib.import_module("mezo_ckpt.hub.fetch")
GOLDEN_FILE = GOLDEN / "llama-fp32-normal16.zst"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def written_record() -> dict:
    """The record push would write for the golden file, its base pinned on the Hub."""
    traj = read_trajectory(GOLDEN_FILE)
    data = GOLDEN_FILE.read_bytes()
    base = {
        **traj.header.base.to_json(),
        "kind": "hub",
        "repo_id": "tester/tiny-llama",
        "revision": REVISION,
    }
    return publish.build_meta(
        traj,
        GOLDEN_FILE.name,
        hashlib.sha256(data).hexdigest(),
        len(data),
        base,
        "tester/my-finetune",
    )


def save(tmp_path: Path, meta: dict) -> Path:
    path = tmp_path / META_FILE
    path.write_text(json.dumps(meta))
    return path


def test_the_record_constants():
    assert META_FILE == "mezo_ckpt.json"
    assert SCHEMA == "mezo-ckpt/hub"
    assert SCHEMA_VERSION == 1 and type(SCHEMA_VERSION) is int


def test_push_pull_and_the_package_share_one_definition():
    assert hub.META_FILE is publish.META_FILE is fetch.META_FILE is record.META_FILE
    assert publish.SCHEMA is fetch.SCHEMA is SCHEMA
    assert publish.SCHEMA_VERSION == fetch.SCHEMA_VERSION == SCHEMA_VERSION


def test_a_written_record_carries_the_schema_and_reads_back(tmp_path):
    meta = written_record()
    assert meta["format"] == SCHEMA and meta["version"] == SCHEMA_VERSION
    assert list(meta)[:2] == ["format", "version"]
    back = fetch.read_meta(save(tmp_path, meta))
    assert back == meta


def test_a_record_of_another_format_is_refused(tmp_path):
    meta = {**written_record(), "format": "someone-else/hub"}
    with pytest.raises(PublishedRepoError, match="is not a mezo-ckpt publication record") as e:
        fetch.read_meta(save(tmp_path, meta))
    assert repr(SCHEMA) in str(e.value) and str(e.value).startswith(META_FILE)


def test_a_newer_schema_version_asks_for_an_upgrade(tmp_path):
    meta = {**written_record(), "version": SCHEMA_VERSION + 1}
    with pytest.raises(UnsupportedError, match="upgrade mezo-ckpt"):
        fetch.read_meta(save(tmp_path, meta))


@pytest.mark.parametrize("version", [None, "1", 1.0, True])
def test_a_version_that_is_not_an_integer_is_refused(tmp_path, version):
    meta = {**written_record(), "version": version}
    with pytest.raises(PublishedRepoError, match="has no integer version"):
        fetch.read_meta(save(tmp_path, meta))
