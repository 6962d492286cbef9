"""Publishing a trajectory: one commit with the trajectory, ``mezo_ckpt.json`` and a card.

``mezo_ckpt.json`` is the rebuild recipe: the base repo pinned to a commit (or the
embedded GGUF's identity), the base's fingerprints, and the trajectory's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_ckpt import __version__
from mezo_ckpt.errors import (
    BaseMismatchError,
    ConfigError,
    HubError,
    MezoCkptError,
    OutputExistsError,
    PushRefusedError,
)
from mezo_ckpt.hub.card import EMBEDDED_LICENSE, card_base_model, human_bytes, render_card
from mezo_ckpt.hub.record import META_FILE, SCHEMA, SCHEMA_VERSION
from mezo_ckpt.models.remote import download_snapshot, hub_errors, offline
from mezo_ckpt.trajectory import Trajectory, parse_trajectory, read_trajectory_bytes
from mezo_ckpt.trajectory.header import HEX40, is_repo_file, is_repo_id
from mezo_ckpt.util.fsutil import check_output, os_errors

CARD_FILE = "README.md"
DEFAULT_TRAJECTORY_NAME = "trajectory.zst"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PLOT_FILE = "training_curve.png"


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

    def info(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "commit": self.commit,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
            "revision": self.revision,
            "files": self.files,
            "folder": str(self.folder) if self.folder else None,
            "notes": self.notes,
            "meta": self.meta,
        }


def trajectory_name(path: Path) -> str:
    """The name the trajectory keeps on the Hub (a safe ``.zst`` name, else the default)."""
    name = path.name
    if name.endswith(".zst") and is_repo_file(name) and not name.startswith("."):
        return name
    return DEFAULT_TRAJECTORY_NAME


def base_license(
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


def pin_base(
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
    from mezo_ckpt.models.base import hash_folder_files, load_folder, verify_base

    b = traj.header.base
    if (base_repo is None) != (base_revision is None):
        raise PushRefusedError(
            "--base-repo and --base-revision go together: name the Hub repo "
            "of the base and the commit it corresponds to"
        )
    if b.kind == "embedded":
        if base_repo is not None:
            raise PushRefusedError(
                "this trajectory's base is the embedded SmolLM2-135M GGUF, "
                "pinned by its sha256; drop --base-repo/--base-revision"
            )
        return b.to_json()
    if b.kind == "hub":
        if base_repo is not None and (
            base_repo != b.repo_id or not (b.revision or "").startswith(base_revision or "")
        ):
            raise PushRefusedError(
                f"this trajectory already pins its base to {b.repo_id}@{b.revision}; "
                "drop --base-repo/--base-revision (they are for local-folder bases)"
            )
        if b.revision:
            return b.to_json()
        notes.append("the trajectory names its base repo without a commit")
        if base_repo is None:
            raise PushRefusedError(
                f"this trajectory names its base {b.repo_id} without a commit, so loads "
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
    if not is_repo_id(base_repo):
        raise PushRefusedError(f"--base-repo {base_repo!r} is not a Hub repo id (user/name)")
    folder = download_snapshot(base_repo, base_revision, token, "download the base model")
    commit = folder.name
    if not HEX40.fullmatch(commit):  # pragma: no cover - snapshot folders are named by commit
        raise HubError(f"could not resolve {base_repo}@{base_revision} to a commit")
    model = load_folder(folder, b.dtype, "cpu")
    try:
        verify_base(traj.header, model, folder=folder)
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
    pinned = b.to_json()
    pinned.update(
        kind="hub",
        repo_id=base_repo,
        revision=commit,
        files=hash_folder_files(folder),
        trained_from=b.kind,
    )
    return pinned


def build_meta(
    traj: Trajectory,
    name: str,
    trajectory_sha256: str,
    trajectory_bytes: int,
    base: dict,
    repo_id: str,
) -> dict:
    """The ``mezo_ckpt.json`` a publication carries (see the module docstring)."""
    from mezo_ckpt.trajectory.steps import best_step

    try:
        best: int | None = best_step(traj)
    except MezoCkptError:
        best = None
    b = dict(base)
    b["card_base_model"] = card_base_model(base)
    n = int(base["num_parameters"])
    return {
        "format": SCHEMA,
        "version": SCHEMA_VERSION,
        "tool": {"name": "mezo-ckpt", "version": __version__},
        "trajectory": {
            "file": name,
            "sha256": trajectory_sha256,
            "bytes": trajectory_bytes,
            "format_version": f"{traj.version[0]}.{traj.version[1]}",
            "num_steps": traj.num_steps,
            "total_steps": traj.total_steps,
            "complete": traj.complete,
            "best_step": best,
            "checkpoint_steps": sorted(traj.checkpoints),
            "trained_with": traj.header.tool.to_json(),
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


def build_publication(
    trajectory: str | os.PathLike,
    repo_id: str,
    *,
    base_repo: str | None = None,
    base_revision: str | None = None,
    token: str | bool | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    with_adapter: bool = False,
    base: str | None = None,
    plot: bool = True,
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
        with_adapter: for a LoRA/prefix run, also upload the replayed PEFT adapter, so that
            standard tools (``AutoPeftModelForCausalLM.from_pretrained(repo)``) load it.
        base: the base folder / repo to replay the adapter on (a local-folder base).
        plot: add the evaluation-curve picture (if matplotlib is installed).

    Raises:
        TrajectoryError subclasses for a bad file; PushRefusedError, BaseMismatchError,
        HubError subclasses as described in :func:`push`.
    """
    path = Path(trajectory)
    if not is_repo_id(repo_id) or "/" not in repo_id:
        raise PushRefusedError(f"{repo_id!r} is not a Hub repo id: use USER/NAME or ORG/NAME")
    data = read_trajectory_bytes(path)  # parse and hash the same bytes
    traj = parse_trajectory(data)
    sha = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    if traj.bound and not traj.sealed:
        open_steps = traj.num_steps - (traj.sealed_step or 0)
        raise PushRefusedError(
            f"{path} is not sealed: no checkpoint covers its last {open_steps} step(s) "
            "(the file was cut or the run was killed). Resume the run "
            "(`mezo-ckpt train --resume ...`) to seal it, then push"
        )
    pinned = pin_base(traj, base_repo, base_revision, token, notes)
    name = trajectory_name(path)
    meta = build_meta(traj, name, sha, len(data), pinned, repo_id)
    if license is None:
        if pinned["kind"] == "embedded":
            license = EMBEDDED_LICENSE
        else:
            license, private = base_license(pinned["repo_id"], pinned["revision"], token)
            if license is None:
                notes.append("no license found for the base; pass --license ID to set one")
            if private:
                notes.append(
                    f"the base {pinned['repo_id']} is private: only people who can read "
                    "it can load this fine-tune"
                )
    files: dict[str, bytes] = {name: data}
    if with_adapter:
        files.update(_adapter_files(path, traj, base, meta, notes))
    plot_file = None
    if plot and traj.evaluations:
        try:
            from mezo_ckpt.plot import render_png

            files[PLOT_FILE] = render_png(traj, title=repo_id)
            plot_file = PLOT_FILE
        except ConfigError:  # matplotlib is optional
            notes.append("no evaluation plot in the card (pip install 'mezo-ckpt[plot]')")
    card = render_card(
        traj,
        meta,
        repo_id,
        license=license,
        datasets=datasets,
        has_adapter=with_adapter,
        plot_file=plot_file,
    )
    files[META_FILE] = (json.dumps(meta, indent=2) + "\n").encode()
    files[CARD_FILE] = card.encode()
    return Publication(repo_id, files, meta, card, name, notes)


