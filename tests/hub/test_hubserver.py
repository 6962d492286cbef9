"""End-to-end checks of the fake Hub (tests/hubserver.py) with the real client.

Everything goes through the real ``huggingface_hub`` 2.4.0 client (and transformers for
the last test) against the local server; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    from hubserver import FakeHub, fake_hub
except ImportError:  # tests/ imported as a package
    from tests.hubserver import FakeHub, fake_hub

__all__ = ["fake_hub"]  # re-exported fixture

REPO = "tester/ckpt"


def _write_folder(root: Path, zst: bytes, safetensors: bytes, step: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "state.json").write_text(json.dumps({"step": step}))
    (root / "README.md").write_text(f"# checkpoint at step {step}\n")
    (root / "delta.zst").write_bytes(zst)
    (root / "model.safetensors").write_bytes(safetensors)
    return root


def _safetensors_blob(seed: int) -> bytes:
    """A valid 4x8 F32 safetensors file, written by hand (no torch import needed)."""
    data = random.Random(seed).randbytes(4 * 8 * 4)
    meta = {"w": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, len(data)]}}
    header = json.dumps(meta).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _upload(api: HfApi, tmp_path: Path, step: int, **kwargs: object) -> tuple[str, bytes]:
    zst = os.urandom(4096)
    folder = _write_folder(tmp_path / f"step{step}", zst, _safetensors_blob(step), step)
    info = api.upload_folder(repo_id=REPO, folder_path=folder, **kwargs)
    return info.oid, zst


def test_upload_model_info_download_history(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    url = api.create_repo(REPO, private=False, exist_ok=True)
    assert url.repo_id == REPO and url.endpoint == fake_hub.url
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # 409 swallowed
    assert api.repo_exists(REPO)

    sha1, zst1 = _upload(api, tmp_path, 1)
    assert len(sha1) == 40

    info = api.model_info(REPO, revision=sha1, files_metadata=True)
    assert info.sha == sha1
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {
        ".gitattributes",
        "README.md",
        "delta.zst",
        "model.safetensors",
        "state.json",
    }
    zst_sib = siblings["delta.zst"]
    assert zst_sib.lfs is not None and zst_sib.lfs.sha256 == _sha256(zst1)
    assert zst_sib.size == zst_sib.lfs.size == 4096
    assert siblings["model.safetensors"].lfs is not None
    assert siblings["state.json"].lfs is None and siblings["README.md"].lfs is None
    assert api.model_info(REPO).sha == sha1  # main

    path = hf_hub_download(REPO, "delta.zst", revision=sha1)
    assert Path(path).read_bytes() == zst1
    # like the real Hub: LFS files are cached under blobs/<sha256> (X-Linked-Etag)
    assert Path(os.path.realpath(path)).name == _sha256(zst1)
    state = hf_hub_download(REPO, "state.json", revision=sha1)
    assert json.loads(Path(state).read_text()) == {"step": 1}

    # second upload moves main; the old sha still serves the old bytes
    sha2, zst2 = _upload(api, tmp_path, 2)
    assert sha2 != sha1
    assert api.model_info(REPO).sha == sha2
    assert Path(hf_hub_download(REPO, "delta.zst")).read_bytes() == zst2
    assert Path(hf_hub_download(REPO, "delta.zst", revision=sha1)).read_bytes() == zst1
    fake_hub.reset_log()
    hf_hub_download(REPO, "delta.zst", revision=sha1, force_download=True)
    assert ("GET", f"/{REPO}/resolve/{sha1}/delta.zst") in fake_hub.requests

    snap = Path(snapshot_download(REPO, revision=sha1))
    assert snap.name == sha1
    assert (snap / "delta.zst").read_bytes() == zst1
    assert json.loads((snap / "state.json").read_text()) == {"step": 1}
    snap_main = Path(snapshot_download(REPO))
    assert snap_main.name == sha2 and (snap_main / "delta.zst").read_bytes() == zst2

    files = api.list_repo_files(REPO)
    assert "delta.zst" in files and ".gitattributes" in files
    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits][:2] == [sha2, sha1]

    # unchanged re-upload: the client sees the same oids in /preupload and skips the commit
    same = api.upload_file(path_or_fileobj=zst2, path_in_repo="delta.zst", repo_id=REPO)
    assert same.oid == sha2


def test_pull_requests_and_branches(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(REPO, exist_ok=True)
    main_sha, _ = _upload(api, tmp_path, 1)

    # create_commit(create_pr=True) -> refs/pr/1, main untouched
    pr = api.create_commit(
        repo_id=REPO,
        operations=[CommitOperationAdd("delta.zst", b"pr-content")],
        commit_message="proposal",
        create_pr=True,
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert api.model_info(REPO).sha == main_sha
    assert fake_hub.resolve(REPO, "refs/pr/1") == pr.oid
    pr_file = hf_hub_download(REPO, "delta.zst", revision="refs/pr/1")
    assert Path(pr_file).read_bytes() == b"pr-content"

    # upload_folder(create_pr=True) (pipelined: opens the PR via /discussions first)
    pr2 = api.upload_folder(
        repo_id=REPO,
        folder_path=_write_folder(tmp_path / "pr2", b"z2", b"s2", 9),
        create_pr=True,
    )
    assert pr2.pr_revision == "refs/pr/2"
    assert fake_hub.get_file(REPO, "state.json", "refs/pr/2") == b'{"step": 9}'

    # branches: create from main, upload to it, main untouched
    api.create_branch(REPO, branch="ckpt/step-10")
    api.create_branch(REPO, branch="ckpt/step-10", exist_ok=True)
    br = api.upload_folder(
        repo_id=REPO,
        folder_path=_write_folder(tmp_path / "br", b"zb", b"sb", 10),
        revision="ckpt/step-10",
    )
    assert fake_hub.resolve(REPO, "ckpt/step-10") == br.oid != main_sha
    info = api.model_info(REPO, revision="ckpt/step-10")
    assert info.sha == br.oid
    assert api.model_info(REPO).sha == main_sha
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name for b in refs.branches} == {"main", "ckpt/step-10"}
    assert {p.ref for p in refs.pull_requests or []} == {"refs/pr/1", "refs/pr/2"}

    # committing to a branch that does not exist
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(
            repo_id=REPO,
            operations=[CommitOperationAdd("x.txt", b"x")],
            commit_message="x",
            revision="no-such-branch",
        )
    assert api.whoami()["name"] == fake_hub.user
    # Xet was never involved (a /xet-*-token call would also fail the fixture teardown)
    assert not any("xet" in path for _, path in fake_hub.requests)


def test_private_repo_and_errors(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(REPO, private=True, exist_ok=True)
    sha, zst = _upload(api, tmp_path, 1)
    assert api.model_info(REPO).private is True

    # anonymous: the Hub answers 401 + X-Error-Code: RepoNotFound -> RepositoryNotFoundError
    with pytest.raises(RepositoryNotFoundError) as exc:
        api.model_info(REPO, token=False)
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "delta.zst", revision=sha, token=False)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(REPO, token=False)
    assert not api.repo_exists(REPO, token=False)
    assert api.repo_exists(REPO)
    # invalid token: 401 "Invalid credentials" -> plain HfHubHTTPError, even on public repos
    with pytest.raises(HfHubHTTPError) as bad:
        api.model_info(REPO, token="hf_wrong")
    assert not isinstance(bad.value, RepositoryNotFoundError)
    assert bad.value.response.status_code == 401
    # writes: anonymous 401, read-only token 403
    fake_hub.add_token("hf_read", fake_hub.user, role="read")
    for token, status in ((False, 401), ("hf_read", 403)):
        with pytest.raises(HfHubHTTPError) as denied:
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, token=token)
        assert denied.value.response.status_code == status

    # missing repo / revision / file
    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("tester/nope")
    assert missing.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "delta.zst", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "delta.zst", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", revision=sha)
    assert not api.file_exists(REPO, "missing.bin")
    assert api.file_exists(REPO, "delta.zst")
    assert Path(hf_hub_download(REPO, "delta.zst", revision=sha)).read_bytes() == zst


def test_offline_mode_serves_cache(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = fake_hub.add_commit(REPO, {"w.zst": b"abc" * 100, "cfg.json": b"{}"})
    online = hf_hub_download(REPO, "w.zst")
    snap = snapshot_download(REPO)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub.reset_log()
    assert hf_hub_download(REPO, "w.zst") == online  # via refs/main
    assert hf_hub_download(REPO, "w.zst", revision=sha) == online
    assert snapshot_download(REPO) == snap
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "never-downloaded.txt")
    assert fake_hub.requests == []  # nothing reached the server


def test_tampered_file_keeps_metadata(fake_hub: FakeHub) -> None:
    blob = os.urandom(2048)
    sha = fake_hub.add_commit(REPO, {"delta.zst": blob})
    served = fake_hub.tamper(REPO, "delta.zst")
    assert served != blob and len(served) == len(blob)

    info = HfApi().model_info(REPO, revision=sha, files_metadata=True)
    (sib,) = [s for s in info.siblings or [] if s.rfilename == "delta.zst"]
    assert sib.lfs is not None and sib.lfs.sha256 == _sha256(blob)
    path = Path(hf_hub_download(REPO, "delta.zst", revision=sha))
    # the client trusts the server: the cache blob is named after the announced sha256
    assert path.resolve().name == _sha256(blob)
    assert path.read_bytes() == served and _sha256(served) != sib.lfs.sha256


@pytest.mark.slow
def test_transformers_from_pretrained(fake_hub: FakeHub, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    local = tmp_path / "tiny-gpt2"
    model.save_pretrained(local)
    files = {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}
    assert "model.safetensors" in files
    sha = fake_hub.add_commit("base-org/tiny-gpt2", files, message="tiny gpt2")
    fake_hub.reset_log()

    loaded = AutoModelForCausalLM.from_pretrained("base-org/tiny-gpt2", revision=sha).eval()
    assert isinstance(loaded, GPT2LMHeadModel)
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    got = {p for _, p in fake_hub.requests}
    assert f"/base-org/tiny-gpt2/resolve/{sha}/model.safetensors" in got
    # the seeded repo is read-only for the test user
    with pytest.raises(HfHubHTTPError) as denied:
        HfApi().upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="base-org/tiny-gpt2"
        )
    assert denied.value.response.status_code == 403


def test_traffic_stays_on_loopback(fake_hub: FakeHub) -> None:
    with pytest.raises(RuntimeError, match="blocked"):
        HfApi(endpoint="https://huggingface.co").model_info("gpt2")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    assert len(fake_hub.blocked) == 2
    fake_hub.blocked.clear()
    assert fake_hub.url == constants.ENDPOINT
    assert os.environ["HF_ENDPOINT"] == fake_hub.url
    assert str(fake_hub.cache_dir) == constants.HF_HUB_CACHE
    # module-level helpers are bound to an HfApi created at import time: patched too
    fake_hub.add_commit(REPO, {"x.txt": b"x"})
    assert "x.txt" in huggingface_hub.list_repo_files(REPO)


def test_misc_endpoints(fake_hub: FakeHub) -> None:
    api = HfApi()
    sha = fake_hub.add_commit(REPO, {"a/b/c.txt": b"c", "a/d.bin": b"d", "top.md": b"t"})
    top = {f.path: type(f).__name__ for f in api.list_repo_tree(REPO)}
    assert top == {".gitattributes": "RepoFile", "a": "RepoFolder", "top.md": "RepoFile"}
    sub = [f.path for f in api.list_repo_tree(REPO, path_in_repo="a", recursive=True)]
    assert sub == ["a/b", "a/b/c.txt", "a/d.bin"]
    paths = api.get_paths_info(REPO, ["a/d.bin", "a", "nope"], revision=sha)
    assert [p.path for p in paths] == ["a/d.bin", "a"]
    assert paths[0].lfs is not None  # *.bin is LFS-tracked by the default .gitattributes
    assert api.revision_exists(REPO, sha) and not api.revision_exists(REPO, "nope")

    api.create_branch(REPO, branch="tmp")
    api.delete_branch(REPO, branch="tmp")
    assert "tmp" not in fake_hub.refs(REPO)

    api.update_repo_settings(REPO, private=True)
    assert not api.repo_exists(REPO, token=False)
    api.delete_repo(REPO)
    assert not fake_hub.has_repo(REPO)

    # org namespace is writable, a foreign one is not
    assert api.create_repo("tester-org/x").repo_id == "tester-org/x"
    with pytest.raises(HfHubHTTPError) as denied:
        api.create_repo("someone-else/x")
    assert denied.value.response.status_code == 403

    # datasets use /api/datasets/... and /datasets/{repo}/resolve/...
    api.create_repo("tester/data", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"1,2\n", path_in_repo="d.csv", repo_id="tester/data", repo_type="dataset"
    )
    got = hf_hub_download("tester/data", "d.csv", repo_type="dataset")
    assert Path(got).read_bytes() == b"1,2\n"
