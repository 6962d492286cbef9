"""The trajectory header as typed objects, parsed and validated in one place.

:meth:`Header.from_json` is the only code that knows the header's key names (docs/FORMAT.md
§5): it checks every field once and returns frozen dataclasses; everything else reads
attributes. :meth:`Header.to_json` writes the same keys back. Unknown keys are kept in
``Header.raw`` (the parsed JSON object) and ignored, as §15 requires of a v1 reader.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mezo_ckpt.core.spec import ARITHMETIC, GENERATOR, KEY_RULE, ROUNDING_MODES, Z_KINDS
from mezo_ckpt.errors import HeaderError, UnsupportedError

#: Parameter dtypes a base may have.
DTYPES = ("float32", "bfloat16", "float16")
BASE_KINDS = ("hub", "local", "embedded")
#: Feature of a parameter-efficient run: the trained tensors are adapter weights that a
#: reader builds on top of the base (docs/FORMAT.md §5.7); old readers must refuse it.
PEFT_FEATURE = "peft-v1"
PEFT_TYPES = ("lora", "prefix")
#: How adapter weights start (docs/FORMAT.md §5.7).
ADAPTER_INIT_RULE = "normal16-fanin-v1"
#: Features a reader must implement to read a file that lists them in ``requires``.
#: Records re-apply earlier steps' directions (a momentum window; records.history, §6.2).
HISTORY_FEATURE = "history-v1"
KNOWN_FEATURES: frozenset[str] = frozenset({PEFT_FEATURE, HISTORY_FEATURE})
#: Longest momentum window (records.history).
MAX_HISTORY = 64
#: The record-binding rule of format 1.1 (§7.3): a running sha256 over header and records.
CHAIN_RULE = "sha256-records-v1"
MAX_STEPS = 2**32 - 1
MAX_DIRECTIONS = 64
#: Largest LoRA rank and prefix length a header may ask for (no real adapter is near it).
MAX_ADAPTER_SIZE = 65536
#: How the trainer estimates the step's coefficients (recorded in optimizer.estimator; a
#: reader never needs it: every update is the stored coefficients).
ESTIMATORS = ("spsa", "one-sided", "fzoo")
#: Hex digits kept of each tensor's sha256 in ``base.tensors`` (the full digests feed
#: ``base.tensors_sha256``).
TENSOR_DIGEST_HEX = 16

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX16 = re.compile(r"[0-9a-f]{16}")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?")
REPO_FILE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def is_repo_id(value: object) -> bool:
    """A Hub repo id (``name`` or ``owner/name``): never a path, URL or traversal."""
    return (
        isinstance(value, str)
        and REPO_ID.fullmatch(value) is not None
        and ".." not in value
        and "--" not in value
    )


def is_repo_file(value: object) -> bool:
    """A relative file name inside a repo: no absolute path, no ``..`` component."""
    return (
        isinstance(value, str)
        and REPO_FILE.fullmatch(value) is not None
        and ".." not in value.split("/")
    )


# ----------------------------------------------------------------------------- field reader


class _Fields:
    """Typed access to one JSON object of the header, naming the field in every error."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise HeaderError(f"header field {where.rstrip('.') or 'header'} is not an object")
        self.obj = obj
        self.where = where

    def _bad(self, key: str, why: str) -> HeaderError:
        return HeaderError(f"header field {self.where}{key} {why}")

    def get(self, key: str, types: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.obj or (optional and self.obj[key] is None):
            if optional:
                return None
            raise self._bad(key, "is missing")
        v = self.obj[key]
        allowed = types if isinstance(types, tuple) else (types,)
        if isinstance(v, bool) and bool not in allowed:
            raise self._bad(key, "has the wrong type (bool)")
        if not isinstance(v, allowed):
            raise self._bad(key, f"has the wrong type ({type(v).__name__})")
        return v

    def text(self, key: str, *, optional: bool = False, choices: Sequence[str] = ()) -> Any:
        v = self.get(key, str, optional=optional)
        if v is not None and choices and v not in choices:
            raise self._bad(key, f"must be one of {', '.join(choices)}, not {v[:80]!r}")
        return v

    def integer(self, key: str, lo: int, hi: int, *, optional: bool = False) -> Any:
        v = self.get(key, int, optional=optional)
        if v is not None and not lo <= v <= hi:
            raise self._bad(key, f"must be in [{lo}, {hi}]")
        return v

    def number(self, key: str, *, positive: bool = False, optional: bool = False) -> Any:
        v = self.get(key, (int, float), optional=optional)
        if v is None:
            return None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise self._bad(key, f"must be a finite number {'> 0' if positive else '>= 0'}")
        return float(v)

    def hexdigest(self, key: str, pattern: re.Pattern = HEX64, *, optional: bool = False) -> Any:
        v = self.get(key, str, optional=optional)
        if v is not None and not pattern.fullmatch(v):
            raise self._bad(key, f"is not a lowercase hex digest: {v[:80]!r}")
        return v

    def names(self, key: str, *, nonempty: bool = False, optional: bool = False) -> Any:
        v = self.get(key, list, optional=optional)
        if v is None:
            return None
        if not all(isinstance(n, str) and n for n in v):
            raise self._bad(key, "must be a list of non-empty names")
        if nonempty and not v:
            raise self._bad(key, "must not be empty")
        if v != sorted(set(v)):
            raise self._bad(key, "must be sorted and free of duplicates")
        return tuple(v)

    def obj_of(self, key: str, *, optional: bool = False) -> _Fields | None:
        v = self.get(key, dict, optional=optional)
        return None if v is None else _Fields(v, f"{self.where}{key}.")

    def digests(self, key: str, *, optional: bool = False) -> dict[str, str] | None:
        """An object mapping safe relative file names to sha256 hex digests."""
        v = self.get(key, dict, optional=optional)
        if v is None:
            return None
        for name, digest in v.items():
            if not is_repo_file(name):
                raise self._bad(key, f"has an unsafe file name {name[:80]!r}")
            if not isinstance(digest, str) or not HEX64.fullmatch(digest):
                raise self._bad(f"{key}[{name!r}]", "is not a sha256 hex digest")
        return dict(sorted(v.items()))


# ----------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the base: canonical name, the other names it is known (and may be
    stored) under, shape, dtype and the first 16 hex digits of its content sha256."""

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    sha256: str
    buffer: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "aliases": list(self.aliases),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "sha256": self.sha256,
        }
        if self.buffer:
            out["buffer"] = True
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> TensorEntry:
        f = _Fields(obj, where)
        name = f.text("name")
        aliases = f.names("aliases")
        shape = f.get("shape", list)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise HeaderError(f"header field {where}shape must list non-negative integers")
        dtype = f.text("dtype")
        sha = f.hexdigest("sha256", HEX16)
        buffer = f.get("buffer", bool, optional=True) or False
        if not name or name in aliases:
            raise HeaderError(f"header field {where}name is empty or repeated among aliases")
        return cls(name, aliases, tuple(shape), dtype, sha, buffer)


@dataclass(frozen=True)
class EmbeddedSource:
    """Where an embedded base comes from (the GGUF shipped in a pip package)."""

    gguf_file: str
    gguf_sha256: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "gguf_file": self.gguf_file, "gguf_sha256": self.gguf_sha256}

    @property
    def source_package(self) -> str | None:
        v = self.extra.get("source_package")
        return v if isinstance(v, str) else None

    @classmethod
    def from_json(cls, f: _Fields) -> EmbeddedSource:
        gguf = f.text("gguf_file")
        if "/" in gguf or "\\" in gguf:
            raise HeaderError("base.embedded.gguf_file must be a bare file name")
        sha = f.hexdigest("gguf_sha256")
        extra = {k: v for k, v in f.obj.items() if k not in ("gguf_file", "gguf_sha256")}
        return cls(gguf, sha, extra)


@dataclass(frozen=True)
class BaseIdentity:
    """Identity of the base model (§5.2): source, files, architecture and fingerprints.

    The fields from ``tensors`` on exist in format 1.1 files (None in 1.0 files): a
    fingerprint of every tensor, of the architecture config, of the generation config
    and of every tokenizer file.
    """

    kind: str
    architecture: str
    model_type: str
    dtype: str
    tie_word_embeddings: bool
    num_parameters: int
    manifest_sha256: str
    trainable_sha256: str
    files: Mapping[str, str] = field(default_factory=dict)
    repo_id: str | None = None
    revision: str | None = None
    embedded: EmbeddedSource | None = None
    tensors: tuple[TensorEntry, ...] | None = None
    tensors_sha256: str | None = None
    config: Mapping[str, Any] | None = None
    config_sha256: str | None = None
    generation_config_sha256: str | None = None
    tokenizer: Mapping[str, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pins_everything(self) -> bool:
        """Whether every tensor, the config and the tokenizer are fingerprinted (1.1)."""
        return self.tensors_sha256 is not None and self.config_sha256 is not None

    def tensor(self, name: str) -> TensorEntry | None:
        for t in self.tensors or ():
            if t.name == name:
                return t
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            kind=self.kind,
            repo_id=self.repo_id,
            revision=self.revision,
            files=dict(sorted(self.files.items())),
            architecture=self.architecture,
            model_type=self.model_type,
            dtype=self.dtype,
            tie_word_embeddings=self.tie_word_embeddings,
            num_parameters=self.num_parameters,
            manifest_sha256=self.manifest_sha256,
            trainable_sha256=self.trainable_sha256,
        )
        if self.embedded is not None:
            out["embedded"] = self.embedded.to_json()
        if self.tensors is not None:
            out["tensors"] = [t.to_json() for t in self.tensors]
            out["tensors_sha256"] = self.tensors_sha256
        if self.config is not None:
            out["config"] = dict(self.config)
            out["config_sha256"] = self.config_sha256
            out["generation_config_sha256"] = self.generation_config_sha256
        if self.tokenizer is not None:
            out["tokenizer"] = dict(sorted(self.tokenizer.items()))
        return out

    @classmethod
    def from_json(cls, f: _Fields) -> BaseIdentity:
        kind = f.text("kind", choices=BASE_KINDS)
        repo = f.obj.get("repo_id")
        if repo is not None and not is_repo_id(repo):
            raise HeaderError(f"base.repo_id is not a Hub repo id: {str(repo)[:80]!r}")
        if kind == "hub" and repo is None:
            raise HeaderError("base.kind is hub but base.repo_id is missing")
        emb = f.obj_of("embedded", optional=True)
        tensors = None
        if f.obj.get("tensors") is not None:
            raw = f.get("tensors", list)
            tensors = tuple(
                TensorEntry.from_json(t, f"base.tensors[{i}].") for i, t in enumerate(raw)
            )
            names = [t.name for t in tensors]
            if names != sorted(set(names)):
                raise HeaderError("base.tensors must be sorted by name, without duplicates")
        tensors_sha = f.hexdigest("tensors_sha256", optional=True)
        if (tensors is None) != (tensors_sha is None):
            raise HeaderError("base.tensors and base.tensors_sha256 go together")
        config = f.get("config", dict, optional=True)
        config_sha = f.hexdigest("config_sha256", optional=True)
        if (config is None) != (config_sha is None):
            raise HeaderError("base.config and base.config_sha256 go together")
        if config is not None:
            from mezo_ckpt.core.hashing import json_sha256

            if json_sha256(config) != config_sha:
                raise HeaderError("base.config does not hash to base.config_sha256")
        known = {
            "kind",
            "repo_id",
            "revision",
            "files",
            "architecture",
            "model_type",
            "dtype",
            "tie_word_embeddings",
            "num_parameters",
            "manifest_sha256",
            "trainable_sha256",
            "embedded",
            "tensors",
            "tensors_sha256",
            "config",
            "config_sha256",
            "generation_config_sha256",
            "tokenizer",
        }
        return cls(
            kind=kind,
            repo_id=repo,
            revision=f.hexdigest("revision", HEX40, optional=True),
            files=f.digests("files") or {},
            architecture=f.text("architecture"),
            model_type=f.text("model_type"),
            dtype=f.text("dtype", choices=DTYPES),
            tie_word_embeddings=f.get("tie_word_embeddings", bool),
            num_parameters=f.integer("num_parameters", 0, 2**63 - 1),
            manifest_sha256=f.hexdigest("manifest_sha256"),
            trainable_sha256=f.hexdigest("trainable_sha256"),
            embedded=None if emb is None else EmbeddedSource.from_json(emb),
            tensors=tensors,
            tensors_sha256=tensors_sha,
            config=config,
            config_sha256=config_sha,
            generation_config_sha256=f.hexdigest("generation_config_sha256", optional=True),
            tokenizer=f.digests("tokenizer", optional=True),
            extra={k: v for k, v in f.obj.items() if k not in known},
        )


@dataclass(frozen=True)
class Perturbation:
    """How z is generated (§5.3)."""

    z: str
    seed: int
    eps: float
    n_directions: int
    generator: str = GENERATOR
    key_rule: str = KEY_RULE

    def to_json(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "key_rule": self.key_rule,
            "z": self.z,
            "seed": self.seed,
            "eps": self.eps,
            "n_directions": self.n_directions,
        }

    @classmethod
    def from_json(cls, f: _Fields) -> Perturbation:
        gen = f.text("generator")
        if gen != GENERATOR:
            raise UnsupportedError(f"unknown generator {gen!r} (this version: {GENERATOR})")
        rule = f.text("key_rule")
        if rule != KEY_RULE:
            raise UnsupportedError(f"unknown key rule {rule!r} (this version: {KEY_RULE})")
        z = f.text("z")
        if z not in Z_KINDS:
            raise UnsupportedError(f"unknown z kind {z!r} (known: {', '.join(Z_KINDS)})")
        return cls(
            z=z,
            seed=f.integer("seed", 0, 2**63 - 1),
            eps=f.number("eps", positive=True),
            n_directions=f.integer("n_directions", 1, MAX_DIRECTIONS),
        )


@dataclass(frozen=True)
class UpdateRule:
    """How a record changes the weights (§5.4)."""

    rounding: str
    weight_decay: float
    decay_params: tuple[str, ...]
    arithmetic: str = ARITHMETIC

    def to_json(self) -> dict[str, Any]:
        return {
            "arithmetic": self.arithmetic,
            "rounding": self.rounding,
            "weight_decay": self.weight_decay,
            "decay_params": list(self.decay_params),
        }

    @classmethod
    def from_json(cls, f: _Fields, trainable: tuple[str, ...]) -> UpdateRule:
        arith = f.text("arithmetic")
        if arith != ARITHMETIC:
            raise UnsupportedError(
                f"unknown update arithmetic {arith!r} (this version: {ARITHMETIC})"
            )
        rounding = f.text("rounding")
        if rounding not in ROUNDING_MODES:
            raise UnsupportedError(f"unknown rounding mode {rounding!r}")
        decay = f.names("decay_params")
        if not set(decay) <= set(trainable):
            raise HeaderError("header field update.decay_params must be a subset of trainable")
        return cls(rounding, f.number("weight_decay"), decay)


@dataclass(frozen=True)
class RecordLayout:
    """Optional record columns (§5.5); ``history`` = W > 0 adds W x n history
    coefficients per record (feature ``history-v1``)."""

    decay: bool
    losses: bool
    history: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decay": self.decay, "losses": self.losses}
        if self.history:
            out["history"] = self.history
        return out

    @classmethod
    def from_json(cls, f: _Fields) -> RecordLayout:
        history = f.integer("history", 1, MAX_HISTORY, optional=True)
        return cls(f.get("decay", bool), f.get("losses", bool), history or 0)


@dataclass(frozen=True)
class OptimizerInfo:
    """Informational description of the optimizer (§5.1): every field may be absent."""

    lr: float | None = None
    schedule: str | None = None
    warmup_steps: int | None = None
    min_lr_ratio: float | None = None
    weight_decay: float | None = None
    objective: str | None = None
    batch_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = (
        "lr",
        "schedule",
        "warmup_steps",
        "min_lr_ratio",
        "weight_decay",
        "objective",
        "batch_size",
    )

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({k: getattr(self, k) for k in self._KEYS if getattr(self, k) is not None})
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> OptimizerInfo:
        def typed(key: str, types: tuple[type, ...]) -> Any:
            v = obj.get(key)
            return v if isinstance(v, types) and not isinstance(v, bool) else None

        return cls(
            lr=typed("lr", (int, float)),
            schedule=typed("schedule", (str,)),
            warmup_steps=typed("warmup_steps", (int,)),
            min_lr_ratio=typed("min_lr_ratio", (int, float)),
            weight_decay=typed("weight_decay", (int, float)),
            objective=typed("objective", (str,)),
            batch_size=typed("batch_size", (int,)),
            extra={k: v for k, v in obj.items() if k not in cls._KEYS},
        )


@dataclass(frozen=True)
class AdapterInfo:
    """A parameter-efficient run's adapter (§5.7): its type, peft config, init rule and
    the fingerprint of its initial weights."""

    type: str
    config: Mapping[str, Any]
    init: str
    init_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "config": dict(self.config),
            "init": self.init,
            "init_sha256": self.init_sha256,
        }

    @classmethod
    def from_json(cls, f: _Fields) -> AdapterInfo:
        kind = f.text("type")
        if kind not in PEFT_TYPES:
            raise UnsupportedError(
                f"unknown adapter type {kind!r} (known: {', '.join(PEFT_TYPES)})"
            )
        init = f.text("init")
        if init != ADAPTER_INIT_RULE:
            raise UnsupportedError(
                f"unknown adapter init rule {init!r} (known: {ADAPTER_INIT_RULE})"
            )
        config = f.obj_of("config")
        assert config is not None
        if kind == "lora":  # what peft needs to build the adapter, checked before it is asked
            config.integer("r", 1, MAX_ADAPTER_SIZE)
            config.number("lora_alpha", positive=True)
            config.names("target_modules", nonempty=True)
            if config.number("lora_dropout", optional=True) not in (None, 0.0):
                raise HeaderError("header field peft.config.lora_dropout must be 0")
            config.text("bias", optional=True, choices=("none",))
        else:
            config.integer("num_virtual_tokens", 1, MAX_ADAPTER_SIZE)
        return cls(kind, config.obj, init, f.hexdigest("init_sha256"))


@dataclass(frozen=True)
class Tool:
    """The program that wrote the file (§5.1; informational but required)."""

    name: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


# ----------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Header:
    """A validated trajectory header.

    Attributes:
        raw: the JSON object as parsed (or as :meth:`to_json` writes it), unknown keys kept.
    """

    tool: Tool
    base: BaseIdentity
    trainable: tuple[str, ...]
    perturbation: Perturbation
    update: UpdateRule
    records: RecordLayout
    total_steps: int
    optimizer: OptimizerInfo = field(default_factory=OptimizerInfo)
    config: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    created: str | None = None
    chain: str | None = None
    peft: AdapterInfo | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def seed(self) -> int:
        return self.perturbation.seed

    @property
    def z(self) -> str:
        return self.perturbation.z

    @property
    def n_directions(self) -> int:
        return self.perturbation.n_directions

    def to_json(self) -> dict[str, Any]:
        """The header object to write (canonical key names; unknown raw keys kept)."""
        out: dict[str, Any] = {k: v for k, v in self.raw.items()}
        out.update(
            requires=list(self.requires),
            tool=self.tool.to_json(),
            base=self.base.to_json(),
            trainable=list(self.trainable),
            perturbation=self.perturbation.to_json(),
            update=self.update.to_json(),
            records=self.records.to_json(),
            total_steps=self.total_steps,
            optimizer=self.optimizer.to_json(),
            config=dict(self.config),
        )
        if self.created is not None:
            out["created"] = self.created
        if self.chain is not None:
            out["integrity"] = {"chain": self.chain}
        if self.peft is not None:
            out["peft"] = self.peft.to_json()
            if PEFT_FEATURE not in out["requires"]:
                out["requires"] = [*out["requires"], PEFT_FEATURE]
        if self.records.history and HISTORY_FEATURE not in out["requires"]:
            out["requires"] = [*out["requires"], HISTORY_FEATURE]
        # keys a newer 1.x writer added inside a section survive a rewrite (with_())
        optional = {"records": {"history"}}
        for key in ("tool", "perturbation", "update", "records", "integrity", "peft"):
            old, new = self.raw.get(key), out.get(key)
            if isinstance(old, dict) and isinstance(new, dict):
                known = set(new) | optional.get(key, set())
                out[key] = {**{k: v for k, v in old.items() if k not in known}, **new}
        return out

    def with_(self, **changes: Any) -> Header:
        """A copy with some fields replaced (``raw`` follows the new values)."""
        import dataclasses

        h = dataclasses.replace(self, **changes)
        return dataclasses.replace(h, raw=h.to_json())

    @classmethod
    def coerce(cls, obj: Header | Mapping[str, Any]) -> Header:
        """``obj`` if it is a Header, else the parsed and validated JSON object."""
        return obj if isinstance(obj, Header) else cls.from_json(dict(obj))

    @classmethod
    def build(cls, **fields: Any) -> Header:
        """A new header from typed parts (validated by a round trip through the parser)."""
        h = cls(**fields)
        return cls.from_json(h.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> Header:
        """Validate a parsed header object (§5) and return it typed.

        Raises:
            HeaderError: wrong structure or values.
            UnsupportedError: required features, generator, z kind, arithmetic or rounding
                unknown to this version.
        """
        if not isinstance(obj, dict):
            raise HeaderError("header is not a JSON object")
        f = _Fields(obj, "")
        requires = f.get("requires", list)
        # Whatever its JSON type, an entry this reader does not implement means "upgrade".
        unknown = [r for r in requires if not isinstance(r, str) or r not in KNOWN_FEATURES]
        if unknown:
            raise UnsupportedError(f"trajectory requires features this version lacks: {unknown}")
        tool = f.obj_of("tool")
        assert tool is not None
        trainable = f.names("trainable", nonempty=True)
        integrity = f.obj_of("integrity", optional=True)
        chain = None
        if integrity is not None:
            chain = integrity.text("chain", optional=True)
            if chain is not None and chain != CHAIN_RULE:
                raise UnsupportedError(f"unknown record chain rule {chain!r} (known: {CHAIN_RULE})")
        created = obj.get("created")
        peft_obj = f.obj_of("peft", optional=True)
        if (peft_obj is not None) != (PEFT_FEATURE in requires):
            raise HeaderError(f"a header has peft exactly when requires lists {PEFT_FEATURE!r}")
        records = RecordLayout.from_json(f.obj_of("records"))  # type: ignore[arg-type]
        if bool(records.history) != (HISTORY_FEATURE in requires):
            raise HeaderError(
                f"a header has records.history exactly when requires lists {HISTORY_FEATURE!r}"
            )
        return cls(
            tool=Tool(tool.text("name"), tool.text("version")),
            base=BaseIdentity.from_json(f.obj_of("base")),  # type: ignore[arg-type]
            trainable=trainable,
            perturbation=Perturbation.from_json(f.obj_of("perturbation")),  # type: ignore[arg-type]
            update=UpdateRule.from_json(f.obj_of("update"), trainable),  # type: ignore[arg-type]
            records=records,
            total_steps=f.integer("total_steps", 0, MAX_STEPS),
            optimizer=OptimizerInfo.from_json(f.get("optimizer", dict)),
            config=f.get("config", dict),
            requires=tuple(requires),
            created=created if isinstance(created, str) else None,
            chain=chain,
            peft=AdapterInfo.from_json(peft_obj) if peft_obj is not None else None,
            raw=obj,
        )
