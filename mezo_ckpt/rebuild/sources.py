"""Where a rebuild reads the base: a loaded model, or a folder streamed shard by shard.

A source checks the base against every edit's pinned identity (before any weight is
touched, or, for what only a full read can know, before anything is renamed into place),
prepares the model an edit applies to (a LoRA/prefix run's adapter), and yields the
tensors in sorted canonical order, so fingerprints are computed on the way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import BaseMismatchError, ModelLoadError, UnsupportedError
from mezo_ckpt.models.base import BaseCheck, LoadedBase, auto_model_class, lm_kind, verify_base
from mezo_ckpt.rebuild.plan import Edit

#: Refusal wording shared by every source.
MISMATCH = (
    "the offered base model is not the one this trajectory was trained from; refusing to replay"
)


class ModelSource:
    """A base already in memory (loaded from a folder, the Hub, the embedded default, or
    handed over by the user). Trained tensors are changed in place."""

    streams = False

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        offered: LoadedBase | None = None,
        folder: Path | None = None,
        where: str | None = None,
        checked: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.offered = offered
        self.folder = offered.folder if offered is not None and folder is None else folder
        self.where = where  # names the base in a refusal ("user/repo@1234abcd")
        self.also_checked = list(checked)  # checks made while locating it (file sha256)
        self._params: dict[str, torch.nn.Parameter] = {}

    @classmethod
    def of(cls, loaded: LoadedBase) -> ModelSource:
        return cls(loaded.model, offered=loaded)

    def open(self, edits: Sequence[Edit], *, ignore_mismatch: bool = False) -> BaseCheck:
        """Check the base against each edit's identity, then prepare the model.

        Raises:
            BaseMismatchError: listing what differs (nothing is modified).
        """
        check = self.check(edits, ignore_mismatch=ignore_mismatch)
        self.model = _prepare_all(edits, self.model)
        self._params = canonical_parameters(self.model)
        return check

    def check(self, edits: Sequence[Edit], *, ignore_mismatch: bool = False) -> BaseCheck:
        """The whole-base check alone (a cache hit that puts a cached adapter on top)."""
        check = BaseCheck([], [])
        seen: list[Any] = []
        for edit in edits:
            pinned = edit.pinned
            if pinned is None:  # a delta from before deltas embedded the whole identity
                diffs, checked = edit.check_legacy(self.model)  # type: ignore[attr-defined]
                if diffs and not ignore_mismatch:
                    raise BaseMismatchError(MISMATCH, diffs)
                check = BaseCheck(checked, diffs)
                continue
            if any(pinned.base == s for s in seen):
                continue  # two edits of one base: checked once
            seen.append(pinned.base)
            try:
                got = verify_base(
                    pinned,
                    self.model,
                    offered=self.offered,
                    folder=self.folder,
                    allow_mismatch=ignore_mismatch,
                )
            except BaseMismatchError as e:
                if self.where is None:
                    raise
                raise BaseMismatchError(
                    f"the base {self.where} is not the one this trajectory was trained from; "
                    "refusing to replay",
                    e.differences,
                ) from None
            check = BaseCheck(check.checked or got.checked, check.overridden + got.overridden)
        return BaseCheck(check.checked + self.also_checked, check.overridden)

    def shapes(self, names: Sequence[str]) -> dict[str, int]:
        """numel of each named tensor present (for progress totals)."""
        return {n: self._params[n].numel() for n in names if n in self._params}

    def tensors(self, names: Sequence[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        """(canonical name, tensor) in sorted order: ``names`` present, or all."""
        wanted = sorted(self._params if names is None else set(names) & set(self._params))
        for name in wanted:
            p = self._params[name]
            yield name, p.data

    def finish(self) -> None:
        """Nothing is left to check: the whole identity was compared in :meth:`open`."""


class TensorsSource:
    """Named tensors already checked and prepared by their owner (the trainer repairing a
    resumed run: its weights were checked against the header when it loaded them)."""

    streams = False

    def __init__(self, tensors: dict[str, torch.Tensor], *, checked: Sequence[str] = ()) -> None:
        self.tensors_by_name = tensors
        self.model = None
        self.folder = None
        self.also_checked = list(checked)

    def open(self, edits: Sequence[Edit], *, ignore_mismatch: bool = False) -> BaseCheck:
        return BaseCheck(list(self.also_checked), [])

    def shapes(self, names: Sequence[str]) -> dict[str, int]:
        return {n: self.tensors_by_name[n].numel() for n in names if n in self.tensors_by_name}

    def tensors(self, names: Sequence[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        have = self.tensors_by_name
        for name in sorted(have if names is None else set(names) & set(have)):
            t = have[name]
            yield name, t.data if isinstance(t, torch.nn.Parameter) else t

    def finish(self) -> None:
        """Nothing to check: the owner checked these tensors."""


class StateSource:
    """A state dict (or a safetensors file of one) as the base: a module that is not a
    Hugging Face model (``mezo_ckpt.MeZO`` over any ``torch.nn.Module``), or any model's
    weights without its folder. Every tensor is checked against the header's fingerprint
    of the whole base before anything is changed; the offered dict is never modified
    (trained tensors are rebuilt in copies)."""

    streams = False

    def __init__(self, state: Mapping[str, torch.Tensor], *, where: str | None = None) -> None:
        bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
        if bad:
            raise TypeError(f"a state dict maps names to tensors; not: {bad[:3]}")
        meta = [k for k, v in state.items() if v.is_meta]
        if meta:
            raise TypeError(f"a state dict of meta tensors holds no values: {meta[:3]}")
        self.state = dict(state)
        self.where = where
        self.model = None
        self.folder = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._keys: dict[str, list[str]] = {}

    @classmethod
    def from_file(cls, path: Path) -> StateSource:
        """The tensors of one safetensors file.

        Raises:
            ModelLoadError: not a readable safetensors file.
        """
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a garbled or truncated file
            raise ModelLoadError(f"{path} is not a readable safetensors file: {e}") from None
        return cls(state, where=str(path))

    def open(self, edits: Sequence[Edit], *, ignore_mismatch: bool = False) -> BaseCheck:
        import dataclasses

        from mezo_ckpt.core.hashing import dtype_name, fingerprint_tensors, tensors_root
        from mezo_ckpt.models.base import diff_identities
        from mezo_ckpt.trajectory.header import TENSOR_DIGEST_HEX, TensorEntry

        if any(getattr(e.pinned, "peft", None) is not None for e in edits):
            raise UnsupportedError(
                "a LoRA/prefix run needs its base as a model (the adapter is built on it), "
                "not a state dict"
            )
        want = edits[0].pinned.base
        if any(e.pinned.base != want for e in edits[1:]):
            raise BaseMismatchError("these runs were not trained from the same base", [])
        if want.tensors is None:
            raise UnsupportedError(
                "this format 1.0 file pins its base by a loaded model only: pass the model "
                "(or its folder), not a state dict"
            )
        tied: list[str] = []
        chosen: dict[str, torch.Tensor] = {}  # canonical name -> the offered tensor
        for t in want.tensors:
            present = [n for n in (t.name, *t.aliases) if n in self.state]
            if not present:
                continue  # reported as missing by the comparison
            self._keys[t.name] = present
            first = self.state[present[0]]
            if any(not torch.equal(self.state[n], first) for n in present[1:]):
                tied.append(f"{t.name}: its tied names hold different values")
            chosen[t.name] = first.detach()
        known = {n for t in want.tensors for n in (t.name, *t.aliases)}
        offered = {**chosen, **{k: v.detach() for k, v in self.state.items() if k not in known}}
        digests = fingerprint_tensors(offered)
        entries = tuple(
            TensorEntry(
                n, (), tuple(x.shape), dtype_name(x.dtype), digests[n].hex()[:TENSOR_DIGEST_HEX]
            )  # fmt: skip
            for n, x in sorted(offered.items())
        )
        # the offered identity: the header's, with the tensors the state dict holds (a
        # state dict has no architecture, config or tokenizer to compare)
        got = dataclasses.replace(want, tensors=entries, tensors_sha256=tensors_root(digests))
        diffs = diff_identities(want, got)[0] + tied
        if diffs:
            if ignore_mismatch:
                raise UnsupportedError("a state-dict base is checked whole; it cannot be ignored")
            where = f"the base {self.where}" if self.where else "the offered state dict"
            raise BaseMismatchError(
                f"{where} is not the one this trajectory was trained from; refusing to replay",
                diffs,
            )
        trained = set().union(*(e.trained for e in edits))
        self._tensors = {
            n: (t.clone() if n in trained else t).contiguous() for n, t in chosen.items()
        }
        checked = [f"all {len(want.tensors)} tensors (trainable and frozen)"]
        if want.config:
            checked.append("config.json not checked: a state dict has none")
        return BaseCheck(checked, [])

    def shapes(self, names: Sequence[str]) -> dict[str, int]:
        return {n: self._tensors[n].numel() for n in names if n in self._tensors}

    def tensors(self, names: Sequence[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in sorted(self._tensors if names is None else set(names) & set(self._tensors)):
            yield name, self._tensors[name]

    def finish(self) -> None:
        """Nothing is left to check: every tensor was compared in :meth:`open`."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rebuilt state under the offered names (a tied tensor under each of its
        names, sharing one tensor)."""
        return {k: self._tensors[canon] for canon, keys in self._keys.items() for k in keys}


def _prepare_all(edits: Sequence[Edit], model: torch.nn.Module) -> torch.nn.Module:
    """The model every edit applies to: one adapter for all, or none."""
    peft = [getattr(e.pinned, "peft", None) for e in edits]
    if any(p is not None for p in peft) and len(edits) > 1:
        first = edits[0]
        same = all(
            p == peft[0] and e.pinned.seed == first.pinned.seed and e.trained == first.trained
            for p, e in zip(peft, edits)
        )
        if not same:
            raise UnsupportedError(
                "these two runs train different adapters (or one trains the model): their "
                "weights are not comparable tensor by tensor"
            )
    return edits[0].prepare(model)


# ----------------------------------------------------------------------------- folders


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return None


def should_stream(folder: Path, requested: bool | None) -> bool:
    """Stream when asked, or (by default) when the weights would not fit in half of the
    memory available now."""
    if requested is not None:
        return requested
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    free = _available_memory()
    return free is not None and size > free // 2


INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: Cap on an index file (a real one is a few hundred KB even for 400B-parameter models).
MAX_INDEX_BYTES = 64 << 20


def _plain_shard_name(name: Any, folder: Path) -> str:
    """A shard file name from an index: data naming a file *in* ``folder``, never a path."""
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name.endswith(".safetensors")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and name not in (".", "..")
        and not name.startswith(".")
    )
    if not ok:
        raise ModelLoadError(
            f"{folder / INDEX} names a shard {str(name)[:80]!r} that is not a plain file "
            "name in the model folder; refusing to read it"
        )
    return name


def weight_files(folder: Path) -> dict[str, list[str]]:
    """shard file -> stored tensor names, in the folder's own order (checked: plain file
    names that exist in ``folder``, string tensor names).

    Raises:
        ModelLoadError: no weights, a malformed index, or a shard it names is missing.
    """
    from mezo_ckpt.util.fsutil import read_regular_file

    if (folder / INDEX).is_file():
        raw = read_regular_file(folder / INDEX, MAX_INDEX_BYTES, INDEX, ModelLoadError)
        try:
            index = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{folder / INDEX} is not valid JSON: {e}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{folder / INDEX} has no weight_map object")
        out: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            if not isinstance(name, str) or not name:
                raise ModelLoadError(f"{folder / INDEX} names a tensor {name!r}")
            out.setdefault(_plain_shard_name(file, folder), []).append(name)
        for file in out:
            if not (folder / file).is_file():
                raise ModelLoadError(f"shard {file} named by {folder / INDEX} is missing")
        return out
    if (folder / SINGLE).is_file():
        with _open_shard(folder, SINGLE) as f:
            return {SINGLE: list(f.keys())}  # noqa: SIM118
    raise ModelLoadError(f"{folder} holds no safetensors weights ({SINGLE} or {INDEX})")


def _open_shard(folder: Path, file: str):
    from safetensors import safe_open

    try:
        return safe_open(str(folder / file), "pt")
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError, OSError...
        raise ModelLoadError(
            f"shard {file} of {folder} is not a readable safetensors file: {e}"
        ) from None


def meta_model(folder: Path):
    """The model class from config.json on the meta device (no memory, no weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            return auto_model_class(lm_kind(config)).from_config(config)
    except Exception as e:  # noqa: BLE001 - transformers raises many types
        raise ModelLoadError(f"cannot build the model of {folder}: {e}") from e


class FolderStream:
    """A base folder read one tensor at a time (peak: about one tensor plus the shards'
    mapped pages). Everything but the tensors' contents is checked in :meth:`open`; the
    contents are digested as they are read and checked in :meth:`finish`."""

    streams = True

    def __init__(self, folder: Path, *, checked: Sequence[str] = ()) -> None:
        self.folder = Path(folder)
        self.also_checked = list(checked)
        self.model = None  # never loaded
        self.files: dict[str, list[str]] = {}
        self._digests: dict[str, bytes] = {}
        self._entries: dict = {}

    def open(self, edits: Sequence[Edit], *, ignore_mismatch: bool = False) -> BaseCheck:
        from mezo_ckpt.core.hashing import _alias_groups
        from mezo_ckpt.models.base import parse_dtype

        if ignore_mismatch:
            raise UnsupportedError("a streamed replay checks the whole base; it cannot ignore it")
        if len(edits) != 1 or getattr(edits[0].pinned, "peft", None) is not None:
            raise UnsupportedError(
                "a LoRA/prefix run replays its adapter, not the base: use --format peft"
            )
        (self.edit,) = edits
        self.want = edits[0].pinned.base
        self.dtype = parse_dtype(self.want.dtype)
        self.meta = meta_model(self.folder)
        self.of: dict[str, str] = {}
        self.aliases: dict[str, tuple[str, ...]] = {}
        for names, _ in _alias_groups(self.meta):
            for n in names:
                self.of[n] = names[0]
            self.aliases[names[0]] = tuple(names[1:])
        self.files = weight_files(self.folder)
        # canonical name -> (file, stored name); a tied tensor stored twice: the first
        self.where: dict[str, tuple[str, str]] = {}
        self.info: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for file, names in self.files.items():
            with _open_shard(self.folder, file) as f:
                present = set(f.keys())  # noqa: SIM118
                for stored in names:
                    if stored not in present:
                        raise ModelLoadError(
                            f"{stored[:120]!r}, which the index of {self.folder} puts in "
                            f"shard {file}, is missing from it"
                        )
                    canon = self.of.get(stored, stored)
                    if canon not in self.where:
                        self.where[canon] = (file, stored)
                        shape = tuple(f.get_slice(stored).get_shape())
                        self.info[canon] = (self._dtype_of(f, stored), shape)
        self.base_trainable = None
        if self.want.tensors_sha256 is None:  # a 1.0 file pins the base by its trained tensors
            self.base_trainable = self._legacy_fingerprint()
        self._precheck()
        return BaseCheck([], [])

    def shapes(self, names: Sequence[str]) -> dict[str, int]:
        return {n: _numel(self.info[n][1]) for n in names if n in self.info}

    def layout(self) -> list[tuple[str, list[tuple[str, str, torch.dtype, tuple[int, ...]]]]]:
        """For each input shard, in order: [(canonical, stored, dtype, shape)] by canonical
        name (the order tensors are yielded and written)."""
        rows: dict[str, list] = {file: [] for file in self.files}
        for canon, (file, stored) in self.where.items():
            rows[file].append((canon, stored, *self.info[canon]))
        return [(file, sorted(r)) for file, r in rows.items() if r]

    def _dtype_of(self, f, stored: str) -> torch.dtype:
        from mezo_ckpt.models.stfile import ST_DTYPES

        code = f.get_slice(stored).get_dtype()
        for dtype, name in ST_DTYPES.items():
            if name == code:
                return self.dtype if dtype.is_floating_point else dtype
        raise ModelLoadError(f"{stored}: unsupported safetensors dtype {code}")

    def _read(self, f, stored: str, file: str) -> torch.Tensor:
        try:
            t = f.get_tensor(stored)
        except Exception as e:  # noqa: BLE001 - a truncated or garbled shard
            raise ModelLoadError(
                f"shard {file} of {self.folder}: cannot read {stored}: {e}"
            ) from None
        return (t.to(self.dtype) if t.is_floating_point() else t).contiguous()

    def tensors(self, names: Sequence[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        from mezo_ckpt.core.hashing import dtype_name, tensor_digest
        from mezo_ckpt.trajectory.header import TENSOR_DIGEST_HEX, TensorEntry

        wanted = sorted(self.where if names is None else set(names) & set(self.where))
        for canon in wanted:
            file, stored = self.where[canon]
            # one shard open at a time: a mapping kept open keeps every page read from it
            # resident, and the peak would grow to the whole base
            with _open_shard(self.folder, file) as f:
                t = self._read(f, stored, file)
            d = tensor_digest(canon, t)
            self._digests[canon] = d
            self._entries[canon] = TensorEntry(
                canon,
                self.aliases.get(canon, ()),
                tuple(t.shape),
                dtype_name(t.dtype),
                d.hex()[:TENSOR_DIGEST_HEX],
            )
            yield canon, t
            del t

    def finish(self) -> BaseCheck:
        """The content check of what was streamed: refuse before anything is renamed."""
        from mezo_ckpt.models.base import diff_identities

        got = self._identity(self._digests, self._entries)
        missing = sorted(set(self.edit.trained) - set(self._digests))
        diffs, checked = diff_identities(self.want, got, missing=missing, folder=self.folder)
        if diffs:
            raise BaseMismatchError(MISMATCH, diffs)
        return BaseCheck(checked + self.also_checked, [])

    def _precheck(self) -> None:
        """Refuse a wrong base before any replay work: everything but the tensors'
        contents (architecture, manifest, names present, config, generation config,
        tokenizer) is known without reading a weight."""
        import dataclasses

        from mezo_ckpt.models.base import diff_identities

        got = dataclasses.replace(
            self._identity({}, {}),
            tensors=self.want.tensors,
            tensors_sha256=self.want.tensors_sha256,
        )
        missing = sorted(set(self.edit.trained) - set(self.where))
        diffs, _ = diff_identities(self.want, got, missing=missing, folder=self.folder)
        if diffs:
            raise BaseMismatchError(MISMATCH, diffs)

    def _identity(self, digests: dict, entries: dict):
        """The offered base's identity from streamed digests (what describe_base gives)."""
        from mezo_ckpt.core.hashing import (
            json_sha256,
            manifest_sha256,
            parameter_manifest,
            tensors_root,
            tokenizer_digests,
        )
        from mezo_ckpt.models.base import CONFIG_FILE, GENERATION_CONFIG_FILE, _config_of
        from mezo_ckpt.trajectory.header import BaseIdentity

        want, model, folder = self.want, self.meta, self.folder
        cfg = _config_of(model, folder, CONFIG_FILE)
        gen = _config_of(model, folder, GENERATION_CONFIG_FILE)
        config = getattr(model, "config", None)
        arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
        tie = bool(getattr(config, "tie_word_embeddings", False))
        if config is not None and hasattr(config, "get_text_config"):
            tie = bool(getattr(config.get_text_config(), "tie_word_embeddings", tie))
        manifest = [
            type(i)(i.name, i.aliases, i.shape, want.dtype) for i in parameter_manifest(model)
        ]
        return BaseIdentity(
            kind=want.kind,
            architecture=arch,
            model_type=str(getattr(config, "model_type", "custom")),
            dtype=want.dtype,
            tie_word_embeddings=tie,
            num_parameters=sum(_numel(i.shape) for i in manifest),
            manifest_sha256=manifest_sha256(manifest),
            trainable_sha256=self.base_trainable or want.trainable_sha256,
            tensors=tuple(entries[k] for k in sorted(entries)),
            tensors_sha256=tensors_root(digests),
            config=cfg or {},
            config_sha256=json_sha256(cfg or {}),
            generation_config_sha256=None if gen is None else json_sha256(gen),
            tokenizer=tokenizer_digests(folder),
        )

    def _legacy_fingerprint(self) -> str:
        """tensors_sha256 of the base's trained tensors (how a 1.0 file pins its base)."""
        from mezo_ckpt.core.hashing import Fingerprint

        fp = Fingerprint(self.edit.trained)
        for name in sorted(self.edit.trained):
            if name not in self.where:
                return "0" * 64  # missing: reported by the identity check
            file, stored = self.where[name]
            with _open_shard(self.folder, file) as f:
                fp.add(name, self._read(f, stored, file))
        return fp.hexdigest() or "0" * 64


def _numel(shape: Sequence[int]) -> int:
    return int(torch.Size(list(shape)).numel())
