"""Training configuration: one typed schema for defaults, YAML recipes, flags and ``--set``.

:class:`TrainConfig` is the schema. Each field carries its help text, section, choices
and how far it can be trusted when read back from a trajectory; from it derive the
``mezo-ckpt train`` options (:mod:`mezo_ckpt.cli.train`), YAML loading and ``--set``
coercion, so there is one list of settings, not three kept in sync by hand.

Values are accepted the way people type them: numbers in any notation (``5e-7``,
``1e-3`` from YAML 1.1, which reads it as a string, ``1_000``), booleans as
``true/false/yes/no/on/off/1/0``, lists as YAML lists or comma-separated strings, label
words as a mapping, ``label=word`` pairs or JSON. An unknown key gets a "did you mean";
every error names where the value came from (``--lr``, ``recipe.yaml:12``,
``--set lr=...``).

Precedence: defaults < ``-c recipe.yaml`` < flags < ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_ckpt.core.spec import ROUNDING_MODES, Z_KINDS
from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer.schedule import SCHEDULES, learning_rate
from mezo_ckpt.trainer.yaml_files import load_yaml, strict_yaml
from mezo_ckpt.trajectory.header import (
    DTYPES,
    ESTIMATORS,
    MAX_ADAPTER_SIZE,
    MAX_DIRECTIONS,
    MAX_HISTORY,
    PEFT_TYPES,
)

#: The embedded default task (movie-review sentiment shipped in mezo_ckpt/data).
DEFAULT_TASK = "sentiment"
BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    # MeZO's prompt for SST-2 (a masked LM's has the mask where the word goes). SmolLM2
    # starts near chance with it (it says " great" for almost everything), which MeZO
    # corrects within ~75 steps; see README for figures.
    "sentiment": {
        "template": "{text} It was",
        "masked_template": "{text} It was{mask}.",  # a masked LM's (MeZO's SST-2 prompt)
        "verbalizer": {"positive": " great", "negative": " terrible"},
        "label_field": "label",
    },
}
TASKS = (*BUILTIN_TASKS, "custom")
NO_DECAY_DEFAULT = ["bias", "norm", "ln_", "layernorm", "layer_norm"]
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
OBJECTIVES = ("ce", "accuracy", "f1", "exact_match")
REPORTERS = ("none", "tensorboard", "wandb")
PEFT_MODES = ("none", *PEFT_TYPES)
#: --dist-mode under torchrun: shard the batch, or each rank its own n-SPSA directions.
DIST_MODES = ("data", "directions")
#: Upper bounds of sizes typed by people: beyond them a value is a typo, not a run.
SIZE_LIMITS = {
    "batch_size": 1 << 20,
    "eval_batch_size": 1 << 20,
    "max_length": 1 << 20,
    "max_new_tokens": 1 << 16,
    "lora_r": MAX_ADAPTER_SIZE,
    "prefix_tokens": MAX_ADAPTER_SIZE,
    "threads": 4096,
    "k_shot": 1 << 24,
}
#: Settings people often type under another name (used for "did you mean").
ALIASES = {
    "learning_rate": "lr",
    "epsilon": "eps",
    "max_steps": "steps",
    "num_steps": "steps",
    "train_steps": "steps",
    "per_device_train_batch_size": "batch_size",
    "bs": "batch_size",
    "model_name_or_path": "model",
    "precision": "dtype",
    "torch_dtype": "dtype",
    "warmup": "warmup_steps",
    "lr_scheduler_type": "schedule",
    "zo_eps": "eps",
}


@dataclass(frozen=True)
class Opt:
    """How one setting is shown and trusted.

    Attributes:
        help: one sentence for ``--help``.
        section: the ``--help`` section.
        choices: allowed values (None: any).
        trust: "path" or "repo" when the value names something to read, write or fetch:
            such values are never taken from a trajectory on resume (the user must name
            them on the command line).
        on_resume: may be given again, with another value, when resuming.
        cli: exposed as a ``mezo-ckpt train`` flag (every field can be set by ``--set``).
        metavar: placeholder in ``--help``.
        short: a one-letter flag.
    """

    help: str
    section: str
    choices: tuple[str, ...] | None = None
    trust: str | None = None
    on_resume: bool = False
    cli: bool = True
    metavar: str | None = None
    short: str | None = None


def _f(default: Any, help: str, section: str, **kw: Any) -> Any:
    opt = Opt(help, section, **kw)
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"opt": opt})
    return field(default=default, metadata={"opt": opt})


MODEL, DATA, MEZO, EVAL, OUT = "Base model", "Task and data", "MeZO", "Evaluation", "Output and run"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a MeZO run (see ``mezo-ckpt train --help``): a value, checked when it
    is built (a bad setting raises ConfigError), changed only by making a new one
    (:meth:`replace`)."""

    # base model
    model: str | None = _f(
        None,
        "Base model: a local folder or a Hub repo id. Default: the embedded "
        "SmolLM2-135M-Instruct (offline).",
        MODEL,
        trust="repo",
        metavar="PATH|REPO",
    )
    revision: str | None = _f(
        None, "Hub branch, tag or commit of the base (pinned as a commit sha).", MODEL
    )
    dtype: str = _f(
        "float32", "Parameter dtype (fp32, bf16, fp16 accepted).", MODEL, choices=DTYPES
    )
    device: str = _f("auto", "auto, cpu or cuda[:N].", MODEL, on_resume=True)
    device_map: str | None = _f(
        None,
        "Spread a model too big for one device over GPUs, CPU and disk (accelerate): auto, "
        "balanced, sequential, or a JSON file of module -> device.",
        MODEL,
        trust="path",
        on_resume=True,
        metavar="auto|FILE.json",
    )
    max_memory: dict[str, str] = _f(
        {}, "With --device-map: memory per device, e.g. 0=20GiB,cpu=60GiB.", MODEL, on_resume=True
    )
    offload_folder: str | None = _f(
        None,
        "With --device-map: folder for disk-offloaded weights (and writable copies of the "
        "trained ones).",
        MODEL,
        trust="path",
        on_resume=True,
        metavar="DIR",
    )
    # task and data
    task: str = _f(
        DEFAULT_TASK,
        "A built-in task (sentiment) or custom (needs --train-file or --dataset).",
        DATA,
        choices=TASKS,
    )
    train_file: str | None = _f(
        None,
        "Training examples: .jsonl, .json, .csv, .tsv, .parquet or .arrow.",
        DATA,
        trust="path",
        metavar="FILE",
    )
    dev_file: str | None = _f(
        None, "Dev split (evaluated every --eval-every steps).", DATA, trust="path", metavar="FILE"
    )
    test_file: str | None = _f(
        None, "Test split (evaluated at step 0 and at the end).", DATA, trust="path", metavar="FILE"
    )
    dataset: str | None = _f(
        None,
        "A `datasets` dataset instead of files: a local folder (save_to_disk or data files) "
        "or a name in the datasets cache.",
        DATA,
        trust="repo",
        metavar="NAME|DIR",
    )
    dataset_config: str | None = _f(None, "Configuration name of --dataset.", DATA)
    train_split: str = _f("train", "Split of --dataset to train on.", DATA)
    dev_split: str | None = _f("validation", "Split of --dataset to evaluate on.", DATA)
    test_split: str | None = _f(None, "Split of --dataset to test on.", DATA)
    columns: dict[str, str] = _f(
        {},
        "Map template/label field names to data columns, e.g. text=sentence,label=gold.",
        DATA,
        metavar="NAME=COLUMN,...",
    )
    template: str | None = _f(
        None,
        'Prompt template over example fields, e.g. "{text} It was"; for a masked LM with '
        'a {mask} slot where the label word goes, e.g. "{text} It was{mask}."',
        DATA,
    )
    verbalizer: dict[str, str] | None = _f(
        None,
        'Label words: "positive= great,negative= terrible", JSON, or a YAML mapping.',
        DATA,
        metavar="LABEL=WORD,...",
    )
    label_field: str = _f("label", "Field holding the label (or the answer).", DATA)
    options_field: str | None = _f(
        None,
        "Multiple choice: field holding the list of options, or comma-separated fields "
        "that each hold one option (choice1,choice2).",
        DATA,
    )
    option_template: str = _f(" {option}", "How an option follows the prompt.", DATA)
    target_field: str | None = _f(
        None, "Generation: field holding the answer text (or a list of answers).", DATA
    )
    target_template: str = _f(
        " {target}",
        "Generation: how the (first) answer follows the prompt in the teacher-forced loss.",
        DATA,
    )
    chat_template: bool = _f(
        False, "Wrap each prompt in the tokenizer's chat template (instruct models).", DATA
    )
    max_length: int = _f(
        96, "Longest prompt + answer in tokens; longer prompts are cut from the left.", DATA
    )
    max_new_tokens: int = _f(
        16,
        "Generation: longest greedy answer, at evaluation and for the f1/exact_match/user "
        "objectives under each perturbation.",
        DATA,
    )
    stop: list[str] = _f(["\n"], "Generation: strings that end an answer.", DATA)
    train_examples: int | None = _f(
        None, "Use only the first N training examples (unset or 0: all).", DATA
    )
    k_shot: int | None = _f(
        None,
        "Few-shot protocol (LM-BFF, MeZO): train on K examples per class drawn from the "
        "train split, evaluate on another K per class drawn from it as the dev split; the "
        "given dev split becomes the test split when there is no test split. Tasks "
        "without classes draw K examples. Unset: all.",
        DATA,
    )
    data_seed: int | None = _f(
        None,
        "Seed of the --k-shot draw (MeZO uses 13, 21, 42, 87, 100). Unset: --seed.",
        DATA,
    )
    objective: str = _f(
        "ce",
        "What the forwards measure: ce (MeZO's loss), accuracy (classification), f1 or "
        "exact_match (generation), or python:MODULE:FUNCTION.",
        DATA,
    )
    # MeZO
    steps: int = _f(100, "Number of steps (can grow on --resume).", MEZO, on_resume=True)
    batch_size: int = _f(16, "Examples per step.", MEZO)
    lr: float = _f(3e-5, "Learning rate.", MEZO)
    eps: float = _f(1e-3, "Perturbation scale.", MEZO)
    schedule: str = _f("constant", "Learning-rate schedule.", MEZO, choices=SCHEDULES)
    warmup_steps: int = _f(0, "Linear warm-up steps.", MEZO)
    min_lr_ratio: float = _f(0.0, "Floor of the decay, as a fraction of lr.", MEZO)
    weight_decay: float = _f(0.0, "Weight decay (not on biases and norms).", MEZO)
    no_decay: list[str] = _f(NO_DECAY_DEFAULT, "Name substrings that get no weight decay.", MEZO)
    n_directions: int = _f(1, "Directions per step (n-SPSA).", MEZO)
    estimator: str = _f(
        "spsa",
        "spsa (two-sided, MeZO), one-sided (L+ - L0 per direction, shared baseline), or "
        "fzoo (one-sided, step divided by the spread of the n losses; n >= 2).",
        MEZO,
        choices=ESTIMATORS,
    )
    momentum: float = _f(
        0.0,
        "Heavy-ball momentum beta over a window of earlier steps (0: none); each step "
        "re-applies the last --momentum-window steps' directions, stored in the file.",
        MEZO,
    )
    momentum_window: int = _f(8, "Earlier steps a momentum step re-applies (1-64).", MEZO)
    z: str = _f("normal16", "Direction distribution.", MEZO, choices=Z_KINDS)
    rounding: str = _f("nearest", "Rounding of bf16/fp16 updates.", MEZO, choices=ROUNDING_MODES)
    seed: int = _f(0, "Run seed (directions, batches).", MEZO)
    trainable: list[str] = _f(
        ["*"], "Globs over parameter names to train (any name a parameter has).", MEZO
    )
    frozen: list[str] = _f([], "Globs over parameter names to keep frozen.", MEZO)
    peft: str = _f("none", "Parameter-efficient MeZO: lora or prefix.", MEZO, choices=PEFT_MODES)
    lora_r: int = _f(8, "LoRA rank.", MEZO)
    lora_alpha: float = _f(16.0, "LoRA alpha.", MEZO)
    lora_targets: list[str] = _f(
        ["q_proj", "v_proj"],
        "LoRA target modules (a model without q_proj/v_proj, e.g. RoBERTa or BERT, gets "
        "peft's targets for its type: query,value).",
        MEZO,
    )
    lora_dropout: float = _f(0.0, "LoRA dropout (0: deterministic forwards).", MEZO)
    prefix_tokens: int = _f(5, "Prefix tuning: virtual tokens.", MEZO)
    # evaluation
    eval_every: int = _f(25, "Evaluate on dev every N steps (0: only at start and end).", EVAL)
    eval_examples: int = _f(200, "Dev examples used (a fixed seeded subset; 0: all).", EVAL)
    eval_test: bool = _f(True, "Evaluate the test split at step 0 and at the end.", EVAL)
    test_examples: int | None = _f(None, "Test examples used (unset or 0: all).", EVAL)
    eval_batch_size: int = _f(32, "Batch size of evaluations.", EVAL)
    # output
    output: str = _f(
        "trajectory.zst", "Trajectory file.", OUT, short="-o", metavar="FILE", on_resume=True
    )
    log_file: str | None = _f(
        None,
        "JSONL log of every step (default: <output>.log.jsonl).",
        OUT,
        trust="path",
        on_resume=True,
    )
    save_model: str | None = _f(
        None,
        "Also write the trained weights to this folder.",
        OUT,
        trust="path",
        on_resume=True,
        metavar="DIR",
    )
    report_to: str = _f(
        "none",
        "Also log to tensorboard or wandb (optional packages).",
        OUT,
        choices=REPORTERS,
        on_resume=True,
        trust="service",
    )
    record_losses: bool = _f(True, "Store both losses of every step in the file.", OUT)
    fsync: bool = _f(True, "fsync the journal after every frame.", OUT, cli=False, on_resume=True)
    dist_mode: str = _f(
        "data",
        "Under torchrun: data (each rank a shard of the batch) or directions (each rank its "
        "own n-SPSA directions on the whole batch).",
        OUT,
        choices=DIST_MODES,
    )
    dist_timeout: float = _f(
        300.0, "Under torchrun: seconds to wait for a missing rank.", OUT, on_resume=True
    )
    threads: int | None = _f(None, "CPU threads (default: all cores).", OUT, on_resume=True)

    # ------------------------------------------------------------------ schema

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def option(cls, name: str) -> Opt:
        return _FIELDS[name].metadata["opt"]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        """Coerce, check and build from a mapping (``where`` names its source)."""
        return resolve_config(layers=[(dict(data), lambda key: where)])

    def replace(self, **changes: Any) -> TrainConfig:
        """A checked copy with ``changes`` (the original is left as it is)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        # values set in code get the same notations as flags and YAML ("1e-5", "bf16", "a,b"):
        # a config holds typed values from construction on, and is checked once, here; a
        # config that exists is a valid one (resolve_with_sources names where a bad value
        # came from)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, coerce(f.name, getattr(self, f.name), "config"))
        self.validate()

    def validate(self, sources: Mapping[str, str] | None = None) -> None:
        """Raise ConfigError on any invalid value (naming the setting and its source); it
        changes nothing. Construction runs it; call it to have the messages name
        ``sources``.

        Args:
            sources: where each value came from (for the messages).

        Whether a custom task has its data (a file, a dataset, or examples in memory) is
        checked where the data is loaded.
        """
        src = dict(sources or {})

        def bad(name: str, why: str) -> ConfigError:
            where = src.get(name)
            head = f"{where}: " if where else ""
            err = ConfigError(f"{head}{name}={getattr(self, name)!r}: {why}")
            err.setting = name
            return err

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise bad("device", "use auto, cpu, cuda or cuda:N")
        if self.peft != "none" and self.device_map:
            raise bad(
                "peft",
                "--peft with --device-map is not supported: adapters are small, train them "
                "on a model that fits (or offload without adapters)",
            )
        if self.task == "custom" and not self.template:
            raise bad("template", "task 'custom' needs a prompt template (--template)")
        generation = self.target_field is not None
        if (
            self.task == "custom"
            and not generation
            and not self.options_field
            and not self.verbalizer
        ):
            raise bad(
                "verbalizer",
                "a custom classification task needs label words (--verbalizer), options "
                "(--options-field) for multiple choice, or --target-field for generation",
            )
        if self.objective.startswith("python:"):
            if self.objective.count(":") != 2 or not all(self.objective.split(":")[1:]):
                raise bad("objective", "use python:MODULE:FUNCTION")
        elif self.objective not in OBJECTIVES:
            raise bad("objective", f"use one of {', '.join(OBJECTIVES)} or python:MODULE:FUNCTION")
        if self.objective in ("f1", "exact_match") and not generation:
            raise bad("objective", "f1 and exact_match need a generation task (--target-field)")
        if self.objective == "accuracy" and generation:
            raise bad("objective", "use ce, f1 or exact_match for a generation task")
        positive = (
            "steps",
            "batch_size",
            "max_length",
            "n_directions",
            "eval_batch_size",
            "max_new_tokens",
            "lora_r",
            "prefix_tokens",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        for name, most in SIZE_LIMITS.items():  # a typo must not become a huge allocation
            if (getattr(self, name) or 0) > most:
                raise bad(name, f"is far beyond any real run (at most {most:,})")
        if self.steps > 2**32 - 1:
            raise bad("steps", "must be below 2**32")
        if self.n_directions > MAX_DIRECTIONS:
            raise bad("n_directions", f"at most {MAX_DIRECTIONS} directions per step")
        if self.estimator == "fzoo" and self.n_directions < 2:
            raise bad(
                "estimator",
                "fzoo divides by the spread of the directions' losses: use --n-directions 2 "
                "or more (FZOO uses 8)",
            )
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", "must be in [0, 1)")
        if not 1 <= self.momentum_window <= MAX_HISTORY:
            raise bad("momentum_window", f"must be in [1, {MAX_HISTORY}]")
        for name in ("lr", "weight_decay", "min_lr_ratio", "lora_dropout"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.min_lr_ratio > 1:
            raise bad("min_lr_ratio", "is a fraction of lr: use a value in [0, 1]")
        if self.k_shot is not None and self.k_shot < 1:
            raise bad("k_shot", "must be a positive integer (unset: all examples)")
        if self.k_shot and self.train_examples:
            raise bad("train_examples", "--k-shot draws the training examples: drop one of them")
        if self.data_seed is not None and not 0 <= self.data_seed < 2**63:
            raise bad("data_seed", "must be in [0, 2**63)")
        for name in ("train_examples", "test_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise bad(name, "must be >= 0 (0 or unset: all)")
        if self.eps <= 0:
            raise bad("eps", "must be > 0")
        if self.lora_dropout > 0:
            raise bad(
                "lora_dropout",
                "MeZO compares two forwards of the same weights: dropout would make them "
                "differ by chance; keep it 0",
            )
        if not 0 <= self.seed < 2**63:
            raise bad("seed", "must be in [0, 2**63)")
        for name in ("warmup_steps", "eval_every", "eval_examples"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not self.trainable:
            raise bad("trainable", "needs at least one pattern")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "must be a positive integer")

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

    @property
    def history_window(self) -> int:
        """Earlier steps each record re-applies (the file's records.history)."""
        return self.momentum_window if self.momentum > 0 else 0

    def builtin(self) -> dict[str, Any]:
        return BUILTIN_TASKS.get(self.task, {})

    @property
    def generation(self) -> bool:
        return self.target_field is not None


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


# ----------------------------------------------------------------------------- coercion

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_NONE = {"none", "null", "~", ""}


def _base_type(name: str) -> tuple[Any, bool]:
    """(type, optional) of a field."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return hint, False


def _number(text: str) -> float:
    return float(text.strip().replace("_", ""))


def coerce(name: str, value: Any, source: str) -> Any:
    """``value`` as the type of setting ``name`` (people's notations accepted).

    Raises:
        ConfigError: naming ``source``, the setting and what is wrong.
    """
    if name not in _FIELDS:
        raise unknown_setting(name, source)
    kind, optional = _base_type(name)
    opt: Opt = _FIELDS[name].metadata["opt"]

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source}: {name}={value!r}: {why}")

    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise bad("a value is required")
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("use true or false")
    if kind is int:
        if isinstance(value, bool):
            raise bad("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):  # exact for big integers ("12345678901234567", "1_000")
            text = value.strip().replace("_", "")
            try:
                return int(text)
            except ValueError:
                pass
        try:
            v = _number(value) if isinstance(value, str) else float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad("must be an integer") from None
        if not math.isfinite(v) or v != int(v):
            raise bad("must be an integer")
        return int(v)
    if kind is float:
        if isinstance(value, bool):
            raise bad("must be a number")
        try:
            v = _number(value) if isinstance(value, str) else float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad("must be a number (e.g. 3e-5 or 0.00003)") from None
        if not math.isfinite(v):
            raise bad("must be a finite number")
        return v
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad("must be a string")
        v = str(value)
        if name == "dtype":
            v = DTYPE_ALIASES.get(v.strip().lower(), v.strip().lower())
        if opt.choices is not None and v not in opt.choices:
            close = difflib.get_close_matches(v, opt.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad(f"use one of {', '.join(opt.choices)}{hint}")
        return v
    if origin is list:
        if isinstance(value, str) and name == "stop":
            # stop strings are text: "\n" is one stop string, never stripped away
            return [v for v in value.split(",") if v] if "," in value else [value] if value else []
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
            return [v for v in items if v]
        if isinstance(value, Sequence) and all(isinstance(v, (str, int, float)) for v in value):
            return [str(v) for v in value]
        raise bad("use a list or comma-separated names")
    if origin is dict:
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise bad(f"not valid JSON: {e.msg}") from None
                if not isinstance(obj, dict):
                    raise bad("must be a mapping")
                return {str(k): str(v) for k, v in obj.items()}
            out: dict[str, str] = {}
            for item in value.split(","):
                if not item.strip():
                    continue
                if "=" not in item:
                    raise bad("use key=value pairs separated by commas, JSON, or a mapping")
                k, _, v = item.partition("=")
                out[k.strip()] = v  # the value keeps its spaces: " great" is a word
            return out
        raise bad("must be a mapping")
    raise AssertionError(f"unhandled type for {name}: {kind}")  # pragma: no cover


def unknown_setting(name: str, source: str) -> ConfigError:
    names = TrainConfig.fields()
    guess = ALIASES.get(name) or next(iter(difflib.get_close_matches(name, names, n=1)), None)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return ConfigError(
        f"{source}: unknown setting {name!r}{hint} (all settings: mezo-ckpt train --help)"
    )


# ----------------------------------------------------------------------------- sources


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``. The value is the text after ``=``, exactly as typed
    (``" great"`` keeps its space); lists and mappings may also be written in YAML/JSON
    flow style (``[a, b]``, ``{positive: " great"}``). Coercion then works as for flags."""

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: use key=value")
    key, _, raw = item.partition("=")
    key = key.strip().replace("-", "_")
    if not key:
        raise ConfigError(f"--set {item!r}: the key is empty")
    if key in _FIELDS and typing.get_origin(_base_type(key)[0]) in (list, dict):
        text = raw.strip()
        if text.startswith(("[", "{")):
            return key, strict_yaml(text, f"--set {item[:80]!r}", "not a valid list or mapping")[0]
    return key, raw


def resolve_with_sources(
    yaml_path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    *,
    layers: Sequence[tuple[dict[str, Any], Any]] = (),
    base: TrainConfig | None = None,
) -> tuple[TrainConfig, dict[str, str]]:
    """defaults (or ``base``) < YAML < flags < ``--set``, coerced and validated: the config
    and, beside it, where each explicitly set value came from.

    ``flags`` maps setting names to values typed on the command line (None: not given).
    Each value keeps its source for error messages.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    stack: list[tuple[dict[str, Any], Any]] = list(layers)
    if yaml_path:
        data, lines = load_yaml(yaml_path)
        stack.append((data, lambda k, p=str(yaml_path), ln=lines: f"{p}:{ln.get(k, '?')}"))
    if flags:
        given = {k: v for k, v in flags.items() if v is not None}
        stack.append((given, lambda k: "--" + k.replace("_", "-")))
    for item in sets:
        k, v = parse_set(item)
        stack.append(({k: v}, lambda key, item=item: f"--set {item}"))
    for data, where in stack:
        for key, value in data.items():
            src = where(key)
            values[key] = coerce(key, value, src)
            sources[key] = src
    start = base.to_dict() if base is not None else {}
    try:
        cfg = TrainConfig(**{**start, **values})
    except ConfigError as e:  # say where the refused value was set
        where = sources.get(getattr(e, "setting", ""))
        if where is None:
            raise
        err = ConfigError(f"{where}: {e}")
        err.setting = e.setting
        raise err from None
    return cfg, sources


def resolve_config(
    yaml_path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    *,
    layers: Sequence[tuple[dict[str, Any], Any]] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """The config of :func:`resolve_with_sources` (the sources only name values in errors)."""
    return resolve_with_sources(yaml_path, flags, sets, layers=layers, base=base)[0]
