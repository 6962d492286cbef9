"""Builders of small valid trajectory headers, records and files for tests.

Two layers:

* High level (uses mezo_ckpt's writer): :func:`make_header`, :func:`make_records`,
  :func:`make_trajectory`, :func:`trajectory_bytes`, :func:`header_for_model`.
* Low level (independent of mezo_ckpt, written from docs/FORMAT.md): :func:`xxh64`,
  :func:`zstd_frame` (a zstd frame made of raw / RLE blocks, byte by byte),
  :func:`pack_records` and :func:`assemble`. The malformed corpus (tests/make_corpus.py)
  is built with these, so its bytes do not depend on the libzstd version.

Other test modules may import anything here; nothing in this file touches the disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- constants
# Restated from docs/FORMAT.md on purpose (not imported), so that a change in the code
# that breaks the spec shows up as a test failure.

PREAMBLE_V1 = struct.pack("<II", 0x184D2A5E, 16) + b"MEZOCKPT" + struct.pack("<HHI", 1, 0, 0)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FLAG_SKIPPED = 0x01
HEX_A = "a" * 64
HEX_B = "b" * 64
HEX_C = "c" * 64


def preamble(
    major: int = 1, minor: int = 0, reserved: int = 0, magic: bytes = b"MEZOCKPT", size: int = 16
) -> bytes:
    """The 24-byte skippable-frame preamble (any field overridable for corpus files)."""
    return (
        struct.pack("<II", 0x184D2A5E, size) + magic + struct.pack("<HHI", major, minor, reserved)
    )


# ----------------------------------------------------------------------------- header


def make_base(**overrides: Any) -> dict:
    """A syntactically valid ``base`` object that matches no real model."""
    base = {
        "kind": "local",
        "repo_id": None,
        "revision": None,
        "files": {"config.json": HEX_A, "model.safetensors": HEX_B},
        "architecture": "TinyNet",
        "model_type": "custom",
        "dtype": "float32",
        "tie_word_embeddings": False,
        "num_parameters": 40,
        "manifest_sha256": HEX_A,
        "trainable_sha256": HEX_C,
    }
    base.update(overrides)
    return base


def make_header(
    *,
    n_directions: int = 1,
    decay: bool = False,
    losses: bool = False,
    total_steps: int = 16,
    z: str = "normal16",
    rounding: str = "nearest",
    seed: int = 7,
    eps: float = 1e-3,
    weight_decay: float | None = None,
    trainable: Sequence[str] = ("layer.bias", "layer.weight"),
    decay_params: Sequence[str] | None = None,
    base: Mapping[str, Any] | None = None,
    **top: Any,
) -> dict:
    """A valid v1 header. Keyword arguments not listed set top-level keys verbatim."""
    trainable = sorted(set(trainable))
    if decay_params is None:
        decay_params = [n for n in trainable if n.endswith("weight")] if decay else []
    if weight_decay is None:
        weight_decay = 0.1 if decay else 0.0
    h = {
        "requires": [],
        "tool": {"name": "mezo-ckpt", "version": "0.1.0"},
        "base": dict(base) if base is not None else make_base(),
        "trainable": list(trainable),
        "perturbation": {
            "generator": "philox4x32-10",
            "key_rule": "sha256-seed-name-v1",
            "z": z,
            "seed": seed,
            "eps": eps,
            "n_directions": n_directions,
        },
        "update": {
            "arithmetic": "exact-v1",
            "rounding": rounding,
            "weight_decay": weight_decay,
            "decay_params": sorted(decay_params),
        },
        "records": {"decay": decay, "losses": losses},
        "total_steps": total_steps,
        "optimizer": {"name": "mezo-sgd", "lr": 1e-3},
        "config": {},
    }
    h.update(top)
    return h


def set_path(obj: dict, path: str, value: Any, *, delete: bool = False) -> dict:
    """Deep copy of ``obj`` with ``a.b.c`` set to ``value`` (or deleted)."""
    out = copy.deepcopy(obj)
    keys = path.split(".")
    cur = out
    for k in keys[:-1]:
        cur = cur[k]
    if delete:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return out


def header_for_model(
    model, trainable: Iterable[str] | None = None, folder: Any = None, **kw: Any
) -> dict:
    """A header whose ``base`` describes ``model`` (a torch module, saved in ``folder``
    when given), for replay tests."""
    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.models.base import describe_base

    params = canonical_parameters(model)
    names = sorted(trainable if trainable is not None else params)
    if kw.get("decay") and "decay_params" not in kw:
        kw["decay_params"] = [n for n in names if params[n].ndim > 1]
    base = describe_base(model, names, folder=folder).to_json()
    return make_header(trainable=names, base=base, **kw)


# ----------------------------------------------------------------------------- records


def coef13(x: float) -> float:
    """Round to 13 significant bits, ties to even (independent of mezo_ckpt.core.update)."""
    if x == 0.0:
        return 0.0
    m, e = np.frexp(np.float64(x))
    return float(np.ldexp(np.round(m * 8192.0), int(e) - 13))


def make_records(
    n_steps: int,
    n_directions: int = 1,
    *,
    decay: bool = False,
    losses: bool = False,
    seed: int = 0,
    skip: Iterable[int] = (),
    scale: float = 1e-3,
):
    """Deterministic valid StepRecords (coefficients rounded to 13 bits)."""
    from mezo_ckpt.trajectory import StepRecords

    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n_steps, n_directions)) * scale
    coefs = np.array([[coef13(v) for v in row] for row in raw], np.float32).reshape(
        n_steps, n_directions
    )
    flags = np.zeros(n_steps, np.uint8)
    for s in skip:
        flags[s] = FLAG_SKIPPED
        coefs[s] = 0.0
    dec = (
        np.full(n_steps, np.float32(1.0 - 1e-4), np.float32)
        if decay
        else np.ones(n_steps, np.float32)
    )
    ls = None
    if losses:
        ls = (2.0 + rng.standard_normal((n_steps, n_directions, 2)) * 0.1).astype(np.float32)
    return StepRecords(flags, coefs, dec, ls)


def make_trajectory(
    n_steps: int = 12,
    *,
    evaluations: Sequence[tuple[int, str, dict]] = ((0, "dev", {"accuracy": 0.5}),),
    checkpoints: Mapping[int, str] | None = None,
    record_seed: int = 0,
    skip: Iterable[int] = (),
    **header_kw: Any,
):
    """A Trajectory object (not written anywhere)."""
    from mezo_ckpt.trajectory import Evaluation, Trajectory
    from mezo_ckpt.trajectory.header import Header

    header_kw.setdefault("total_steps", max(n_steps, 1) + 4)
    h = make_header(**header_kw)
    n = h["perturbation"]["n_directions"]
    rec = make_records(
        n_steps,
        n,
        decay=h["records"]["decay"],
        losses=h["records"]["losses"],
        seed=record_seed,
        skip=skip,
    )
    evals = [
        Evaluation(s, split, {k: float(v) for k, v in m.items()}) for s, split, m in evaluations
    ]
    ck = dict(checkpoints) if checkpoints is not None else {n_steps: HEX_C}
    return Trajectory(Header.from_json(h), rec, evals, ck)


def trajectory_bytes(n_steps: int = 12, **kw: Any) -> bytes:
    """Compact bytes of :func:`make_trajectory` written by mezo_ckpt's serializer."""
    from mezo_ckpt.trajectory import serialize

    return serialize(make_trajectory(n_steps, **kw))


