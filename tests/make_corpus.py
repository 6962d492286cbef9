"""Regenerate tests/corpus/: small malformed (and a few valid) trajectory files.

Every file is named after what is wrong with it; ``corpus/INDEX.json`` maps each file
name to the error class a conforming reader must raise (``null``: the file is valid).
Frames are written by hand (raw and RLE zstd blocks, see helpers_format.zstd_frame), so
the bytes do not depend on the installed libzstd: running this script again reproduces
the corpus byte for byte.

Usage::

    python tests/make_corpus.py            # rewrite tests/corpus/
    python tests/make_corpus.py --check    # exit 1 if the committed corpus differs
"""

from __future__ import annotations

import argparse
import json
import pickle
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_format import (  # noqa: E402
    HEX_A,
    HEX_B,
    PREAMBLE_V1,
    ZSTD_MAGIC,
    assemble,
    chained_ckpt,
    ckpt_content,
    eval_content,
    head_content,
    json_bytes,
    make_base,
    make_header,
    make_header_v11,
    pack_records,
    preamble,
    preamble_v11,
    set_path,
    step_content,
    zstd_frame,
)

CORPUS = Path(__file__).resolve().parent / "corpus"

BAD_MAGIC = "BadMagicError"
TRUNC = "TruncatedError"
CORRUPT = "CorruptFrameError"
HEADER = "HeaderError"
RECORD = "RecordError"
CHAIN = "ChainMismatchError"
UNSUP = "UnsupportedError"

# Lean header: 1 direction, no decay, no losses -> 4-byte records.
H1 = make_header(total_steps=8, seed=7)
# The same as a format 1.1 header (record chain, whole base).
H11 = make_header_v11(total_steps=8, seed=7)
# Full header: 2 directions, decay and losses -> 1 + 6 + 4 + 16 = 27-byte records.
H2 = make_header(
    total_steps=8,
    n_directions=2,
    decay=True,
    losses=True,
    seed=11,
    rounding="stochastic",
    base=make_base(dtype="bfloat16"),
)

C1 = 2.0**-7
C2 = -3 * 2.0**-9
NAN_BITS = 0x7FC00000


def lean(coefs, first=0, count=None, flags=None) -> bytes:
    body = pack_records([[c] for c in coefs], flags=flags)
    return step_content(first, body, len(coefs) if count is None else count)


def lean_bits(bits, flags=None) -> bytes:
    return step_content(
        0, pack_records([[b] for b in bits], flags=flags, raw_coef_bits=True), len(bits)
    )


def full(rows, first=0, flags=None, decay=None, losses=None) -> bytes:
    t = len(rows)
    body = pack_records(
        rows,
        flags=flags,
        decay=decay if decay is not None else [0.9990000128746033] * t,
        losses=losses if losses is not None else [[(2.5, 2.25), (2.0, 2.125)]] * t,
    )
    return step_content(first, body, t)


def head_only(header) -> bytes:
    return assemble(header)


def header_text(replacements: list[tuple[bytes, bytes]], header: dict = H1) -> bytes:
    """Canonical header JSON with byte-level substitutions (each must apply once)."""
    raw = json_bytes(header)
    for old, new in replacements:
        if raw.count(old) != 1:
            raise ValueError(f"{old!r} occurs {raw.count(old)} times")
        raw = raw.replace(old, new)
    return raw


