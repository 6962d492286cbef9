"""Writing replayed weights where people load them, and reading them back verified.

* :func:`export_hf`: a folder ``AutoModelForCausalLM.from_pretrained`` loads (weights,
  config, tokenizer, and ``mezo_ckpt_provenance.json``: which trajectory and step, what
  was verified, and the sha256 of every file written, so a later reader can tell whether
  anything changed since).
* :func:`export_safetensors`: one file under the model's state-dict names (tied weights
  under each of their names), so ``model.load_state_dict(load_file(path))`` works.
* :func:`export_delta` / :func:`apply_delta`: tuned minus base for the trained tensors,
  an *exact* patch: ``apply_delta`` rebuilds the replayed weights bit for bit.

Every writer stages its output next to the destination and renames it into place.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.core.hashing import canonical_parameters, file_sha256, tensors_sha256
from mezo_ckpt.errors import OutputError, VerificationError
from mezo_ckpt.trajectory import Trajectory
from mezo_ckpt.util.fsutil import os_errors, staged_file, staged_folder

#: Written next to exported weights: which trajectory and step they come from.
PROVENANCE_FILE = "mezo_ckpt_provenance.json"
#: safetensors metadata key holding the provenance JSON.
META_KEY = "mezo_ckpt"
#: Suffixes of the extra tensors that make a delta exact (see :func:`export_delta`).
FIX_INDEX, FIX_VALUE = "::fix_index", "::fix_value"
DELTA_RULE = (
    "tuned = (base.float() + delta).to(base.dtype), then tuned.view(-1)[fix_index] = "
    "fix_value for the tensors that have them; `mezo-ckpt apply-delta` does it"
)
TOKENIZER_PREFIXES = (
    "tokenizer",
    "special_tokens",
    "vocab",
    "merges",
    "added_tokens",
    "chat_template",
)


def provenance(traj: Trajectory, step: int, trajectory_sha256: str | None, **extra: Any) -> dict:
    """Small JSON describing where exported weights came from."""
    b = traj.header.base
    out = {
        "tool": "mezo-ckpt",
        "trajectory_sha256": trajectory_sha256,
        "step": step,
        "num_steps": traj.num_steps,
        "base": {
            "kind": b.kind,
            "repo_id": b.repo_id,
            "revision": b.revision,
            "architecture": b.architecture,
            "dtype": b.dtype,
            "trainable_sha256": b.trainable_sha256,
            "tensors_sha256": b.tensors_sha256,
        },
    }
    expected = traj.checkpoints.get(step)
    if expected is not None:
        out["trainable_sha256"] = expected
    out.update(extra)
    return out


def _copy_tokenizer(src: Path | None, dst: Path) -> None:
    if src is None:
        return
    import shutil

    from mezo_ckpt.core.hashing import TOKENIZER_DIRS

    for p in Path(src).iterdir():
        if p.is_file() and p.name.startswith(TOKENIZER_PREFIXES):
            shutil.copy2(p, dst / p.name)
        elif p.is_dir() and p.name in TOKENIZER_DIRS:
            shutil.copytree(p, dst / p.name, dirs_exist_ok=True)


def export_hf(
    model: torch.nn.Module,
    out: str | os.PathLike,
    *,
    tokenizer_from: Path | None,
    meta: dict,
    replace: bool = False,
) -> Path:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` loads (atomic rename).

    ``meta`` lands in ``mezo_ckpt_provenance.json`` together with the sha256 of every
    file written (``files``).
    """
    from transformers.utils import logging as hf_logging

    out = Path(out)
    with staged_folder(out, replace=replace) as tmp:
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            with safetensors_errors(out):
                model.save_pretrained(tmp, safe_serialization=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        _copy_tokenizer(tokenizer_from, tmp)
        doc = {**meta, "files": recorded_files(tmp)}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return out


@contextlib.contextmanager
def safetensors_errors(out: Path) -> Iterator[None]:
    """safetensors' own write errors (a full disk inside its Rust writer) as the typed
    OutputError the rest of the writers raise."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        text = str(e)
        why = "the disk is full" if "No space left" in text or "os error 28" in text else text
        raise OutputError(f"cannot write {out}: {why}") from None


def recorded_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative names), for the provenance."""
    return {
        str(p.relative_to(folder)): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != PROVENANCE_FILE
    }


def adapter_base_name(header, folder: Path | None) -> tuple[str | None, str | None]:
    """(base_model_name_or_path, revision) for an exported adapter: the Hub repo and
    commit of a Hub base, else the local base folder (so loading it works here)."""
    b = header.base
    if b.kind == "hub" and b.repo_id:
        return b.repo_id, b.revision
    return (str(Path(folder).resolve()) if folder is not None else None), None


def export_adapter_folder(
    model: torch.nn.Module,
    out: str | os.PathLike,
    *,
    header,
    folder: Path | None,
    meta: dict,
    replace: bool = False,
    base_name: str | None = None,
) -> Path:
    """Write the PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)
    that ``PeftModel.from_pretrained(base, out)`` and ``AutoPeftModelForCausalLM`` load,
    with the base's tokenizer and the provenance."""
    from mezo_ckpt.models.adapters import export_adapter

    out = Path(out)
    name, revision = adapter_base_name(header, folder)
    with staged_folder(out, replace=replace) as tmp:
        export_adapter(model, tmp, base_name or name, revision)
        _copy_tokenizer(folder, tmp)
        doc = {**meta, "files": recorded_files(tmp)}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return out


def read_provenance(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def check_exported(folder: Path) -> list[str]:
    """Files of an exported folder that are missing or changed since export (empty: none)."""
    doc = read_provenance(folder)
    if doc is None or not isinstance(doc.get("files"), dict) or not doc["files"]:
        return [PROVENANCE_FILE]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {
        PROVENANCE_FILE
    }
    bad = sorted(f"{n} (not recorded)" for n in present - set(doc["files"]))
    for name, sha in sorted(doc["files"].items()):
        p = folder / name
        if not (isinstance(name, str) and ".." not in name.split("/") and p.is_file()):
            bad.append(str(name))
        elif file_sha256(p) != sha:
            bad.append(name)
    return bad


def state_dict_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every state-dict entry under its own name (tied tensors once per name, cloned)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict().items():
        t = t.detach().contiguous().cpu()
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        out[name] = t.clone() if key in seen else t
        seen.setdefault(key, name)
    return out


def export_safetensors(tensors: Mapping[str, torch.Tensor], out: str | os.PathLike, meta: dict):
    """Write tensors to one safetensors file, atomically (provenance in its metadata)."""
    from safetensors.torch import save_file

    out = Path(out)
    with staged_file(out) as tmp, safetensors_errors(out):
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp),
            metadata={"format": "pt", META_KEY: json.dumps(meta, sort_keys=True)},
        )
    return out


