"""Base models: loading (local folder, Hub repo, embedded default) and identity checks.

The identity recorded in a trajectory header (:class:`~mezo_ckpt.trajectory.header.BaseIdentity`)
pins the base by source (repo id and resolved commit, or the embedded GGUF's sha256), by
a manifest fingerprint (names, shapes, dtypes, tying), by a content fingerprint of every
tensor (trainable or frozen), by the semantic content of ``config.json`` and
``generation_config.json``, and by the content of every tokenizer file. Replay, pull,
load and resume refuse a base that differs in any of them, before touching a weight, and
list what differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.core.hashing import (
    canonical_parameters,
    dtype_name,
    file_sha256,
    fingerprint_tensors,
    json_sha256,
    manifest_sha256,
    parameter_manifest,
    semantic_json,
    state_tensors,
    tensors_root,
    tensors_sha256,
    tokenizer_digests,
)
from mezo_ckpt.errors import BaseMismatchError, ModelLoadError
from mezo_ckpt.trajectory.header import TENSOR_DIGEST_HEX, BaseIdentity, EmbeddedSource, TensorEntry

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
EMBEDDED_PREFIX = "embedded"
#: Files whose sha256 is recorded for a base folder (format 1.0 pinned the base by them).
HASHED_SUFFIXES = (".safetensors", "config.json")
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


def parse_dtype(name: str | torch.dtype) -> torch.dtype | str:
    """'float32' | 'fp32' | 'bfloat16' | 'bf16' | 'float16' | 'fp16' -> torch dtype;
    'auto' stays 'auto' (the checkpoint's own dtype, as transformers reads it)."""
    if isinstance(name, torch.dtype) or name == "auto":
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

    def identity(self, trainable: Iterable[str]) -> BaseIdentity:
        """The header's ``base`` for this model and trainable set."""
        return describe_base(
            self.model,
            trainable,
            kind=self.kind,
            repo_id=self.repo_id,
            revision=self.revision,
            files=self.files,
            embedded=self.embedded,
            folder=self.folder,
        )


# ----------------------------------------------------------------------------- fingerprints


def _config_of(model: torch.nn.Module, folder: Path | None, filename: str) -> dict | None:
    """Semantic content of config.json / generation_config.json: the file in ``folder``
    when there is one, else what ``save_pretrained`` would write for ``model``."""
    if folder is not None and (folder / filename).is_file():
        try:
            obj = json.loads((folder / filename).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{folder / filename} is not readable JSON: {e}") from None
        return semantic_json(obj) if isinstance(obj, dict) else {"value": obj}
    src = getattr(model, "config" if filename == CONFIG_FILE else "generation_config", None)
    if src is None or not hasattr(src, "to_json_string"):
        return None
    if filename == GENERATION_CONFIG_FILE and folder is not None:
        return None  # the folder has no generation config: nothing to pin
    return semantic_json(json.loads(src.to_json_string(use_diff=True)))


def tokenizer_identity(tokenizer: Any = None, folder: Path | None = None) -> dict[str, str]:
    """Content sha256 of each tokenizer file (of a folder, or of a tokenizer object as its
    ``save_pretrained`` writes it)."""
    if folder is not None:
        return tokenizer_digests(folder)
    if tokenizer is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="mezo-tok-") as d:
        tokenizer.save_pretrained(d)
        return tokenizer_digests(d)


def describe_base(
    model: torch.nn.Module,
    trainable: Iterable[str],
    *,
    kind: str = "local",
    repo_id: str | None = None,
    revision: str | None = None,
    files: dict[str, str] | None = None,
    embedded: dict | None = None,
    folder: Path | None = None,
    tokenizer: Any = None,
    trainable_digest: bool = True,
    values: Any = None,
) -> BaseIdentity:
    """Identity of ``model`` as recorded in a trajectory header (``base``).

    Args:
        folder: where the model was loaded from (its config and tokenizer files are
            fingerprinted); without one, the model's config and ``tokenizer`` are.
        trainable_digest: also compute ``trainable_sha256`` (one more sequential pass over
            the trainable tensors, overlapped with the others; a check against a 1.1
            header does not need it: the fingerprint of every tensor covers them).
        values: where an offloaded (meta) parameter's values are
            (:class:`mezo_ckpt.models.offload.OffloadedWeights`).
    """
    from concurrent.futures import ThreadPoolExecutor

    params = canonical_parameters(model)
    dtypes = {p.dtype for p in params.values()}
    if len(dtypes) != 1:
        raise ValueError(f"mixed parameter dtypes are not supported: {sorted(map(str, dtypes))}")
    config = getattr(model, "config", None)
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    tie = bool(getattr(config, "tie_word_embeddings", False)) if config is not None else False
    if config is not None and hasattr(config, "get_text_config"):
        tie = bool(getattr(config.get_text_config(), "tie_word_embeddings", tie))
    state = state_tensors(model)

    def value(name: str, t: torch.Tensor):
        if values is not None and t.is_meta:  # read when hashed, one at a time
            return lambda: values.read(name)
        return t

    real = {n: value(n, p) for n, p in params.items()}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mezo-hash-tr") as pool:
        running = pool.submit(tensors_sha256, real, sorted(trainable)) if trainable_digest else None
        digests = fingerprint_tensors({n: value(n, t) for n, (t, _, _) in state.items()})
        trainable_sha = running.result() if running is not None else "0" * 64
    entries = tuple(
        TensorEntry(
            name,
            aliases,
            tuple(t.shape),
            dtype_name(t.dtype),
            digests[name].hex()[:TENSOR_DIGEST_HEX],
            buffer,
        )
        for name, (t, aliases, buffer) in state.items()
    )
    cfg = _config_of(model, folder, CONFIG_FILE)
    gen = _config_of(model, folder, GENERATION_CONFIG_FILE)
    emb = None
    if embedded is not None:
        extra = {k: v for k, v in embedded.items() if k not in ("gguf_file", "gguf_sha256")}
        emb = EmbeddedSource(embedded["gguf_file"], embedded["gguf_sha256"], extra)
    return BaseIdentity(
        kind=kind,
        repo_id=repo_id,
        revision=revision,
        files=dict(sorted((files or {}).items())),
        architecture=arch,
        model_type=str(getattr(config, "model_type", "custom")),
        dtype=dtype_name(next(iter(dtypes))),
        tie_word_embeddings=tie,
        num_parameters=sum(p.numel() for p in params.values()),
        manifest_sha256=manifest_sha256(parameter_manifest(model)),
        trainable_sha256=trainable_sha,
        embedded=emb,
        tensors=entries,
        tensors_sha256=tensors_root(digests),
        config=cfg or {},
        config_sha256=json_sha256(cfg or {}),
        generation_config_sha256=None if gen is None else json_sha256(gen),
        tokenizer=tokenizer_identity(tokenizer, folder),
    )


# ----------------------------------------------------------------------------- checks


@dataclass
class BaseCheck:
    """What a base check compared (for the output), and what it overrode."""

    checked: list[str]
    overridden: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "; ".join(self.checked)


def _diff_config(want: dict, got: dict, what: str) -> list[str]:
    keys = sorted(set(want) | set(got))
    out = []
    for k in keys:
        if want.get(k, "<absent>") != got.get(k, "<absent>"):
            out.append(
                f"{what} {k}: trajectory has {json.dumps(want.get(k, '<absent>'))[:60]}, "
                f"offered base has {json.dumps(got.get(k, '<absent>'))[:60]}"
            )
    return out or [f"{what} differs"]


def _short(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def compare_identity(
    want: BaseIdentity,
    model: torch.nn.Module,
    trainable: Iterable[str],
    folder: Path | None,
    values: Any = None,
) -> tuple[list[str], list[str]]:
    """(differences, what was checked) between a recorded identity and a model."""
    trainable = list(trainable)
    params = canonical_parameters(model)
    missing = [n for n in trainable if n not in params]
    got = describe_base(
        model,
        [n for n in trainable if n in params],
        folder=folder,
        kind=want.kind,
        trainable_digest=want.tensors_sha256 is None,
        values=values,
    )
    return diff_identities(want, got, missing=missing, folder=folder)


def diff_identities(
    want: BaseIdentity,
    got: BaseIdentity,
    *,
    missing: Iterable[str] = (),
    folder: Path | None = None,
) -> tuple[list[str], list[str]]:
    """(differences, what was checked) between a recorded identity and an offered one
    (from a loaded model, or computed shard by shard from a folder)."""
    missing = list(missing)
    diffs: list[str] = []
    if missing:
        diffs.append(f"trainable parameters missing from the offered model: {_short(missing)}")
    for attr, label in (
        ("architecture", "architecture"),
        ("model_type", "model type"),
        ("dtype", "dtype"),
        ("tie_word_embeddings", "tied embeddings"),
        ("num_parameters", "parameter count"),
        ("manifest_sha256", "parameter manifest (names/shapes/dtypes/tying)"),
    ):
        if getattr(got, attr) != getattr(want, attr):
            diffs.append(
                f"{label}: trajectory has {getattr(want, attr)!r}, "
                f"offered base has {getattr(got, attr)!r}"
            )
    checked = ["architecture, dtype, parameter manifest"]
    if (
        not missing
        and want.tensors_sha256 is None
        and got.trainable_sha256 != want.trainable_sha256
    ):
        diffs.append(
            "content of the trainable tensors differs (fingerprint "
            f"{got.trainable_sha256[:12]} != {want.trainable_sha256[:12]})"
        )
    if want.tensors_sha256 is None:
        checked.append(
            "the trainable tensors (a format 1.0 file pins only those: frozen "
            "tensors, config and tokenizer are not checked)"
        )
    else:
        n = len(want.tensors or ())
        checked.append(f"all {n} tensors (trainable and frozen)")
        if got.tensors_sha256 != want.tensors_sha256:
            have = {t.name: t for t in got.tensors or ()}
            bad = []
            for t in want.tensors or ():
                g = have.pop(t.name, None)
                if g is None:
                    bad.append(f"{t.name} (missing)")
                elif (g.sha256, g.shape, g.dtype) != (t.sha256, t.shape, t.dtype):
                    bad.append(t.name)
            bad += [f"{name} (not in the trained base)" for name in sorted(have)]
            diffs.append(
                f"tensor content differs in {len(bad) or 'some'} tensor(s): "
                f"{_short(bad) or 'digest collision in the short digests'}"
            )
    if want.config_sha256 is not None:
        checked.append("config.json")
        if got.config_sha256 != want.config_sha256:
            diffs += _diff_config(dict(want.config or {}), dict(got.config or {}), "config")
        if want.generation_config_sha256 is not None or got.generation_config_sha256:
            checked.append("generation_config.json")
            if got.generation_config_sha256 != want.generation_config_sha256:
                diffs.append(
                    "generation_config.json differs "
                    f"({(got.generation_config_sha256 or 'absent')[:12]} != "
                    f"{(want.generation_config_sha256 or 'absent')[:12]})"
                )
    if want.tokenizer is not None and folder is not None:
        checked.append(f"{len(want.tokenizer)} tokenizer file(s)")
        have_tok = got.tokenizer or {}
        for name, sha in sorted(want.tokenizer.items()):
            if name not in have_tok:
                diffs.append(f"tokenizer file {name} is missing from the offered base")
            elif have_tok[name] != sha:
                diffs.append(f"tokenizer file {name} differs ({have_tok[name][:12]} != {sha[:12]})")
        for name in sorted(set(have_tok) - set(want.tokenizer)):
            diffs.append(f"tokenizer file {name} is not part of the trained base")
    if folder is not None and want.files and want.tensors_sha256 is None:
        checked.append(f"{len(want.files)} base file(s) by sha256")
        for name, sha in sorted(want.files.items()):
            p = folder / name
            if not p.is_file():
                diffs.append(f"base file {name} is missing")
            elif file_sha256(p) != sha:
                diffs.append(f"base file {name} differs from the one recorded")
    return diffs, checked


def verify_base(
    header: Any,
    model: torch.nn.Module,
    *,
    offered: LoadedBase | None = None,
    folder: Path | None = None,
    allow_mismatch: bool = False,
    values: Any = None,
) -> BaseCheck:
    """Refuse a base that is not the trajectory's, before any weight is touched.

    Compares architecture, dtype, tying, the manifest, the content of every tensor, the
    semantic config and generation config, every tokenizer file (when the base comes
    from a folder) and, for a Hub base, repo and commit.

    Args:
        header: the trajectory's :class:`~mezo_ckpt.trajectory.header.Header`.
        offered: the loaded base (its folder, repo and commit are checked too).
        folder: the base's folder when ``offered`` is not given.
        allow_mismatch: report differences in the result instead of raising (the
            caller must say so loudly and record it).

    Raises:
        BaseMismatchError: listing every property that differs.
    """
    want: BaseIdentity = header.base
    folder = offered.folder if offered is not None and folder is None else folder
    # A parameter-efficient run trains adapter tensors the plain base does not have: the
    # base is checked whole, the adapter afterwards (mezo_ckpt.models.adapters.prepare).
    trainable = () if getattr(header, "peft", None) is not None else header.trainable
    diffs, checked = compare_identity(want, model, trainable, folder, values)
    if offered is not None and offered.kind == "hub" and want.kind == "hub":
        checked.append("repo and commit")
        if offered.repo_id != want.repo_id:
            diffs.append(f"repo: trajectory has {want.repo_id}, offered {offered.repo_id}")
        if want.revision and offered.revision != want.revision:
            diffs.append(f"commit: trajectory has {want.revision}, offered {offered.revision}")
    if diffs and not allow_mismatch:
        raise BaseMismatchError(
            "the offered base model is not the one this trajectory was "
            "trained from; refusing to replay",
            diffs,
        )
    return BaseCheck(checked, diffs)


def hash_folder_files(folder: Path) -> dict[str, str]:
    """sha256 of the weight and config files a header records for a base folder."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(HASHED_SUFFIXES):
            out[p.name] = file_sha256(p)
    return out


# ----------------------------------------------------------------------------- loading

#: The two kinds of language model a run trains: a decoder that continues the prompt, or
#: an encoder that fills a mask slot in it (RoBERTa, BERT: MeZO's medium models).
CAUSAL, MASKED = "causal", "masked"


def lm_kind(config: Any) -> str:
    """``"masked"`` for a masked LM's config (its ``architectures`` name a
    ``...ForMaskedLM`` class, or its model type has only a masked-LM head in transformers),
    else ``"causal"``. ``config``: a ``config.json`` mapping or a transformers config."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    archs = get("architectures") or []
    if not isinstance(archs, list):
        archs = []
    names = [a for a in archs if isinstance(a, str)]
    if any(a.endswith("ForMaskedLM") for a in names):
        return MASKED
    if names:
        return CAUSAL
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = get("model_type")
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return MASKED
    return CAUSAL


def is_masked_lm(model: Any) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) is a masked LM."""
    inner = model.get_base_model() if hasattr(model, "peft_config") else model
    return type(inner).__name__.endswith("ForMaskedLM")


def auto_model_class(kind: str):
    """The transformers Auto class that builds a model of this kind."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if kind == MASKED else AutoModelForCausalLM


