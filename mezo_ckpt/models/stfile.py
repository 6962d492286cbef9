"""Write a safetensors file one tensor at a time (for streaming replay).

``safetensors.torch.save_file`` builds the whole file in memory before writing it, so a
shard being saved costs twice its size. :class:`ShardWriter` lays the file out from the
tensors' names, dtypes and shapes first (8-byte little-endian header size, the JSON
header padded with spaces to a multiple of 8, then the data back to back in header
order, as the safetensors format specifies), then takes each tensor's bytes as they are
produced: the peak is one tensor. safetensors' own reader loads the result.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from typing import BinaryIO

import torch

#: safetensors dtype names of the tensor dtypes a base can be stored in.
ST_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class ShardWriter:
    """``with ShardWriter(path, [(name, dtype, shape), ...]) as w: w.write(name, t)`` for
    every entry, in order; the file is flushed and fsynced on a clean exit."""

    def __init__(
        self,
        path: str | os.PathLike,
        entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        self._expect: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
        for name, dtype, shape in entries:
            if dtype not in ST_DTYPES:
                raise ValueError(f"{name}: dtype {dtype} has no safetensors name")
            shape = tuple(int(s) for s in shape)
            n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": ST_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            self._expect.append((name, dtype, shape, n))
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._path = os.fspath(path)
        self._fh: BinaryIO | None = open(self._path, "wb")  # noqa: SIM115 - closed in exit
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, t: torch.Tensor) -> None:
        """The bytes of the next entry (``name``, with the declared dtype and shape)."""
        if self._next >= len(self._expect):
            raise ValueError(f"{name}: more tensors than the header declares")
        want, dtype, shape, n = self._expect[self._next]
        if name != want or t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(
                f"expected {want} {dtype} {list(shape)}, got {name} {t.dtype} {list(t.shape)}"
            )
        flat = t.detach().reshape(-1).contiguous().cpu()
        if n:
            data = flat.view(torch.uint8).numpy()
            assert self._fh is not None and data.nbytes == n
            self._fh.write(memoryview(data))
        self._next += 1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if exc_type is None:
                if self._next != len(self._expect):
                    raise ValueError(
                        f"{self._path}: {len(self._expect) - self._next} declared tensors "
                        "were never written"
                    )
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            fh.close()
