"""What a rebuild applies to a base: a trajectory to one step, or an exact delta.

Both are *edits*: each names the base it must be applied to (the identity the pipeline
checks before touching a weight), the tensors it changes, how it changes one tensor, and
what the result must hash to. :func:`mezo_ckpt.rebuild.pipeline.rebuild` runs any edit
from any source into any sink.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch

from mezo_ckpt.core.update import UpdateBatch, UpdateSpec, replay_tensor
from mezo_ckpt.errors import DeltaError, VerificationError
from mezo_ckpt.trajectory import Trajectory
from mezo_ckpt.trajectory.header import BaseIdentity, _Fields
from mezo_ckpt.trajectory.steps import check_verifiable, describe_verification, judge, resolve_step


@dataclass(frozen=True)
class Verdict:
    """What one rebuilt result is known to be."""

    step: int | None
    verified: str | None  # "fingerprint", "records" or None (see mezo_ckpt.trajectory.steps)
    covered_by: int | None = None
    fingerprint: str | None = None  # sha256 of the trained tensors, when computed

    def describe(self) -> str:
        return describe_verification(self.verified, self.covered_by)


@dataclass(frozen=True)
class Pinned:
    """The header-like view the base check needs: the identity, what is trained, adapter."""

    base: BaseIdentity
    trainable: tuple[str, ...]
    peft: Any = None


class Edit(Protocol):
    """Anything the pipeline can apply to a base (:class:`Plan`, :class:`DeltaEdit`)."""

    @property
    def pinned(self) -> Any: ...  # .base (BaseIdentity), .trainable, .peft
    @property
    def trained(self) -> tuple[str, ...]: ...
    @property
    def needs_fingerprint(self) -> bool: ...
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def apply(self, name: str, tensor: torch.Tensor) -> int: ...
    def element_steps(self, numel: int) -> int: ...
    def judge(self, fingerprint: str | None) -> Verdict: ...


@dataclass(frozen=True)
class Plan:
    """Replay ``traj`` to ``step`` (from ``start``: the steps before it are already in the
    weights, as in the trainer's repair of a resumed run)."""

    traj: Trajectory
    step: int
    start: int = 0
    verify: bool = True
    allow_unverified: bool = False
    backend: str = "auto"
    path: Path | None = None
    sha256: str | None = None

    @classmethod
    def make(
        cls,
        traj: Trajectory,
        step: int | str | None = None,
        *,
        verify: bool = True,
        allow_unverified: bool = False,
        **kw: Any,
    ) -> Plan:
        """Resolve ``step`` (None: last, "best", N) and refuse a step nothing binds.

        Raises:
            StepOutOfRangeError, UnverifiedStepError: see :mod:`mezo_ckpt.trajectory.steps`.
        """
        target = resolve_step(traj, step)
        check_verifiable(traj, target, allow_unverified=allow_unverified)
        return cls(traj, target, verify=verify, allow_unverified=allow_unverified, **kw)

    @property
    def header(self):
        return self.traj.header

    @property
    def pinned(self):
        return self.traj.header

    @property
    def trained(self) -> tuple[str, ...]:
        return tuple(self.traj.header.trainable)

    @cached_property
    def spec(self) -> UpdateSpec:
        return UpdateSpec.from_header(self.traj.header)

    @cached_property
    def batch(self) -> UpdateBatch:
        batch = self.traj.update_batch(self.step)
        return batch.select(batch.steps >= self.start) if self.start else batch

    @property
    def needs_fingerprint(self) -> bool:
        return self.verify and self.step in self.traj.checkpoints

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from mezo_ckpt.models.adapters import prepare

        return prepare(self.traj.header, model)

    def apply(self, name: str, tensor: torch.Tensor) -> int:
        return replay_tensor(tensor, name, self.spec, self.batch, backend=self.backend)

    def element_steps(self, numel: int) -> int:
        return numel * len(self.batch)

    def judge(self, fingerprint: str | None) -> Verdict:
        verified, covered = judge(self.traj, self.step, fingerprint, verify=self.verify)
        return Verdict(self.step, verified, covered, fingerprint)

    def provenance(self, verdict: Verdict | None = None, **extra: Any) -> dict:
        """The provenance record written next to an output (docs/FORMAT.md)."""
        from mezo_ckpt.models.export import provenance

        if verdict is not None:
            extra.setdefault("verified", verdict.verified)
        return provenance(self.traj, self.step, self.sha256, **extra)


#: Suffixes of the extra tensors that make a delta exact.
FIX_INDEX, FIX_VALUE = "::fix_index", "::fix_value"
#: Float dtypes a delta's fix values may have (the trained tensors' dtypes).
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class DeltaEdit:
    """An exact delta (``replay --format delta``): tuned = (base.float() + d).to(dtype),
    then the listed elements set to their stored values."""

    tensors: dict[str, torch.Tensor]
    prov: dict[str, Any]
    source: str = ""
    _base: BaseIdentity | None = field(default=None, repr=False)

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], prov: dict, source: str) -> DeltaEdit:
        """Check a delta's structure before any base is loaded.

        Raises:
            DeltaError: a malformed delta, or one without what verifying it needs.
        """
        bad = lambda why: DeltaError(f"{source}: {why}")  # noqa: E731
        if not isinstance(prov.get("base"), dict):
            raise bad("its provenance has no base description; re-export it with `replay`")
        if not isinstance(prov.get("tuned_sha256"), str) or len(prov["tuned_sha256"]) != 64:
            raise bad(
                "records no fingerprint of the tuned weights (tuned_sha256), so the result "
                "could not be verified; re-export it with `mezo-ckpt replay --format delta`"
            )
        identity = prov.get("base_identity")
        base = None
        if identity is not None:
            try:
                base = BaseIdentity.from_json(_Fields(identity, "base_identity."))
            except Exception as e:  # noqa: BLE001 - HeaderError and friends, with the field
                raise bad(f"its base identity is malformed ({e})") from None
        elif not isinstance(prov["base"].get("tensors_sha256"), str):
            raise bad(
                "pins no whole-base identity (made from a format 1.0 trajectory?): the base "
                "could not be checked; re-export it from a 1.1 trajectory"
            )
        names = [k for k in tensors if "::" not in k]
        if not names:
            raise bad("holds no tensors")
        for k, t in tensors.items():
            name, sep, suffix = k.partition("::")
            if sep and (name not in tensors or sep + suffix not in (FIX_INDEX, FIX_VALUE)):
                raise bad(f"has an unexpected entry {k[:120]!r}")
            if not sep and t.dtype != torch.float32:
                raise bad(f"{k[:120]}: a delta tensor must be float32, not {t.dtype}")
            if sep + suffix == FIX_INDEX:
                if t.dtype != torch.int64 or t.dim() != 1:
                    raise bad(f"{k[:120]} must be a 1-D int64 tensor")
                n = tensors[name].numel()
                if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
                    raise bad(f"{k[:120]} holds indices outside the tensor (0..{n - 1})")
                value = tensors.get(name + FIX_VALUE)
                if value is None or value.dtype not in _FLOATS or value.shape != t.shape:
                    raise bad(f"{name[:120]}: fix indices without matching fix values")
            if sep + suffix == FIX_VALUE and name + FIX_INDEX not in tensors:
                raise bad(f"{k[:120]}: fix values without fix indices")
        return cls(tensors, prov, source, base)

    @property
    def trained(self) -> tuple[str, ...]:
        return tuple(sorted(k for k in self.tensors if "::" not in k))

    @property
    def pinned(self) -> Any:
        if self._base is not None:
            return Pinned(self._base, self.trained)
        return None  # a delta from 0.2.0: only its tensors' root digest (see check_legacy)

    @property
    def step(self) -> int | None:
        s = self.prov.get("step")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    needs_fingerprint = True

    def check_legacy(self, model: torch.nn.Module) -> tuple[list[str], list[str]]:
        """(differences, checked) for a delta written before deltas embedded the whole
        identity: every tensor by the root digest it records, and the architecture and
        dtype (its config and tokenizer were never recorded, and the result says so)."""
        from mezo_ckpt.models.base import describe_base

        want = self.prov["base"]
        got = describe_base(model, (), trainable_digest=False)
        diffs = [
            f"{label}: delta has {want.get(key)!r}, offered base has {getattr(got, key)!r}"
            for key, label in (("architecture", "architecture"), ("dtype", "dtype"))
            if want.get(key) != getattr(got, key)
        ]
        if got.tensors_sha256 != want.get("tensors_sha256"):
            diffs.append("tensor content differs (the delta records only the root digest)")
        n = len(got.tensors or ())
        checked = [
            "architecture, dtype",
            f"all {n} tensors by their root digest (this delta predates whole-base "
            "identities: config and tokenizer files were not recorded, so not checked)",
        ]
        return diffs, checked

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def apply(self, name: str, tensor: torch.Tensor) -> int:
        d = self.tensors[name]
        if tuple(d.shape) != tuple(tensor.shape):
            raise DeltaError(
                f"{self.source}: the delta's tensor {name} has shape {list(d.shape)}, the base "
                f"{list(tensor.shape)}"
            )
        new = (tensor.detach().float() + d.to(tensor.device)).to(tensor.dtype)
        if name + FIX_INDEX in self.tensors:
            idx = self.tensors[name + FIX_INDEX].to(tensor.device)
            new.view(-1)[idx] = self.tensors[name + FIX_VALUE].to(tensor.device, tensor.dtype)
        with torch.no_grad():
            tensor.copy_(new)
        return tensor.numel()

    def element_steps(self, numel: int) -> int:
        return numel

    def judge(self, fingerprint: str | None) -> Verdict:
        if fingerprint != self.prov["tuned_sha256"]:
            raise VerificationError(
                "the patched weights do not match the fingerprint the delta records: the "
                "base is not the one the delta was made from"
            )
        return Verdict(self.step, "fingerprint", None, fingerprint)

    def provenance(self, verdict: Verdict | None = None, **extra: Any) -> dict:
        prov = {k: v for k, v in self.prov.items() if k != "base_identity"}
        return {**prov, "kind": "weights", "from_delta": self.source, **extra}


def delta_identity_json(identity: BaseIdentity) -> dict:
    """The whole-base identity a delta embeds (so apply-delta checks every tensor, the
    config and the tokenizer, as replay does)."""
    return json.loads(json.dumps(identity.to_json()))


def finite_rate(element_steps: int, seconds: float) -> float:
    rate = element_steps / seconds if seconds > 0 else math.inf
    return rate if math.isfinite(rate) else 0.0
