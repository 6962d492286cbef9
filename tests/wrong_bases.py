"""A corpus of wrong base folders: copies of a good tiny base, each with one thing changed.

Every entry of :data:`CASES` names a mutation and the typed errors a consumer (replay,
pull, load, resume) may refuse it with. A mutation either changes what the model *is*
(a frozen tensor one ulp off, another epsilon, another tokenizer: the identity check must
say ``BaseMismatchError``) or makes the folder unloadable as the model its config
describes (``ModelLoadError``: transformers would otherwise initialise tensors randomly
or unpickle a foreign file).

Nothing here imports mezo_ckpt: the corpus is built with safetensors, torch and json
only, so a bug in the package cannot hide a bad case.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
MISMATCH = ("BaseMismatchError",)
UNLOADABLE = ("ModelLoadError",)
EITHER = MISMATCH + UNLOADABLE
#: Name of the file the pickle payload creates when (wrongly) unpickled.
PICKLE_MARKER = "UNPICKLED"

#: Config keys per architecture: (epsilon, activation, positions, activation value).
ARCH_KEYS = {
    "gpt2": ("layer_norm_epsilon", "activation_function", "n_positions", "relu"),
    "llama": ("rms_norm_eps", "hidden_act", "max_position_embeddings", "gelu"),
}


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Callable[[Path, str, str], None]  # (folder, arch, a frozen tensor's name)
    errors: tuple[str, ...]  # typed errors that count as a refusal


def _edit_config(folder: Path, **changes: object) -> None:
    p = folder / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg, indent=2))


def _edit_tensors(folder: Path, fn: Callable[[dict[str, torch.Tensor]], None]) -> None:
    p = folder / WEIGHTS
    tensors = load_file(str(p))
    fn(tensors)
    save_file(tensors, str(p), metadata={"format": "pt"})


def frozen_ulp(folder: Path, arch: str, frozen: str) -> None:
    def bump(t: dict[str, torch.Tensor]) -> None:
        x = t[frozen].reshape(-1)
        x[0] = torch.nextafter(x[0], torch.tensor(float("inf"), dtype=x.dtype))

    _edit_tensors(folder, bump)


def frozen_missing(folder: Path, arch: str, frozen: str) -> None:
    _edit_tensors(folder, lambda t: t.pop(frozen))


def config_epsilon(folder: Path, arch: str, frozen: str) -> None:
    key = ARCH_KEYS[arch][0]
    cfg = json.loads((folder / "config.json").read_text())
    _edit_config(folder, **{key: cfg[key] * 10})


def config_activation(folder: Path, arch: str, frozen: str) -> None:
    _edit_config(folder, **{ARCH_KEYS[arch][1]: ARCH_KEYS[arch][3]})


def config_positions(folder: Path, arch: str, frozen: str) -> None:
    key = ARCH_KEYS[arch][2]
    cfg = json.loads((folder / "config.json").read_text())
    _edit_config(folder, **{key: cfg[key] * 2})


def config_null(folder: Path, arch: str, frozen: str) -> None:
    (folder / "config.json").write_text("null\n")


def generation_config_changed(folder: Path, arch: str, frozen: str) -> None:
    p = folder / "generation_config.json"
    cfg = json.loads(p.read_text()) if p.exists() else {}
    cfg["temperature"] = 0.123
    cfg["do_sample"] = True
    p.write_text(json.dumps(cfg, indent=2))


def tokenizer_swapped(folder: Path, arch: str, frozen: str) -> None:
    """Two ids of the vocabulary exchanged: same files, another tokenizer."""
    p = folder / "tokenizer.json"
    tok = json.loads(p.read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    p.write_text(json.dumps(tok, indent=2, ensure_ascii=False))


def tokenizer_extra_file(folder: Path, arch: str, frozen: str) -> None:
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }} EVIL\n")


def tokenizer_template_subfolder(folder: Path, arch: str, frozen: str) -> None:
    """A named chat template in additional_chat_templates/ (transformers loads it)."""
    d = folder / "additional_chat_templates"
    d.mkdir()
    (d / "evil.jinja").write_text("{{ messages[0]['content'] }} EVIL\n")


def weights_truncated(folder: Path, arch: str, frozen: str) -> None:
    p = folder / WEIGHTS
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


class _Payload:
    """Unpickling this creates a marker file (proof that the pickle was executed)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def weights_pickle(folder: Path, arch: str, frozen: str) -> None:
    p = folder / WEIGHTS
    state = load_file(str(p))
    state["payload"] = _Payload(str(folder.parent / PICKLE_MARKER))  # type: ignore[assignment]
    p.unlink()
    torch.save(state, str(p))


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("frozen_ulp", frozen_ulp, MISMATCH),
        Case("frozen_missing", frozen_missing, UNLOADABLE),
        Case("config_epsilon", config_epsilon, MISMATCH),
        Case("config_activation", config_activation, MISMATCH),
        Case("config_positions", config_positions, EITHER),
        Case("config_null", config_null, UNLOADABLE),
        Case("generation_config_changed", generation_config_changed, MISMATCH),
        Case("tokenizer_swapped", tokenizer_swapped, MISMATCH),
        Case("tokenizer_extra_file", tokenizer_extra_file, MISMATCH),
        Case("tokenizer_template_subfolder", tokenizer_template_subfolder, MISMATCH),
        Case("weights_truncated", weights_truncated, UNLOADABLE),
        Case("weights_pickle", weights_pickle, UNLOADABLE),
    )
}


def make_wrong_base(good: Path, dest: Path, case: str, arch: str, frozen: str) -> Path:
    """Copy the good base folder to ``dest`` and apply one mutation of :data:`CASES`."""
    shutil.copytree(good, dest)
    CASES[case].mutate(dest, arch, frozen)
    return dest


def reserialised_config(good: Path, dest: Path) -> Path:
    """The same base with config.json rewritten: other key order and indentation, the
    volatile ``transformers_version`` changed: semantically identical."""
    shutil.copytree(good, dest)
    p = dest / "config.json"
    cfg = json.loads(p.read_text())
    cfg["transformers_version"] = "0.0.1"
    reordered = dict(reversed(list(cfg.items())))
    p.write_text(json.dumps(reordered, indent=7, separators=(" ,", " :  ")) + "\n\n")
    return dest