def _adapter_files(
    path: Path, traj: Trajectory, base: str | None, meta: dict, notes: list[str]
) -> dict[str, bytes]:
    """The replayed PEFT adapter of a LoRA/prefix run, pointing at the card's base."""
    from mezo_ckpt.hub.fetch import fetch

    if traj.header.peft is None:
        raise PushRefusedError(
            "--with-adapter is for LoRA/prefix runs (--peft); this run trains the model itself"
        )
    r = fetch(path, base=base, progress=False)
    cfg = json.loads((r.folder / "adapter_config.json").read_text())
    b = meta["base"]
    cfg["base_model_name_or_path"] = card_base_model(b)
    cfg["revision"] = b.get("revision") if b.get("kind") == "hub" else None
    if b.get("kind") == "embedded":
        notes.append(
            "the adapter was trained on the embedded Q4_1-dequantized SmolLM2; on the original "
            "Hub weights it gives close but not identical outputs (mezo_ckpt.load rebuilds the "
            "exact base)"
        )
    return {
        "adapter_config.json": (json.dumps(cfg, indent=2) + "\n").encode(),
        "adapter_model.safetensors": (r.folder / "adapter_model.safetensors").read_bytes(),
    }


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
    with_adapter: bool = False,
    base: str | None = None,
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
        with_adapter / base: see :func:`build_publication`.

    Raises:
        PushRefusedError: local base without a matching --base-repo/--base-revision, or a
            file that is not sealed.
        BaseMismatchError: the named Hub base is not the trajectory's base.
        HubAuthError, RepoNotFoundError, HubRevisionError, HubError: Hub failures.
        OutputExistsError: the dry-run folder exists and is not empty.
    """
    if dry_run is None and offline():
        raise HubError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it to push, or "
            "use --dry-run DIR to write the files locally"
        )
    if dry_run is not None:
        check_output(dry_run, kind="folder", inputs=[trajectory], flag="--dry-run")
    pub = build_publication(
        trajectory,
        repo_id,
        base_repo=base_repo,
        base_revision=base_revision,
        token=token,
        license=license,
        datasets=datasets,
        with_adapter=with_adapter,
        base=base,
    )
    sizes = {k: len(v) for k, v in pub.files.items()}
    if dry_run is not None:
        out = Path(dry_run)
        if out.exists() and any(out.iterdir()):
            raise OutputExistsError(f"--dry-run folder {out} exists and is not empty")
        with os_errors(out, "write"):
            out.mkdir(parents=True, exist_ok=True)
            for name, data in pub.files.items():
                (out / name).write_bytes(data)
        return PushResult(repo_id, sizes, pub.meta, revision=revision, folder=out, notes=pub.notes)

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    steps = pub.meta["trajectory"]["num_steps"]
    message = commit_message or (
        f"Upload MeZO trajectory ({steps} steps, "
        f"{human_bytes(sizes[pub.trajectory_name])}) with mezo-ckpt "
        f"{__version__}"
    )
    with hub_errors(repo_id, revision, "create the repo"):
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if revision is not None and not create_pr:
        with hub_errors(repo_id, revision, "create the branch"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    ops = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data)
        for name, data in pub.files.items()
    ]
    with hub_errors(repo_id, revision, "upload"):
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
