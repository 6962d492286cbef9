"""Trajectory file format 1.x: the pure codec (frames, header JSON, chain) and the reader.

Layout (docs/FORMAT.md is the normative spec):

* a 24-byte zstd *skippable* frame carrying the magic ``MEZOCKPT`` and the format version;
* then zstd frames, each with a declared content size and a content checksum, whose
  decompressed content starts with a 4-byte tag: ``HEAD`` (JSON header, first and once),
  ``STEP`` (a run of fixed-size step records), ``EVAL`` (an evaluation, JSON) or ``CKPT``
  (fingerprint of the trained tensors after a step, JSON).

Format 1.1 binds the records together: every ``EVAL`` and ``CKPT`` carries the *chain
digest* of its step, a running sha256 over the header bytes and the records before it,
so an edited, reordered or spliced record is detected, and a file whose last checkpoint
is missing is reported as cut. A killed writer leaves a prefix of complete frames; the
reader either rejects the torn tail (strict) or reports where the valid prefix ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from mezo_ckpt.core.update import UpdateBatch
from mezo_ckpt.errors import (
    BadMagicError,
    ChainMismatchError,
    CorruptFrameError,
    HeaderError,
    RecordError,
    TrajectoryFormatError,
    TrajectoryNotFoundError,
    TruncatedError,
    UnsupportedError,
)
from mezo_ckpt.trajectory.header import CHAIN_RULE, HEX64, MAX_STEPS, Header
from mezo_ckpt.trajectory.records import (
    StepRecords,
    decode_records,
    encode_records,
    header_record_size,
)
from mezo_ckpt.util.fsutil import atomic_write_bytes, read_regular_file

FORMAT_MAJOR = 1
#: Minor version written for files with a record chain (format 1.1); 1.0 files have none.
FORMAT_MINOR = 1
SKIPPABLE_MAGIC = 0x184D2A5E
SKIPPABLE_PAYLOAD = 16
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FILE_MAGIC = b"MEZOCKPT"
PREAMBLE_SIZE = 8 + SKIPPABLE_PAYLOAD  # 24


def preamble(minor: int = FORMAT_MINOR) -> bytes:
    """The 24-byte preamble of a format 1.``minor`` file."""
    return (
        struct.pack("<II", SKIPPABLE_MAGIC, SKIPPABLE_PAYLOAD)
        + FILE_MAGIC
        + struct.pack("<HHI", FORMAT_MAJOR, minor, 0)
    )


TAG_HEAD, TAG_STEP, TAG_EVAL, TAG_CKPT = b"HEAD", b"STEP", b"EVAL", b"CKPT"
STEP_PREFIX = struct.Struct("<4sQI")  # tag, first step, record count

MAX_FILE_BYTES = 256 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_SMALL_FRAME_BYTES = 64 << 10
MAX_STEP_FRAME_BYTES = 16 << 20
MAX_RECORD_BYTES = 1 << 30  # decompressed records in one file
MAX_WINDOW = 8 << 20
MAX_JSON_DEPTH = 32
#: Longest integer literal (digits, sign not counted) and other number literal accepted.
MAX_INT_DIGITS = 19
MAX_NUMBER_CHARS = 40
MAX_SPLIT_NAME = 64
COMPACT_RECORDS_PER_FRAME = 1 << 16
ZSTD_LEVEL = 19
#: Domain tag of the record chain (§7.3).
CHAIN_TAG = b"mezo-ckpt/chain/v1\x00"


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
        if len(s.lstrip("-")) > MAX_INT_DIGITS:
            raise cls(f"{what} contains an absurd integer ({s[:24]}...)")
        return int(s)

    def pfloat(s: str) -> float:
        if len(s) > MAX_NUMBER_CHARS:
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


# ----------------------------------------------------------------------------- chain


def chain_start(header_bytes: bytes) -> Any:
    """The running hash of the record chain before any record (§7.3)."""
    h = hashlib.sha256(CHAIN_TAG)
    h.update(struct.pack("<Q", len(header_bytes)))
    h.update(header_bytes)
    return h


def chain_digest(header_bytes: bytes, record_bytes: bytes | memoryview, step: int, rs: int) -> str:
    """Chain digest at ``step``: sha256 over the tag, the header and records ``0..step-1``."""
    h = chain_start(header_bytes)
    h.update(memoryview(record_bytes)[: step * rs])
    return h.hexdigest()


# ----------------------------------------------------------------------------- model


@dataclass
class Evaluation:
    """One evaluation of the weights after ``step`` steps on a data split."""

    step: int
    split: str
    metrics: dict[str, float]
    chain_sha256: str | None = None  # format 1.1: the chain digest at ``step``

    def as_json(self) -> dict:
        out: dict[str, Any] = {"step": self.step, "split": self.split, "metrics": self.metrics}
        if self.chain_sha256 is not None:
            out["chain_sha256"] = self.chain_sha256
        return out


@dataclass
class Trajectory:
    """A parsed trajectory: header, step records, evaluations and checkpoints.

    Attributes:
        header: the typed header.
        header_bytes: the header frame's JSON exactly as stored (the chain covers them).
        records: the step records, in step order.
        evaluations: evaluation records, in file order.
        checkpoints: step -> fingerprint of the trainable tensors after that step.
        chains: step -> chain digest, for the checkpoints of a bound (1.1) file.
        record_bytes: the records as stored (concatenated), for the chain.
        valid_length: bytes of the valid prefix (equals the file size unless truncated).
        truncated_tail: a torn final frame was dropped (``allow_truncated_tail``).
        version: (major, minor) from the preamble.
    """

    header: Header
    records: StepRecords
    evaluations: list[Evaluation] = field(default_factory=list)
    checkpoints: dict[int, str] = field(default_factory=dict)
    chains: dict[int, str] = field(default_factory=dict)
    header_bytes: bytes = b""
    record_bytes: bytes = b""
    valid_length: int = 0
    truncated_tail: bool = False
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)

    def __post_init__(self) -> None:
        self.header = Header.coerce(self.header)
        if not self.header_bytes:
            self.header_bytes = dump_json(dict(self.header.raw) or self.header.to_json())
        if not self.record_bytes and len(self.records):
            self.record_bytes = encode_records(self.records, decay=self.header.records.decay)

    @property
    def num_steps(self) -> int:
        return len(self.records)

    @property
    def total_steps(self) -> int:
        return self.header.total_steps

    @property
    def bound(self) -> bool:
        """Whether the records are bound by a chain (format 1.1)."""
        return self.header.chain is not None

    @property
    def record_size(self) -> int:
        return header_record_size(self.header)

    @property
    def sealed_step(self) -> int | None:
        """The last step a checkpoint covers (records up to it are bound), or None."""
        if not self.checkpoints:
            return None
        return max(self.checkpoints)

    @property
    def sealed(self) -> bool:
        """Whether a checkpoint covers the last recorded step (nothing was cut off)."""
        return self.sealed_step == self.num_steps

    @property
    def complete(self) -> bool:
        """All configured steps are recorded and (for a bound file) sealed."""
        return self.num_steps == self.total_steps and (self.sealed or not self.bound)

    def chain_at(self, step: int) -> str:
        """The chain digest at ``step`` (``0 <= step <= num_steps``)."""
        return chain_digest(self.header_bytes, self.record_bytes, step, self.record_size)

    def covered_by(self, step: int) -> int | None:
        """The first checkpoint step ``>= step`` (its chain binds records ``0..step-1``)."""
        later = [s for s in self.checkpoints if s >= step]
        return min(later) if later else None

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


def _complete_frame_after(dctx: zstandard.ZstdDecompressor, data: memoryview, start: int) -> bool:
    """Whether a whole, checksummed frame starts anywhere at or after ``start`` (what a
    torn last frame cannot be followed by)."""
    raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
    at = raw.find(ZSTD_MAGIC, start)
    while at != -1:
        try:
            _read_frame(dctx, data, at, MAX_STEP_FRAME_BYTES)
            return True
        except TrajectoryFormatError:
            pass
        at = raw.find(ZSTD_MAGIC, at + 1)
    return False


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
        # A short file that is a prefix of a valid preamble (any minor version) is cut.
        if all(p is None or p == d for p, d in zip(_PREAMBLE_PATTERN, data)):
            raise TruncatedError("file ends inside the preamble")
        raise BadMagicError("not a mezo-ckpt trajectory (wrong magic)")
    magic, size = struct.unpack_from("<II", data, 0)
    if magic != SKIPPABLE_MAGIC or size != SKIPPABLE_PAYLOAD or data[8:16] != FILE_MAGIC:
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


#: Byte pattern of a valid preamble; None marks the minor-version bytes (any value).
_PREAMBLE_PATTERN: tuple[int | None, ...] = tuple(
    None if 18 <= i < 20 else b for i, b in enumerate(preamble(0))
)


def parse_trajectory(data: bytes, *, allow_truncated_tail: bool = False) -> Trajectory:
    """Parse trajectory bytes strictly.

    Args:
        data: the whole file.
        allow_truncated_tail: accept a torn last frame (a killed writer) and report the
            valid prefix in ``valid_length`` instead of raising TruncatedError.

    Raises:
        TrajectoryFormatError subclasses for malformed input (ChainMismatchError when the
        records contradict a chain digest), UnsupportedError for files this version
        cannot reproduce.
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
    header_bytes = content[4:]
    header = Header.from_json(strict_json(header_bytes, "header"))
    check_version_features(version[1], header)
    n = header.n_directions
    has_decay, has_losses = header.records.decay, header.records.losses
    window = header.records.history
    rs = header_record_size(header)
    chunks: list[StepRecords] = []
    bodies: list[bytes] = []
    count = 0
    evals: list[Evaluation] = []
    ckpts: dict[int, str] = {}
    chains: dict[int, str] = {}
    truncated = False
    valid = pos
    while pos < len(data):
        try:
            content, end = _read_frame(dctx, mv, pos, MAX_STEP_FRAME_BYTES)
        except TruncatedError:
            if not allow_truncated_tail:
                raise
            if _complete_frame_after(dctx, mv, pos + 1):
                raise CorruptFrameError(
                    f"the frame at byte {pos} is damaged and complete frames follow it: the "
                    "file is corrupt, not cut (a killed writer leaves only its last frame cut)"
                ) from None
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
            if count + cnt > header.total_steps:
                raise RecordError(f"more step records than total_steps={header.total_steps}")
            if (count + cnt) * rs > MAX_RECORD_BYTES:
                raise CorruptFrameError(f"step records exceed {MAX_RECORD_BYTES} bytes in total")
            chunks.append(
                decode_records(
                    body, n, decay=has_decay, losses=has_losses, first_step=first, history=window
                )
            )
            bodies.append(body)
            count += cnt
        elif tag == TAG_EVAL:
            if len(content) > MAX_SMALL_FRAME_BYTES:
                raise CorruptFrameError(f"evaluation frame at byte {pos} is too large")
            evals.append(_parse_eval(strict_json(content[4:], "evaluation record", RecordError)))
        elif tag == TAG_CKPT:
            if len(content) > MAX_SMALL_FRAME_BYTES:
                raise CorruptFrameError(f"checkpoint frame at byte {pos} is too large")
            obj = strict_json(content[4:], "checkpoint record", RecordError)
            step, digest, chain = _parse_ckpt(obj)
            if step in ckpts and (ckpts[step], chains.get(step)) != (digest, chain):
                raise RecordError(f"two different checkpoints for step {step}")
            ckpts[step] = digest
            if chain is not None:
                chains[step] = chain
        elif tag == TAG_HEAD:
            raise HeaderError(f"second header frame at byte {pos}")
        else:
            raise CorruptFrameError(f"unknown frame tag {tag!r} at byte {pos}")
        pos = valid = end
    records = StepRecords.join(chunks) if chunks else StepRecords.empty(n, has_losses, window)
    for e in evals:
        if e.step > count:
            raise RecordError(f"evaluation at step {e.step} is beyond the {count} recorded steps")
    for s in ckpts:
        if s > count:
            raise RecordError(f"checkpoint at step {s} is beyond the {count} recorded steps")
    traj = Trajectory(
        header,
        records,
        evals,
        ckpts,
        chains,
        header_bytes=header_bytes,
        record_bytes=b"".join(bodies),
        valid_length=valid,
        truncated_tail=truncated,
        version=version,
    )
    if header.chain is not None:
        _check_chain(traj)
    return traj


