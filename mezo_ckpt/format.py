"""Trajectory file format v1: strict reader, crash-safe appending writer, compaction.

Layout (docs/FORMAT.md is the normative spec):

* a 24-byte zstd *skippable* frame carrying the magic ``MEZOCKPT`` and the format version;
* then zstd frames, each with a declared content size and a content checksum, whose
  decompressed content starts with a 4-byte tag: ``HEAD`` (JSON header, first and once),
  ``STEP`` (a run of fixed-size step records), ``EVAL`` (an evaluation, JSON) or ``CKPT``
  (fingerprint of the trained tensors after a step, JSON).

A killed writer leaves a prefix of complete frames; the reader either rejects the torn
tail (strict) or reports where the valid prefix ends (for resume).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from mezo_ckpt.errors import (
    BadMagicError,
    CorruptFrameError,
    HeaderError,
    RecordError,
    TrajectoryNotFoundError,
    TruncatedError,
    UnsupportedError,
)
from mezo_ckpt.stream import GENERATOR, KEY_RULE, Z_KINDS
from mezo_ckpt.update import ARITHMETIC, COEF_MAX, COEF_MIN, ROUNDING_MODES, UpdateBatch

FORMAT_MAJOR = 1
FORMAT_MINOR = 0
SKIPPABLE_MAGIC = 0x184D2A5E
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FILE_MAGIC = b"MEZOCKPT"
PREAMBLE = (
    struct.pack("<II", SKIPPABLE_MAGIC, 16)
    + FILE_MAGIC
    + struct.pack("<HHI", FORMAT_MAJOR, FORMAT_MINOR, 0)
)
PREAMBLE_SIZE = len(PREAMBLE)  # 24

TAG_HEAD, TAG_STEP, TAG_EVAL, TAG_CKPT = b"HEAD", b"STEP", b"EVAL", b"CKPT"
STEP_PREFIX = struct.Struct("<4sQI")  # tag, first step, record count

FLAG_SKIPPED = 0x01
KNOWN_FLAGS = FLAG_SKIPPED
#: Features a reader must implement to read a file that lists them in ``requires``.
KNOWN_FEATURES: frozenset[str] = frozenset()

MAX_FILE_BYTES = 256 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_SMALL_FRAME_BYTES = 64 << 10
MAX_STEP_FRAME_BYTES = 16 << 20
MAX_RECORD_BYTES = 1 << 30  # decompressed records in one file
MAX_WINDOW = 8 << 20
MAX_JSON_DEPTH = 32
MAX_STEPS = 2**32 - 1
MAX_DIRECTIONS = 64
COMPACT_RECORDS_PER_FRAME = 1 << 16
ZSTD_LEVEL = 19

DTYPES = ("float32", "bfloat16", "float16")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?$")
REPO_FILE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


# ----------------------------------------------------------------------------- records


def record_size(n_directions: int, *, decay: bool, losses: bool) -> int:
    """Bytes per step record: flags, 3-byte coefficients, optional decay and losses."""
    return 1 + 3 * n_directions + (4 if decay else 0) + (8 * n_directions if losses else 0)


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

    @classmethod
    def empty(cls, n: int, losses: bool) -> StepRecords:
        return cls(
            np.zeros(0, np.uint8),
            np.zeros((0, n), np.float32),
            np.ones(0, np.float32),
            np.zeros((0, n, 2), np.float32) if losses else None,
        )

    def __len__(self) -> int:
        return int(self.flags.shape[0])

    def concat(self, other: StepRecords) -> StepRecords:
        return StepRecords(
            np.concatenate([self.flags, other.flags]),
            np.concatenate([self.coefs, other.coefs]),
            np.concatenate([self.decay, other.decay]),
            None if self.losses is None else np.concatenate([self.losses, other.losses]),
        )

    def slice(self, lo: int, hi: int) -> StepRecords:
        return StepRecords(
            self.flags[lo:hi],
            self.coefs[lo:hi],
            self.decay[lo:hi],
            None if self.losses is None else self.losses[lo:hi],
        )

    def update_batch(self, upto: int | None = None) -> UpdateBatch:
        """Steps 0..upto-1 as the update rule consumes them (skipped steps left out)."""
        n = len(self) if upto is None else upto
        live = (self.flags[:n] & FLAG_SKIPPED) == 0
        return UpdateBatch(
            np.nonzero(live)[0].astype(np.int64), self.coefs[:n][live], self.decay[:n][live]
        )


def encode_records(rec: StepRecords, *, decay: bool) -> bytes:
    """Serialize records (row-major, little-endian) per docs/FORMAT.md."""
    t, n = rec.coefs.shape
    cols = [rec.flags.reshape(t, 1).astype(np.uint8)]
    cols.append(_encode_coef24(rec.coefs.reshape(-1)).reshape(t, 3 * n))
    if decay:
        cols.append(np.ascontiguousarray(rec.decay, "<f4").view(np.uint8).reshape(t, 4))
    if rec.losses is not None:
        cols.append(np.ascontiguousarray(rec.losses, "<f4").view(np.uint8).reshape(t, 8 * n))
    return np.concatenate(cols, axis=1).tobytes()


def decode_records(
    data: bytes, n: int, *, decay: bool, losses: bool, first_step: int = 0
) -> StepRecords:
    """Parse and validate records; raises RecordError on any violation."""
    rs = record_size(n, decay=decay, losses=losses)
    if len(data) % rs:
        raise RecordError(f"record bytes ({len(data)}) are not a multiple of the record size {rs}")
    t = len(data) // rs
    raw = np.frombuffer(data, np.uint8).reshape(t, rs)
    flags = raw[:, 0].copy()
    coefs = _decode_coef24(raw[:, 1 : 1 + 3 * n].reshape(-1, 3)).reshape(t, n).copy()
    pos = 1 + 3 * n
    if decay:
        dec = raw[:, pos : pos + 4].copy().view("<f4").reshape(t).astype(np.float32)
        pos += 4
    else:
        dec = np.ones(t, np.float32)
    ls = raw[:, pos:].copy().view("<f4").reshape(t, n, 2).astype(np.float32) if losses else None
    rec = StepRecords(flags, coefs, dec, ls)
    validate_records(rec, first_step)
    return rec


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
    d = rec.decay
    bad_d = ~np.isfinite(d) | (d <= 0) | (d > 1)
    if np.any(bad_d):
        i = int(np.nonzero(bad_d)[0][0])
        raise RecordError(f"step {first_step + i}: decay multiplier {float(d[i])} outside (0, 1]")
    if rec.losses is not None and np.any(live[:, None, None] & ~np.isfinite(rec.losses)):
        i = int(np.nonzero(live & ~np.isfinite(rec.losses).all(axis=(1, 2)))[0][0])
        raise RecordError(f"step {first_step + i}: non-finite loss without the skip flag")


# ----------------------------------------------------------------------------- header


def strict_json(data: bytes, what: str, cls: type[Exception] = HeaderError) -> Any:
    """Parse UTF-8 JSON rejecting duplicate keys, NaN/Infinity, huge numbers, deep nesting."""
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise cls(f"{what} is not valid UTF-8: {e}") from None

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in items:
            if k in out:
                raise cls(f"{what} has a duplicate key {k!r}")
            out[k] = v
        return out

    def const(name: str) -> Any:
        raise cls(f"{what} contains the non-standard literal {name}")

    def pint(s: str) -> int:
        if len(s.lstrip("-")) > 19:
            raise cls(f"{what} contains an absurd integer ({s[:24]}...)")
        return int(s)

    def pfloat(s: str) -> float:
        if len(s) > 40:
            raise cls(f"{what} contains an absurd number ({s[:24]}...)")
        v = float(s)
        if not math.isfinite(v):
            raise cls(f"{what} contains a number that overflows: {s}")
        return v

    if _json_depth_exceeds(text):  # before the recursive parser sees it
        raise cls(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(
            text, object_pairs_hook=pairs, parse_constant=const, parse_int=pint, parse_float=pfloat
        )
    except cls:
        raise
    except (ValueError, RecursionError) as e:
        raise cls(f"{what} is not valid JSON: {e}") from None
    try:  # lone surrogates ("\ud800") parse but are not text
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise cls(f"{what} contains an invalid unicode escape (lone surrogate)") from None
    return value


def _json_depth_exceeds(text: str) -> bool:
    """Bracket depth outside strings exceeds the limit."""
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8, NaN forbidden."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _need(obj: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise HeaderError(f"header field {where}{key} is missing")
    v = obj[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise HeaderError(f"header field {where}{key} has the wrong type (bool)")
    if not isinstance(v, types):
        raise HeaderError(f"header field {where}{key} has the wrong type ({type(v).__name__})")
    return v


def _hex(obj: dict, key: str, where: str, pattern: re.Pattern = HEX64, optional: bool = False):
    if optional and obj.get(key) is None:
        return None
    v = _need(obj, key, str, where)
    if not pattern.fullmatch(v):
        raise HeaderError(f"header field {where}{key} is not a lowercase hex digest: {v[:80]!r}")
    return v


def validate_header(h: Any) -> dict:
    """Check a parsed header against the v1 schema. Returns it unchanged.

    Raises:
        HeaderError: wrong structure or values.
        UnsupportedError: required features, generator, z kind or arithmetic unknown here.
    """
    if not isinstance(h, dict):
        raise HeaderError("header is not a JSON object")
    requires = _need(h, "requires", list, "")
    unknown = [f for f in requires if not isinstance(f, str) or f not in KNOWN_FEATURES]
    if unknown:
        raise UnsupportedError(f"trajectory requires features this version lacks: {unknown}")
    tool = _need(h, "tool", dict, "")
    _need(tool, "name", str, "tool.")
    _need(tool, "version", str, "tool.")

    base = _need(h, "base", dict, "")
    kind = _need(base, "kind", str, "base.")
    if kind not in ("hub", "local", "embedded"):
        raise HeaderError(f"base.kind must be hub, local or embedded, not {kind!r}")
    repo = base.get("repo_id")
    if repo is not None and (
        not isinstance(repo, str) or not REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo
    ):
        raise HeaderError(f"base.repo_id is not a Hub repo id: {str(repo)[:80]!r}")
    if kind == "hub" and repo is None:
        raise HeaderError("base.kind is hub but base.repo_id is missing")
    _hex(base, "revision", "base.", HEX40, optional=True)
    files = _need(base, "files", dict, "base.")
    for name, digest in files.items():
        if not REPO_FILE.fullmatch(name) or ".." in name.split("/"):
            raise HeaderError(f"base.files has an unsafe file name {name[:80]!r}")
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            raise HeaderError(f"base.files[{name!r}] is not a sha256 hex digest")
    for k in ("architecture", "model_type"):
        _need(base, k, str, "base.")
    if _need(base, "dtype", str, "base.") not in DTYPES:
        raise HeaderError(f"base.dtype must be one of {DTYPES}")
    _need(base, "tie_word_embeddings", bool, "base.")
    if _need(base, "num_parameters", int, "base.") < 0:
        raise HeaderError("base.num_parameters is negative")
    _hex(base, "manifest_sha256", "base.")
    _hex(base, "trainable_sha256", "base.")
    if "embedded" in base and base["embedded"] is not None:
        emb = _need(base, "embedded", dict, "base.")
        _need(emb, "gguf_file", str, "base.embedded.")
        if "/" in emb["gguf_file"] or "\\" in emb["gguf_file"]:
            raise HeaderError("base.embedded.gguf_file must be a bare file name")
        _hex(emb, "gguf_sha256", "base.embedded.")

    trainable = _need(h, "trainable", list, "")
    if not trainable or not all(isinstance(n, str) and n for n in trainable):
        raise HeaderError("trainable must be a non-empty list of parameter names")
    if trainable != sorted(set(trainable)):
        raise HeaderError("trainable must be sorted and free of duplicates")

    pert = _need(h, "perturbation", dict, "")
    if _need(pert, "generator", str, "perturbation.") != GENERATOR:
        raise UnsupportedError(
            f"unknown generator {pert['generator']!r} (this version: {GENERATOR})"
        )
    if _need(pert, "key_rule", str, "perturbation.") != KEY_RULE:
        raise UnsupportedError(f"unknown key rule {pert['key_rule']!r} (this version: {KEY_RULE})")
    if _need(pert, "z", str, "perturbation.") not in Z_KINDS:
        raise UnsupportedError(f"unknown z kind {pert['z']!r} (known: {Z_KINDS})")
    seed = _need(pert, "seed", int, "perturbation.")
    if not 0 <= seed < 2**63:
        raise HeaderError("perturbation.seed must be in [0, 2**63)")
    eps = _need(pert, "eps", (int, float), "perturbation.")
    if not (math.isfinite(eps) and eps > 0):
        raise HeaderError("perturbation.eps must be a positive finite number")
    nd = _need(pert, "n_directions", int, "perturbation.")
    if not 1 <= nd <= MAX_DIRECTIONS:
        raise HeaderError(f"perturbation.n_directions must be in [1, {MAX_DIRECTIONS}]")

    upd = _need(h, "update", dict, "")
    if _need(upd, "arithmetic", str, "update.") != ARITHMETIC:
        raise UnsupportedError(
            f"unknown update arithmetic {upd['arithmetic']!r} (this version: {ARITHMETIC})"
        )
    if _need(upd, "rounding", str, "update.") not in ROUNDING_MODES:
        raise UnsupportedError(f"unknown rounding mode {upd['rounding']!r}")
    wd = _need(upd, "weight_decay", (int, float), "update.")
    if not (math.isfinite(wd) and wd >= 0):
        raise HeaderError("update.weight_decay must be a finite number >= 0")
    decay_params = _need(upd, "decay_params", list, "update.")
    if not all(isinstance(n, str) for n in decay_params):
        raise HeaderError("update.decay_params must be a list of parameter names")
    if not set(decay_params) <= set(trainable) or decay_params != sorted(set(decay_params)):
        raise HeaderError("update.decay_params must be a sorted subset of trainable")

    rec = _need(h, "records", dict, "")
    _need(rec, "decay", bool, "records.")
    _need(rec, "losses", bool, "records.")
    total = _need(h, "total_steps", int, "")
    if not 0 <= total <= MAX_STEPS:
        raise HeaderError(f"total_steps must be in [0, {MAX_STEPS}]")
    for k in ("optimizer", "config"):
        _need(h, k, dict, "")
    return h


# ----------------------------------------------------------------------------- reading


@dataclass
class Evaluation:
    """One evaluation of the weights after ``step`` steps on a data split."""

    step: int
    split: str
    metrics: dict[str, float]

    def as_json(self) -> dict:
        return {"step": self.step, "split": self.split, "metrics": self.metrics}


@dataclass
class Trajectory:
    """A parsed trajectory: header, step records, evaluations and checkpoints."""

    header: dict
    records: StepRecords
    evaluations: list[Evaluation] = field(default_factory=list)
    checkpoints: dict[int, str] = field(default_factory=dict)  # step -> trainable sha256
    valid_length: int = 0  # bytes of the valid prefix
    truncated_tail: bool = False  # a torn final frame was dropped (allow_truncated_tail)
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)

    @property
    def num_steps(self) -> int:
        return len(self.records)

    @property
    def total_steps(self) -> int:
        return int(self.header["total_steps"])

    @property
    def complete(self) -> bool:
        return self.num_steps == self.total_steps

    @property
    def n_directions(self) -> int:
        return int(self.header["perturbation"]["n_directions"])

    def update_batch(self, upto: int | None = None) -> UpdateBatch:
        """Updates of steps 0..upto-1 (all by default)."""
        return self.records.update_batch(upto)


def _frame_length(data: memoryview, pos: int) -> int:
    """Length in bytes of the zstd frame at ``pos``; raises TruncatedError if it is cut."""
    n = len(data)
    try:
        hsize = zstandard.frame_header_size(data[pos : pos + 18])
    except zstandard.ZstdError:
        if n - pos < 18:
            raise TruncatedError(f"file ends inside a frame header at byte {pos}") from None
        raise CorruptFrameError(f"invalid zstd frame header at byte {pos}") from None
    if pos + hsize > n:
        raise TruncatedError(f"file ends inside a frame header at byte {pos}")
    try:
        params = zstandard.get_frame_parameters(data[pos : pos + hsize])
    except zstandard.ZstdError as e:
        raise CorruptFrameError(f"invalid zstd frame header at byte {pos}: {e}") from None
    q = pos + hsize
    while True:
        if q + 3 > n:
            raise TruncatedError(f"file ends inside the frame that starts at byte {pos}")
        bh = data[q] | (data[q + 1] << 8) | (data[q + 2] << 16)
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 3:
            raise CorruptFrameError(f"reserved zstd block type in the frame at byte {pos}")
        q += 3 + (1 if btype == 1 else bsize)
        if q > n:
            raise TruncatedError(f"file ends inside the frame that starts at byte {pos}")
        if last:
            break
    if params.has_checksum:
        q += 4
        if q > n:
            raise TruncatedError(f"file ends inside the checksum of the frame at byte {pos}")
    return q - pos


def _read_frame(
    dctx: zstandard.ZstdDecompressor, data: memoryview, pos: int, cap: int
) -> tuple[bytes, int]:
    """Decompress the frame at ``pos`` (after validating its header); returns (content, end)."""
    if data[pos : pos + 4] != ZSTD_MAGIC:
        head = bytes(data[pos : pos + 4])
        if not any(data[pos:]):  # zero-filled tail: a torn write after power loss
            raise TruncatedError(
                f"file ends in {len(data) - pos} zero bytes at byte {pos} (torn write)"
            )
        if len(head) < 4 and ZSTD_MAGIC.startswith(head):
            raise TruncatedError(f"file ends inside a frame magic at byte {pos}")
        raise CorruptFrameError(
            f"trailing garbage or foreign data at byte {pos} (starts with {head.hex()})"
        )
    length = _frame_length(data, pos)
    params = zstandard.get_frame_parameters(data[pos : pos + length])
    if not params.has_checksum:
        raise CorruptFrameError(f"frame at byte {pos} has no content checksum")
    if params.content_size in (-1, zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise CorruptFrameError(f"frame at byte {pos} does not declare its content size")
    if params.content_size > cap:
        raise CorruptFrameError(
            f"frame at byte {pos} declares {params.content_size} bytes "
            f"(limit {cap}): refusing a decompression bomb"
        )
    if params.dict_id != 0:
        raise CorruptFrameError(f"frame at byte {pos} needs a dictionary")
    if params.window_size > MAX_WINDOW:
        raise CorruptFrameError(f"frame at byte {pos} needs a {params.window_size}-byte window")
    try:
        out = dctx.decompress(data[pos : pos + length], max_output_size=cap)
    except zstandard.ZstdError as e:
        raise CorruptFrameError(f"frame at byte {pos} is corrupt: {e}") from None
    if len(out) != params.content_size:
        raise CorruptFrameError(
            f"frame at byte {pos} decompressed to {len(out)} bytes, declared {params.content_size}"
        )
    return out, pos + length


def _check_preamble(data: bytes) -> tuple[int, int]:
    if not data:
        raise BadMagicError("empty file: not a mezo-ckpt trajectory")
    if len(data) < PREAMBLE_SIZE:
        if PREAMBLE[: len(data)] == data[:PREAMBLE_SIZE]:
            raise TruncatedError("file ends inside the preamble")
        raise BadMagicError("not a mezo-ckpt trajectory (wrong magic)")
    magic, size = struct.unpack_from("<II", data, 0)
    if magic != SKIPPABLE_MAGIC or size != 16 or data[8:16] != FILE_MAGIC:
        raise BadMagicError("not a mezo-ckpt trajectory (wrong magic)")
    major, minor, reserved = struct.unpack_from("<HHI", data, 16)
    if major != FORMAT_MAJOR:
        raise UnsupportedError(
            f"trajectory format version {major}.{minor} is not supported "
            f"(this version reads {FORMAT_MAJOR}.x); upgrade mezo-ckpt"
        )
    if reserved != 0:
        raise BadMagicError("preamble reserved field is not zero")
    return major, minor


def parse_trajectory(data: bytes, *, allow_truncated_tail: bool = False) -> Trajectory:
    """Parse trajectory bytes strictly.

    Args:
        data: the whole file.
        allow_truncated_tail: accept a torn last frame (a killed writer) and report the
            valid prefix in ``valid_length`` instead of raising TruncatedError.

    Raises:
        TrajectoryFormatError subclasses for malformed input, UnsupportedError for files
        this version cannot reproduce.
    """
    if len(data) > MAX_FILE_BYTES:
        raise CorruptFrameError(f"file is {len(data)} bytes; the limit is {MAX_FILE_BYTES}")
    version = _check_preamble(data)
    mv = memoryview(data)
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    pos = PREAMBLE_SIZE
    if pos == len(data):
        raise TruncatedError("file has a preamble but no header")
    try:
        content, pos = _read_frame(dctx, mv, pos, MAX_HEADER_BYTES)
    except TruncatedError:
        raise TruncatedError("file ends inside the header frame") from None
    if content[:4] != TAG_HEAD:
        raise HeaderError("the first frame is not a header")
    header = validate_header(strict_json(content[4:], "header"))
    n = int(header["perturbation"]["n_directions"])
    has_decay = bool(header["records"]["decay"])
    has_losses = bool(header["records"]["losses"])
    rs = record_size(n, decay=has_decay, losses=has_losses)
    chunks: list[StepRecords] = []
    count = 0
    evals: list[Evaluation] = []
    ckpts: dict[int, str] = {}
    truncated = False
    valid = pos
    while pos < len(data):
        try:
            content, end = _read_frame(dctx, mv, pos, MAX_STEP_FRAME_BYTES)
        except TruncatedError:
            if not allow_truncated_tail:
                raise
            truncated = True
            break
        tag = content[:4]
        if tag == TAG_STEP:
            if len(content) < STEP_PREFIX.size:
                raise RecordError(f"step frame at byte {pos} is too short")
            _, first, cnt = STEP_PREFIX.unpack_from(content, 0)
            body = content[STEP_PREFIX.size :]
            if first != count:
                what = "duplicated" if first < count else "non-contiguous"
                raise RecordError(
                    f"{what} steps: frame at byte {pos} starts at step {first}, expected {count}"
                )
            if cnt == 0 or len(body) != cnt * rs:
                raise RecordError(
                    f"step frame at byte {pos}: {len(body)} record bytes for "
                    f"{cnt} records of {rs} bytes"
                )
            if count + cnt > header["total_steps"]:
                raise RecordError(f"more step records than total_steps={header['total_steps']}")
            if (count + cnt) * rs > MAX_RECORD_BYTES:
                raise CorruptFrameError(f"step records exceed {MAX_RECORD_BYTES} bytes in total")
            rec = decode_records(body, n, decay=has_decay, losses=has_losses, first_step=first)
            chunks.append(rec)
            count += cnt
        elif tag == TAG_EVAL:
            if len(content) > MAX_SMALL_FRAME_BYTES:
                raise CorruptFrameError(f"evaluation frame at byte {pos} is too large")
            evals.append(_parse_eval(strict_json(content[4:], "evaluation record", RecordError)))
        elif tag == TAG_CKPT:
            if len(content) > MAX_SMALL_FRAME_BYTES:
                raise CorruptFrameError(f"checkpoint frame at byte {pos} is too large")
            step, digest = _parse_ckpt(strict_json(content[4:], "checkpoint record", RecordError))
            if step in ckpts and ckpts[step] != digest:
                raise RecordError(f"two different checkpoints for step {step}")
            ckpts[step] = digest
        elif tag == TAG_HEAD:
            raise HeaderError(f"second header frame at byte {pos}")
        else:
            raise CorruptFrameError(f"unknown frame tag {tag!r} at byte {pos}")
        pos = valid = end
    records = StepRecords.empty(n, has_losses)
    if chunks:
        records = StepRecords(
            np.concatenate([c.flags for c in chunks]),
            np.concatenate([c.coefs for c in chunks]),
            np.concatenate([c.decay for c in chunks]),
            np.concatenate([c.losses for c in chunks]) if has_losses else None,
        )
    for e in evals:
        if e.step > count:
            raise RecordError(f"evaluation at step {e.step} is beyond the {count} recorded steps")
    for s in ckpts:
        if s > count:
            raise RecordError(f"checkpoint at step {s} is beyond the {count} recorded steps")
    return Trajectory(header, records, evals, ckpts, valid, truncated, version)


def _parse_eval(obj: Any) -> Evaluation:
    if not isinstance(obj, dict):
        raise RecordError("evaluation record is not a JSON object")
    step, split, metrics = obj.get("step"), obj.get("split"), obj.get("metrics")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
        raise RecordError(f"evaluation record has an invalid step {step!r}")
    if not isinstance(split, str) or not split or len(split) > 64:
        raise RecordError("evaluation record has an invalid split name")
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in metrics.items()
    ):
        raise RecordError("evaluation metrics must map names to numbers")
    return Evaluation(step, split, {k: float(v) for k, v in metrics.items()})


def _parse_ckpt(obj: Any) -> tuple[int, str]:
    if not isinstance(obj, dict):
        raise RecordError("checkpoint record is not a JSON object")
    step, digest = obj.get("step"), obj.get("trainable_sha256")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
        raise RecordError(f"checkpoint record has an invalid step {step!r}")
    if not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise RecordError("checkpoint record has an invalid trainable_sha256")
    return step, digest


def read_trajectory(path: str | os.PathLike, *, allow_truncated_tail: bool = False) -> Trajectory:
    """Read and validate a trajectory file (see :func:`parse_trajectory`)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise TrajectoryNotFoundError(f"no such trajectory file: {p}") from None
    if size > MAX_FILE_BYTES:
        raise CorruptFrameError(f"{p} is {size} bytes; the limit is {MAX_FILE_BYTES}")
    return parse_trajectory(p.read_bytes(), allow_truncated_tail=allow_truncated_tail)