# ----------------------------------------------------------------------------- xxh64

_M64 = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M64
    return (_rotl(acc, 31) * _P1) & _M64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 (the hash zstd's content checksum keeps the low 32 bits of), pure Python."""
    n = len(data)
    p = 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed & _M64, (seed - _P1) & _M64]
        limit = n - 32
        if not any(data):  # all zeros (the bomb corpus file): same arithmetic, no unpacking
            v1, v2, v3, v4 = v
            for _ in range(limit // 32 + 1):
                v1 = (_rotl(v1, 31) * _P1) & _M64
                v2 = (_rotl(v2, 31) * _P1) & _M64
                v3 = (_rotl(v3, 31) * _P1) & _M64
                v4 = (_rotl(v4, 31) * _P1) & _M64
            v = [v1, v2, v3, v4]
            p = (limit // 32 + 1) * 32
        else:
            while p <= limit:
                lanes = struct.unpack_from("<4Q", data, p)
                v = [_round(a, b) for a, b in zip(v, lanes)]
                p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for a in v:
            h ^= _round(0, a)
            h = (h * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while p + 8 <= n:
        (k,) = struct.unpack_from("<Q", data, p)
        h ^= _round(0, k)
        h = (_rotl(h, 27) * _P1 + _P4) & _M64
        p += 8
    if p + 4 <= n:
        (k,) = struct.unpack_from("<I", data, p)
        h ^= (k * _P1) & _M64
        h = (_rotl(h, 23) * _P2 + _P3) & _M64
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & _M64
        h = (_rotl(h, 11) * _P1) & _M64
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    h ^= h >> 32
    return h


# ----------------------------------------------------------------------------- zstd frames

MAX_BLOCK = 128 << 10


def zstd_frame(
    content: bytes,
    *,
    checksum: bool = True,
    content_size: bool = True,
    declared_size: int | None = None,
    bad_checksum: bool = False,
    rle_from: int | None = None,
    window_log: int = 23,
    fhd_extra: int = 0,
) -> bytes:
    """A zstd frame holding ``content`` in raw blocks, byte by byte per RFC 8878.

    With ``content_size`` the frame is single-segment and declares its size in an
    8-byte field (``declared_size`` overrides the value, for bomb files); without, it
    carries a window descriptor (2**window_log bytes) instead. ``content[rle_from:]``, if
    given, must repeat one byte value and is stored as RLE blocks (tiny bomb files).
    ``fhd_extra`` is OR-ed into the frame header descriptor (corrupt-header files).
    """
    fhd = fhd_extra
    if content_size:
        fhd |= (3 << 6) | (1 << 5)  # 8-byte frame content size, single segment
    if checksum:
        fhd |= 1 << 2
    out = bytearray(ZSTD_MAGIC)
    out.append(fhd)
    if content_size:
        out += struct.pack("<Q", len(content) if declared_size is None else declared_size)
    else:
        out.append((window_log - 10) << 3)  # window descriptor: exponent, mantissa 0
    cut = len(content) if rle_from is None else rle_from
    blocks: list[tuple[bytes, bool]] = []
    for lo in range(0, cut, MAX_BLOCK):
        blocks.append((content[lo : min(cut, lo + MAX_BLOCK)], False))
    for lo in range(cut, len(content), MAX_BLOCK):
        blk = content[lo : lo + MAX_BLOCK]
        if blk.count(blk[:1]) != len(blk):
            raise ValueError("RLE needs a single repeated byte")
        blocks.append((blk, True))
    if not blocks:
        blocks.append((b"", False))
    for i, (blk, is_rle) in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        if is_rle:
            out += struct.pack("<I", last | (1 << 1) | (len(blk) << 3))[:3] + blk[:1]
        else:
            out += struct.pack("<I", last | (len(blk) << 3))[:3] + blk
    if checksum:
        c = xxh64(content) & 0xFFFFFFFF
        if bad_checksum:
            c ^= 0x00010000
        out += struct.pack("<I", c)
    return bytes(out)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def head_content(header: dict | bytes) -> bytes:
    return b"HEAD" + (header if isinstance(header, bytes) else json_bytes(header))


def step_content(first: int, body: bytes, count: int, tag: bytes = b"STEP") -> bytes:
    return tag + struct.pack("<QI", first, count) + body


def pack_records(
    coefs: Sequence[Sequence[float]],
    *,
    flags: Sequence[int] | None = None,
    decay: Sequence[float] | None = None,
    losses: Sequence[Sequence[tuple[float, float]]] | None = None,
    raw_coef_bits: bool = False,
) -> bytes:
    """Step records per docs/FORMAT.md, written field by field (no validation).

    ``coefs`` are fp32 values (or, with ``raw_coef_bits``, 32-bit patterns); only bytes
    1..3 of each little-endian fp32 are stored.
    """
    out = bytearray()
    for t, row in enumerate(coefs):
        out.append(0 if flags is None else flags[t])
        for c in row:
            bits = int(c) if raw_coef_bits else struct.unpack("<I", struct.pack("<f", c))[0]
            out += struct.pack("<I", bits)[1:4]
        if decay is not None:
            out += struct.pack("<f", decay[t])
        if losses is not None:
            for lp, lm in losses[t]:
                out += struct.pack("<ff", lp, lm)
    return bytes(out)


def assemble(
    header: dict | bytes | None,
    *contents: bytes,
    pre: bytes | None = None,
    frames: Sequence[bytes] = (),
) -> bytes:
    """Preamble + a HEAD frame + one frame per content (+ already-built ``frames``)."""
    parts = [PREAMBLE_V1 if pre is None else pre]
    if header is not None:
        parts.append(zstd_frame(head_content(header)))
    parts.extend(zstd_frame(c) for c in contents)
    parts.extend(frames)
    return b"".join(parts)


def eval_content(step: int, split: str = "dev", metrics: dict | None = None) -> bytes:
    return b"EVAL" + json_bytes(
        {"step": step, "split": split, "metrics": metrics if metrics is not None else {"loss": 1.0}}
    )


def ckpt_content(step: int, digest: str = HEX_C) -> bytes:
    return b"CKPT" + json_bytes({"step": step, "trainable_sha256": digest})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- format 1.1
# Written from docs/FORMAT.md §5.2, §7.3 and §11.4, not from the code.

CHAIN_TAG = b"mezo-ckpt/chain/v1\x00"


def canonical_json_sha256(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys, ',' ':' separators, ASCII escapes)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256(text.encode("ascii"))


def make_base_v11(**overrides: Any) -> dict:
    """A syntactically valid 1.1 ``base``: every tensor, the config and the tokenizer
    pinned (matching no real model)."""
    config = {"model_type": "custom", "hidden_size": 4}
    base = make_base(
        tensors=[
            {"name": "layer.bias", "aliases": [], "shape": [4], "dtype": "float32",
             "sha256": "1" * 16},
            {"name": "layer.weight", "aliases": [], "shape": [4, 4], "dtype": "float32",
             "sha256": "2" * 16},
        ],
        tensors_sha256=HEX_B,
        config=config,
        config_sha256=canonical_json_sha256(config),
        generation_config_sha256=None,
        tokenizer={"tokenizer.json": HEX_A},
    )  # fmt: skip
    base.update(overrides)
    return base


def make_header_v11(**kw: Any) -> dict:
    """A valid 1.1 header: the record chain declared and the whole base pinned."""
    kw.setdefault("base", make_base_v11())
    return make_header(integrity={"chain": "sha256-records-v1"}, **kw)


def chain_sha256(header: dict | bytes, records: bytes) -> str:
    """chain(N) of §7.3 over the header bytes and the first N records' bytes."""
    h = header if isinstance(header, bytes) else json_bytes(header)
    return sha256(CHAIN_TAG + struct.pack("<Q", len(h)) + h + records)


def chained_ckpt(step: int, header: dict | bytes, records: bytes, digest: str = HEX_C) -> bytes:
    return b"CKPT" + json_bytes(
        {"step": step, "trainable_sha256": digest, "chain_sha256": chain_sha256(header, records)}
    )


def preamble_v11(minor: int = 1) -> bytes:
    return struct.pack("<II", 0x184D2A5E, 16) + b"MEZOCKPT" + struct.pack("<HHI", 1, minor, 0)
