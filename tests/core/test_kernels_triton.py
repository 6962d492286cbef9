"""mezo_ckpt.core.kernels_triton: the wrappers around the Triton kernels.

tests/core/test_triton.py proves the kernels' bits against the reference at length;
this module keeps to the wrappers and stays small: when the kernels count as available
(interpreter, CUDA, import error), the int32 word and grid arithmetic, the block and
range checks, the refusals of every entry point, empty inputs, fp32 ignoring the
rounding mode, the cached table, the kernel signatures used by ``cuda_asm`` and its
refusal under the interpreter. Without a GPU the few launches run in the interpreter.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)
pytest.importorskip("triton")

from mezo_ckpt.core import kernels_triton as TT  # noqa: E402
from mezo_ckpt.core import spec  # noqa: E402
from mezo_ckpt.core import stream as S  # noqa: E402

pytestmark = [pytest.mark.triton]

DEVICE = "cuda" if CUDA else "cpu"
KEY = (0x9E3779B9, 0x01234567)


@pytest.mark.parametrize(
    "value,want", [("1", True), ("true", True), ("0", False), ("", False), (None, False)]
)
def test_interpreting_reads_the_environment(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    assert TT.interpreting() is want


def test_available(monkeypatch):
    assert TT.available()
    monkeypatch.setattr(TT, "_IMPORT_ERROR", ImportError("no triton"))
    assert not TT.available()  # an import error wins over the interpreter and CUDA


@pytest.mark.skipif(CUDA, reason="with a GPU the kernels are available anyway")
def test_not_available_without_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not TT.available()


def test_int32_words():
    cases = {0: 0, 5: 5, 2**31 - 1: 2**31 - 1, 2**31: -(2**31), 2**32 - 1: -1, 2**32 + 5: 5, -1: -1}
    for value, want in cases.items():
        assert TT._i32(value) == want
        assert TT._i32(value) & spec.MASK32 == value & spec.MASK32


def test_block_and_grid_arithmetic():
    assert TT.MIN_BLOCK == 128 and TT.BLOCK >= TT.MIN_BLOCK
    assert TT._block(None) == TT.BLOCK and TT._block(128) == 128 and TT._block(4096) == 4096
    for bad in (0, 64, 384, 1000):
        with pytest.raises(ValueError, match=f"power of two >= 128, got {bad}"):
            TT._block(bad)
    assert TT._grid(0, 1, 128) == (0, 1)
    assert TT._grid(127, 2, 128) == (0, 2)  # crosses one program boundary
    assert TT._grid(5 * 128 + 3, 300, 128) == (5, 3)
    assert TT._grid(2**40, 128, 128) == (2**33, 1)
    assert TT._check_start(2**62 - 10, 10) == 2**62 - 10
    for start, n in ((-1, 1), (2**62 - 10, 11)):
        with pytest.raises(ValueError, match="element range"):
            TT._check_start(start, n)
    assert TT.LAUNCH_OPTIONS == {"enable_fp_fusion": False}


def test_normal16_table_is_cached_per_device():
    table = TT._table_on(DEVICE)
    assert TT._table_on(DEVICE) is table
    assert table.dtype == torch.float32 and table.numel() == 65536
    assert np.array_equal(table.cpu().numpy(), spec.normal16_table_numpy())
    x = torch.zeros(3, device=DEVICE)
    assert TT._table(x) is TT._table_on(str(x.device))


def test_entry_point_refusals():
    x = torch.zeros(8, device=DEVICE)
    sched = (np.zeros(1, np.int64), np.zeros((1, 1), np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="element range"):
        TT.z_fill(x, 2**62, 0, 0, 1, 2, 0)
    with pytest.raises(ValueError, match="out must be contiguous"):
        TT.rounding_bits_fill(torch.zeros(4, 4, dtype=torch.int64).t(), 0, 0, 0, 1, 2)
    with pytest.raises(ValueError, match="unknown rounding code 2"):
        TT.replay(x, 0, 1, 2, *sched, 0, 2)
    with pytest.raises(ValueError, match="unknown z kind code 5"):
        TT.replay(x, 0, 1, 2, *sched, 5, 0)
    with pytest.raises(ValueError, match="must agree"):
        TT.replay(x, 0, 1, 2, sched[0], sched[1][0], sched[2], 0, 0)
    with pytest.raises(ValueError, match="same dtype, size and device"):
        TT.perturb(x, torch.zeros(9, device=DEVICE), 0, 0, 0, 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="src must be float32, bfloat16 or float16"):
        TT.perturb(x.to(torch.int32), x, 0, 0, 0, 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="2-D parameter"):
        TT.perturb_rows(x, torch.tensor([0]), x, 0, 0, 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="row index out of range"):
        w = torch.zeros(3, 4, device=DEVICE)
        TT.perturb_rows(w, torch.tensor([-1]), torch.zeros(1, 4, device=DEVICE), 0, 0, 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="w must be contiguous"):
        w = torch.zeros(4, 3, device=DEVICE).t()
        TT.perturb_rows(w, torch.tensor([0]), torch.zeros(1, 4, device=DEVICE), 0, 0, 1, 2, 0.1, 0)
    for y, dtype in ((x, torch.float32), (x.half(), torch.bfloat16), (x, torch.float64)):
        with pytest.raises(ValueError, match="maps float32 to bfloat16 or float16"):
            TT.round_to_half(y, dtype)


def test_cuda_asm_refuses_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        TT.cuda_asm("z_fill")


def test_cuda_asm_signatures_name_every_kernel_argument():
    assert set(TT._SIGNATURES) == {
        "z_fill",
        "rounding_bits",
        "replay",
        "perturb",
        "perturb_rows",
        "round_half",
    }
    for name, (kernel, types, consts) in TT._SIGNATURES.items():
        names = list(kernel.arg_names)
        assert len(types) + len(consts) == len(names), name
        assert tuple(names[len(types) :]) == consts, name
        for arg, typ in zip(names, types):
            assert typ.startswith("*") == arg.endswith("_ptr"), (name, arg, typ)


def test_empty_inputs_launch_nothing():
    TT.z_fill(torch.empty(0, device=DEVICE), 0, 0, 0, 1, 2, 0, block=64)  # checks skipped too
    TT.rounding_bits_fill(torch.empty(0, dtype=torch.int64, device=DEVICE), 0, 0, 0, 1, 2)
    x = torch.ones(5, dtype=torch.bfloat16, device=DEVICE)
    TT.replay(x, 0, 1, 2, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), [], 0, 1)
    assert (x == 1).all()
    e = torch.empty(0, 3, dtype=torch.float16, device=DEVICE)
    TT.perturb(e, e.clone(), 0, 0, 0, 1, 2, 0.5, 1)
    TT.perturb_rows(
        torch.zeros(2, 3, device=DEVICE),
        torch.tensor([], dtype=torch.int64),
        torch.empty(0, 3, device=DEVICE),
        0,
        0,
        1,
        2,
        0.1,
        0,
    )
    out = TT.round_to_half(torch.empty(0, 4, device=DEVICE), torch.float16)
    assert out.shape == (0, 4) and out.dtype == torch.float16


def test_fp32_replay_ignores_the_rounding_mode():
    """fp32 storage has no rounding step: the stochastic code gives the nearest bits,
    and both equal the reference (one launch each, 300 elements)."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal(300).astype(np.float32))
    steps = np.array([2, 3], np.int64)
    coefs = (rng.integers(-8191, 8192, (2, 2)) * 2.0**-20).astype(np.float32)
    decay = np.array([1.0, 1 - 1e-3], np.float32)
    outs = []
    for mode in (TT.ROUND_NEAREST, TT.ROUND_STOCHASTIC):
        got = x.to(DEVICE, copy=True)
        TT.replay(got, 70, *KEY, steps, coefs, decay, 1, mode, block=128)
        outs.append(got.cpu())
    ref = x.clone()  # the rule written out: fl32(y * m), then fl32(y - c * z) per direction
    for step, row, m in zip(steps.tolist(), coefs, decay):
        ref = ref * torch.tensor(m) if m != 1 else ref
        for j, c in enumerate(row):
            ref = ref - torch.tensor(c) * S.z_reference(KEY, step, j, 70, 300, "rademacher")
    assert torch.equal(outs[0].view(torch.int32), outs[1].view(torch.int32))
    assert torch.equal(outs[0].view(torch.int32), ref.view(torch.int32))
    assert not torch.equal(ref, x)