def load_folder(folder: str | Path, dtype: torch.dtype | str, device: str = "cpu", **kw: Any):
    """Load a causal or masked LM folder (safetensors only, never pickles) in eval mode,
    frozen; the kind is read from its config (:func:`lm_kind`).

    Raises:
        ModelLoadError: anything that keeps the folder from loading as the model its
            config describes: a missing or invalid config, truncated or foreign weight
            files, shapes that disagree with the config, tensors missing from the files
            (transformers would initialise them randomly).
    """
    folder = Path(folder)
    cfg = folder / CONFIG_FILE
    try:
        obj = json.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{folder} has no config.json: not a Hugging Face model folder"
        ) from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{cfg} is not readable JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{cfg} holds {type(obj).__name__}, not a JSON object")
    placed = kw.get("device_map") is not None
    kind = lm_kind(obj)
    try:
        model, info = auto_model_class(kind).from_pretrained(
            str(folder),
            dtype=parse_dtype(dtype),
            use_safetensors=True,
            low_cpu_mem_usage=True,
            output_loading_info=True,
            **{k: v for k, v in kw.items() if v is not None},
        )
    except Exception as e:  # transformers and safetensors raise many types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"could not load a {kind} LM from {folder}: {first[:400]} ({type(e).__name__})"
        ) from e
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing from the weight files: {_short(sorted(info['missing_keys']))}")
    if info.get("mismatched_keys"):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info["mismatched_keys"])
        problems.append(f"shapes differ from the config: {_short(names)}")
    if info.get("error_msgs"):
        problems.append("; ".join(map(str, info["error_msgs"]))[:400])
    if problems:
        raise ModelLoadError(
            f"{folder} does not hold the model its config.json describes ("
            + "; ".join(problems)
            + "): transformers would initialise those tensors randomly"
        )
    if not placed:  # with a device map, accelerate placed every layer already
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def is_embedded_spec(spec: str | None) -> bool:
    return spec is None or spec == EMBEDDED_PREFIX or spec.startswith(EMBEDDED_PREFIX + ":")


