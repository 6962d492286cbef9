"""Replay that streams: a base larger than memory, one safetensors shard at a time.

``replay_folder`` never holds the whole model: it reads one shard of the base, checks
and replays its tensors one at a time, each written into the output shard as soon as it
is replayed (:class:`~mezo_ckpt.stfile.ShardWriter`), so the peak is about one tensor
plus the input shard's memory-mapped pages. The checks are those of a replay
from a loaded model (docs/FORMAT.md §14), computed on the way: every tensor's digest
(from the shards as read), the manifest (from the model class, built on the meta device
without memory), the config and tokenizer files. The output is staged and renamed into
place only after everything matched, including the trainer's fingerprint at that step
(read back from the written shards in name order, one tensor at a time).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.errors import BaseMismatchError, ModelLoadError, VerificationError
from mezo_ckpt.export import PROVENANCE_FILE
from mezo_ckpt.format import Trajectory
from mezo_ckpt.fsutil import staged_folder
from mezo_ckpt.hashing import (
    _alias_groups,
    dtype_name,
    json_sha256,
    manifest_sha256,
    parameter_manifest,
    tensor_digest,
    tensors_root,
    tokenizer_digests,
)
from mezo_ckpt.header import TENSOR_DIGEST_HEX, BaseIdentity, TensorEntry
from mezo_ckpt.stfile import ShardWriter
from mezo_ckpt.stream import param_key
from mezo_ckpt.update import UpdateSpec, apply_updates

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_files(folder: Path) -> dict[str, list[str]]:
    """shard file -> stored tensor names, in the folder's own order."""
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        out: dict[str, list[str]] = {}
        for name, file in index.get("weight_map", {}).items():
            out.setdefault(file, []).append(name)
        return out
    if (folder / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / SINGLE), "pt") as f:
            return {SINGLE: list(f.keys())}  # noqa: SIM118
    raise ModelLoadError(f"{folder} holds no safetensors weights ({SINGLE} or {INDEX})")


def meta_model(folder: Path):
    """The model class from config.json on the meta device (no memory, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - transformers raises many types
        raise ModelLoadError(f"cannot build the model of {folder}: {e}") from e


def _canonical_of(model) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(any parameter name -> canonical name, canonical -> aliases)."""
    of: dict[str, str] = {}
    aliases: dict[str, tuple[str, ...]] = {}
    for names, _ in _alias_groups(model):
        for n in names:
            of[n] = names[0]
        aliases[names[0]] = tuple(names[1:])
    return of, aliases