# ----------------------------------------------------------------------------- writing


def _compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)


def encode_frame(content: bytes) -> bytes:
    """One zstd frame with content size and checksum."""
    return _compressor().compress(content)


def step_frame(first_step: int, rec: StepRecords, *, decay: bool) -> bytes:
    return encode_frame(
        STEP_PREFIX.pack(TAG_STEP, first_step, len(rec)) + encode_records(rec, decay=decay)
    )


def eval_frame(e: Evaluation) -> bytes:
    return encode_frame(TAG_EVAL + dump_json(e.as_json()))


def ckpt_frame(step: int, digest: str) -> bytes:
    return encode_frame(TAG_CKPT + dump_json({"step": step, "trainable_sha256": digest}))


def header_frame(header: dict) -> bytes:
    validate_header(header)
    data = dump_json(header)
    if len(data) > MAX_HEADER_BYTES:
        raise HeaderError(f"header is {len(data)} bytes; the limit is {MAX_HEADER_BYTES}")
    return encode_frame(TAG_HEAD + data)


def records_per_frame(header: dict) -> int:
    """Most records one STEP frame may hold without exceeding the reader's frame cap."""
    rs = record_size(
        int(header["perturbation"]["n_directions"]),
        decay=bool(header["records"]["decay"]),
        losses=bool(header["records"]["losses"]),
    )
    return max(1, min(COMPACT_RECORDS_PER_FRAME, (MAX_STEP_FRAME_BYTES - STEP_PREFIX.size) // rs))


def serialize(traj: Trajectory) -> bytes:
    """The compact form of a trajectory: header, big step frames, evaluations, checkpoints."""
    h = traj.header
    parts = [PREAMBLE, header_frame(h)]
    decay = bool(h["records"]["decay"])
    per = records_per_frame(h)
    for lo in range(0, traj.num_steps, per):
        hi = min(traj.num_steps, lo + per)
        parts.append(step_frame(lo, traj.records.slice(lo, hi), decay=decay))
    parts.extend(eval_frame(e) for e in traj.evaluations)
    parts.extend(ckpt_frame(s, d) for s, d in sorted(traj.checkpoints.items()))
    return b"".join(parts)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically: temp file in the same folder, fsync, rename, fsync folder."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(p.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_trajectory(path: str | os.PathLike, traj: Trajectory) -> None:
    """Write a complete trajectory atomically in compact form."""
    atomic_write_bytes(path, serialize(traj))


class TrajectoryWriter:
    """Appends frames to a journal file, each write flushed (and fsynced) before returning.

    A process killed at any moment leaves a file whose complete frames form a valid
    trajectory prefix; :meth:`open_for_resume` drops a torn tail and continues.
    """

    def __init__(self, path: Path, header: dict, num_steps: int, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.header = header
        self.num_steps = num_steps
        self.fsync = fsync
        self._decay = bool(header["records"]["decay"])
        self._n = int(header["perturbation"]["n_directions"])
        self._losses = bool(header["records"]["losses"])
        self._f = open(self.path, "ab")  # noqa: SIM115 - long-lived handle

    @classmethod
    def create(
        cls, path: str | os.PathLike, header: dict, *, fsync: bool = True
    ) -> TrajectoryWriter:
        """Start a new journal (overwrites ``path``) holding the preamble and header."""
        p = Path(path)
        frame = header_frame(header)
        with open(p, "wb") as f:
            f.write(PREAMBLE + frame)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        return cls(p, header, 0, fsync=fsync)

    @classmethod
    def open_for_resume(
        cls, path: str | os.PathLike, *, fsync: bool = True
    ) -> tuple[TrajectoryWriter, Trajectory]:
        """Read a journal, cut any torn tail, and reopen it for appending."""
        p = Path(path)
        traj = read_trajectory(p, allow_truncated_tail=True)
        if traj.truncated_tail:
            with open(p, "r+b") as f:
                f.truncate(traj.valid_length)
                f.flush()
                os.fsync(f.fileno())
        return cls(p, traj.header, traj.num_steps, fsync=fsync), traj

    def _write(self, frame: bytes) -> None:
        self._f.write(frame)
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def append_steps(self, rec: StepRecords) -> None:
        """Append records for steps ``num_steps .. num_steps + len(rec) - 1``."""
        if len(rec) == 0:
            return
        if rec.coefs.shape[1] != self._n or (rec.losses is not None) != self._losses:
            raise ValueError("records do not match the header's record layout")
        if self.num_steps + len(rec) > self.header["total_steps"]:
            raise ValueError("more steps than total_steps")
        validate_records(rec, self.num_steps)
        per = records_per_frame(self.header)
        for lo in range(0, len(rec), per):
            part = rec.slice(lo, min(len(rec), lo + per))
            self._write(step_frame(self.num_steps, part, decay=self._decay))
            self.num_steps += len(part)

    def append_evaluation(self, e: Evaluation) -> None:
        if not 0 <= e.step <= self.num_steps:
            raise ValueError(f"evaluation at step {e.step} but {self.num_steps} steps recorded")
        if not all(math.isfinite(v) for v in e.metrics.values()):
            raise ValueError(f"evaluation metrics must be finite: {e.metrics}")
        self._write(eval_frame(e))

    def append_checkpoint(self, step: int, digest: str) -> None:
        if not 0 <= step <= self.num_steps:
            raise ValueError(f"checkpoint at step {step} but {self.num_steps} steps recorded")
        self._write(ckpt_frame(step, digest))

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compact(journal: str | os.PathLike, final: str | os.PathLike) -> Trajectory:
    """Rewrite a journal into its compact form at ``final`` (atomically); keeps the journal."""
    traj = read_trajectory(journal)
    write_trajectory(final, traj)
    return traj


def iter_frames(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    """(start, end, content) of each frame after the preamble; for tools and tests."""
    mv = memoryview(data)
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    pos = PREAMBLE_SIZE
    while pos < len(data):
        content, end = _read_frame(dctx, mv, pos, MAX_STEP_FRAME_BYTES)
        yield pos, end, content
        pos = end