@dataclass
class BaseLocation:
    """Where a base is, before any weight is read."""

    kind: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    embedded: dict | None = None


def locate_base(
    spec: str | None,
    *,
    revision: str | None = None,
    progress: bool = True,
    hub_only: bool = False,
) -> BaseLocation:
    """The folder of a base (embedded default, local folder, or Hub repo downloaded at a
    commit), with its provenance; no weight is loaded.

    Args:
        hub_only: ``spec`` came from a trajectory, not from the user: it is a Hub repo id,
            never looked up as a local path (a folder named like a repo in the current
            directory must not stand in for it).

    Raises:
        ModelLoadError / EmbeddedModelMissing: nothing usable at ``spec``.
    """
    if is_embedded_spec(spec):
        from mezo_ckpt.models import embedded

        folder = embedded.default_model_dir(progress=progress)
        return BaseLocation("embedded", folder, embedded=embedded.embedded_identity())
    assert spec is not None
    path = Path(os.path.expanduser(spec))
    if path.exists() and not hub_only:
        if not path.is_dir():
            raise ModelLoadError(f"{spec} is a file; pass the model folder (with config.json)")
        return BaseLocation("local", path, files=hash_folder_files(path))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip(os.sep).replace("/", "", 1):
        raise ModelLoadError(f"no model folder at {spec}")
    from mezo_ckpt.models.remote import download_base

    folder, commit = download_base(spec, revision=revision)
    return BaseLocation(
        "hub", folder, repo_id=spec, revision=commit, files=hash_folder_files(folder)
    )


def load_base(
    spec: str | None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    revision: str | None = None,
    progress: bool = True,
    hub_only: bool = False,
    **placement: Any,
) -> LoadedBase:
    """Load a base model from a local folder, a Hub repo id, or the embedded default.

    Args:
        spec: None / "embedded" for the packaged SmolLM2-135M-Instruct, an existing folder,
            or a Hub repo id ("user/name").
        dtype: parameter dtype to train or replay in ("auto": the checkpoint's).
        device: torch device.
        revision: Hub branch, tag or commit (resolved to a commit sha and recorded).
        placement: ``device_map``, ``max_memory``, ``offload_folder`` for accelerate.

    Raises:
        ModelLoadError: nothing loadable at ``spec``.
        EmbeddedModelMissing: the embedded default's package is not installed.
    """
    where = locate_base(spec, revision=revision, progress=progress, hub_only=hub_only)
    model = load_folder(where.folder, parse_dtype(dtype), device, **placement)
    return LoadedBase(
        model,
        where.kind,
        folder=where.folder,
        repo_id=where.repo_id,
        revision=where.revision,
        files=where.files,
        embedded=where.embedded,
    )
