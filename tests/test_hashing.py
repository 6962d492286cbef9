"""Fingerprints (§11): tensors, manifests, and the whole-base identity."""

from __future__ import annotations

import hashlib
import struct

import torch

from mezo_ckpt.hashing import ParamInfo, manifest_sha256, tensors_sha256

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
