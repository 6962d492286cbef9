"""mezo_ckpt.models.stfile: safetensors files written one tensor at a time load in safetensors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mezo_ckpt.models.stfile import ShardWriter


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(3, 5, generator=g),
        "a.bias": torch.randn(7, generator=g).bfloat16(),
        "half": torch.randn(2, 2, 2, generator=g).half(),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
        "ids": torch.arange(6, dtype=torch.int64).view(2, 3),
        "mask": torch.tensor([True, False, True]),
    }


def write(path, ts, order=None):
    order = order or list(ts)
    with ShardWriter(path, [(n, ts[n].dtype, ts[n].shape) for n in order], {"format": "pt"}) as w:
        for n in order:
            w.write(n, ts[n])


def test_round_trip_every_dtype_and_shape(tmp_path):
    ts = tensors()
    write(tmp_path / "x.safetensors", ts)
    got = load_file(tmp_path / "x.safetensors")
    assert got.keys() == ts.keys()
    for n, t in ts.items():
        assert got[n].dtype == t.dtype and got[n].shape == t.shape and torch.equal(got[n], t)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_header_is_padded_to_eight_bytes(tmp_path):
    write(tmp_path / "x.safetensors", tensors())
    raw = (tmp_path / "x.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8 : 8 + n].rstrip(b" ").endswith(b"}")
    header = json.loads(raw[8 : 8 + n])
    ends = sorted(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert len(raw) == 8 + n + ends[-1]  # no holes, nothing after the data


def test_refuses_a_tensor_out_of_order_or_of_another_shape(tmp_path):
    ts = tensors()
    entries = [(n, t.dtype, t.shape) for n, t in ts.items()]
    w = ShardWriter(tmp_path / "x.safetensors", entries)
    with pytest.raises(ValueError, match="expected b.weight"), w:
        w.write("a.bias", ts["a.bias"])
    w = ShardWriter(tmp_path / "y.safetensors", entries)
    with pytest.raises(ValueError, match="expected b.weight"), w:
        w.write("b.weight", ts["b.weight"].view(5, 3))


def test_a_missing_tensor_is_an_error_not_a_short_file(tmp_path):
    ts = tensors()
    with (
        pytest.raises(ValueError, match="never written"),
        ShardWriter(
            tmp_path / "x.safetensors", [(n, t.dtype, t.shape) for n, t in ts.items()]
        ) as w,
    ):
        w.write("b.weight", ts["b.weight"])
