"""Parameter-efficient MeZO: LoRA and prefix tuning on the ``peft`` library, reproducibly.

Only the adapter's weights are perturbed and updated; the base stays bit-identical. The
adapter's initial values must be the same on every machine, so peft's random init
(torch's RNG) is replaced by the portable stream (docs/FORMAT.md §5.7):

* LoRA ``lora_A`` (``[r, fan_in]``): ``A = RNE(fl32(z * s))`` with z the normal16 stream
  keyed by ``(run seed, "peft-init/" + canonical name)`` at step 0, lane 0, and
  ``s = fp32(1 / sqrt(3 * fan_in))`` (the variance of peft's default kaiming-uniform);
  ``lora_B`` is zero, as in peft, so the adapter starts as the identity.
* prefix tuning: the prefix embedding ``= RNE(z)`` (standard normal, like
  ``nn.Embedding``'s default).

The header records the peft config, the init rule and the fingerprint of the initial
adapter, and lists ``peft-v1`` in ``requires`` so that older readers refuse the file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.core.stream import param_key, z_reference
from mezo_ckpt.core.update import to_fp32
from mezo_ckpt.errors import BaseMismatchError, ConfigError
from mezo_ckpt.models.base import is_masked_lm
from mezo_ckpt.trajectory.header import ADAPTER_INIT_RULE, AdapterInfo, Header

INIT_PREFIX = "peft-init/"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError(
            "parameter-efficient MeZO needs the peft library: pip install 'mezo-ckpt[peft]'"
        ) from None
    return peft


def adapter_config(kind: str, **kw: Any) -> dict[str, Any]:
    """The JSON config recorded in the header for a LoRA or prefix adapter."""
    if kind == "lora":
        return {
            "r": int(kw["r"]),
            "lora_alpha": float(kw["lora_alpha"]),
            "target_modules": sorted(kw["target_modules"]),
            "lora_dropout": 0.0,
            "bias": "none",
        }
    if kind == "prefix":
        return {"num_virtual_tokens": int(kw["num_virtual_tokens"])}
    raise ConfigError(f"unknown adapter type {kind!r}; use lora or prefix")


def peft_config(kind: str, config: Mapping[str, Any], *, masked: bool = False):
    """The peft config object for a recorded adapter config. ``masked``: the base is a
    masked LM, which peft wraps as a feature extractor (its causal-LM wrapper asks for
    generation methods an encoder lacks); the adapter's tensors are named alike."""
    peft = _peft()
    task = "FEATURE_EXTRACTION" if masked else "CAUSAL_LM"
    if kind == "lora":
        return peft.LoraConfig(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            target_modules=list(config["target_modules"]),
            lora_dropout=0.0,
            bias="none",
            task_type=task,
        )
    return peft.PrefixTuningConfig(num_virtual_tokens=config["num_virtual_tokens"], task_type=task)


def adapter_names(model: torch.nn.Module) -> list[str]:
    """Canonical names of a peft model's adapter parameters."""
    peft = _peft()
    if not isinstance(model, peft.PeftModel):
        return []
    own = set()
    for name, _ in model.named_parameters():
        if "lora_" in name or "prompt_encoder" in name:
            own.add(name)
    names = canonical_parameters(model)
    return sorted(n for n in names if n in own)


def _init_scale(fan_in: int) -> float:
    return to_fp32(1.0 / math.sqrt(3.0 * fan_in))


def initial_values(name: str, p: torch.Tensor, seed: int) -> torch.Tensor:
    """The portable initial value of one adapter parameter (see the module docstring)."""
    if ".lora_B." in name:
        return torch.zeros_like(p)
    z = z_reference(param_key(seed, INIT_PREFIX + name), 0, 0, 0, p.numel(), "normal16")
    if ".lora_A." in name:
        z = z * torch.tensor(_init_scale(p.shape[-1]), dtype=torch.float32)
    return z.view(p.shape).to(p.dtype).to(p.device)


def attach(model: torch.nn.Module, kind: str, config: Mapping[str, Any], seed: int):
    """Wrap ``model`` with the adapter and give it its portable initial values.

    Returns:
        the peft model (eval mode, no gradients); the base weights are untouched.
    """
    peft = _peft()
    with warnings.catch_warnings():
        # peft asks transformers a deprecated question while wrapping (not ours to fix)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself, and says so each time
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set to False.*")
        try:
            conf = peft_config(kind, config, masked=is_masked_lm(model))
            wrapped = peft.get_peft_model(model, conf)
        except ValueError as e:  # e.g. target modules that name no module of this model
            raise ConfigError(f"peft cannot attach this {kind} adapter to the model: {e}") from None
    wrapped.eval()
    params = canonical_parameters(wrapped)
    with torch.no_grad():
        for name in adapter_names(wrapped):
            params[name].copy_(initial_values(name, params[name], seed))
    wrapped.requires_grad_(False)
    return wrapped


def info_for(model: torch.nn.Module, kind: str, config: Mapping[str, Any]) -> AdapterInfo:
    """The header's ``peft`` entry for a freshly attached adapter."""
    names = adapter_names(model)
    return AdapterInfo(
        kind, dict(config), ADAPTER_INIT_RULE, tensors_sha256(canonical_parameters(model), names)
    )


def prepare(header: Header, model: torch.nn.Module) -> torch.nn.Module:
    """The model a trajectory's steps apply to: the base itself, or the base wrapped with
    the header's adapter at its recorded initial values (checked).

    Raises:
        BaseMismatchError: the attached adapter does not match the recorded one (another
            peft version naming or shaping the adapter differently).
    """
    if header.peft is None:
        return model
    info = header.peft
    wrapped = attach(model, info.type, info.config, header.seed)
    names = adapter_names(wrapped)
    if names != list(header.trainable):
        raise BaseMismatchError(
            "the adapter built here does not have the trajectory's parameters (another peft "
            "version?)",
            [f"expected {len(header.trainable)} adapter tensors, built {len(names)}"],
        )
    got = tensors_sha256(canonical_parameters(wrapped), names)
    if got != info.init_sha256:
        raise BaseMismatchError(
            "the adapter's initial weights differ from the trajectory's",
            [f"init fingerprint {got[:12]} != {info.init_sha256[:12]}"],
        )
    return wrapped


def export_adapter(model: torch.nn.Module, folder, base_name: str | None, revision: str | None):
    """Write the adapter folder peft loads (``adapter_config.json`` + weights) into ``folder``."""
    cfg = model.peft_config["default"]
    cfg.base_model_name_or_path = base_name
    cfg.revision = revision
    cfg.inference_mode = True
    model.save_pretrained(str(folder), safe_serialization=True)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The base with the adapter merged in (peft's merge: not bit-stable across machines,
    since it is a matrix product in the parameters' dtype)."""
    return model.merge_and_unload()
