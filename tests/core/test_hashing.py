"""Fingerprints (§11): tensors, manifests, and the whole-base identity."""

from __future__ import annotations

import hashlib
import struct

import torch

from mezo_ckpt.core.hashing import ParamInfo, manifest_sha256, tensors_sha256

# ============================================================================ fingerprints


def test_fingerprints_documented():
    """docs/FORMAT.md §11 and §16, recomputed with hashlib from the text."""
    ts = {"b": torch.tensor([1.0, -2.0]), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    h = hashlib.sha256()
    h.update(b"a\x00bfloat16\x00[2, 2]\x00" + struct.pack("<4H", *[0x3F80] * 4))
    h.update(b"b\x00float32\x00[2]\x00" + struct.pack("<2f", 1.0, -2.0))
    assert (
        tensors_sha256(ts)
        == h.hexdigest()
        == "c806eaee44979e53f1a601614360765fe43c09eca1c24c7d3307f10c1d572fd7"
    )
    man = [ParamInfo("b", (), (2,), "float32"), ParamInfo("a", ("c",), (2, 2), "bfloat16")]
    text = (
        '[{"aliases":["c"],"dtype":"bfloat16","name":"a","shape":[2,2]},'
        '{"aliases":[],"dtype":"float32","name":"b","shape":[2]}]'
    )
    assert (
        manifest_sha256(sorted(man, key=lambda i: i.name))
        == hashlib.sha256(text.encode()).hexdigest()
        == "c223abade4fd3fbe14f99e287fdb51a7e0a01a32cbd2ac3eeec693a4f66fcf70"
    )


def test_whole_base_vectors_documented():
    """docs/FORMAT.md §11.4 and §16: per-tensor digests, the root, the semantic config."""
    import json

    from mezo_ckpt.core.hashing import json_sha256, semantic_json, tensor_digest, tensors_root

    ts = {"b": torch.tensor([1.0, -2.0]), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    da = hashlib.sha256(b"a\x00bfloat16\x00[2, 2]\x00" + struct.pack("<4H", *[0x3F80] * 4))
    db = hashlib.sha256(b"b\x00float32\x00[2]\x00" + struct.pack("<2f", 1.0, -2.0))
    assert tensor_digest("a", ts["a"]) == da.digest()
    assert tensor_digest("b", ts["b"]) == db.digest()
    assert da.hexdigest() == "b43e8e7a5b512f1e013edb856031886c08a43b7d3010ce2f0b976ebb132cdc9d"
    root = hashlib.sha256(
        b"mezo-ckpt/tensors/v1\x00" + b"a\x00" + da.digest() + b"b\x00" + db.digest()
    ).hexdigest()
    assert tensors_root({k: tensor_digest(k, v) for k, v in ts.items()}) == root
    assert root == "6c34027c61fe06bf6fe845e35e83a4f998978af61127db2b05d2ba30f2d585d5"
    cfg = {
        "model_type": "llama",
        "transformers_version": "5.0",
        "hidden_size": 32,
        "rms_norm_eps": 1e-06,
    }
    text = '{"hidden_size":32,"model_type":"llama","rms_norm_eps":1e-06}'
    assert json.dumps(semantic_json(cfg), sort_keys=True, separators=(",", ":")) == text
    assert json_sha256(semantic_json(cfg)) == hashlib.sha256(text.encode()).hexdigest()
    assert json_sha256(semantic_json(cfg)) == (
        "6a058386349f3723dd67380926f11ed32846439e4ad0ebb90f779b64d757fd48"
    )
    # a re-serialised identical config (other order, whitespace) matches
    again = json.loads(json.dumps(dict(reversed(list(cfg.items()))), indent=4))
    assert json_sha256(semantic_json(again)) == json_sha256(semantic_json(cfg))


def test_state_tensors_cover_parameters_aliases_and_buffers():
    from tinymodels import tiny_model

    from mezo_ckpt.core.hashing import state_tensors

    m = tiny_model("gpt2", tie=True)
    st = state_tensors(m)
    assert "lm_head.weight" in st and st["lm_head.weight"][1] == ("transformer.wte.weight",)
    m.register_buffer("extra_stat", torch.arange(3.0))  # persistent buffer: included
    m.register_buffer("scratch", torch.zeros(2), persistent=False)  # not state: excluded
    st = state_tensors(m)
    assert st["extra_stat"][2] is True and "scratch" not in st