def test_round_to_half_keeps_shape_and_uses_rbits():
    y = torch.tensor([[1.0 + 2.0**-9, -(1.0 + 2.0**-9)], [3.0e38, float("nan")]], device=DEVICE)
    near = TT.round_to_half(y, torch.bfloat16)
    assert near.shape == (2, 2) and near.dtype == torch.bfloat16
    assert near[0].tolist() == [1.0, -1.0]  # a quarter ulp: nearest rounds toward 1
    assert near.cpu().view(torch.int16)[1, 1] == spec.CANONICAL_NAN[torch.bfloat16]
    up = TT.round_to_half(y, torch.bfloat16, torch.zeros(4, dtype=torch.int32, device=DEVICE))
    assert up[0].tolist() == [1.0 + 2.0**-7, -(1.0 + 2.0**-7)]  # r = 0 < frac: away from 0
    keep = TT.round_to_half(y, torch.bfloat16, torch.full((2, 2), 2**24 - 1, device=DEVICE))
    assert keep[0].tolist() == [1.0, -1.0]


def test_z_fill_and_rounding_bits_with_full_32_bit_words():
    """Key, step and lane words at or above 2**31 travel as int32 and come back whole."""
    out = torch.empty(300, device=DEVICE)
    TT.z_fill(out, 5, 2**32 - 2, 2**31 + 7, *KEY, spec.KIND_CODES["normal16"], block=128)
    ref = S.z_reference(KEY, 2**32 - 2, 2**31 + 7, 5, 300, "normal16")
    assert torch.equal(out.cpu().view(torch.int32), ref.view(torch.int32))
    r = torch.empty(300, dtype=torch.int64, device=DEVICE)
    TT.rounding_bits_fill(r, 5, 2**31 + 1, spec.LANE_ROUNDING, *KEY, block=128)
    assert torch.equal(r.cpu(), S.rounding_bits_reference(KEY, 2**31 + 1, 0, 5, 300))


def test_round_to_half_refuses_rbits_of_another_size():
    with pytest.raises(ValueError, match="rbits holds 5 values for 300"):
        TT.round_to_half(
            torch.linspace(1, 2, 300), torch.bfloat16, torch.zeros(5, dtype=torch.int64)
        )
