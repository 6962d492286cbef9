"""The model a run trains: the base loaded (or handed over), its adapter attached, and the
trajectory header that pins both."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mezo_ckpt import __version__
from mezo_ckpt.errors import ConfigError
from mezo_ckpt.models.base import LoadedBase, describe_base, load_base
from mezo_ckpt.models.offload import OffloadedWeights, parse_device_map, parse_max_memory
from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.inputs import load_tokenizer
from mezo_ckpt.trajectory.header import (
    CHAIN_RULE,
    AdapterInfo,
    BaseIdentity,
    Header,
    OptimizerInfo,
    Perturbation,
    RecordLayout,
    Tool,
    UpdateRule,
)
from mezo_ckpt.util.runtime import quiet_progress


def load_model(
    cfg: TrainConfig, *, device: str, progress: bool, model: Any = None, tokenizer: Any = None
) -> tuple[LoadedBase, Any]:
    """(the loaded base, its tokenizer): ``cfg.model``, or a model handed over (which then
    needs its tokenizer too), frozen and in eval mode."""
    if model is not None:
        if tokenizer is None:
            raise ConfigError("model= needs tokenizer= too")
        model.eval()
        model.requires_grad_(False)
        return LoadedBase(model, "local", folder=None), tokenizer
    with quiet_progress(progress):  # library bars only on a terminal
        loaded = load_base(
            cfg.model,
            dtype=cfg.dtype,
            device=device,
            revision=cfg.revision,
            progress=progress,
            device_map=parse_device_map(cfg.device_map),
            max_memory=parse_max_memory(cfg.max_memory),
            offload_folder=cfg.offload_folder,
        )
        return loaded, tokenizer or load_tokenizer(loaded.folder, cfg.model)


def identity_of(
    loaded: LoadedBase,
    model: Any,
    tokenizer: Any,
    trainable: list[str],
    offload: OffloadedWeights | None = None,
) -> BaseIdentity:
    """The base's whole identity as the header pins it."""
    return describe_base(
        model,
        trainable,
        values=offload,
        kind=loaded.kind,
        repo_id=loaded.repo_id,
        revision=loaded.revision,
        files=loaded.files,
        embedded=loaded.embedded,
        folder=loaded.folder,
        tokenizer=tokenizer if loaded.folder is None else None,
    )


def attach_adapter(
    cfg: TrainConfig, loaded: LoadedBase, tokenizer: Any
) -> tuple[Any, BaseIdentity, AdapterInfo]:
    """Describe the plain base, then wrap it with the configured adapter (portable init):
    (the wrapped model, the base's identity, the adapter's description)."""
    from mezo_ckpt.models.adapters import adapter_config, attach, info_for

    identity = identity_of(loaded, loaded.model, tokenizer, [])
    if cfg.peft == "lora":
        conf = adapter_config(
            "lora",
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            target_modules=lora_targets(loaded.model, cfg.lora_targets),
        )
    else:
        conf = adapter_config("prefix", num_virtual_tokens=cfg.prefix_tokens)
    model = attach(loaded.model, cfg.peft, conf, cfg.seed)
    return model, identity, info_for(model, cfg.peft, conf)


def lora_targets(model: Any, asked: list[str]) -> list[str]:
    """The LoRA target modules: ``asked``; but the default (q_proj, v_proj) on a model
    that has no such module (RoBERTa and BERT call them query and value) becomes peft's
    targets for the model's type. The header records the modules used."""
    default = TrainConfig().lora_targets
    if list(asked) != default:
        return list(asked)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if leaves & set(default):
        return list(asked)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
        getattr(getattr(model, "config", None), "model_type", None)
    )
    return list(known) if known else list(asked)


def run_config(
    cfg: TrainConfig, data: dict[str, Any], task: Any, user: Any, world: int = 1
) -> dict[str, Any]:
    """The header's ``config``: the resolved settings, the data's fingerprints, the
    resolved task, the number of data-parallel ranks and the provenance of a user
    objective."""
    config: dict[str, Any] = {
        **cfg.to_dict(),
        "data": data,
        "resolved_task": task.resolved(),
        "world": world,
    }
    if user is not None:
        config["objective_provenance"] = user.provenance()
    return config


def build_header(
    cfg: TrainConfig,
    identity: BaseIdentity,
    trainable: list[str],
    decay: list[str],
    config: dict[str, Any],
    adapter: AdapterInfo | None,
) -> Header:
    """The header of a new run: the base, what trains, how it is perturbed and updated,
    the optimizer settings and the resolved ``config``."""
    return Header.build(
        tool=Tool("mezo-ckpt", __version__),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        base=identity,
        trainable=tuple(trainable),
        perturbation=Perturbation(
            z=cfg.z, seed=cfg.seed, eps=cfg.eps, n_directions=cfg.n_directions
        ),
        update=UpdateRule(cfg.rounding, cfg.weight_decay, tuple(decay)),
        optimizer=OptimizerInfo(
            lr=cfg.lr,
            schedule=cfg.schedule,
            warmup_steps=cfg.warmup_steps,
            min_lr_ratio=cfg.min_lr_ratio,
            weight_decay=cfg.weight_decay,
            objective=cfg.objective,
            batch_size=cfg.batch_size,
            extra={
                "name": "mezo-sgd",
                "estimator": cfg.estimator,
                **(
                    {"momentum": cfg.momentum, "momentum_window": cfg.momentum_window}
                    if cfg.momentum
                    else {}
                ),
            },
        ),
        records=RecordLayout(
            decay=bool(decay), losses=cfg.record_losses, history=cfg.history_window
        ),
        total_steps=cfg.steps,
        config=config,
        chain=CHAIN_RULE,
        peft=adapter,
    )