def check_version_features(minor: int, header: Header) -> None:
    """One rule for "a 1.1 file" (docs/FORMAT.md §3.1): a preamble minor version of 1 or
    more requires the record chain (``integrity``) and the whole-base identity
    (``base.tensors``/``tensors_sha256`` and ``base.config``/``config_sha256``); a minor
    version of 0 carries neither. A key deleted from a 1.1 header, or a version lowered
    to pass a 1.1 file off as 1.0, is refused instead of switching the checks off.

    Raises:
        HeaderError: the preamble's minor version and the header disagree.
    """
    chained, whole = header.chain is not None, header.base.pins_everything
    if minor >= 1 and not (chained and whole):
        lacks = [
            k for k, ok in (("integrity", chained), ("the whole-base identity", whole)) if not ok
        ]
        raise HeaderError(
            f"a format 1.{minor} file must carry {' and '.join(lacks)} (docs/FORMAT.md "
            "§3.1): a key was deleted from its header"
        )
    if minor == 0 and (chained or header.base.tensors_sha256 is not None):
        raise HeaderError(
            "a format 1.0 file cannot carry the record chain or the whole-base identity "
            "(docs/FORMAT.md §3.1: they come together in 1.1): a 1.1 file whose version "
            "was lowered, or a whole-base header without its integrity key"
        )


