"""A local fake of the Hugging Face Hub HTTP API, for offline end-to-end tests.

The real ``huggingface_hub`` client (2.4.0) and ``transformers`` talk to a
:class:`FakeHub`: a stdlib ``ThreadingHTTPServer`` bound to ``127.0.0.1`` on an
ephemeral port that keeps repositories in memory with git-like history. Every commit has
a 40-hex sha, branches and ``refs/pr/N`` refs point at commits, and each commit holds a
full snapshot of the tree, so resolving an old commit sha serves old content.

Endpoints implemented (``{t}`` is ``models``/``datasets``/``spaces``, ``{repo}`` is
``namespace/name``, a bare ``name`` also works; ``{rev}`` may be url-quoted, e.g.
``refs%2Fpr%2F1``):

* ``GET /api/whoami-v2``, ``GET /api/agent-harnesses``, ``POST /api/validate-yaml``
* ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``PUT /api/{t}/{repo}/settings``
* ``GET /api/{t}/{repo}`` and ``GET /api/{t}/{repo}/revision/{rev}`` (``?blobs=true``
  adds ``size``/``blobId``/``lfs`` to ``siblings``): ``model_info``, ``repo_info``,
  ``repo_exists``, ``revision_exists``
* ``GET /api/{t}/{repo}/tree/{rev}[/{path}]`` (``recursive``): ``list_repo_tree``,
  ``list_repo_files``; ``POST /api/{t}/{repo}/paths-info/{rev}``: ``get_paths_info``
* ``GET /api/{t}/{repo}/refs``, ``GET /api/{t}/{repo}/commits/{rev}``
* ``POST /api/{t}/{repo}/preupload/{rev}``, ``POST /api/{t}/{repo}/commit/{rev}``
  (ndjson, ``?create_pr=1``): ``create_commit``, ``upload_file``, ``upload_folder``
* ``POST|DELETE /api/{t}/{repo}/branch/{branch}``: ``create_branch``, ``delete_branch``
* ``POST /api/{t}/{repo}/discussions``, ``GET /api/{t}/{repo}/discussions/{num}``:
  ``create_pull_request`` (used by ``upload_folder(create_pr=True)``)
* ``HEAD|GET /[{t}/]{repo}/resolve/{rev}/{path}`` (``Range`` supported):
  ``hf_hub_download``, ``snapshot_download``, ``file_exists``

Anything else answers 404 without an ``X-Error-Code`` and is recorded in
:attr:`FakeHub.unhandled`; handler crashes answer 500 and are recorded in
:attr:`FakeHub.errors`. The ``fake_hub`` fixture fails the test when either is non-empty
(or when something tried to leave 127.0.0.1, :attr:`FakeHub.blocked`).

Usage: request the ``fake_hub`` fixture (import it into the test module, or in a
``tests/conftest.py``: ``from hubserver import fake_hub  # noqa: F401``); it yields the
running :class:`FakeHub` (``.url``, ``.token``, ``.user``, ``.cache_dir``, ``.hf_home``,
``.add_commit()``, ``.tamper()``, ``.create_repo()``, ``.resolve()``, ``.get_file()``,
``.requests``, ...) with the client already pointed at it (see :func:`patch_hf_client`).

Xet is never used against this server. Uploads: ``/preupload`` answers
``"uploadMode": "regular"`` for every file, so both ``create_commit`` and the pipelined
``upload_folder`` (used when ``hf_xet`` is installed) send contents base64-encoded inside
the ndjson commit and never open a Xet upload nor call ``/xet-write-token``. An
``"lfs"`` answer would force Xet in the pipelined ``upload_folder``, which has no
LFS-batch fallback. Downloads: ``resolve`` responses carry no ``X-Xet-Hash`` header and
no ``Link: <...>; rel="xet-auth"``, so ``parse_xet_file_data_from_response`` returns
``None`` and the client streams the body over plain HTTP; tree entries have no
``xetHash``, so the tree-cache shortcut is not taken either. Still, the pipelined upload
constructs an ``hf_xet.XetSession`` (local, no traffic); the fixture points
``HF_XET_CACHE`` into the temp dir.

LFS emulation: a file is LFS-tracked when its path matches a ``filter=lfs`` pattern of
the commit's ``.gitattributes`` (every repo starts with the Hub's default one, which
covers ``*.safetensors``, ``*.zst``, ``*.bin``, ...) or is larger than 10 MiB. LFS files
get ``lfs: {sha256, size, pointerSize}`` in ``siblings`` and tree entries, a ``blobId``
that is the git sha1 of their pointer file, and ``resolve`` answers with
``ETag``/``X-Linked-Etag`` = the sha256 and ``X-Linked-Size`` = the size, exactly the
headers the client uses to name the cache blob (``blobs/<sha256>``) and to check the
downloaded size. Regular files get ``ETag`` = their git blob sha1.

Auth mirrors the Hub: a bearer token that is unknown gets ``401`` with
``X-Error-Message: Invalid credentials in Authorization header`` (even on public repos;
the client raises a plain ``HfHubHTTPError``). A missing repo, or a private repo the
caller cannot see, gets ``X-Error-Code: RepoNotFound`` with ``401`` when anonymous and
``404`` when authenticated (client: ``RepositoryNotFoundError``). Unknown revisions get
``404 RevisionNotFound`` (``RevisionNotFoundError``), missing files ``404
EntryNotFound`` plus ``X-Repo-Commit`` (``RemoteEntryNotFoundError``). Writes need a
token with role ``write`` whose user owns the namespace (user or one of its orgs):
``401`` anonymous, ``403`` otherwise.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib
import itertools
import json
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["DEFAULT_GITATTRIBUTES", "TEST_TOKEN", "TEST_USER", "FakeHub", "fake_hub"]

TEST_TOKEN = "hf_test_token"
TEST_USER = "tester"
TEST_ORG = "tester-org"

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_LFS_EXTENSIONS = [
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gz",
    "h5",
    "joblib",
    "lfs.*",
    "mlmodel",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "pt",
    "pth",
    "rar",
    "safetensors",
    "tar.*",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "xz",
    "zip",
    "zst",
]
_LFS_ATTRS = "filter=lfs diff=lfs merge=lfs -text"
#: The ``.gitattributes`` the Hub puts in the initial commit of every new repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} {_LFS_ATTRS}\n"
    for pattern in [f"*.{ext}" for ext in _LFS_EXTENSIONS] + ["saved_model/**/*", "*tfevents*"]
).encode()

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_PR_RE = re.compile(r"refs/pr/(\d+)")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Content of the git-lfs pointer file stored in git for an LFS file."""
    spec = "version https://git-lfs.github.com/spec/v1"
    return f"{spec}\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. ``content_key`` indexes :attr:`FakeHub._blobs`."""

    path: str
    size: int
    sha256: str
    content_sha1: str  # git sha1 of the real content: the "oid" preupload compares against
    lfs: bool
    content_key: str

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    @property
    def blob_id(self) -> str:
        """Git oid of what git stores: the pointer file for LFS files."""
        if self.lfs:
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        return self.content_sha1

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.content_sha1


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Discussion:
    num: int
    title: str
    description: str
    author: str
    is_pull_request: bool
    created_at: str
    status: str = "open"


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1" -> sha
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: dict[int, Discussion] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else ""

    @property
    def url_path(self) -> str:
        return _URL_PREFIX[self.repo_type] + self.repo_id


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    head_length: int | None = None  # Content-Length announced on HEAD (no body sent)


