"""Base models: loading (local folder, Hub repo, embedded default) and identity checks.

The identity recorded in a trajectory header pins the base by source (repo id and
resolved commit, or the embedded GGUF's sha256), by per-file sha256, by a manifest
fingerprint (names, shapes, dtypes, tying) and by a content fingerprint of the
trainable tensors. Replay refuses a base whose identity differs before touching a weight.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.errors import BaseMismatchError, ModelLoadError
from mezo_ckpt.hashing import (
    canonical_parameters,
    dtype_name,
    file_sha256,
    manifest_sha256,
    parameter_manifest,
    tensors_sha256,
)

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
EMBEDDED_PREFIX = "embedded"
#: Files whose sha256 is recorded for a base folder.
HASHED_SUFFIXES = (".safetensors", "config.json")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'float32' | 'fp32' | 'bfloat16' | 'bf16' | 'float16' | 'fp16' -> torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16") from None


@dataclass
class LoadedBase:
    """A base model ready for training or replay, with where it came from."""

    model: Any  # transformers PreTrainedModel (or any nn.Module in tests)
    kind: str  # "hub" | "local" | "embedded"
    folder: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    embedded: dict | None = None

    def identity(self, trainable: Iterable[str]) -> dict:
        """The header's ``base`` object for this model and trainable set."""
        return describe_base(
            self.model,
            trainable,
            kind=self.kind,
            repo_id=self.repo_id,
            revision=self.revision,
            files=self.files,
            embedded=self.embedded,
        )


def describe_base(
    model: torch.nn.Module,
    trainable: Iterable[str],
    *,
    kind: str = "local",
    repo_id: str | None = None,
    revision: str | None = None,
    files: dict[str, str] | None = None,
    embedded: dict | None = None,
) -> dict:
    """Identity of ``model`` as recorded in a trajectory header (``base`` field)."""
    params = canonical_parameters(model)
    manifest = parameter_manifest(model)
    dtypes = {p.dtype for p in params.values()}
    if len(dtypes) != 1:
        raise ValueError(f"mixed parameter dtypes are not supported: {sorted(map(str, dtypes))}")
    config = getattr(model, "config", None)
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    tie = bool(getattr(config, "tie_word_embeddings", False)) if config is not None else False
    if config is not None and hasattr(config, "get_text_config"):
        tie = bool(getattr(config.get_text_config(), "tie_word_embeddings", tie))
    ident = {
        "kind": kind,
        "repo_id": repo_id,
        "revision": revision,
        "files": dict(sorted((files or {}).items())),
        "architecture": arch,
        "model_type": str(getattr(config, "model_type", "custom")),
        "dtype": dtype_name(next(iter(dtypes))),
        "tie_word_embeddings": tie,
        "num_parameters": sum(p.numel() for p in params.values()),
        "manifest_sha256": manifest_sha256(manifest),
        "trainable_sha256": tensors_sha256(params, sorted(trainable)),
    }
    if embedded is not None:
        ident["embedded"] = embedded
    return ident


def verify_base(header: dict, model: torch.nn.Module, *, offered: LoadedBase | None = None) -> None:
    """Refuse a base that is not the trajectory's, before any weight is touched.

    Compares architecture, dtype, tying, manifest and the content fingerprint of the
    trainable tensors; when ``offered`` comes from the Hub too, also repo and commit.

    Raises:
        BaseMismatchError: listing every property that differs.
    """
    want = header["base"]
    trainable = header["trainable"]
    params = canonical_parameters(model)
    missing = [n for n in trainable if n not in params]
    diffs: list[str] = []
    if missing:
        diffs.append(
            f"trainable parameters missing from the offered model: {missing[:5]}"
            + (" ..." if len(missing) > 5 else "")
        )
    got = describe_base(model, [n for n in trainable if n in params])
    for k, label in (
        ("architecture", "architecture"),
        ("model_type", "model type"),
        ("dtype", "dtype"),
        ("tie_word_embeddings", "tied embeddings"),
        ("num_parameters", "parameter count"),
        ("manifest_sha256", "parameter manifest (names/shapes/dtypes/tying)"),
    ):
        if got[k] != want[k]:
            diffs.append(f"{label}: trajectory has {want[k]!r}, offered base has {got[k]!r}")
    if not missing and got["trainable_sha256"] != want["trainable_sha256"]:
        diffs.append(
            "content of the trainable tensors differs (fingerprint "
            f"{got['trainable_sha256'][:12]} != {want['trainable_sha256'][:12]})"
        )
    if offered is not None and offered.kind == "hub" and want.get("kind") == "hub":
        if offered.repo_id != want.get("repo_id"):
            diffs.append(f"repo: trajectory has {want.get('repo_id')}, offered {offered.repo_id}")
        if want.get("revision") and offered.revision != want.get("revision"):
            diffs.append(f"commit: trajectory has {want['revision']}, offered {offered.revision}")
    if diffs:
        raise BaseMismatchError(
            "the offered base model is not the one this trajectory was "
            "trained from; refusing to replay",
            diffs,
        )


def hash_folder_files(folder: Path) -> dict[str, str]:
    """sha256 of the weight and config files a header records for a base folder."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(HASHED_SUFFIXES):
            out[p.name] = file_sha256(p)
    return out


def load_folder(folder: str | Path, dtype: torch.dtype | str, device: str = "cpu", **kw: Any):
    """Load a causal LM folder (safetensors only, never pickles) in eval mode, frozen."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=parse_dtype(dtype),
            use_safetensors=True,
            low_cpu_mem_usage=True,
            **kw,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not load a causal LM from {folder}: {e}") from e
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def is_embedded_spec(spec: str | None) -> bool:
    return spec is None or spec == EMBEDDED_PREFIX or spec.startswith(EMBEDDED_PREFIX + ":")


def load_base(
    spec: str | None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    revision: str | None = None,
    progress: bool = True,
) -> LoadedBase:
    """Load a base model from a local folder, a Hub repo id, or the embedded default.

    Args:
        spec: None / "embedded" for the packaged SmolLM2-135M-Instruct, an existing folder,
            or a Hub repo id ("user/name").
        dtype: parameter dtype to train or replay in.
        device: torch device.
        revision: Hub branch, tag or commit (resolved to a commit sha and recorded).

    Raises:
        ModelLoadError: nothing loadable at ``spec``.
    """
    tdtype = parse_dtype(dtype)
    if is_embedded_spec(spec):
        from mezo_ckpt import embedded

        folder = embedded.default_model_dir(progress=progress)
        model = load_folder(folder, tdtype, device)
        return LoadedBase(
            model, "embedded", folder=folder, files={}, embedded=embedded.embedded_identity()
        )
    assert spec is not None
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{spec} is a file; pass the model folder (with config.json)")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{spec} has no config.json: not a Hugging Face model folder")
        model = load_folder(path, tdtype, device)
        return LoadedBase(model, "local", folder=path, files=hash_folder_files(path))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip(os.sep).replace("/", "", 1):
        raise ModelLoadError(f"no model folder at {spec}")
    from mezo_ckpt.hubio import download_base

    folder, commit = download_base(spec, revision=revision)
    model = load_folder(folder, tdtype, device)
    return LoadedBase(
        model, "hub", folder=folder, repo_id=spec, revision=commit, files=hash_folder_files(folder)
    )