def _check_chain(traj: Trajectory) -> None:
    """Every checkpoint and evaluation of a bound file carries its step's chain digest."""
    assert traj.header.chain == CHAIN_RULE
    rs = traj.record_size
    wanted = {s for s in traj.checkpoints} | {e.step for e in traj.evaluations}
    running = chain_start(traj.header_bytes)
    digests: dict[int, str] = {}
    done = 0
    for s in sorted(wanted):
        running.update(memoryview(traj.record_bytes)[done * rs : s * rs])
        done = s
        digests[s] = running.copy().hexdigest()
    for s in sorted(traj.checkpoints):
        got = traj.chains.get(s)
        if got is None:
            raise RecordError(f"checkpoint at step {s} lacks the chain digest its header requires")
        if got != digests[s]:
            raise ChainMismatchError(
                f"the records before step {s} do not match the chain digest of the checkpoint "
                "at that step: a record was edited, reordered, or spliced in from another run"
            )
    for e in traj.evaluations:
        if e.chain_sha256 is None:
            raise RecordError(
                f"evaluation at step {e.step} lacks the chain digest its header requires"
            )
        if e.chain_sha256 != digests[e.step]:
            raise ChainMismatchError(
                f"the evaluation at step {e.step} ({e.split}) belongs to other records: it "
                "was edited or spliced in from another run"
            )


