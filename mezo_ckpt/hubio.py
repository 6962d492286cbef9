"""Downloading base models from the Hugging Face Hub, pinned to a commit."""

from __future__ import annotations

from pathlib import Path

from mezo_ckpt.errors import ModelLoadError

#: What a base download fetches: weights as safetensors (never pickles), config, tokenizer.
BASE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def download_base(
    repo_id: str, revision: str | None = None, token: str | bool | None = None
) -> tuple[Path, str]:
    """Download (or find in the cache) a model repo; returns (folder, commit sha).

    Raises:
        ModelLoadError: unknown repo or revision, no network and not cached, no access.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(
            snapshot_download(repo_id, revision=revision, token=token, allow_patterns=BASE_PATTERNS)
        )
    except GatedRepoError as e:
        raise ModelLoadError(
            f"{repo_id} is gated: accept its terms on the Hub and log in (`hf auth login`): {e}"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{repo_id!r} is neither a local folder nor a Hub repo you can "
            "access (private repos need HF_TOKEN or --token)"
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"revision {revision!r} not found in {repo_id}") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"{repo_id}@{revision or 'main'} is not in the local cache and the "
            "Hub cannot be reached (HF_HUB_OFFLINE set or no network)"
        ) from None
    except ValueError as e:  # malformed repo id
        raise ModelLoadError(f"{repo_id!r} is not a folder or a valid Hub repo id: {e}") from None
    return folder, folder.name
