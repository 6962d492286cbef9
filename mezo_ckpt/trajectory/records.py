"""Step records: the fixed-size rows of a trajectory's STEP frames (docs/FORMAT.md §6).

One row per step: a flags byte, each direction's 13-bit coefficient in 3 bytes, the
history coefficients of a momentum window, the decay multiplier and the losses where the
header says the file stores them. Pure encoding, decoding and validation; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mezo_ckpt.core.spec import COEF_MAX, COEF_MIN
from mezo_ckpt.core.update import UpdateBatch
from mezo_ckpt.errors import RecordError
from mezo_ckpt.trajectory.header import Header

#: Record flag: the step was skipped (non-finite losses); it changes no weight.
FLAG_SKIPPED = 0x01
KNOWN_FLAGS = FLAG_SKIPPED


def record_size(n_directions: int, *, decay: bool, losses: bool, history: int = 0) -> int:
    """Bytes per step record: flags, 3-byte coefficients, 3-byte history coefficients
    (``history`` earlier steps x n directions), optional decay and losses."""
    n = n_directions
    return 1 + 3 * n + 3 * history * n + (4 if decay else 0) + (8 * n if losses else 0)


def header_record_size(header: Header) -> int:
    """Bytes per step record of a file with this header."""
    r = header.records
    return record_size(header.n_directions, decay=r.decay, losses=r.losses, history=r.history)


def _encode_coef24(c: np.ndarray) -> np.ndarray:
    """fp32 coefficients (low 8 bits zero) -> [n, 3] uint8: bytes 1..3 of the LE fp32."""
    bits = np.ascontiguousarray(c, dtype="<f4").view("<u4")
    if np.any(bits & 0xFF):
        raise ValueError("coefficient has more than 13 significant bits")
    return bits.view(np.uint8).reshape(-1, 4)[:, 1:4]


def _decode_coef24(b: np.ndarray) -> np.ndarray:
    """[n, 3] uint8 -> float32 values."""
    u = (b[:, 0].astype("<u4") << 8) | (b[:, 1].astype("<u4") << 16) | (b[:, 2].astype("<u4") << 24)
    return u.view("<f4")


@dataclass
class StepRecords:
    """Columnar step records: arrays of length T (steps 0..T-1 in order)."""

    flags: np.ndarray  # uint8 [T]
    coefs: np.ndarray  # float32 [T, n]
    decay: np.ndarray  # float32 [T] (1.0 where the file stores no decay)
    losses: np.ndarray | None  # float32 [T, n, 2] (loss+, loss-) or None
    #: float32 [T, W, n]: history[t, k-1, j] applies direction j of step t-k (momentum
    #: window W, feature history-v1), or None.
    history: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, losses: bool, history: int = 0) -> StepRecords:
        return cls(
            np.zeros(0, np.uint8),
            np.zeros((0, n), np.float32),
            np.ones(0, np.float32),
            np.zeros((0, n, 2), np.float32) if losses else None,
            np.zeros((0, history, n), np.float32) if history else None,
        )

    def __len__(self) -> int:
        return int(self.flags.shape[0])

    @property
    def window(self) -> int:
        return 0 if self.history is None else int(self.history.shape[1])

    @classmethod
    def join(cls, parts: Sequence[StepRecords]) -> StepRecords:
        """Records of consecutive parts, in order (at least one part)."""
        first = parts[0]
        return cls(
            np.concatenate([p.flags for p in parts]),
            np.concatenate([p.coefs for p in parts]),
            np.concatenate([p.decay for p in parts]),
            None if first.losses is None else np.concatenate([p.losses for p in parts]),
            None if first.history is None else np.concatenate([p.history for p in parts]),
        )

    def concat(self, other: StepRecords) -> StepRecords:
        return StepRecords.join([self, other])

    def slice(self, lo: int, hi: int) -> StepRecords:
        return StepRecords(
            self.flags[lo:hi],
            self.coefs[lo:hi],
            self.decay[lo:hi],
            None if self.losses is None else self.losses[lo:hi],
            None if self.history is None else self.history[lo:hi],
        )

    def update_batch(self, upto: int | None = None) -> UpdateBatch:
        """Steps 0..upto-1 as the update rule consumes them (skipped steps left out)."""
        n = len(self) if upto is None else upto
        live = (self.flags[:n] & FLAG_SKIPPED) == 0
        return UpdateBatch(
            np.nonzero(live)[0].astype(np.int64),
            self.coefs[:n][live],
            self.decay[:n][live],
            None if self.history is None else self.history[:n][live],
        )


def encode_records(rec: StepRecords, *, decay: bool) -> bytes:
    """Serialize records (row-major, little-endian) per docs/FORMAT.md."""
    t, n = rec.coefs.shape
    cols = [rec.flags.reshape(t, 1).astype(np.uint8)]
    cols.append(_encode_coef24(rec.coefs.reshape(-1)).reshape(t, 3 * n))
    if rec.history is not None and rec.window:
        cols.append(_encode_coef24(rec.history.reshape(-1)).reshape(t, 3 * n * rec.window))
    if decay:
        cols.append(np.ascontiguousarray(rec.decay, "<f4").view(np.uint8).reshape(t, 4))
    if rec.losses is not None:
        cols.append(np.ascontiguousarray(rec.losses, "<f4").view(np.uint8).reshape(t, 8 * n))
    return np.concatenate(cols, axis=1).tobytes()


def decode_records(
    data: bytes, n: int, *, decay: bool, losses: bool, first_step: int = 0, history: int = 0
) -> StepRecords:
    """Parse and validate records; raises RecordError on any violation."""
    rs = record_size(n, decay=decay, losses=losses, history=history)
    if len(data) % rs:
        raise RecordError(f"record bytes ({len(data)}) are not a multiple of the record size {rs}")
    t = len(data) // rs
    raw = np.frombuffer(data, np.uint8).reshape(t, rs)
    flags = raw[:, 0].copy()
    coefs = _decode_coef24(raw[:, 1 : 1 + 3 * n].reshape(-1, 3)).reshape(t, n).copy()
    pos = 1 + 3 * n
    hist = None
    if history:
        w = 3 * n * history
        hist = _decode_coef24(raw[:, pos : pos + w].reshape(-1, 3)).reshape(t, history, n).copy()
        pos += w
    if decay:
        dec = raw[:, pos : pos + 4].copy().view("<f4").reshape(t).astype(np.float32)
        pos += 4
    else:
        dec = np.ones(t, np.float32)
    ls = raw[:, pos:].copy().view("<f4").reshape(t, n, 2).astype(np.float32) if losses else None
    rec = StepRecords(flags, coefs, dec, ls, hist)
    validate_records(rec, first_step)
    return rec


def _bad_coefficients(c: np.ndarray, live: np.ndarray) -> np.ndarray:
    """[T] bool: live rows of ``c`` ([T, ...] fp32) holding an invalid coefficient."""
    flat = c.reshape(len(c), -1)
    mag = np.abs(flat.astype(np.float64))
    bad = ~np.isfinite(flat)
    bad |= (mag != 0) & ((mag < COEF_MIN) | (mag >= COEF_MAX))
    bad |= ((flat.view("<u4") & 0x7FF) != 0) & np.isfinite(flat)
    return live & bad.any(axis=1)


def validate_records(rec: StepRecords, first_step: int = 0) -> None:
    """Check flags, coefficient encoding and ranges, decay multipliers and losses."""
    bad_flags = np.nonzero(rec.flags & ~np.uint8(KNOWN_FLAGS))[0]
    if bad_flags.size:
        i = int(bad_flags[0])
        raise RecordError(f"step {first_step + i}: unknown flag bits 0x{int(rec.flags[i]):02x}")
    skipped = (rec.flags & FLAG_SKIPPED).astype(bool)
    live = ~skipped
    c = rec.coefs
    if np.any(~np.isfinite(c[live])):
        i = int(np.nonzero(live & ~np.isfinite(c).all(axis=1))[0][0])
        raise RecordError(f"step {first_step + i}: non-finite coefficient without the skip flag")
    mag = np.abs(c.astype(np.float64))
    bad = live[:, None] & (mag != 0) & ((mag < COEF_MIN) | (mag >= COEF_MAX))
    bad |= live[:, None] & ((c.view("<u4") & 0x7FF) != 0) & np.isfinite(c)
    if np.any(bad):
        i = int(np.nonzero(bad.any(axis=1))[0][0])
        raise RecordError(
            f"step {first_step + i}: coefficient {c[i].tolist()} is not a valid "
            "13-bit coefficient in [2^-100, 2^100)"
        )
    if rec.history is not None and rec.window:
        bad_h = _bad_coefficients(rec.history, live)
        if np.any(bad_h):
            i = int(np.nonzero(bad_h)[0][0])
            raise RecordError(
                f"step {first_step + i}: a history coefficient is not a finite 13-bit "
                "coefficient in [2^-100, 2^100)"
            )
        # history[t, k-1] names step t-k: none may precede step 0
        steps = first_step + np.arange(len(rec))
        k = np.arange(1, rec.window + 1)
        before = steps[:, None] < k[None, :]
        early = live & (before & (rec.history != 0).any(axis=2)).any(axis=1)
        if np.any(early):
            i = int(np.nonzero(early)[0][0])
            raise RecordError(
                f"step {first_step + i}: a history coefficient names a step before step 0"
            )
    d = rec.decay
    bad_d = ~np.isfinite(d) | (d <= 0) | (d > 1)
    if np.any(bad_d):
        i = int(np.nonzero(bad_d)[0][0])
        raise RecordError(f"step {first_step + i}: decay multiplier {float(d[i])} outside (0, 1]")
    if rec.losses is not None and np.any(live[:, None, None] & ~np.isfinite(rec.losses)):
        i = int(np.nonzero(live & ~np.isfinite(rec.losses).all(axis=(1, 2)))[0][0])
        raise RecordError(f"step {first_step + i}: non-finite loss without the skip flag")