def _parse_eval(obj: Any) -> Evaluation:
    if not isinstance(obj, dict):
        raise RecordError("evaluation record is not a JSON object")
    step, split, metrics = obj.get("step"), obj.get("split"), obj.get("metrics")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
        raise RecordError(f"evaluation record has an invalid step {step!r}")
    if not isinstance(split, str) or not split or len(split) > MAX_SPLIT_NAME:
        raise RecordError("evaluation record has an invalid split name")
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in metrics.items()
    ):
        raise RecordError("evaluation metrics must map names to numbers")
    chain = _chain_field(obj, "evaluation")
    return Evaluation(step, split, {k: float(v) for k, v in metrics.items()}, chain)


def _chain_field(obj: dict, what: str) -> str | None:
    chain = obj.get("chain_sha256")
    if chain is not None and (not isinstance(chain, str) or not HEX64.fullmatch(chain)):
        raise RecordError(f"{what} record has an invalid chain_sha256")
    return chain


def _parse_ckpt(obj: Any) -> tuple[int, str, str | None]:
    if not isinstance(obj, dict):
        raise RecordError("checkpoint record is not a JSON object")
    step, digest = obj.get("step"), obj.get("trainable_sha256")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
        raise RecordError(f"checkpoint record has an invalid step {step!r}")
    if not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise RecordError("checkpoint record has an invalid trainable_sha256")
    return step, digest, _chain_field(obj, "checkpoint")