class HubError(Exception):
    """Raised inside handlers to answer an error the way the Hub does."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.body = dict(body or {})

    def response(self) -> Response:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        body = json.dumps({"error": self.message, **self.body}).encode()
        return Response(self.status, body, {"Content-Type": "application/json", **headers})


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[0].lower() in ("1", "true", "yes")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections die eventually
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        resp = self.server.hub.handle(self.command, self.path, self.headers, body)
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        head = self.command == "HEAD"
        length = resp.head_length if head and resp.head_length is not None else len(resp.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if not head and resp.body:
            self.wfile.write(resp.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


class FakeHub:
    """In-memory Hub served over HTTP on ``127.0.0.1``; see the module docstring.

    Attributes:
        url: base URL, e.g. ``http://127.0.0.1:40123`` (what ``HF_ENDPOINT`` is set to).
        token / user: the default write token and its user (``hf_test_token``/``tester``).
        tokens: token -> ``(user, role)`` with role ``"read"`` or ``"write"``.
        orgs: user -> organisations whose namespaces the user may read privately and write.
        requests: ``(method, path)`` of every request received, in order.
        unhandled: requests that matched no implemented route.
        errors: tracebacks of handler crashes (answered with 500).
        blocked: outgoing connections to non-loopback hosts that the fixture refused.
        hf_home / cache_dir: set by the ``fake_hub`` fixture to the temp HF_HOME / hub cache.
    """

    def __init__(self) -> None:
        self.token = TEST_TOKEN
        self.user = TEST_USER
        self.tokens: dict[str, tuple[str, str]] = {TEST_TOKEN: (TEST_USER, "write")}
        self.orgs: dict[str, set[str]] = {TEST_USER: {TEST_ORG}}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.hf_home: Path | None = None
        self.cache_dir: Path | None = None
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        """Bind ``127.0.0.1:0`` and serve in a daemon thread."""
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.hub = self
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ python API

    def add_token(
        self, token: str, user: str, role: str = "write", orgs: Iterable[str] = ()
    ) -> None:
        """Register another token (``role`` ``"read"`` cannot write)."""
        with self._lock:
            self.tokens[token] = (user, role)
            self.orgs.setdefault(user, set()).update(orgs)

    def create_repo(
        self,
        repo_id: str,
        *,
        private: bool = False,
        repo_type: str = "model",
        exist_ok: bool = True,
    ) -> str:
        """Create a repo with the Hub's initial commit (a default ``.gitattributes``).

        Returns the initial commit sha (or the current ``main`` head if it exists).
        """
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is not None:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id} already exists")
                return repo.refs["main"]
            repo = Repo(repo_type, repo_id, private, _now_iso())
            self._repos[(repo_type, repo_id)] = repo
            sha = self._commit(
                repo,
                None,
                {".gitattributes": DEFAULT_GITATTRIBUTES},
                (),
                "initial commit",
                "",
                "",
            )
            repo.refs["main"] = sha
            return sha

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        message: str = "Seed commit",
        revision: str = "main",
        *,
        deletions: Iterable[str] = (),
        repo_type: str = "model",
        private: bool = False,
        author: str | None = None,
    ) -> str:
        """Commit ``files`` (path -> content, on top of the current tree) directly; return sha.

        Creates the repo (with ``private``) if needed and the branch ``revision`` from
        ``main`` if it does not exist. ``deletions`` removes paths.
        """
        with self._lock:
            self.create_repo(repo_id, private=private, repo_type=repo_type)
            repo = self._repos[(repo_type, repo_id)]
            parent = repo.refs.get(revision) or repo.refs["main"]
            sha = self._commit(
                repo,
                parent,
                dict(files),
                tuple(deletions),
                message,
                "",
                author or self.user,
            )
            repo.refs[revision] = sha
            return sha

    def tamper(
        self,
        repo_id: str,
        filename: str,
        data: bytes | None = None,
        *,
        revision: str = "main",
        repo_type: str = "model",
    ) -> bytes:
        """Corrupt the stored bytes of a file while keeping all its metadata.

        ``model_info``/tree/``resolve`` headers keep announcing the original sha256, ETag
        and size; only the served body changes. ``data=None`` flips the bits of the last
        byte (same size, so only a checksum catches it: ``hf_hub_download`` checks the
        size only and caches the bytes under ``blobs/<announced sha256>``). The blob
        store is content addressed, so every commit sharing the same content is
        affected (like storage corruption). Returns the bytes now served.
        """
        with self._lock:
            entry = self._entry(repo_type, repo_id, revision, filename)
            old = self._blobs[entry.content_key]
            if data is None:
                data = old[:-1] + bytes([old[-1] ^ 0xFF]) if old else b"\0"
            self._blobs[entry.content_key] = data
            return data

    def get_file(
        self,
        repo_id: str,
        filename: str,
        revision: str = "main",
        *,
        repo_type: str = "model",
    ) -> bytes:
        """Bytes currently served for ``filename`` at ``revision``."""
        with self._lock:
            return self._blobs[self._entry(repo_type, repo_id, revision, filename).content_key]

    def file_entry(
        self,
        repo_id: str,
        filename: str,
        revision: str = "main",
        *,
        repo_type: str = "model",
    ) -> FileEntry:
        """Stored metadata of ``filename`` at ``revision``."""
        with self._lock:
            return self._entry(repo_type, repo_id, revision, filename)

    def resolve(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Commit sha that ``revision`` (branch, ``refs/pr/N`` or sha) points to."""
        with self._lock:
            return self._resolve(self._repos[(repo_type, repo_id)], revision)

    def refs(self, repo_id: str, *, repo_type: str = "model") -> dict[str, str]:
        """Copy of the repo's refs (``main``, other branches, ``refs/pr/N``) -> sha."""
        with self._lock:
            return dict(self._repos[(repo_type, repo_id)].refs)

    def list_files(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> list[str]:
        """Sorted paths of the tree at ``revision``."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return sorted(repo.commits[self._resolve(repo, revision)].files)

    def set_private(self, repo_id: str, private: bool = True, *, repo_type: str = "model") -> None:
        with self._lock:
            self._repos[(repo_type, repo_id)].private = private

    def has_repo(self, repo_id: str, *, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def reset_log(self) -> None:
        """Forget the recorded ``requests`` (``unhandled``/``errors`` are kept)."""
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ storage

    def _entry(self, repo_type: str, repo_id: str, revision: str, filename: str) -> FileEntry:
        repo = self._repos[(repo_type, repo_id)]
        return repo.commits[self._resolve(repo, revision)].files[filename]

    def _resolve(self, repo: Repo, revision: str) -> str:
        sha = self._try_resolve(repo, revision)
        if sha is None:
            raise KeyError(f"revision {revision!r} not found in {repo.repo_id}")
        return sha

    @staticmethod
    def _try_resolve(repo: Repo, revision: str) -> str | None:
        revision = revision.removeprefix("refs/heads/")
        if revision in repo.refs:
            return repo.refs[revision]
        if _SHA_RE.fullmatch(revision) and revision in repo.commits:
            return revision
        return None

    def _store(self, path: str, data: bytes, lfs_patterns: list[str]) -> FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(sha256, data)
        lfs = len(data) > LFS_SIZE_THRESHOLD or _matches(path, lfs_patterns)
        return FileEntry(path, len(data), sha256, git_blob_sha1(data), lfs, sha256)

    def _commit(
        self,
        repo: Repo,
        parent: str | None,
        additions: dict[str, bytes],
        deletions: tuple[str, ...],
        title: str,
        description: str,
        author: str,
        deleted_folders: tuple[str, ...] = (),
    ) -> str:
        files = dict(repo.commits[parent].files) if parent else {}
        for path in deletions:
            files.pop(path, None)
        for folder in deleted_folders:
            prefix = folder.rstrip("/") + "/"
            for path in [p for p in files if p.startswith(prefix)]:
                del files[path]
        attributes = additions.get(".gitattributes")
        if attributes is None and ".gitattributes" in files:
            attributes = self._blobs[files[".gitattributes"].content_key]
        patterns = _lfs_patterns(attributes or b"")
        for path, data in additions.items():
            files[path] = self._store(path, bytes(data), patterns)
        tree = hashlib.sha1(
            "".join(f"{p}\0{e.blob_id}\n" for p, e in sorted(files.items())).encode()
        ).hexdigest()
        raw = f"tree {tree}\nparent {parent}\n{author}\n{next(self._counter)}\n{title}\n"
        sha = hashlib.sha1(raw.encode()).hexdigest()
        message = f"{title}\n\n{description}" if description else title
        repo.commits[sha] = Commit(sha, parent, title, message, author, _now_iso(), files)
        return sha

    # ------------------------------------------------------------------ HTTP dispatch

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Answer one HTTP request (called from the handler threads)."""
        with self._lock:
            self.requests.append((method, raw_path))
            try:
                parts = urlsplit(raw_path)
                # split before unquoting: quoted revisions like refs%2Fpr%2F1 stay one segment
                segs = [unquote(s) for s in parts.path.split("/")[1:]]
                query = parse_qs(parts.query)
                user, role = self._auth(headers)
                if segs and segs[0] == "api":
                    return self._api(method, segs[1:], query, body, user, role)
                return self._resolve_route(method, segs, headers, user)
            except HubError as err:
                return err.response()
            except Exception:  # noqa: BLE001 - any crash becomes a recorded 500
                self.errors.append(traceback.format_exc())
                return _json({"error": "fake hub internal error"}, 500)

    def _auth(self, headers: Mapping[str, str]) -> tuple[str | None, str | None]:
        value = headers.get("Authorization") or headers.get("authorization")
        if not value:
            return None, None
        token = value.split(" ", 1)[1] if value.lower().startswith("bearer ") else value
        if token not in self.tokens:
            raise HubError(401, _INVALID_CREDENTIALS)
        return self.tokens[token]

    def _unhandled(self, method: str, segs: list[str]) -> HubError:
        self.unhandled.append((method, "/" + "/".join(segs)))
        return HubError(404, f"fake hub: route not implemented: {method} /{'/'.join(segs)}")

    def _namespaces(self, user: str | None) -> set[str]:
        return set() if user is None else {user, *self.orgs.get(user, ())}

    def _repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and repo.namespace not in self._namespaces(user)):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _check_write(self, namespace: str, user: str | None, role: str | None) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to perform this action")
        if role != "write" or namespace not in self._namespaces(user):
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")

    def _rev(self, repo: Repo, revision: str) -> str:
        sha = self._try_resolve(repo, revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def _split_repo(self, repo_type: str, rest: list[str]) -> tuple[str, list[str]]:
        """``[ns, name, *sub]`` -> ``("ns/name", sub)``; legacy one-segment ids too."""
        if len(rest) >= 2 and (repo_type, f"{rest[0]}/{rest[1]}") in self._repos:
            return f"{rest[0]}/{rest[1]}", rest[2:]
        if rest and (repo_type, rest[0]) in self._repos:
            return rest[0], rest[1:]
        if len(rest) >= 2:
            return f"{rest[0]}/{rest[1]}", rest[2:]
        raise HubError(404, "Repository not found", "RepoNotFound")

    # ------------------------------------------------------------------ /api routes

    def _api(
        self,
        method: str,
        segs: list[str],
        query: dict[str, list[str]],
        body: bytes,
        user: str | None,
        role: str | None,
    ) -> Response:
        route = (method, segs[0] if segs else "")
        if route == ("GET", "whoami-v2"):
            return self._whoami(user, role)
        if route == ("GET", "agent-harnesses"):
            return _json({"standardEnvVars": [], "harnesses": {}})
        if route == ("POST", "validate-yaml"):
            return _json({"errors": [], "warnings": []})
        if segs[:2] == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"), user, role)
        if segs[:2] == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(json.loads(body or b"{}"), user, role)
        if segs and segs[0] in _REPO_TYPES:
            repo_type = _REPO_TYPES[segs[0]]
            repo_id, sub = self._split_repo(repo_type, segs[1:])
            repo = self._repo(repo_type, repo_id, user)
            return self._repo_api(method, repo, sub, query, body, user, role)
        raise self._unhandled(method, ["api", *segs])

    def _whoami(self, user: str | None, role: str | None) -> Response:
        if user is None:
            raise HubError(401, _INVALID_CREDENTIALS)
        orgs = [
            {"type": "org", "name": org, "roleInOrg": "admin"} for org in self.orgs.get(user, ())
        ]
        return _json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": orgs,
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": role},
                },
            }
        )

    def _create_repo(self, payload: dict[str, Any], user: str | None, role: str | None) -> Response:
        if user is None:
            raise HubError(401, "You must be authenticated to perform this action")
        namespace = payload.get("organization") or user
        self._check_write(namespace, user, role)
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            # create_repo(exist_ok=True) reads "url" from the 409 body
            msg = f"You already created this {repo_type} repo"
            raise HubError(409, msg, body={"url": url})
        private = payload.get("visibility", "private" if payload.get("private") else "public")
        self.create_repo(repo_id, private=private == "private", repo_type=repo_type)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict[str, Any], user: str | None, role: str | None) -> Response:
        namespace = payload.get("organization") or user or ""
        repo_type = payload.get("type") or "model"
        repo = self._repo(repo_type, f"{namespace}/{payload['name']}", user)
        self._check_write(repo.namespace, user, role)
        del self._repos[(repo_type, repo.repo_id)]
        return _json({})

    def _repo_api(
        self,
        method: str,
        repo: Repo,
        sub: list[str],
        query: dict[str, list[str]],
        body: bytes,
        user: str | None,
        role: str | None,
    ) -> Response:
        action = sub[0] if sub else ""
        rest = sub[1:]
        if method == "GET" and action == "":
            return self._info(repo, "main", _truthy(query.get("blobs")))
        if method == "GET" and action == "revision" and rest:
            return self._info(repo, "/".join(rest), _truthy(query.get("blobs")))
        if method == "GET" and action == "tree" and rest:
            return self._tree(repo, rest[0], "/".join(rest[1:]), _truthy(query.get("recursive")))
        if method == "POST" and action == "paths-info" and rest:
            form = parse_qs(body.decode())
            return self._paths_info(repo, "/".join(rest), form.get("paths", []))
        if method == "GET" and action == "refs":
            return self._refs(repo)
        if method == "GET" and action == "commits" and rest:
            return self._commits(repo, "/".join(rest))
        if method == "GET" and action == "discussions" and len(rest) == 1:
            return self._discussion(repo, int(rest[0]))
        # ---- writes
        if method in ("POST", "PUT", "DELETE"):
            self._check_write(repo.namespace, user, role)
        if method == "POST" and action == "preupload" and rest:
            return self._preupload(repo, "/".join(rest), json.loads(body or b"{}"))
        if method == "POST" and action == "commit" and rest:
            create_pr = _truthy(query.get("create_pr"))
            return self._create_commit(repo, "/".join(rest), body, create_pr, user or "")
        if action == "branch" and rest and method in ("POST", "DELETE"):
            return self._branch(repo, method, "/".join(rest), json.loads(body or b"{}"))
        if method == "POST" and action == "discussions" and not rest:
            return self._create_discussion(repo, json.loads(body or b"{}"), user or "")
        if method == "PUT" and action == "settings":
            payload = json.loads(body or b"{}")
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            return _json({})
        prefix = ["api", f"{repo.repo_type}s", *repo.repo_id.split("/")]
        raise self._unhandled(method, prefix + sub)

    def _info(self, repo: Repo, revision: str, blobs: bool) -> Response:
        sha = self._rev(repo, revision)
        commit = repo.commits[sha]
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace or None,
            "sha": sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return _json(info)

    @staticmethod
    def _file_json(entry: FileEntry) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "file",
            "oid": entry.blob_id,
            "size": entry.size,
            "path": entry.path,
        }
        if entry.lfs:
            data["lfs"] = {
                "oid": entry.sha256,
                "size": entry.size,
                "pointerSize": entry.pointer_size,
            }
        return data

    @staticmethod
    def _dir_json(path: str) -> dict[str, Any]:
        return {
            "type": "directory",
            "oid": hashlib.sha1(path.encode()).hexdigest(),
            "size": 0,
            "path": path,
        }

    def _tree(self, repo: Repo, revision: str, path: str, recursive: bool) -> Response:
        files = repo.commits[self._rev(repo, revision)].files
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        out: dict[str, dict[str, Any]] = {}
        for p, entry in files.items():
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):
                folder = prefix + "/".join(parts[:i])
                out.setdefault(folder, self._dir_json(folder))
            if recursive or len(parts) == 1:
                out[p] = self._file_json(entry)
        return _json([out[k] for k in sorted(out)])

    def _paths_info(self, repo: Repo, revision: str, paths: list[str]) -> Response:
        files = repo.commits[self._rev(repo, revision)].files
        out = []
        for path in paths:
            if path in files:
                out.append(self._file_json(files[path]))
            elif any(p.startswith(path.rstrip("/") + "/") for p in files):
                out.append(self._dir_json(path.rstrip("/")))
        return _json(out)

    def _refs(self, repo: Repo) -> Response:
        branches, prs = [], []
        for name, sha in sorted(repo.refs.items()):
            if _PR_RE.fullmatch(name):
                prs.append({"name": name, "ref": name, "targetCommit": sha})
            else:
                branches.append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha})
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _commits(self, repo: Repo, revision: str) -> Response:
        out: list[dict[str, Any]] = []
        sha: str | None = self._rev(repo, revision)
        while sha is not None:
            c = repo.commits[sha]
            out.append(
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author}] if c.author else [],
                    "date": c.date,
                }
            )
            sha = c.parent
        return _json(out)

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> Response:
        head = self._rev(repo, revision)
        files = repo.commits[head].files
        out = []
        for item in payload.get("files", []):
            entry = files.get(item["path"])
            out.append(
                {
                    "path": item["path"],
                    # "regular" for everything: content comes base64 in the commit and the
                    # client never opens a Xet (or LFS) upload. See the module docstring.
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": entry.content_sha1 if entry else None,
                }
            )
        return _json({"files": out, "commitOid": head})

    def _branch_target(self, repo: Repo, revision: str) -> str:
        """Ref name a commit to ``revision`` advances (a branch or ``refs/pr/N``)."""
        revision = revision.removeprefix("refs/heads/")
        if revision in repo.refs:
            return revision
        if _SHA_RE.fullmatch(revision) and revision in repo.commits:
            raise HubError(400, f"Invalid rev id: {revision} is a commit, not a branch")
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_discussion(
        self, repo: Repo, title: str, description: str, author: str, pr: bool
    ) -> int:
        num = max(repo.discussions, default=0) + 1
        status = "draft" if pr else "open"
        repo.discussions[num] = Discussion(num, title, description, author, pr, _now_iso(), status)
        return num

    def _create_commit(
        self, repo: Repo, revision: str, body: bytes, create_pr: bool, author: str
    ) -> Response:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of the payload must be the commit header")
        header = lines[0]["value"]
        base_ref = self._branch_target(repo, revision)
        head = repo.refs[base_ref]
        parent_commit = header.get("parentCommit")
        if parent_commit and not head.startswith(parent_commit):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = repo.commits[head].files
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        folders: list[str] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                raw = value["content"]
                enc = value.get("encoding", "utf-8")
                additions[value["path"]] = (
                    base64.b64decode(raw) if enc == "base64" else raw.encode()
                )
            elif key == "lfsFile":
                data = self._blobs.get(value.get("oid", ""))
                if data is None:
                    raise HubError(
                        422,
                        f"LFS object {value.get('oid')} not found: LFS upload unsupported",
                    )
                additions[value["path"]] = data
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(
                        404,
                        f"A file with this name doesn't exist: {value['path']}",
                        "EntryNotFound",
                    )
                deletions.append(value["path"])
            elif key == "deletedFolder":
                folders.append(value["path"])
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        sha = self._commit(
            repo,
            head,
            additions,
            tuple(deletions),
            header.get("summary") or "Commit",
            header.get("description") or "",
            author,
            tuple(folders),
        )
        pr_url = None
        if create_pr:
            title = header.get("summary") or "Pull request"
            num = self._new_discussion(repo, title, header.get("description") or "", author, True)
            repo.discussions[num].status = "open"
            repo.refs[f"refs/pr/{num}"] = sha
            pr_url = f"{self.url}/{repo.url_path}/discussions/{num}"
        else:
            repo.refs[base_ref] = sha
        return _json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.url}/{repo.url_path}/commit/{sha}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            }
        )

    def _branch(self, repo: Repo, method: str, branch: str, payload: dict[str, Any]) -> Response:
        if method == "DELETE":
            if branch not in repo.refs or _PR_RE.fullmatch(branch):
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.refs[branch]
            return _json({})
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = payload.get("startingPoint") or "main"
        repo.refs[branch] = self._rev(repo, start)
        return _json({})

    def _create_discussion(self, repo: Repo, payload: dict[str, Any], author: str) -> Response:
        pr = bool(payload.get("pullRequest"))
        num = self._new_discussion(
            repo, payload.get("title", ""), payload.get("description", ""), author, pr
        )
        if pr:
            repo.refs[f"refs/pr/{num}"] = repo.refs["main"]
        url = f"{self.url}/{repo.url_path}/discussions/{num}"
        return _json({"num": num, "pullRequest": pr, "url": url})

    def _discussion(self, repo: Repo, num: int) -> Response:
        d = repo.discussions.get(num)
        if d is None:
            raise HubError(404, f"Discussion {num} not found")
        comment = {
            "id": hashlib.sha1(f"{repo.repo_id}{num}".encode()).hexdigest()[:24],
            "type": "comment",
            "createdAt": d.created_at,
            "author": {"name": d.author},
            "data": {
                "edited": False,
                "hidden": False,
                "latest": {"raw": d.description},
            },
        }
        return _json(
            {
                "num": d.num,
                "title": d.title,
                "status": d.status,
                "createdAt": d.created_at,
                "author": {"name": d.author},
                "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "isPullRequest": d.is_pull_request,
                "events": [comment],
                "changes": {"base": "refs/heads/main"},
                "filesWithConflicts": [],
                "diff": "",
            }
        )

    # ------------------------------------------------------------------ /resolve

    def _resolve_route(
        self, method: str, segs: list[str], headers: Mapping[str, str], user: str | None
    ) -> Response:
        repo_type = "model"
        rest = segs
        if rest and rest[0] in ("datasets", "spaces"):
            repo_type, rest = _REPO_TYPES[rest[0]], rest[1:]
        idx = next((i for i in (1, 2) if len(rest) > i + 1 and rest[i] == "resolve"), None)
        if method not in ("GET", "HEAD") or idx is None:
            raise self._unhandled(method, segs)
        repo = self._repo(repo_type, "/".join(rest[:idx]), user)
        revision, filename = rest[idx + 1], "/".join(rest[idx + 2 :])
        sha = self._rev(repo, revision)
        entry = repo.commits[sha].files.get(filename)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = self._blobs[entry.content_key]
        out = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            out["X-Linked-Etag"] = f'"{entry.sha256}"'
            out["X-Linked-Size"] = str(entry.size)
        status = 200
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", headers.get("Range", "").strip())
        if rng and method == "GET" and (rng[1] or rng[2]):
            start = int(rng[1]) if rng[1] else max(len(data) - int(rng[2]), 0)
            end = int(rng[2]) if rng[1] and rng[2] else len(data) - 1
            end = min(end, len(data) - 1)
            if start > end:
                raise HubError(416, "Requested range not satisfiable")
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return Response(status, data, out, head_length=entry.size)


