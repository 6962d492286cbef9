"""Where a rebuild writes: a model in memory, a from_pretrained folder, one safetensors
file, an exact delta, a PEFT adapter folder, a streamed sharded folder, or statistics.

Every sink writes only inside the output it was given, through a staged sibling that is
renamed into place after every check passed; names read from files (shard and tensor
names) are data, never parts of a path.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.errors import OutputError
from mezo_ckpt.models.base import BaseCheck
from mezo_ckpt.rebuild.plan import Edit, Verdict


def _meta(edits: Sequence[Edit], verdicts: Sequence[Verdict], check: BaseCheck, extra) -> dict:
    return edits[0].provenance(  # type: ignore[attr-defined]
        verdicts[0],
        checked=check.checked,
        base_mismatch=check.overridden or None,
        **extra,
    )


class ModelSink:
    """The rebuilt model, in memory (``mezo_ckpt.load``, ``mezo_ckpt.replay``)."""

    keeps_base = False
    #: The sink records the rebuilt fingerprint (the pipeline computes it once, for both).
    wants_fingerprint = False

    def names(self, edits: Sequence[Edit]) -> list[str] | None:
        return sorted({n for e in edits for n in e.trained})

    def staging(self, source) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def take(self, name: str, base: torch.Tensor, outs: list[torch.Tensor]) -> None:
        pass

    def close(self, source, edits, verdicts, check) -> Any:
        rebuilt = getattr(source, "state_dict", None)  # a state-dict base: the dict
        return source.model if source.model is not None or rebuilt is None else rebuilt()


class HfFolderSink(ModelSink):
    """A folder ``from_pretrained`` loads; a LoRA run's adapter is merged (peft's merge)."""

    def __init__(self, out: Path, *, replace: bool = False, **extra: Any) -> None:
        self.out, self.replace, self.extra = Path(out), replace, extra

    def close(self, source, edits, verdicts, check) -> Path:
        from mezo_ckpt.models.export import export_hf

        meta = _meta(edits, verdicts, check, self.extra)
        model = source.model
        if getattr(edits[0].pinned, "peft", None) is not None:
            from mezo_ckpt.models.adapters import merged

            model = merged(model)
            meta["merged"] = (
                "the adapter was merged by peft (a matrix product in the parameters' dtype: "
                "not bit-stable across machines; the adapter itself is)"
            )
        export_hf(model, self.out, tokenizer_from=source.folder, meta=meta, replace=self.replace)
        return self.out


class PeftSink(HfFolderSink):
    """The adapter folder ``PeftModel.from_pretrained(base, out)`` loads."""

    def close(self, source, edits, verdicts, check) -> Path:
        from mezo_ckpt.models.export import export_adapter_folder

        meta = _meta(edits, verdicts, check, self.extra)
        export_adapter_folder(
            source.model,
            self.out,
            header=edits[0].pinned,
            folder=source.folder,
            meta=meta,
            replace=self.replace,
        )
        return self.out


class SafetensorsSink(HfFolderSink):
    """One file under the model's state-dict names (tied tensors under each name)."""

    def close(self, source, edits, verdicts, check) -> Path:
        from mezo_ckpt.models.export import export_safetensors, state_dict_tensors

        meta = _meta(edits, verdicts, check, self.extra)
        tensors = (
            state_dict_tensors(source.model) if source.model is not None else source.state_dict()
        )
        export_safetensors(_unshared(tensors), self.out, {**meta, "kind": "weights"})
        return self.out


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: a tensor under several names is copied for each
    name after the first (the format refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


class DeltaSink(HfFolderSink):
    """An exact patch, trained minus base for the trained tensors, with the whole base
    identity it must be applied to (``mezo-ckpt apply-delta`` checks it)."""

    keeps_base = True
    wants_fingerprint = True  # the tuned fingerprint apply-delta checks its result against

    def __init__(self, out: Path, *, replace: bool = False, **extra: Any) -> None:
        super().__init__(out, replace=replace, **extra)
        self.delta: dict[str, torch.Tensor] = {}
        self.fixes = 0

    def take(self, name: str, base: torch.Tensor, outs: list[torch.Tensor]) -> None:
        from mezo_ckpt.models.export import delta_tensors

        delta, fixes = delta_tensors({name: base}, {name: outs[0]}, [name])
        self.delta.update(delta)
        self.fixes += fixes

    def close(self, source, edits, verdicts, check) -> Path:
        from mezo_ckpt.models.export import DELTA_RULE, export_safetensors
        from mezo_ckpt.rebuild.plan import delta_identity_json

        meta = _meta(edits, verdicts, check, self.extra)
        tuned = verdicts[0].fingerprint
        if tuned is None:
            raise OutputError("the delta would not cover every trained tensor")
        meta.update(
            kind="delta",
            rule=DELTA_RULE,
            exact=True,
            fixed_elements=self.fixes,
            tuned_sha256=tuned,
            base_identity=delta_identity_json(edits[0].pinned.base),
        )
        export_safetensors(self.delta, self.out, meta)
        return self.out


# ----------------------------------------------------------------------------- streaming


class ShardSink(ModelSink):
    """A sharded from_pretrained folder written one tensor at a time from a
    :class:`~mezo_ckpt.rebuild.sources.FolderStream` (peak: about one tensor). Output
    shards carry names of our own (``model-00001-of-00004.safetensors``) and an index we
    write: nothing read from the base's index becomes a path."""

    def __init__(self, out: Path, *, replace: bool = False, **extra: Any) -> None:
        self.out, self.replace, self.extra = Path(out), replace, extra

    def names(self, edits: Sequence[Edit]) -> list[str] | None:
        return None  # every tensor goes to the output

    @contextlib.contextmanager
    def staging(self, source) -> Iterator[None]:
        from mezo_ckpt.models.stfile import ShardWriter
        from mezo_ckpt.util.fsutil import staged_folder

        layout = source.layout()
        n = len(layout)
        files = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        with staged_folder(self.out, replace=self.replace) as tmp:
            self.tmp = tmp
            self.writers = contextlib.ExitStack()
            self.writer_of: dict[str, tuple[ShardWriter, str]] = {}
            self.weight_map: dict[str, str] = {}
            self.total_size = 0
            with self.writers:
                for file, (_, rows) in zip(files, layout):
                    entries = [(stored, dtype, shape) for _, stored, dtype, shape in rows]
                    w = self.writers.enter_context(
                        ShardWriter(tmp / file, entries, {"format": "pt"})
                    )
                    for canon, stored, dtype, shape in rows:
                        self.writer_of[canon] = (w, stored)
                        self.weight_map[stored] = file
                        self.total_size += _nbytes(dtype, shape)
                self.sharded = n > 1
                yield

    def take(self, name: str, base: torch.Tensor, outs: list[torch.Tensor]) -> None:
        writer, stored = self.writer_of[name]
        writer.write(stored, outs[0])

    def close(self, source, edits, verdicts, check) -> Path:
        import shutil

        from mezo_ckpt.models.base import GENERATION_CONFIG_FILE
        from mezo_ckpt.models.export import PROVENANCE_FILE, _copy_tokenizer, recorded_files

        self.writers.close()  # flush, fsync and check every shard before hashing them
        if self.sharded:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": dict(sorted(self.weight_map.items())),
            }
            (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        for name in ("config.json", GENERATION_CONFIG_FILE):
            p = source.folder / name
            if p.is_file():
                shutil.copy2(p, self.tmp / name)
        _copy_tokenizer(source.folder, self.tmp)
        doc = {
            **_meta(edits, verdicts, check, self.extra),
            "streamed": True,
            "files": recorded_files(self.tmp),
        }
        (self.tmp / PROVENANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        return self.out


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    return int(torch.Size(list(shape)).numel()) * torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- diff

_LAYER = re.compile(r"^((?:.*?\.)?(?:layers|h|layer|blocks)\.\d+)\.")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to (``model.layers.3``), else its module path."""
    m = _LAYER.match(name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def natural_key(name: str) -> list:
    """Sort key that orders ``layers.3`` before ``layers.20``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class DiffSink(ModelSink):
    """Per-tensor and per-layer change between two rebuilt states of one base."""

    def __init__(self) -> None:
        self.per: dict[str, dict[str, float]] = {}
        self.layers: dict[str, dict[str, float]] = {}

    def take(self, name: str, base: torch.Tensor, outs: list[torch.Tensor]) -> None:
        xa, xb = outs
        d = xb.double() - xa.double()
        sq, ref = float((d * d).sum()), float((xa.double() ** 2).sum())
        row = {
            "elements": float(xa.numel()),
            "norm": math.sqrt(sq),
            "relative": math.sqrt(sq) / math.sqrt(ref) if ref > 0 else math.inf,
            "max_abs": float(d.abs().max()) if xa.numel() else 0.0,
            "changed": float((xa != xb).sum()),
        }
        self.per[name] = row
        agg = self.layers.setdefault(
            layer_of(name), {"sq": 0.0, "ref": 0.0, "max_abs": 0.0, "elements": 0.0}
        )
        agg["sq"] += sq
        agg["ref"] += ref
        agg["max_abs"] = max(agg["max_abs"], row["max_abs"])
        agg["elements"] += row["elements"]

    def close(self, source, edits, verdicts, check) -> dict[str, Any]:
        layers = {
            k: {
                "elements": v["elements"],
                "norm": math.sqrt(v["sq"]),
                "relative": math.sqrt(v["sq"] / v["ref"]) if v["ref"] > 0 else math.inf,
                "max_abs": v["max_abs"],
            }
            for k, v in sorted(self.layers.items(), key=lambda kv: natural_key(kv[0]))
        }
        total_sq = sum(v["sq"] for v in self.layers.values())
        total_ref = sum(v["ref"] for v in self.layers.values())
        return {
            "total": {
                "norm": math.sqrt(total_sq),
                "relative": math.sqrt(total_sq / total_ref) if total_ref > 0 else math.inf,
                "max_abs": max((v["max_abs"] for v in self.per.values()), default=0.0),
                "tensors": len(self.per),
            },
            "layers": layers,
            "tensors": dict(sorted(self.per.items(), key=lambda kv: natural_key(kv[0]))),
        }
