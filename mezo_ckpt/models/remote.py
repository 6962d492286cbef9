"""Talking to the Hugging Face Hub: error mapping, downloads pinned to commits, hashes.

Every call into ``huggingface_hub`` that can fail goes through :func:`hub_errors`, which
turns the library's exceptions into mezo-ckpt's typed errors, each saying what to do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mezo_ckpt.core.hashing import file_sha256
from mezo_ckpt.errors import (
    HubAuthError,
    HubError,
    HubRevisionError,
    IntegrityError,
    ModelLoadError,
    NotCachedError,
    PublishedRepoError,
    RepoNotFoundError,
)
from mezo_ckpt.trajectory.header import HEX40
from mezo_ckpt.util.runtime import quiet_progress

#: What a base download fetches: weights as safetensors (never pickles), configs, tokenizer.
BASE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def offline() -> bool:
    """Whether the Hub must not be contacted (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or env


def is_network_error(e: BaseException) -> bool:
    """Connection-level failure (no HTTP answer), from httpx or requests."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return False
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (ConnectionError, TimeoutError)) or bool(
        names
        & {
            "TransportError",
            "ConnectionError",
            "ConnectTimeout",
            "Timeout",
            "NetworkError",
            "TimeoutException",
        }
    )


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, what: str) -> Iterator[None]:
    """Turn huggingface_hub exceptions into our typed errors, each saying what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError as _EntryMissing
    except ImportError:  # pragma: no cover - huggingface_hub < 1.0
        from huggingface_hub.errors import EntryNotFoundError as _EntryMissing

    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        yield
    except GatedRepoError:
        raise HubAuthError(
            f"{repo_id} is gated: accept its terms on the Hub, then log in "
            "(`hf auth login`) or pass --token"
        ) from None
    except RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"{repo_id!r} was not found on the Hub (trying to {what}), or it is private and no "
            "valid token was given: check the name, or pass --token / set HF_TOKEN / run "
            "`hf auth login` with an account that can read it"
        ) from None
    except RevisionNotFoundError:
        raise HubRevisionError(
            f"revision {revision!r} does not exist in {repo_id}: use a branch, tag or commit "
            "sha of the repo (see `Files and versions` on the Hub)"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise NotCachedError(
            f"{at} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is "
            f"set or there is no network), so it is impossible to {what}: run the same command "
            "once online (e.g. `mezo-ckpt pull REPO`) to fill the cache"
        ) from None
    except _EntryMissing as e:  # old versions: LocalEntryNotFoundError subclasses it
        raise PublishedRepoError(f"{at} lacks a file needed to {what}: {e}") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise HubAuthError(
                f"the Hub rejected the token while trying to {what} ({at}): "
                "pass a valid token with --token, fix HF_TOKEN, or run "
                "`hf auth login`"
            ) from None
        if status == 403:
            raise HubAuthError(
                f"no permission to {what} ({at}): use a token with write access "
                "to that namespace (--token or `hf auth login`)"
            ) from None
        raise HubError(f"the Hub refused to {what} ({at}): {str(e).splitlines()[0]}") from None
    except HFValidationError as e:
        raise RepoNotFoundError(
            f"{repo_id!r} is not a valid Hub repo id (user/name): {e}"
        ) from None
    except OSError as e:
        if "consistency check failed" in str(e).lower():  # size or hash differs from the Hub's
            raise IntegrityError(
                f"a file downloaded from {at} does not match what the Hub announced ({e}); "
                "the transfer was corrupted or the server serves bad data: retry, and if it "
                "persists, report it to the repo owner"
            ) from None
        if is_network_error(e):
            raise HubError(
                f"cannot reach the Hub to {what} ({at}): {e}. Check your network, "
                "or set HF_HUB_OFFLINE=1 to use only the local cache"
            ) from e
        raise
    except Exception as e:
        if is_network_error(e):
            raise HubError(
                f"cannot reach the Hub to {what} ({at}): {e}. Check your network, "
                "or set HF_HUB_OFFLINE=1 to use only the local cache"
            ) from e
        raise


quiet_hub = quiet_progress  # the Hub's and transformers' bars, as one switch


def evict_from_hf_cache(path: Path) -> bool:
    """Remove a corrupt file (its blob and snapshot link) from the HF cache; True if done."""
    from huggingface_hub import constants

    try:
        cache = Path(constants.HF_HUB_CACHE).resolve()
        blob = path.resolve()
        if cache not in blob.parents:
            return False
        blob.unlink(missing_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        return True
    except OSError:  # pragma: no cover - best effort
        return False


def check_sha256(path: Path, expected: dict[str, str], what: str) -> str:
    """Hash ``path`` and compare with every ``source -> sha256`` in ``expected``.

    Raises:
        IntegrityError: a mismatch (the corrupt copy is evicted from the HF cache).
    """
    got = file_sha256(path)
    bad = {src: sha for src, sha in expected.items() if sha and sha != got}
    if bad:
        evicted = evict_from_hf_cache(path)
        src = ", ".join(f"{k} says {v[:16]}..." for k, v in bad.items())
        raise IntegrityError(
            f"{what} is corrupt: its sha256 is {got[:16]}..., but {src}. "
            + (
                "The corrupt copy was removed from the Hugging Face cache; retry. "
                if evicted
                else f"Delete {path} and retry. "
            )
            + "If it happens again, the server (or a proxy) serves bad data: report it to the "
            "repo owner and do not use this copy"
        )
    return got


def download_snapshot(
    repo_id: str, revision: str | None, token: str | bool | None, what: str
) -> Path:
    """A base model repo at ``revision`` (weights as safetensors, configs, tokenizer)."""
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision, what):
        return Path(
            snapshot_download(repo_id, revision=revision, token=token, allow_patterns=BASE_PATTERNS)
        )


def download_base(
    repo_id: str, revision: str | None = None, token: str | bool | None = None
) -> tuple[Path, str]:
    """Download (or find in the cache) a model repo; returns (folder, commit sha).

    Raises:
        ModelLoadError: unknown repo or revision, no network and not cached, no access.
    """
    try:
        folder = download_snapshot(repo_id, revision, token, "download the base model")
    except HubError as e:
        raise ModelLoadError(str(e)) from None
    except ValueError as e:  # malformed repo id
        raise ModelLoadError(f"{repo_id!r} is not a folder or a valid Hub repo id: {e}") from None
    return folder, folder.name


def verify_base_files(folder: Path, expected: dict[str, str], where: str) -> None:
    """Each recorded base file exists in ``folder`` with the recorded sha256.

    Raises:
        IntegrityError: a file is missing or differs.
    """
    for name, sha in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(
                f"the base {where} lacks {name}, which the trajectory records "
                f"(sha256 {sha[:16]}...): the repo changed or the download "
                "is incomplete; delete its cache folder and retry"
            )
        check_sha256(
            path, {"the trajectory's record of the base": sha}, f"base file {name} of {where}"
        )


def download_file(
    repo_id: str,
    filename: str,
    revision: str | None,
    commit: str,
    token: str | bool | None,
    what: str,
) -> Path:
    """hf_hub_download of ``filename`` at ``commit``, recording ``revision`` -> commit in the
    HF cache (so offline loads of that branch resolve) when it still points there."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo_id, revision, what):
        if revision is None or not HEX40.fullmatch(revision):
            path = Path(hf_hub_download(repo_id, filename, revision=revision, token=token))
            if path.parent.name == commit:
                return path
        return Path(hf_hub_download(repo_id, filename, revision=commit, token=token))


def lfs_sha256(sibling: Any) -> str | None:
    lfs = getattr(sibling, "lfs", None)
    if isinstance(lfs, dict):
        return lfs.get("sha256")
    return getattr(lfs, "sha256", None)
