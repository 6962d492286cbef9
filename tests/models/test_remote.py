"""mezo_ckpt/models/remote.py: what a Hub download is checked against, and how Hub failures
become typed errors (no network: the functions are called on local files and fake errors)."""

from __future__ import annotations

import hashlib

import pytest

from mezo_ckpt.errors import IntegrityError, ModelLoadError
from mezo_ckpt.models import remote


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_check_sha256_accepts_the_recorded_hash_and_names_every_disagreeing_source(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights")
    assert remote.check_sha256(f, {"the index": sha(b"weights"), "unset": ""}, "w") == sha(
        b"weights"
    )
    with pytest.raises(IntegrityError, match="the card says") as e:
        remote.check_sha256(f, {"the card": sha(b"other")}, "base file model.safetensors")
    assert f"Delete {f}" in str(e.value)  # not in the HF cache: the user deletes it
    assert f.exists()


def test_verify_base_files_refuses_a_missing_or_changed_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    remote.verify_base_files(tmp_path, {"config.json": sha(b"{}")}, "me/base@abc")
    with pytest.raises(IntegrityError, match="lacks tokenizer.json"):
        remote.verify_base_files(tmp_path, {"tokenizer.json": sha(b"x")}, "me/base@abc")
    with pytest.raises(IntegrityError, match="corrupt"):
        remote.verify_base_files(tmp_path, {"config.json": sha(b"[]")}, "me/base@abc")


def test_offline_follows_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert remote.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert remote.offline()


def test_network_errors_are_told_from_http_answers():
    from huggingface_hub.errors import HfHubHTTPError

    class ConnectTimeout(Exception):
        pass

    assert remote.is_network_error(ConnectionError("refused"))
    assert remote.is_network_error(TimeoutError())
    assert remote.is_network_error(ConnectTimeout())  # by name: httpx / requests classes
    http = HfHubHTTPError.__new__(HfHubHTTPError)  # an HTTP answer (its response unneeded)
    assert not remote.is_network_error(http)
    assert not remote.is_network_error(ValueError("no"))


def test_a_malformed_repo_id_is_a_model_load_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError):
        remote.download_base("not a repo id!!", None)


def test_evicting_a_file_outside_the_hf_cache_does_nothing(tmp_path):
    f = tmp_path / "keep.bin"
    f.write_bytes(b"x")
    assert remote.evict_from_hf_cache(f) is False and f.exists()