def _lfs_patterns(gitattributes: bytes) -> list[str]:
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(path: str, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(path, pattern.replace("**/", "*")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


# ---------------------------------------------------------------------- client wiring


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _guarded_client_factory(blocked: list[str]) -> Callable[[], Any]:
    """Factory of huggingface_hub's default client, minus proxies, loopback only."""
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    def loopback_only(request: Any) -> None:
        if not _is_loopback(request.url.host):
            blocked.append(str(request.url))
            raise RuntimeError(f"fake_hub: blocked request to {request.url}")

    def factory() -> Any:
        return httpx2.Client(
            event_hooks={"request": [hf_request_event_hook, loopback_only]},
            follow_redirects=True,
            timeout=None,
            trust_env=False,
        )

    return factory


def _guard_sockets(monkeypatch: pytest.MonkeyPatch, blocked: list[str]) -> None:
    """Make in-process Python sockets refuse non-loopback IP destinations."""
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            blocked.append(f"socket {address!r}")
            raise ConnectionRefusedError(f"fake_hub: blocked connection to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        return original(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return original_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def patch_hf_client(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, hf_home: Path) -> None:
    """Point an already-imported ``huggingface_hub`` (and transformers) at ``hub``.

    ``huggingface_hub.constants`` evaluates env vars once at import time, so setting the
    env vars alone is not enough; this patches the env (for subprocesses and lazy
    readers) *and* the derived module globals:

    * env: ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ASSETS_CACHE``,
      ``HF_XET_CACHE``, ``HF_MODULES_CACHE``, ``HF_TOKEN`` (read lazily by ``get_token``),
      ``HF_HUB_DISABLE_TELEMETRY``, ``HF_HUB_DISABLE_PROGRESS_BARS``,
      ``HF_HUB_DISABLE_UPDATE_CHECK``, ``NO_PROXY``; removes ``HF_HUB_OFFLINE``,
      ``TRANSFORMERS_OFFLINE``, ``HUGGINGFACE_HUB_CACHE``, ``HUGGING_FACE_HUB_TOKEN``,
      ``HF_TOKEN_PATH``, ``HF_OIDC_RESOURCE`` (an OIDC token would win over HF_TOKEN),
      ``HUGGINGFACE_CO_STAGING``.
    * ``huggingface_hub.constants``: ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``
      (resolve URLs), ``HF_URL_HOSTS``, ``HF_HOME``, ``HF_HUB_CACHE``,
      ``HUGGINGFACE_HUB_CACHE``, ``HF_ASSETS_CACHE``, ``HUGGINGFACE_ASSETS_CACHE``,
      ``HF_XET_CACHE``, ``HF_TOKEN_PATH``, ``HF_STORED_TOKENS_PATH``,
      ``CHECK_FOR_UPDATE_DONE_PATH``, ``CHECK_FOR_SKILL_UPDATE_DONE_PATH``,
      ``AGENT_HARNESSES_PATH``, ``HF_HUB_OFFLINE=False`` (what ``is_offline_mode()``
      returns; patch it to ``True`` to simulate offline), ``HF_HUB_DISABLE_TELEMETRY``,
      ``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_HUB_DISABLE_IMPLICIT_TOKEN=False``,
      ``HF_HUB_DISABLE_UPDATE_CHECK``.
    * copies made at import: ``huggingface_hub.hf_api.api.endpoint`` (the module-level
      ``HfApi`` behind ``huggingface_hub.create_repo``/``model_info``/...),
      ``utils.tqdm.HF_HUB_DISABLE_PROGRESS_BARS``, ``utils._cache_manager.HF_HUB_CACHE``,
      ``utils._cache_assets.HF_ASSETS_CACHE``, ``utils._http._HUB_ORIGINS``,
      ``utils._detect_agent._registry`` (set empty: no ``/api/agent-harnesses`` fetch),
      and, if imported, ``transformers.utils.hub.HF_MODULES_CACHE``.
    * the shared HTTP client: replaced (``_GLOBAL_CLIENT_FACTORY``) by one with
      ``trust_env=False`` whose request hook refuses any non-loopback host, so nothing
      leaves 127.0.0.1 even if some URL still points at huggingface.co. The session is
      closed now and again at teardown by the fixture.
    * ``socket.socket.connect``/``connect_ex``: refuse non-loopback IPv4/IPv6
      destinations for any in-process Python code (transformers, requests, ...).
      Refusals are recorded in ``hub.blocked``. (Native code such as ``hf_xet``'s Rust
      client bypasses this; it is never handed a URL by this server.)
    """
    import sys

    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import (
        _cache_assets,
        _cache_manager,
        _detect_agent,
        _http,
    )

    hub_cache = hf_home / "hub"
    assets = hf_home / "assets"
    xet_cache = hf_home / "xet"
    modules = hf_home / "modules"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets),
        "HF_XET_CACHE": str(xet_cache),
        "HF_MODULES_CACHE": str(modules),
        "HF_TOKEN": hub.token,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_PROXY": ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get("NO_PROXY")])),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_CO_STAGING",
    ):
        monkeypatch.delenv(key, raising=False)

    values: dict[str, Any] = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}),
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets),
        "HUGGINGFACE_ASSETS_CACHE": str(assets),
        "HF_XET_CACHE": str(xet_cache),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(hf_home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value, raising=False)

    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    # the attribute `huggingface_hub.utils.tqdm` is the class: import the module itself
    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", str(assets))
    monkeypatch.setattr(
        _http,
        "_HUB_ORIGINS",
        frozenset(_http._HUB_ORIGINS | {_http._url_origin(hub.url)}),
    )
    monkeypatch.setattr(_detect_agent, "_registry", dict(_detect_agent._EMPTY_REGISTRY))
    for module_name in ("transformers.utils.hub", "transformers.dynamic_module_utils"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "HF_MODULES_CACHE"):
            monkeypatch.setattr(module, "HF_MODULES_CACHE", str(modules))

    _http.close_session()
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", _guarded_client_factory(hub.blocked))
    _guard_sockets(monkeypatch, hub.blocked)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running :class:`FakeHub` with huggingface_hub/transformers pointed at it.

    Function-scoped: a fresh server (new port, empty state) and a fresh ``HF_HOME``
    (``tmp_path / "hf_home"``, cache in ``.cache_dir``) per test. ``HF_TOKEN`` is the
    fixture's write token (``.token``, user ``.user``); pass ``token=False`` to a client
    call to act anonymously. See :func:`patch_hf_client` for everything patched.

    Teardown closes the client session, stops the server, and fails the test if the
    server crashed (``.errors``), received a request for an unimplemented route
    (``.unhandled``) or something tried to leave 127.0.0.1 (``.blocked``); clear the
    list in a test that expects entries.
    """
    from huggingface_hub.utils import _http

    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    hub = FakeHub().start()
    hub.hf_home = hf_home
    hub.cache_dir = hf_home / "hub"
    try:
        patch_hf_client(monkeypatch, hub, hf_home)
        yield hub
    finally:
        _http.close_session()
        hub.stop()
    assert not hub.errors, "fake hub crashed:\n" + "\n".join(hub.errors)
    assert not hub.unhandled, f"fake hub got unimplemented requests: {hub.unhandled}"
    assert not hub.blocked, f"blocked non-loopback traffic: {hub.blocked}"
