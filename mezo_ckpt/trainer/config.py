"""Training configuration: defaults, YAML files, overrides, validation.

Precedence: built-in defaults < YAML file < command-line flags. The fully resolved
config (every field) is written into the trajectory header.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.stream import Z_KINDS
from mezo_ckpt.trainer.schedule import SCHEDULES, learning_rate
from mezo_ckpt.update import ROUNDING_MODES

#: The embedded default task (movie-review sentiment shipped in mezo_ckpt/data).
DEFAULT_TASK = "sentiment"
BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    # MeZO's prompt for SST-2. SmolLM2 starts near chance with it (it says " great" for
    # almost everything), which MeZO corrects within ~75 steps; see README for figures.
    "sentiment": {
        "template": "{text} It was",
        "verbalizer": {"positive": " great", "negative": " terrible"},
        "label_field": "label",
    },
}
NO_DECAY_DEFAULT = ["bias", "norm", "ln_", "layernorm", "layer_norm"]


@dataclass
class TrainConfig:
    """Every knob of a MeZO run. Field docs double as `--help` text."""

    # base model
    model: str | None = None  # local folder, Hub repo id, or None for the embedded default
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    # task and data
    task: str = DEFAULT_TASK  # a built-in task name, or "custom" (needs train_file)
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    template: str | None = None
    verbalizer: dict[str, str] | None = None
    label_field: str = "label"
    options_field: str | None = None
    option_template: str = " {option}"
    objective: str = "ce"  # "ce" (MeZO's loss) or "accuracy"
    max_length: int = 96
    train_examples: int | None = None
    # MeZO
    steps: int = 100
    batch_size: int = 16
    lr: float = 3e-5
    eps: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    no_decay: list[str] = field(default_factory=lambda: list(NO_DECAY_DEFAULT))
    n_directions: int = 1
    z: str = "normal16"
    rounding: str = "nearest"
    seed: int = 0
    trainable: list[str] = field(default_factory=lambda: ["*"])
    frozen: list[str] = field(default_factory=list)
    # evaluation
    eval_every: int = 25
    eval_examples: int = 200
    eval_test: bool = True
    test_examples: int | None = None
    eval_batch_size: int = 32
    # output
    output: str = "trajectory.zst"
    log_file: str | None = None  # default: <output>.log.jsonl
    save_model: str | None = None
    record_losses: bool = True
    fsync: bool = True
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrainConfig:
        unknown = sorted(set(data) - set(cls.fields()))
        if unknown:
            raise ConfigError(
                f"{where}: unknown setting(s) {unknown}; known: {', '.join(cls.fields())}"
            )
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError on any invalid value (with the field name)."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if self.dtype not in ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
            raise bad("dtype", "use float32, bfloat16 or float16")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad("device", "use auto, cpu or cuda[:N]")
        if self.task != "custom" and self.task not in BUILTIN_TASKS:
            raise bad("task", f"use a built-in task ({', '.join(BUILTIN_TASKS)}) or 'custom'")
        if self.task == "custom" and not self.train_file:
            raise bad("train_file", "task 'custom' needs train_file")
        if self.task == "custom" and not self.template:
            raise bad("template", "task 'custom' needs a prompt template")
        if self.task == "custom" and not self.options_field and not self.verbalizer:
            raise bad(
                "verbalizer",
                "a custom classification task needs a verbalizer "
                "(label -> word), or options_field for multiple choice",
            )
        if self.objective not in ("ce", "accuracy"):
            raise bad("objective", "use ce or accuracy")
        for name in ("steps", "batch_size", "max_length", "n_directions", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if self.steps > 2**32 - 1:
            raise bad("steps", "must be below 2**32")
        for name in ("lr", "eps", "weight_decay", "min_lr_ratio"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "must be a finite number >= 0")
        if self.eps <= 0:
            raise bad("eps", "must be > 0")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"use one of {SCHEDULES}")
        if self.z not in Z_KINDS:
            raise bad("z", f"use one of {Z_KINDS}")
        if self.rounding not in ROUNDING_MODES:
            raise bad("rounding", f"use one of {ROUNDING_MODES}")
        if not 0 <= self.seed < 2**63:
            raise bad("seed", "must be in [0, 2**63)")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.eval_examples < 0:
            raise bad("warmup_steps", "warmup_steps, eval_every and eval_examples must be >= 0")
        if not self.trainable:
            raise bad("trainable", "needs at least one pattern")

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based ``step`` under this config's schedule."""
        return learning_rate(
            step,
            lr=self.lr,
            total_steps=self.steps,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
        )

    def builtin(self) -> dict[str, Any]:
        return BUILTIN_TASKS.get(self.task, {})


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict of settings (validated later)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of setting: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (numbers, lists, booleans)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip().replace("-", "_"), value


def resolve_config(
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> TrainConfig:
    """defaults < YAML < overrides (flags) < ``key=value`` sets."""
    data: dict[str, Any] = {}
    if yaml_path:
        data.update(load_yaml(yaml_path))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for item in sets or []:
        k, v = parse_override(item)
        data[k] = v
    return TrainConfig.from_dict(data, where=str(yaml_path or "settings"))