def replay_folder(
    traj: Trajectory,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    step: int,
    meta: dict[str, Any],
    replace: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay ``traj`` to ``step`` from the base ``folder`` into the HF folder ``out``,
    shard by shard.

    Raises:
        BaseMismatchError: the folder is not the trajectory's base (nothing is written).
        VerificationError: the replayed tensors miss the trainer's fingerprint.
    """
    from safetensors import safe_open

    from mezo_ckpt.base import GENERATION_CONFIG_FILE, parse_dtype

    folder = Path(folder)
    h = traj.header
    if h.peft is not None:
        raise ModelLoadError(
            "a LoRA/prefix run replays its adapter, not the base: use --format peft"
        )
    dtype = parse_dtype(h.base.dtype)
    model = meta_model(folder)
    of, aliases = _canonical_of(model)
    spec = UpdateSpec.from_header(h)
    batch = traj.update_batch(step)
    nodecay = batch.without_decay()
    trainable = set(h.trainable)
    digests: dict[str, bytes] = {}
    entries: dict[str, TensorEntry] = {}
    files = weight_files(folder)
    element_steps = 0
    base_trainable = None
    if h.base.tensors_sha256 is None:  # a 1.0 file pins the base by its trainable tensors
        base_trainable = _trainable_fingerprint(folder, files, of, sorted(trainable), dtype)
    _precheck(h.base, model, folder, files, of, trainable, base_trainable)
    with staged_folder(out, replace=replace) as tmp:
        seen: set[str] = set()
        for file, names in files.items():
            with safe_open(str(folder / file), "pt") as f:
                keep = []  # a tied tensor stored twice: keep the first
                for stored in names:
                    if of.get(stored, stored) not in seen:
                        seen.add(of.get(stored, stored))
                        keep.append((stored, dtype, f.get_slice(stored).get_shape()))
                # each tensor is written as soon as it is replayed: the peak is one tensor
                # (plus the input's mapped pages), not a shard and its serialised copy
                with ShardWriter(tmp / file, keep, metadata={"format": "pt"}) as writer:
                    for stored, _, _ in keep:
                        t = f.get_tensor(stored).to(dtype).contiguous()
                        canon = of.get(stored, stored)
                        d = tensor_digest(canon, t)
                        digests[canon] = d
                        entries[canon] = TensorEntry(
                            canon,
                            aliases.get(canon, ()),
                            tuple(t.shape),
                            dtype_name(t.dtype),
                            d.hex()[:TENSOR_DIGEST_HEX],
                        )
                        if canon in trainable:
                            b = batch if canon in spec.decay_params else nodecay
                            apply_updates(
                                t,
                                param_key(spec.seed, canon),
                                b,
                                kind=spec.kind,
                                rounding=spec.rounding,
                            )
                            element_steps += t.numel() * len(batch)
                            if progress is not None:
                                progress(t.numel() * len(batch))
                        writer.write(stored, t)
                        del t
        # the checks, computed on the way: refuse before anything is renamed into place
        got = _identity(h.base, model, digests, entries, folder, base_trainable)
        from mezo_ckpt.base import diff_identities

        missing = sorted(trainable - set(digests))
        diffs, checked = diff_identities(h.base, got, missing=missing, folder=folder)
        if diffs:
            raise BaseMismatchError(
                "the offered base model is not the one this trajectory was trained from; "
                "refusing to replay",
                diffs,
            )
        fingerprint = _trainable_fingerprint(tmp, files, of, sorted(trainable), dtype)
        expected = traj.checkpoints.get(step)
        verified = None
        if expected is not None:
            if fingerprint != expected:
                raise VerificationError(
                    f"replayed weights at step {step} have fingerprint {fingerprint[:16]}..., "
                    f"the trajectory recorded {expected[:16]}..."
                )
            verified = "fingerprint"
        elif traj.bound and traj.covered_by(step) is not None:
            verified = "records"
        for p in folder.iterdir():
            if p.is_file() and p.name in ("config.json", GENERATION_CONFIG_FILE, INDEX):
                shutil.copy2(p, tmp / p.name)
        from mezo_ckpt.export import _copy_tokenizer, recorded_files

        _copy_tokenizer(folder, tmp)
        file_hashes = recorded_files(tmp)
        doc = {
            **meta,
            "verified": verified,
            "checked": checked,
            "streamed": True,
            "files": file_hashes,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return {
        "verified": verified,
        "checked": checked,
        "fingerprint": fingerprint,
        "element_steps": element_steps,
        "shards": len(files),
    }


def _precheck(
    want: BaseIdentity,
    model,
    folder: Path,
    files: dict[str, list[str]],
    of: dict[str, str],
    trainable: set[str],
    base_trainable: str | None,
) -> None:
    """Refuse a wrong base before any replay work: everything but the tensors' contents
    (architecture, manifest, names present, config, generation config, tokenizer) is
    known without reading a weight. The contents are checked on the way."""
    import dataclasses

    from mezo_ckpt.base import diff_identities

    got = dataclasses.replace(
        _identity(want, model, {}, {}, folder, base_trainable),
        tensors=want.tensors,
        tensors_sha256=want.tensors_sha256,
    )
    present = {of.get(n, n) for names in files.values() for n in names}
    diffs, _ = diff_identities(want, got, missing=sorted(trainable - present), folder=folder)
    if diffs:
        raise BaseMismatchError(
            "the offered base model is not the one this trajectory was trained from; "
            "refusing to replay",
            diffs,
        )


def _identity(
    want: BaseIdentity,
    model,
    digests: dict[str, bytes],
    entries: dict[str, TensorEntry],
    folder: Path,
    base_trainable: str | None,
) -> BaseIdentity:
    """The offered base's identity from streamed digests (what describe_base gives)."""
    from mezo_ckpt.base import CONFIG_FILE, GENERATION_CONFIG_FILE, _config_of

    cfg = _config_of(model, folder, CONFIG_FILE)
    gen = _config_of(model, folder, GENERATION_CONFIG_FILE)
    config = getattr(model, "config", None)
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    tie = bool(getattr(config, "tie_word_embeddings", False))
    if config is not None and hasattr(config, "get_text_config"):
        tie = bool(getattr(config.get_text_config(), "tie_word_embeddings", tie))
    manifest = [type(i)(i.name, i.aliases, i.shape, want.dtype) for i in parameter_manifest(model)]
    return BaseIdentity(
        kind=want.kind,
        architecture=arch,
        model_type=str(getattr(config, "model_type", "custom")),
        dtype=want.dtype,
        tie_word_embeddings=tie,
        num_parameters=sum(int(torch.Size(i.shape).numel()) for i in manifest),
        manifest_sha256=manifest_sha256(manifest),
        trainable_sha256=base_trainable or want.trainable_sha256,
        tensors=tuple(entries[k] for k in sorted(entries)),
        tensors_sha256=tensors_root(digests),
        config=cfg or {},
        config_sha256=json_sha256(cfg or {}),
        generation_config_sha256=None if gen is None else json_sha256(gen),
        tokenizer=tokenizer_digests(folder),
    )


def _trainable_fingerprint(
    folder: Path,
    files: dict[str, list[str]],
    of: dict[str, str],
    trainable: list[str],
    dtype: torch.dtype,
) -> str:
    """tensors_sha256 of the trainable tensors of a folder's shards, read one tensor at a
    time in canonical-name order (converted to ``dtype``)."""
    import hashlib

    from safetensors import safe_open

    where: dict[str, tuple[str, str]] = {}
    for file, names in files.items():
        for stored in names:
            where.setdefault(of.get(stored, stored), (file, stored))
    h = hashlib.sha256()
    for name in trainable:
        if name not in where:  # missing from the shards: reported by the identity check
            return "0" * 64
        file, stored = where[name]
        with safe_open(str(folder / file), "pt") as f:
            t = f.get_tensor(stored).to(dtype)
        h.update(name.encode("utf-8") + b"\x00")
        h.update(dtype_name(t.dtype).encode() + b"\x00")
        h.update(json.dumps(list(t.shape)).encode() + b"\x00")
        h.update(t.contiguous().view(torch.uint8).numpy())
    return h.hexdigest()