def build() -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, expected error class name or None)."""
    out: dict[str, tuple[bytes, str | None]] = {}

    def add(name: str, data: bytes, err: str | None) -> None:
        assert name not in out, name
        out[name + ".bin"] = (data, err)

    # ------------------------------------------------------------------ valid files
    valid_minimal = assemble(H1)
    valid_lean = assemble(
        H1, lean([C1, C2, 0.0]), eval_content(3, "dev", {"accuracy": 0.75}), ckpt_content(3, HEX_B)
    )
    rows = [[C1, C2], [0.0, C1], [float("nan"), 0.0]]
    valid_full = assemble(
        H2,
        full(rows[:2]),
        eval_content(0, "dev", {"accuracy": 0.5}),
        full(rows[2:], first=2, flags=[1]),
        ckpt_content(3, HEX_B),
        eval_content(3, "dev", {"accuracy": 0.625, "loss": 2.0}),
    )
    add("valid_minimal_header_only", valid_minimal, None)
    add("valid_lean_three_steps", valid_lean, None)
    add("valid_full_decay_losses_skipped_nan", valid_full, None)
    add(
        "valid_rademacher_unknown_keys_ignored",
        assemble(
            set_path(
                set_path(H1, "perturbation.z", "rademacher"), "future_key", {"anything": [1, 2]}
            ),
            lean([C1]),
        ),
        None,
    )
    # ------------------------------------------------------------------ format 1.1
    # One rule (docs/FORMAT.md §3.1): a minor version >= 1 requires the record chain and the
    # whole-base identity; a minor version of 0 carries neither.
    body = pack_records([[C1], [C2], [0.0]])
    v11 = H11
    ok11 = assemble(
        v11, step_content(0, body, 3), chained_ckpt(3, v11, body, HEX_B), pre=preamble_v11()
    )
    add("valid_v11_chained_whole_base", ok11, None)
    add(
        "valid_minor_version_7",
        assemble(v11, step_content(0, body, 3), chained_ckpt(3, v11, body), pre=preamble_v11(7)),
        None,
    )
    add("minor_version_7_without_chain", assemble(H1, lean([C1]), pre=preamble(minor=7)), HEADER)
    no_integrity = set_path(v11, "integrity", None, delete=True)
    add(
        "v11_integrity_deleted",
        assemble(no_integrity, step_content(0, body, 3), ckpt_content(3), pre=preamble_v11()),
        HEADER,
    )
    for key in ("tensors_sha256", "config_sha256"):
        other = "tensors" if key == "tensors_sha256" else "config"
        cut = set_path(set_path(v11, f"base.{key}", None, delete=True), f"base.{other}", None,
                       delete=True)  # fmt: skip
        add(
            f"v11_base_{other}_deleted",
            assemble(
                cut, step_content(0, body, 3), chained_ckpt(3, cut, body), pre=preamble_v11()
            ),  # fmt: skip
            HEADER,
        )
    add(
        "v11_version_lowered_to_1_0",
        assemble(v11, step_content(0, body, 3), chained_ckpt(3, v11, body), pre=preamble()),
        HEADER,
    )
    edited = pack_records([[C1], [C1], [0.0]])  # the chain was computed over ``body``
    add(
        "v11_record_edited_after_chaining",
        assemble(v11, step_content(0, edited, 3), chained_ckpt(3, v11, body), pre=preamble_v11()),
        CHAIN,
    )
    add(
        "v11_ckpt_without_chain_digest",
        assemble(v11, step_content(0, body, 3), ckpt_content(3), pre=preamble_v11()),
        RECORD,
    )

    # ------------------------------------------------------------------ 1.1 features
    # An adapter run (docs/FORMAT.md §5.7): peft exactly when requires names peft-v1, and a
    # LoRA config peft could build from (checked when the header is read).
    lora = {"r": 8, "lora_alpha": 16.0, "target_modules": ["q_proj", "v_proj"],
            "lora_dropout": 0.0, "bias": "none"}  # fmt: skip
    adapter = {"type": "lora", "config": lora, "init": "normal16-fanin-v1", "init_sha256": HEX_A}
    pv = set_path(set_path(v11, "peft", adapter), "requires", ["peft-v1"])
    pbody = pack_records([[C1], [C2]])

    def peft_file(h: dict) -> bytes:
        return assemble(h, step_content(0, pbody, 2), chained_ckpt(2, h, pbody), pre=preamble_v11())

    add("valid_v11_lora_adapter", peft_file(pv), None)
    for name, key, value in (
        ("r_text", "r", "8"),
        ("r_negative", "r", -2),
        ("r_1e9", "r", 10**9),
        ("targets_a_string", "target_modules", "q_proj"),
        ("targets_empty", "target_modules", []),
        ("alpha_text", "lora_alpha", "sixteen"),
        ("dropout", "lora_dropout", 0.1),
    ):
        add(f"v11_peft_{name}", peft_file(set_path(pv, f"peft.config.{key}", value)), HEADER)
    add("v11_peft_r_missing", peft_file(set_path(pv, "peft.config.r", None, delete=True)),
        HEADER)  # fmt: skip
    add("v11_peft_without_feature", peft_file(set_path(pv, "requires", [])), HEADER)
    add("v11_peft_unknown_type", peft_file(set_path(pv, "peft.type", "ia3")), UNSUP)
    add("v11_peft_unknown_init", peft_file(set_path(pv, "peft.init", "kaiming")), UNSUP)
    # Momentum history (§6.2): records.history exactly when requires names history-v1.
    hv = set_path(set_path(v11, "records.history", 2), "requires", ["history-v1"])
    add("v11_history_without_feature",
        assemble(set_path(hv, "requires", []), pre=preamble_v11()), HEADER)  # fmt: skip
    add("v11_history_window_65",
        assemble(set_path(hv, "records.history", 65), pre=preamble_v11()), HEADER)  # fmt: skip
    add("v11_history_records_without_history",  # the header's window, records sized without
        assemble(hv, step_content(0, body, 3), pre=preamble_v11()), RECORD)  # fmt: skip
    add("v11_feature_unknown", assemble(set_path(v11, "requires", ["teleport-v9"]),
                                        pre=preamble_v11()), UNSUP)  # fmt: skip

    # ------------------------------------------------------------------ not a trajectory
    add("empty", b"", BAD_MAGIC)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
        + b"\x90\x77\x53\xde"
    )
    add("foreign_png_header", png, BAD_MAGIC)
    add(
        "foreign_pickle_of_dict",
        pickle.dumps({"steps": [1, 2, 3], "seed": 7}, protocol=4),
        BAD_MAGIC,
    )
    add("foreign_plain_zstd_of_text", zstd_frame(b"hello, this is plain text\n" * 4), BAD_MAGIC)
    add("foreign_text", b"MEZO trajectory? no, just text.\n", BAD_MAGIC)
    add("wrong_magic_string", assemble(H1, pre=preamble(magic=b"MEZOCKPX")), BAD_MAGIC)
    add("wrong_skippable_frame_size", assemble(H1, pre=preamble(size=20)), BAD_MAGIC)
    add(
        "wrong_skippable_magic", b"\x50" + PREAMBLE_V1[1:] + zstd_frame(head_content(H1)), BAD_MAGIC
    )
    add("preamble_reserved_nonzero", assemble(H1, pre=preamble(reserved=1)), BAD_MAGIC)
    add("wrong_major_version_2", assemble(H1, lean([C1]), pre=preamble(major=2)), UNSUP)
    add("wrong_major_version_0", assemble(H1, pre=preamble(major=0)), UNSUP)

    # ------------------------------------------------------------------ truncation
    add("preamble_only", PREAMBLE_V1, TRUNC)
    add("preamble_cut_at_10_bytes", PREAMBLE_V1[:10], TRUNC)
    hf = zstd_frame(head_content(H1))
    add("header_frame_cut_in_half", PREAMBLE_V1 + hf[: len(hf) // 2], TRUNC)
    add("header_frame_cut_in_frame_header", PREAMBLE_V1 + hf[:7], TRUNC)
    add("header_frame_cut_in_checksum", PREAMBLE_V1 + hf[:-2], TRUNC)
    sf = zstd_frame(lean([C1, C2, 0.0, C1]))
    add("truncated_mid_step_frame", valid_minimal + sf[: len(sf) // 2], TRUNC)
    add("truncated_in_checksum", valid_minimal + sf[:-1], TRUNC)
    add("truncated_in_block_header", valid_minimal + sf[:14], TRUNC)
    add("truncated_in_frame_magic", valid_lean + ZSTD_MAGIC[:2], TRUNC)

    # ------------------------------------------------------------------ frame corruption
    def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
        b = bytearray(data)
        b[pos] ^= 1 << bit
        return bytes(b)

    hpos = len(PREAMBLE_V1) + 13 + 3 + 40  # inside the header JSON
    add("bitflip_in_header_payload", flip(valid_lean, hpos, 1), CORRUPT)
    last = zstd_frame(ckpt_content(3, HEX_B))
    step_at = len(valid_minimal) + 13 + 3 + 16  # first record of the lean STEP frame
    add("bitflip_in_step_payload", flip(valid_lean, step_at + 1, 3), CORRUPT)
    add("bitflip_in_checksum", flip(valid_lean, len(valid_lean) - 2, 5), CORRUPT)
    add("bitflip_in_frame_magic", flip(valid_lean, len(valid_lean) - len(last), 0), CORRUPT)
    add("trailing_garbage", valid_lean + b"GARBAGE!", CORRUPT)
    add("trailing_zero_bytes", valid_lean + bytes(16), TRUNC)  # torn write after power loss
    add("two_files_concatenated", valid_lean + valid_lean, CORRUPT)
    add(
        "skippable_frame_after_header",
        valid_minimal + struct.pack("<II", 0x184D2A50, 4) + b"skip" + zstd_frame(lean([C1])),
        CORRUPT,
    )
    add("frame_without_checksum", valid_minimal + zstd_frame(lean([C1]), checksum=False), CORRUPT)
    add(
        "header_frame_without_checksum",
        PREAMBLE_V1 + zstd_frame(head_content(H1), checksum=False),
        CORRUPT,
    )
    add(
        "frame_without_content_size",
        valid_minimal + zstd_frame(lean([C1]), content_size=False),
        CORRUPT,
    )
    add(
        "frame_declared_size_mismatch",
        valid_minimal + zstd_frame(lean([C1]), declared_size=len(lean([C1])) + 4),
        CORRUPT,
    )
    add(
        "frame_window_2gib",
        valid_minimal + zstd_frame(lean([C1]), content_size=False, window_log=31),
        CORRUPT,
    )
    add(
        "frame_window_2tib_unsupported",
        valid_minimal + zstd_frame(lean([C1]), content_size=False, window_log=41),
        CORRUPT,
    )
    add(
        "frame_header_reserved_bit", valid_minimal + zstd_frame(lean([C1]), fhd_extra=0x08), CORRUPT
    )
    # Dictionary_ID present (1 byte): magic, FHD, dict id, FCS(8), raw block, checksum.
    good = zstd_frame(lean([C1]))
    dict_frame = good[:4] + bytes([good[4] | 0x01, 0x07]) + good[5:]
    add("frame_needs_dictionary", valid_minimal + dict_frame, CORRUPT)
    bad_block = bytearray(zstd_frame(lean([C1])))
    bad_block[13] |= 0b110  # block type 3 (reserved)
    add("frame_reserved_block_type", valid_minimal + bytes(bad_block), CORRUPT)
    content = lean([C1])
    add("bomb_declares_1tib", valid_minimal + zstd_frame(content, declared_size=1 << 40), CORRUPT)
    add(
        "bomb_16mib_of_zeros_in_step_frame",
        valid_minimal + zstd_frame(b"STEP" + bytes((16 << 20) + (128 << 10) - 4), rle_from=4),
        CORRUPT,
    )
    add(
        "bomb_header_over_1mib_of_spaces",
        PREAMBLE_V1
        + zstd_frame(head_content(H1) + b" " * ((1 << 20) + 1), rle_from=len(head_content(H1))),
        CORRUPT,
    )
    add(
        "bomb_nested_brackets_100k_in_header",
        PREAMBLE_V1 + zstd_frame(b"HEAD" + b"[" * 100_000, rle_from=4),
        HEADER,
    )
    small_eval = eval_content(0)
    add(
        "eval_frame_over_64kib_of_spaces",
        valid_minimal + zstd_frame(small_eval + b" " * 70_000, rle_from=len(small_eval)),
        CORRUPT,
    )
    add("unknown_frame_tag", assemble(H1, lean([C1]), b"JUNK{}"), CORRUPT)
    add("lowercase_step_tag", assemble(H1, b"step" + lean([C1])[4:]), CORRUPT)
    add("empty_frame_content", assemble(H1, b""), CORRUPT)
    add("frame_content_shorter_than_tag", assemble(H1, b"ST"), CORRUPT)

    # ------------------------------------------------------------------ header JSON
    def hdr(raw: bytes) -> bytes:
        return PREAMBLE_V1 + zstd_frame(b"HEAD" + raw)

    add("first_frame_is_step", assemble(None, lean([C1]), head_content(H1)), HEADER)
    add("second_header", assemble(H1, lean([C1]), head_content(H1)), HEADER)
    add("header_not_utf8", hdr(header_text([(b'"mezo-ckpt"', b'"mezo-\xff\xfeckpt"')])), HEADER)
    add("header_utf8_bom", hdr(b"\xef\xbb\xbf" + json_bytes(H1)), HEADER)
    add("header_not_json", hdr(b"requires: []\ntool: {name: mezo-ckpt}\n"), HEADER)
    add("header_empty", hdr(b""), HEADER)
    add("header_json_array", hdr(b"[1,2,3]"), HEADER)
    add("header_json_string", hdr(b'"a header"'), HEADER)
    add("header_duplicate_key", hdr(header_text([(b'"seed":7', b'"seed":7,"seed":8')])), HEADER)
    add(
        "header_duplicate_top_level_key",
        hdr(header_text([(b'"total_steps":8', b'"total_steps":8,"total_steps":9')])),
        HEADER,
    )
    add("header_nan_literal", hdr(header_text([(b'"eps":0.001', b'"eps":NaN')])), HEADER)
    add("header_infinity_literal", hdr(header_text([(b'"eps":0.001', b'"eps":Infinity')])), HEADER)
    add(
        "header_negative_infinity_literal",
        hdr(header_text([(b'"weight_decay":0.0', b'"weight_decay":-Infinity')])),
        HEADER,
    )
    add(
        "header_deep_nesting_40",
        hdr(header_text([(b'"config":{}', b'"config":{"a":' + b"[" * 40 + b"]" * 40 + b"}")])),
        HEADER,
    )
    add("header_number_1e999", hdr(header_text([(b'"eps":0.001', b'"eps":1e999')])), HEADER)
    add("header_int_400_digits", hdr(header_text([(b'"seed":7', b'"seed":' + b"9" * 400)])), HEADER)
    add(
        "header_float_60_digits",
        hdr(header_text([(b'"eps":0.001', b'"eps":0.' + b"0" * 60 + b"1")])),
        HEADER,
    )
    add(
        "header_lone_surrogate",
        hdr(header_text([(b'"layer.weight"]', b'"layer.weight\\ud800"]')])),
        HEADER,
    )

    # ------------------------------------------------------------------ header schema
    def h(path: str, value=None, *, delete: bool = False, header: dict = H1) -> bytes:
        return head_only(set_path(header, path, value, delete=delete))

    for path in (
        "requires",
        "tool",
        "base",
        "trainable",
        "perturbation",
        "update",
        "records",
        "total_steps",
        "optimizer",
        "config",
        "perturbation.seed",
        "perturbation.z",
        "perturbation.n_directions",
        "base.manifest_sha256",
        "base.dtype",
        "base.tie_word_embeddings",
        "records.decay",
        "update.decay_params",
        "update.rounding",
        "tool.version",
    ):
        add("missing_" + path.replace(".", "_"), h(path, delete=True), HEADER)
    for path, value, tag in (
        ("perturbation.seed", "7", "seed_string"),
        ("perturbation.seed", 7.0, "seed_float"),
        ("perturbation.n_directions", True, "n_directions_bool"),
        ("perturbation.eps", "0.001", "eps_string"),
        ("records.decay", 1, "records_decay_int"),
        ("records.losses", None, "records_losses_null"),
        ("trainable", "layer.weight", "trainable_string"),
        ("total_steps", 8.0, "total_steps_float"),
        ("total_steps", False, "total_steps_bool"),
        ("base.tie_word_embeddings", "false", "tie_string"),
        ("base.num_parameters", "40", "num_parameters_string"),
        ("base.files", [], "files_list"),
        ("tool", ["mezo-ckpt"], "tool_list"),
        ("requires", "nothing", "requires_string"),
        ("optimizer", None, "optimizer_null"),
        ("update", [], "update_list"),
    ):
        add("wrong_type_" + tag, h(path, value), HEADER)
    add("header_is_json_null", hdr(b"null"), HEADER)

    for path, value, tag in (
        ("requires", ["zstd-dictionary"], "requires_unknown_feature"),
        ("requires", [["nested"]], "requires_non_string_feature"),
        ("perturbation.generator", "mt19937", "unknown_generator"),
        ("perturbation.key_rule", "sha1-seed-name", "unknown_key_rule"),
        ("perturbation.z", "gaussian-boxmuller", "unknown_z_kind"),
        ("update.arithmetic", "fused-v2", "unknown_arithmetic"),
        ("update.rounding", "toward-zero", "unknown_rounding"),
    ):
        add(tag, h(path, value), UNSUP)

    for path, value, tag in (
        ("perturbation.seed", 2**63, "seed_2pow63"),
        ("perturbation.seed", -1, "seed_negative"),
        ("perturbation.n_directions", 0, "n_directions_0"),
        ("perturbation.n_directions", 65, "n_directions_65"),
        ("perturbation.eps", 0.0, "eps_zero"),
        ("perturbation.eps", -0.001, "eps_negative"),
        ("update.weight_decay", -0.1, "weight_decay_negative"),
        ("total_steps", -1, "total_steps_negative"),
        ("total_steps", 2**32, "total_steps_2pow32"),
        ("base.num_parameters", -1, "num_parameters_negative"),
        ("trainable", [], "trainable_empty"),
        ("trainable", ["layer.weight", "layer.bias"], "trainable_unsorted"),
        ("trainable", ["layer.bias", "layer.bias"], "trainable_duplicates"),
        ("trainable", ["", "layer.bias"], "trainable_empty_name"),
        ("trainable", ["layer.bias", 3], "trainable_non_string"),
        ("update.decay_params", ["other.weight"], "decay_params_not_subset"),
        ("update.decay_params", ["layer.weight", "layer.bias"], "decay_params_unsorted"),
        ("update.decay_params", [{"name": "layer.weight"}], "decay_params_object_entry"),
        ("base.kind", "s3", "base_kind_unknown"),
        ("base.kind", "hub", "base_kind_hub_without_repo_id"),
        ("base.repo_id", "https://evil", "repo_id_url"),
        ("base.repo_id", "https://huggingface.co/org/model", "repo_id_full_url"),
        ("base.repo_id", "../../etc", "repo_id_dotdot_path"),
        ("base.repo_id", "/abs", "repo_id_absolute_path"),
        ("base.repo_id", "org/../model", "repo_id_dotdot_inside"),
        ("base.repo_id", "org--model", "repo_id_double_dash"),
        ("base.repo_id", "a/b/c", "repo_id_three_parts"),
        ("base.repo_id", "C:\\models\\x", "repo_id_windows_path"),
        ("base.repo_id", "evil\n", "repo_id_trailing_newline"),
        ("base.revision", "main", "revision_branch_name"),
        ("base.revision", "A" * 40, "revision_uppercase"),
        ("base.files", {"../model.safetensors": HEX_A}, "files_name_dotdot"),
        ("base.files", {"sub/../../model.safetensors": HEX_A}, "files_name_dotdot_inside"),
        ("base.files", {"/etc/passwd": HEX_A}, "files_name_absolute"),
        ("base.files", {"C:\\model.safetensors": HEX_A}, "files_name_windows"),
        ("base.files", {"config.json\n": HEX_A}, "files_name_trailing_newline"),
        ("base.files", {"config.json": "not-a-digest"}, "files_digest_not_hex"),
        ("base.files", {"config.json": 5}, "files_digest_int"),
        ("base.dtype", "float64", "dtype_float64"),
        ("base.manifest_sha256", HEX_A.upper(), "manifest_digest_uppercase"),
        ("base.manifest_sha256", HEX_A[:63], "manifest_digest_short"),
        ("base.trainable_sha256", HEX_A + "\n", "trainable_digest_trailing_newline"),
        (
            "base.embedded",
            {"gguf_file": "dir/model.gguf", "gguf_sha256": HEX_A},
            "gguf_file_with_slash",
        ),
        (
            "base.embedded",
            {"gguf_file": "..\\model.gguf", "gguf_sha256": HEX_A},
            "gguf_file_with_backslash",
        ),
        ("base.embedded", {"gguf_file": "model.gguf", "gguf_sha256": "x"}, "gguf_digest_bad"),
        ("base.embedded", "model.gguf", "embedded_not_object"),
    ):
        add("header_" + tag, h(path, value), HEADER)

    # ------------------------------------------------------------------ step records
    add(
        "record_bytes_not_multiple_of_record_size",
        assemble(H1, step_content(0, pack_records([[C1], [C2]]) + b"\x00", 2)),
        RECORD,
    )
    add(
        "record_count_disagrees_with_body",
        assemble(H1, step_content(0, pack_records([[C1], [C2]]), 3)),
        RECORD,
    )
    add("step_frame_count_zero", assemble(H1, step_content(0, b"", 0)), RECORD)
    add("step_frame_shorter_than_prefix", assemble(H1, b"STEP\x00\x00\x00\x00"), RECORD)
    add("steps_not_starting_at_zero", assemble(H1, lean([C1], first=1)), RECORD)
    add("steps_non_contiguous", assemble(H1, lean([C1, C2]), lean([C1], first=3)), RECORD)
    add("steps_duplicated", assemble(H1, lean([C1, C2]), lean([C1], first=1)), RECORD)
    add("steps_frame_repeated", assemble(H1, lean([C1, C2]), lean([C1, C2])), RECORD)
    add(
        "more_records_than_total_steps",
        assemble(set_path(H1, "total_steps", 2), lean([C1, C2, C1])),
        RECORD,
    )
    add(
        "records_with_total_steps_zero",
        assemble(set_path(H1, "total_steps", 0), lean([C1])),
        RECORD,
    )
    add("coef_nan_without_skip_flag", assemble(H1, lean_bits([0x3C000000, NAN_BITS])), RECORD)
    add("coef_inf_without_skip_flag", assemble(H1, lean_bits([0xFF800000])), RECORD)
    add("coef_14_significant_bits", assemble(H1, lean_bits([0x3C000400])), RECORD)
    add("coef_16_significant_bits", assemble(H1, lean_bits([0xBC00FF00])), RECORD)
    add("coef_below_2pow_minus100", assemble(H1, lean_bits([26 << 23])), RECORD)
    add("coef_subnormal", assemble(H1, lean_bits([0x00000100])), RECORD)
    add("coef_2pow100", assemble(H1, lean_bits([227 << 23])), RECORD)
    add("flags_unknown_bit_0x02", assemble(H1, lean([C1], flags=[0x02])), RECORD)
    add("flags_unknown_bit_0x80_with_skip", assemble(H1, lean([C1], flags=[0x81])), RECORD)
    for value, tag in (
        (0.0, "zero"),
        (1.5, "above_one"),
        (-0.5, "negative"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
    ):
        add(f"decay_multiplier_{tag}", assemble(H2, full([[C1, C2]], decay=[value])), RECORD)
    add(
        "decay_multiplier_zero_in_skipped_step",
        assemble(H2, full([[0.0, 0.0]], flags=[1], decay=[0.0])),
        RECORD,
    )
    add(
        "loss_nan_without_skip_flag",
        assemble(H2, full([[C1, C2]], losses=[[(float("nan"), 1.0), (1.0, 1.0)]])),
        RECORD,
    )

    # ------------------------------------------------------------------ EVAL / CKPT
    add("eval_beyond_recorded_steps", assemble(H1, lean([C1, C2]), eval_content(3)), RECORD)
    add("eval_before_any_step_record_beyond", assemble(H1, eval_content(1)), RECORD)
    add("ckpt_beyond_recorded_steps", assemble(H1, lean([C1]), ckpt_content(2)), RECORD)
    add(
        "ckpt_conflicting_digests",
        assemble(H1, lean([C1]), ckpt_content(1, HEX_A), ckpt_content(1, HEX_B)),
        RECORD,
    )
    add("ckpt_digest_not_hex", assemble(H1, lean([C1]), ckpt_content(1, "x" * 64)), RECORD)
    add(
        "ckpt_digest_trailing_newline",
        assemble(H1, lean([C1]), ckpt_content(1, HEX_A + "\n")),
        RECORD,
    )
    add("eval_not_object", assemble(H1, b"EVAL[1,2]"), RECORD)
    add("eval_step_negative", assemble(H1, eval_content(-1)), RECORD)
    add("eval_step_bool", assemble(H1, b'EVAL{"metrics":{},"split":"dev","step":true}'), RECORD)
    add("eval_split_empty", assemble(H1, eval_content(0, "")), RECORD)
    add(
        "eval_metric_not_number", assemble(H1, eval_content(0, "dev", {"accuracy": "high"})), RECORD
    )
    add("eval_not_json", assemble(H1, b"EVAL{step: 0}"), RECORD)
    add("ckpt_not_utf8", assemble(H1, b'CKPT{"step":0,"trainable_sha256":"\xff"}'), RECORD)
    return out


def write(corpus: Path = CORPUS) -> dict[str, str | None]:
    files = build()
    corpus.mkdir(parents=True, exist_ok=True)
    for old in corpus.glob("*.bin"):
        if old.name not in files:
            old.unlink()
    for name, (data, _) in files.items():
        p = corpus / name
        if not p.exists() or p.read_bytes() != data:
            p.write_bytes(data)
    index = {name: err for name, (_, err) in sorted(files.items())}
    (corpus / "INDEX.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def check(corpus: Path = CORPUS) -> list[str]:
    """Differences between the committed corpus and a fresh build (empty if none)."""
    files = build()
    problems = []
    present = {p.name for p in corpus.glob("*.bin")}
    for name in sorted(present - files.keys()):
        problems.append(f"stale file {name}")
    for name, (data, _) in sorted(files.items()):
        p = corpus / name
        if not p.exists():
            problems.append(f"missing {name}")
        elif p.read_bytes() != data:
            problems.append(f"differs {name}")
    index = {name: err for name, (_, err) in sorted(files.items())}
    idx = corpus / "INDEX.json"
    if not idx.exists() or json.loads(idx.read_text()) != index:
        problems.append("INDEX.json differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    ap.add_argument("--out", type=Path, default=CORPUS, help="corpus folder")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for p in problems:
            print(p)
        return 1 if problems else 0
    index = write(args.out)
    total = sum((args.out / n).stat().st_size for n in index)
    print(f"wrote {len(index)} files ({total:,} bytes) and INDEX.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