def read_trajectory(path: str | os.PathLike, *, allow_truncated_tail: bool = False) -> Trajectory:
    """Read and validate a trajectory file (see :func:`parse_trajectory`).

    Only regular files are read, at most MAX_FILE_BYTES of them (a device or FIFO is
    refused without reading or blocking).
    """
    return parse_trajectory(read_trajectory_bytes(path), allow_truncated_tail=allow_truncated_tail)


def read_trajectory_bytes(path: str | os.PathLike) -> bytes:
    """A trajectory file's bytes (a regular file of at most MAX_FILE_BYTES), to parse and
    hash the same bytes.

    Raises:
        TrajectoryNotFoundError, CorruptFrameError, OutputError: missing, too large or not
            a regular file, unreadable.
    """
    p = Path(path)
    try:
        return read_regular_file(p, MAX_FILE_BYTES, "trajectory", CorruptFrameError)
    except FileNotFoundError:
        raise TrajectoryNotFoundError(f"no such trajectory file: {p}") from None


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
    """The EVAL frame of ``e``; what a reader would refuse is refused here.

    Raises:
        ValueError: the record is over the reader's 64 KiB or does not parse back.
    """
    content = TAG_EVAL + dump_json(e.as_json())
    if len(content) > MAX_SMALL_FRAME_BYTES:
        raise ValueError(
            f"an evaluation record of {len(content):,} bytes is over the format's limit of "
            f"{MAX_SMALL_FRAME_BYTES:,} (fewer metrics, shorter names)"
        )
    try:
        _parse_eval(strict_json(content[4:], "evaluation record", RecordError))
    except TrajectoryFormatError as err:
        raise ValueError(f"a reader would refuse this evaluation record: {err}") from None
    return encode_frame(content)


def ckpt_frame(step: int, digest: str, chain: str | None = None) -> bytes:
    obj: dict[str, Any] = {"step": step, "trainable_sha256": digest}
    if chain is not None:
        obj["chain_sha256"] = chain
    return encode_frame(TAG_CKPT + dump_json(obj))


def header_frame(header_bytes: bytes) -> bytes:
    """The HEAD frame of the given header JSON bytes (validated)."""
    Header.from_json(strict_json(header_bytes, "header"))
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise HeaderError(f"header is {len(header_bytes)} bytes; the limit is {MAX_HEADER_BYTES}")
    return encode_frame(TAG_HEAD + header_bytes)


def records_per_frame(header: Header) -> int:
    """Most records one STEP frame may hold without exceeding the reader's frame cap."""
    rs = header_record_size(header)
    return max(1, min(COMPACT_RECORDS_PER_FRAME, (MAX_STEP_FRAME_BYTES - STEP_PREFIX.size) // rs))


def _minor(header: Header) -> int:
    return FORMAT_MINOR if header.chain is not None else 0


def serialize(traj: Trajectory) -> bytes:
    """The compact form of a trajectory: header, big step frames, evaluations, checkpoints.

    The header bytes are copied verbatim (the chain covers them).

    Raises:
        HeaderError: the header is one a reader would refuse (docs/FORMAT.md §3.1).
    """
    h = traj.header
    check_version_features(_minor(h), h)
    parts = [preamble(_minor(h)), header_frame(traj.header_bytes)]
    decay = h.records.decay
    per = records_per_frame(h)
    for lo in range(0, traj.num_steps, per):
        hi = min(traj.num_steps, lo + per)
        parts.append(step_frame(lo, traj.records.slice(lo, hi), decay=decay))
    parts.extend(eval_frame(e) for e in traj.evaluations)
    parts.extend(ckpt_frame(s, d, traj.chains.get(s)) for s, d in sorted(traj.checkpoints.items()))
    return b"".join(parts)


def write_trajectory(path: str | os.PathLike, traj: Trajectory) -> None:
    """Write a complete trajectory atomically in compact form."""
    atomic_write_bytes(path, serialize(traj))