def delta_tensors(
    base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], names: list[str]
) -> tuple[dict[str, torch.Tensor], int]:
    """An exact patch from ``base`` to ``tuned``: (tensors, number of fixed elements).

    ``delta = fp32(tuned - base)``; where ``(base.float() + delta).to(dtype)`` would not
    give ``tuned`` bit for bit (a large relative change, a sign flip next to zero), the
    element's index and exact value are stored too (``<name>::fix_index`` and
    ``<name>::fix_value``).
    """
    out: dict[str, torch.Tensor] = {}
    fixes = 0
    for n in names:
        b, t = base[n].detach(), tuned[n].detach()
        d = t.float() - b.float()
        back = (b.float() + d).to(t.dtype)
        ints = torch.int32 if t.element_size() == 4 else torch.int16
        wrong = (back.view(ints) != t.view(ints)).reshape(-1)
        if t.dtype == torch.float32:
            wrong &= ~(torch.isnan(back) & torch.isnan(t)).reshape(-1)
        out[n] = d
        idx = wrong.nonzero().flatten()
        if idx.numel():
            out[n + FIX_INDEX] = idx.to(torch.int64)
            out[n + FIX_VALUE] = t.reshape(-1)[idx].clone()
            fixes += int(idx.numel())
    return out, fixes


def apply_delta(
    model: torch.nn.Module, delta: Mapping[str, torch.Tensor], *, expected: str | None = None
) -> list[str]:
    """Apply an exact delta (canonical names) to ``model`` in place; returns the names.

    Raises:
        OutputError: the delta names a tensor the model lacks or has another shape.
        VerificationError: ``expected`` (a trainable fingerprint) does not match after.
    """
    params = canonical_parameters(model)
    names = sorted(k for k in delta if not k.endswith((FIX_INDEX, FIX_VALUE)))
    for n in names:
        if n not in params or tuple(params[n].shape) != tuple(delta[n].shape):
            raise OutputError(f"the delta's tensor {n} does not fit this model")
    with torch.no_grad():
        for n in names:
            p = params[n]
            new = (p.detach().float() + delta[n].to(p.device)).to(p.dtype)
            if n + FIX_INDEX in delta:
                new.view(-1)[delta[n + FIX_INDEX].to(p.device)] = delta[n + FIX_VALUE].to(
                    p.device, p.dtype
                )
            p.copy_(new)
    if expected is not None and tensors_sha256(params, names) != expected:
        raise VerificationError(
            "the patched weights do not match the fingerprint the delta records: the base is "
            "not the one the delta was made from"
        )
    return names


def load_delta(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, provenance) of a delta file written by ``replay --format delta``."""
    from safetensors import safe_open

    p = Path(path)
    with os_errors(p, "read"):
        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as e:  # noqa: BLE001 - OSError, ValueError, SafetensorError
            if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno:
                raise  # a system error: os_errors says what it means
            raise OutputError(f"{p} is not a readable safetensors delta: {e}") from None
    try:
        prov = json.loads(meta.get(META_KEY, "{}"))
    except ValueError:
        prov = {}
    if not isinstance(prov, dict) or prov.get("kind") != "delta":
        raise OutputError(f"{p} is not a delta written by `mezo-ckpt replay --format delta`")
    return tensors, prov
