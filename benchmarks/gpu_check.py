"""GPU check on one CUDA device (an H200): exactness, step time, memory, replay throughput.

Everything is built here, nothing is downloaded: a Llama-architecture model of ~1B
parameters from a config (hidden 2048, 16 layers, MLP 8192, 32 heads / 8 KV heads, the
96-entry character tokenizer of tests/tinymodels.py, tied embeddings), initialised from
the portable Philox stream (``0.02 * z``, norms ``1 + z/16``), and the toy sentiment task
of tests/tinymodels.py. Prints one markdown table.

1. Exactness. The kernel tests (tests/core/test_triton.py) run compiled on the GPU. Then
   ``mezo_ckpt.trainer.train`` runs 20 steps on CUDA, fp32 (normal16, one direction) and
   bf16 stochastic rounding (normal16, two directions, weight decay); each trajectory is
   replayed from a CPU copy of the base on this machine's CPU (numba kernels), on CUDA
   through the project's replay (``replay_tensors``), and on CUDA by calling
   ``mezo_ckpt.core.kernels_triton.replay`` directly: all fingerprints must equal the one
   the trainer recorded. A smaller model trained on the CPU (fp16 nearest rademacher, bf16
   stochastic normal16) is replayed on CUDA the same ways.
2. Step time at batch 16 x 256 tokens (random ids, next-token cross-entropy, bf16): two
   plain forwards vs a mezo-ckpt step (``MezoStep``: two perturbed forwards, coefficient,
   update) vs the official in-place MeZO recipe (``torch.normal`` z per parameter from a
   reset seed, four passes: +eps, -2eps, +eps, update; in place with ``add_``). Median of
   timed repeats after warm-up, ``torch.cuda.synchronize`` around each.
3. Peak GPU memory (``torch.cuda.max_memory_allocated``, reset before each) of one step
   of each kind vs one inference forward on the same batch.
4. Replay throughput of the block-resident Triton kernel over all parameters of the 1B
   model: element-steps/s for T steps. HBM traffic per element-step is counted as
   ``2 * s / T`` bytes (each element read once and written once per replay of T steps;
   s = 4 for fp32, 2 for bf16; the steps/coefficients arrays are negligible); the normal16
   table (256 KiB) is read by 4-byte gathers that hit L1/L2, not counted, and Philox is
   computed in registers (no traffic). Fraction = rate * bytes / peak HBM bandwidth
   (4.8 TB/s for an H200; other devices: 'n/a').

mezo_ckpt sends CUDA tensors to its Triton kernels itself (the 'engine' row says whether
it did here). ``--dry-run`` runs every code path on the CPU with a
tiny model and few steps (Triton in its interpreter), to catch typos before a GPU run.

    python benchmarks/gpu_check.py            # on the GPU machine (about 5-8 minutes)
    python benchmarks/gpu_check.py --dry-run  # anywhere, CPU only
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("--dry-run", action="store_true", help="tiny sizes, CPU only")
ARGS.add_argument("--steps", type=int, default=None, help="training steps (default 20)")
ARGS.add_argument("--budget", type=float, default=450.0, help="seconds; later parts skip")
ARGS.add_argument("--skip-pytest", action="store_true", help="do not run tests/core/test_triton.py")
ARGS.add_argument("--json", default=None, help="also write the rows as JSON here")

#: Llama shapes: the ~1B model, the CPU-trained one, and the dry run's.
BIG = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    intermediate_size=8192,
    num_attention_heads=32,
    num_key_value_heads=8,
)
SMALL = dict(
    hidden_size=256,
    num_hidden_layers=4,
    intermediate_size=768,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
)
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}

ROWS: list[dict[str, str]] = []


def row(part: str, what: str, result: str, detail: str = "") -> None:
    ROWS.append({"part": part, "what": what, "result": result, "detail": detail})
    print(f"[{part}] {what}: {result}  {detail}", file=sys.stderr, flush=True)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


@contextlib.contextmanager
def part(name: str, what: str, budget: Budget, need: float):
    """Run a part if ``need`` seconds are left; an exception becomes an ERROR row."""
    if budget.left() < need:
        row(name, what, "SKIPPED", f"{budget.left():.0f} s left, needs ~{need:.0f} s")
        yield False
        return
    try:
        yield True
    except Exception as e:  # report and go on: one table whatever happens
        tb = traceback.format_exc(limit=6).strip().splitlines()
        row(name, what, "ERROR", f"{type(e).__name__}: {e} | " + " / ".join(tb[-3:]))


def print_table() -> None:
    print("| part | check | result | detail |")
    print("|---|---|---|---|")
    for r in ROWS:
        cells = [r["part"], r["what"], r["result"], r["detail"]]
        print("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")


# ----------------------------------------------------------------------------- setup


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build_model(shape: dict, dtype, device: str, seed: int = 1234):
    """A Llama from a config, weights from the portable stream (same on every machine)."""
    import torch
    from tinymodels import VOCAB
    from transformers import LlamaConfig, LlamaForCausalLM

    from mezo_ckpt.core import stream as S
    from mezo_ckpt.core.hashing import canonical_parameters

    cfg = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=512, tie_word_embeddings=True, **shape
    )
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    with torch.no_grad():
        for name, p in canonical_parameters(model).items():
            key = S.param_key(seed, "init/" + name)
            z = torch.empty(p.numel(), dtype=torch.float32, device=device)
            if z.is_cuda:
                from mezo_ckpt.core import kernels_triton as TT

                TT.z_fill(z, 0, 0, 0, key[0], key[1], S.KIND_CODES["normal16"])
            else:
                S.generate_z(key, 0, 0, 0, p.numel(), "normal16", out=z)
            norm = p.ndim == 1 and "norm" in name
            p.copy_((1.0 + 0.0625 * z if norm else 0.02 * z).view_as(p))
    sync(device)
    return model


def kernel_tests(budget: Budget, dry: bool) -> None:
    """tests/core/test_triton.py, compiled on the GPU (a tiny subset in a dry run)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "triton"]
    test_file = str(ROOT / "tests/core/test_triton.py")
    cmd += ["-o", "markers=triton: triton", "-o", "addopts=", test_file]
    if dry:
        cmd += ["-k", "z_fill_matches_reference and 77"]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not dry:
        env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(30.0, min(240.0, budget.left() - 200)),
    )
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    ok = proc.returncode == 0
    row(
        "1 exactness",
        "kernel tests (tests/core/test_triton.py" + (" subset" if dry else "") + ")",
        "PASS" if ok else "FAIL",
        f"{tail} ({time.perf_counter() - t0:.0f} s)",
    )
    if not ok:
        print(proc.stdout[-4000:], proc.stderr[-2000:], file=sys.stderr)


def _same_bits(a, b, nan_free: bool) -> bool:
    """Bitwise equality (on CPU); NaNs masked unless ``nan_free`` (stored halves)."""
    import torch

    a, b = a.cpu(), b.cpu()
    view = torch.int32 if a.element_size() == 4 else torch.int16
    ia, ib = a.view(view).clone(), b.view(view).clone()
    if not nan_free:
        nan = torch.isnan(a) & torch.isnan(b)
        ia[nan] = 0
        ib[nan] = 0
    return torch.equal(ia, ib)


def kernel_spot_checks(device: str, dry: bool) -> None:
    """Without pytest: the Triton kernels on ``device`` against the eager reference (CPU)
    for every dtype, rounding mode and z kind, odd offsets, specials, random half bits."""
    import numpy as np
    import torch

    from mezo_ckpt.core import kernels_triton as TT
    from mezo_ckpt.core import stream as S
    from mezo_ckpt.core import update as U

    key = (0x9E3779B9, 0x01234567)
    n = 600 if dry else 5000
    rng = np.random.default_rng(0)
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 65504.0, 65520.0, 1e-40, 6e-8]
    specials += [3.39e38, -3.39e38, 2.0**-24, 2.0**-25, 2.0**-133]
    done, bad = 0, []
    for kind, code in S.KIND_CODES.items():
        for start in (77, 2**32 - 3, 128 * 2**32 - 77):
            out = torch.empty(n, device=device)
            TT.z_fill(out, start, 7, 1, key[0], key[1], code)
            done += 1
            if not _same_bits(out, S.z_reference(key, 7, 1, start, n, kind), True):
                bad.append(f"z {kind} {start}")
    r = torch.empty(n, dtype=torch.int64, device=device)
    TT.rounding_bits_fill(r, 8190, 11, S.LANE_ROUNDING, key[0], key[1])
    done += 1
    if not torch.equal(r.cpu(), S.rounding_bits_reference(key, 11, 0, 8190, n)):
        bad.append("rounding bits")
    steps = np.array([3, 10, 11, 50], np.int64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        scale = 2.0**-22 if dtype == torch.float32 else 2.0**-14
        for rounding in ("nearest", "stochastic") if dtype != torch.float32 else ("nearest",):
            for kind, code in S.KIND_CODES.items():
                if dtype == torch.float32:
                    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.05)
                else:
                    bits = rng.integers(0, 65536, n).astype(np.int32)
                    x = torch.from_numpy(bits).to(torch.int16).view(dtype).clone()
                x[: len(specials)] = torch.tensor(specials).to(dtype)
                coefs = (rng.integers(-8191, 8192, (4, 2)) * scale).astype(np.float32)
                coefs[1, 1] = 0.0
                coefs[3] = 0.0
                decay = np.array([1.0, np.float32(1 - 1e-3), 1.0, 1.0], np.float32)
                batch = U.UpdateBatch(steps, coefs, decay)
                for start in (5, 128 * 2**32 - 77):
                    got = x.to(device, copy=True)
                    mode = TT.ROUND_STOCHASTIC if rounding == "stochastic" else TT.ROUND_NEAREST
                    TT.replay(got, start, key[0], key[1], steps, coefs, decay, code, mode)
                    ref = x.clone()
                    U.apply_updates(
                        ref,
                        key,
                        batch,
                        kind=kind,
                        rounding=rounding,
                        start=start,
                        backend="reference",
                    )
                    done += 1
                    if not _same_bits(got, ref, dtype != torch.float32):
                        bad.append(f"replay {dtype} {rounding} {kind} {start}")
                out = torch.empty(n, dtype=dtype, device=device)
                TT.perturb(x.to(device), out, 77, 9, 2, key[0], key[1], 1e-3, code)
                ref = U.perturbed_copy(x, key, 9, 2, 1e-3, kind=kind, start=77, backend="reference")
                done += 1
                if not _same_bits(out, ref, False):
                    bad.append(f"perturb {dtype} {kind}")
    # values where a fused multiply-add would differ from the rule's two roundings
    x = rng.uniform(0.5, 2.0, n).astype(np.float32)
    z = S.z_reference(key, 1, 0, 0, n, "normal16").numpy()
    third = np.float32(1.0 / 3.0)
    out = torch.empty(n, device=device)
    TT.perturb(torch.from_numpy(x).to(device), out, 0, 1, 0, key[0], key[1], float(third), 0)
    fused = (third.astype(np.float64) * z + x).astype(np.float32)
    unfused = x + third * z
    done += 1
    if not np.array_equal(out.cpu().numpy().view(np.uint32), unfused.view(np.uint32)):
        bad.append("perturb is fused")
    row(
        "1 exactness",
        "kernel spot checks on " + device + " (no pytest needed)",
        "PASS" if not bad else "FAIL",
        f"{done} comparisons with the eager reference, {len(bad)} differ {bad[:6]}; fused "
        f"multiply-add would differ in {(fused != unfused).mean():.0%} of the fusion probe",
    )


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def train_run(model, tok, device: str, dtype_name: str, out: Path, data: dict, **kw):
    from mezo_ckpt.trainer import train

    settings = dict(
        task="custom",
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        batch_size=16,
        lr=1e-4,
        eps=1e-3,
        eval_every=0,
        eval_examples=16,
        eval_test=False,
        fsync=False,
        output=str(out),
        dtype=dtype_name,
        device=device,
        **data,
    )
    settings.update(kw)
    t0 = time.perf_counter()
    r = train(model=model, tokenizer=tok, progress=False, log=lambda s: None, **settings)
    return r, time.perf_counter() - t0


def replay_fingerprints(traj_path: Path, base_cpu: dict, replay_device: str) -> dict[str, str]:
    """Fingerprints of the replayed trainable tensors: CPU (project), device (project),
    device (mezo_ckpt.core.kernels_triton.replay called directly)."""
    import torch

    from mezo_ckpt.core import kernels_triton as TT
    from mezo_ckpt.core import stream as S
    from mezo_ckpt.core.hashing import tensors_sha256
    from mezo_ckpt.core.update import UpdateSpec
    from mezo_ckpt.rebuild import replay_tensors
    from mezo_ckpt.trajectory import read_trajectory

    traj = read_trajectory(traj_path)
    names = list(traj.header.trainable)
    out: dict[str, str] = {}
    timing: dict[str, float] = {}
    cpu = {n: base_cpu[n].clone() for n in names}
    t0 = time.perf_counter()
    replay_tensors(traj, cpu, verify=False, backend="compiled")  # the numba kernels
    timing["cpu"] = time.perf_counter() - t0
    out["cpu"] = tensors_sha256(cpu, names)
    del cpu
    dev = {n: base_cpu[n].to(replay_device, copy=True) for n in names}
    sync(replay_device)
    t0 = time.perf_counter()
    replay_tensors(traj, dev, verify=False)
    sync(replay_device)
    timing["device"] = time.perf_counter() - t0
    out["device"] = tensors_sha256(dev, names)
    del dev
    spec = UpdateSpec.from_header(traj.header)
    batch = traj.update_batch(traj.num_steps)
    direct = {n: base_cpu[n].to(replay_device, copy=True) for n in names}
    mode = TT.ROUND_STOCHASTIC if spec.rounding == "stochastic" else TT.ROUND_NEAREST
    steps = torch.from_numpy(batch.steps).to(replay_device)
    coefs = torch.from_numpy(batch.coefs).to(replay_device)
    decay = torch.from_numpy(batch.decay).to(replay_device)
    ones = torch.ones_like(decay)
    sync(replay_device)
    t0 = time.perf_counter()
    for n in names:
        key = S.param_key(spec.seed, n)
        m = decay if n in spec.decay_params else ones
        TT.replay(direct[n], 0, key[0], key[1], steps, coefs, m, S.KIND_CODES[spec.kind], mode)
    sync(replay_device)
    timing["direct"] = time.perf_counter() - t0
    out["direct"] = tensors_sha256(direct, names)
    out["timing"] = ", ".join(f"{k} {v:.2f} s" for k, v in timing.items())
    return out


def exactness_run(
    label: str,
    shape: dict,
    dtype_name: str,
    train_device: str,
    replay_device: str,
    data: dict,
    steps: int,
    budget: Budget,
    need: float,
    **kw,
) -> None:
    import torch
    from tinymodels import tiny_tokenizer

    from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256
    from mezo_ckpt.trajectory import read_trajectory

    with part("1 exactness", label, budget, need) as go:
        if not go:
            return
        dtype = getattr(torch, dtype_name)
        model = build_model(shape, dtype, train_device)
        params = canonical_parameters(model)
        n_params = sum(p.numel() for p in params.values())
        base_cpu = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        base_fp = tensors_sha256(base_cpu)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "run.zst"
            r, seconds = train_run(
                model, tiny_tokenizer(), train_device, dtype_name, out, data, steps=steps, **kw
            )
            del model, params
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            traj = read_trajectory(out)
            want = traj.checkpoints.get(traj.num_steps, r.fingerprint)
            fps = replay_fingerprints(out, base_cpu, replay_device)
        changed = want != tensors_sha256(base_cpu, list(traj.header.trainable))
        assert tensors_sha256(base_cpu) == base_fp  # the replays worked on copies
        same = all(fps[k] == want for k in ("cpu", "device", "direct"))
        row(
            "1 exactness",
            label,
            "PASS" if same and changed else "FAIL",
            f"{n_params / 1e6:.1f} M params, {traj.num_steps} steps trained on {train_device} "
            f"in {seconds:.1f} s; trained {want[:12]}; replay cpu {fps['cpu'][:12]}, "
            f"{replay_device} (project) {fps['device'][:12]}, {replay_device} "
            f"(_triton.replay) {fps['direct'][:12]}; weights changed: {changed}; "
            f"{fps['timing']}",
        )


# ----------------------------------------------------------------------------- parts 2, 3


def timed(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], object], device: str) -> int | None:
    import torch

    if torch.device(device).type != "cuda":
        return None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated()


def step_time_and_memory(
    model, device: str, batch: int, tokens: int, budget: Budget, dry: bool
) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.core.update import UpdateSpec
    from mezo_ckpt.trainer.perturb import Perturber
    from mezo_ckpt.trainer.step import MezoStep
    from mezo_ckpt.trainer.tasks import LossTerms

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 96, (batch, tokens), generator=g).to(device)
    eps, lr, seed = 1e-3, 1e-6, 0

    def loss() -> float:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))

    def forward1() -> None:
        with torch.inference_mode():
            loss()

    def forward2() -> None:
        with torch.inference_mode():
            loss()
            loss()

    params = canonical_parameters(model)
    trainable = list(params)
    spec = UpdateSpec(seed, "normal16", "stochastic", tuple(trainable), frozenset())
    perturber = Perturber(model, trainable, seed, "normal16", eps)

    def measure(_enc) -> LossTerms:
        return LossTerms(loss(), 1, 0.0)

    stepper = MezoStep(params, perturber, spec, measure, eps=eps, n_directions=1)
    counter = {"t": 0}

    def mezo() -> None:
        t = counter["t"]
        counter["t"] += 1
        stepper.apply(stepper.estimate(t, None, lr))

    named = list(model.named_parameters())
    rng = np.random.RandomState(seed)

    def official() -> None:
        """princeton-nlp/MeZO zo_step + zo_update (in place with add_)."""
        s = int(rng.randint(1_000_000_000))

        def perturb(scaling: float) -> None:
            torch.manual_seed(s)
            for _, p in named:
                z = torch.normal(0, 1, size=p.shape, device=p.device, dtype=p.dtype)
                p.data.add_(z, alpha=scaling * eps)

        with torch.no_grad():
            perturb(1.0)
            lp = loss()
            perturb(-2.0)
            lm = loss()
            perturb(1.0)
            grad = (lp - lm) / (2 * eps)
            torch.manual_seed(s)
            for _, p in named:
                z = torch.normal(0, 1, size=p.shape, device=p.device, dtype=p.dtype)
                p.data.add_(z, alpha=-lr * grad)

    warmup, repeats = (1, 2) if dry else (3, 10)
    label = f"batch {batch} x {tokens} tokens, {str(next(model.parameters()).dtype)[6:]}"
    with part("2 step time", label, budget, 60 if not dry else 1) as go:
        if go:
            t_f2 = timed(forward2, device, warmup, repeats)
            t_mezo = timed(mezo, device, warmup, repeats)
            t_off = timed(official, device, warmup, repeats)
            row("2 step time", "two plain forwards", f"{t_f2 * 1e3:.1f} ms", "1.00x")
            row(
                "2 step time",
                "mezo-ckpt step (MezoStep: 2 perturbed forwards + update)",
                f"{t_mezo * 1e3:.1f} ms",
                f"{t_mezo / t_f2:.2f}x two forwards",
            )
            row(
                "2 step time",
                "official in-place MeZO (torch.normal, 4 passes)",
                f"{t_off * 1e3:.1f} ms",
                f"{t_off / t_f2:.2f}x two forwards",
            )
    with part("3 memory", label, budget, 30 if not dry else 1) as go:
        if go:
            p_inf = peak_bytes(forward1, device)
            p_mezo = peak_bytes(mezo, device)
            p_off = peak_bytes(official, device)
            if p_inf is None:
                row("3 memory", "peak GPU memory", "n/a", "no CUDA device (dry run)")
            else:
                weights = sum(p.numel() * p.element_size() for p in params.values())
                row(
                    "3 memory",
                    "inference forward (peak allocated)",
                    f"{p_inf / 2**20:.0f} MiB",
                    f"weights {weights / 2**20:.0f} MiB",
                )
                for what, p in (("mezo-ckpt step", p_mezo), ("official MeZO step", p_off)):
                    row(
                        "3 memory",
                        what + " (peak allocated)",
                        f"{p / 2**20:.0f} MiB",
                        f"{p / p_inf:.3f}x inference (+{(p - p_inf) / 2**20:.0f} MiB)",
                    )


# ----------------------------------------------------------------------------- part 4


def replay_throughput(model, device: str, steps: int, budget: Budget, dry: bool) -> None:
    import numpy as np
    import torch

    from mezo_ckpt.core import kernels_triton as TT
    from mezo_ckpt.core import stream as S
    from mezo_ckpt.core.hashing import canonical_parameters

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    bw = next((v for k, v in HBM_BYTES_PER_S.items() if k in name), None)
    params = canonical_parameters(model)
    n = sum(p.numel() for p in params.values())
    rng = np.random.default_rng(0)
    for dtype, rounding in ((torch.float32, "nearest"), (torch.bfloat16, "stochastic")):
        for kind in ("normal16", "rademacher"):
            for T in (1, steps):
                label = f"{str(dtype)[6:]} {rounding} {kind}, T={T}"
                with part("4 replay", label, budget, 20 if not dry else 1) as go:
                    if not go:
                        continue
                    tensors = [p.detach().to(dtype, copy=True).view(-1) for p in params.values()]
                    coefs = (rng.integers(-8191, 8192, (T, 1)) * 2.0**-30).astype(np.float32)
                    st = torch.arange(T, dtype=torch.int64, device=device)
                    cf = torch.from_numpy(coefs).to(device)
                    dc = torch.ones(T, dtype=torch.float32, device=device)
                    code = S.KIND_CODES[kind]
                    mode = TT.ROUND_STOCHASTIC if rounding == "stochastic" else TT.ROUND_NEAREST

                    def run(tensors=tensors, st=st, cf=cf, dc=dc, code=code, mode=mode) -> None:
                        for i, t in enumerate(tensors):
                            TT.replay(t, 0, i, 7, st, cf, dc, code, mode)

                    sec = timed(run, device, 1, 1 if dry else 3)
                    rate = n * T / sec
                    size = tensors[0].element_size()
                    per = 2 * size / T
                    frac = f"{rate * per / bw:.1%} of {bw / 1e12:.1f} TB/s" if bw else "n/a"
                    row(
                        "4 replay",
                        label,
                        f"{rate / 1e9:.1f} G element-steps/s",
                        f"{n / 1e6:.3g} M elements, {sec * 1e3:.1f} ms; HBM bytes per "
                        f"element-step 2*{size}/{T} = {per:.3g}: {frac}",
                    )
                    del tensors


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = ARGS.parse_args()

    def stop(signum, frame):  # timeout(1) sends SIGTERM: still print what was measured
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        run(args)
    except KeyboardInterrupt as e:
        row("done", "interrupted", "ERROR", str(e))
    finally:
        print_table()
        if args.json:
            Path(args.json).write_text(json.dumps(ROWS, indent=1))
    if any(r["result"] in ("FAIL", "ERROR") for r in ROWS):
        sys.exit(1)


def run(args: argparse.Namespace) -> None:
    dry = args.dry_run
    import torch

    cuda = torch.cuda.is_available() and not dry
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    device = "cuda" if cuda else "cpu"
    steps = args.steps or (3 if dry else 20)
    budget = Budget(args.budget)
    from tinymodels import toy_sentiment

    from mezo_ckpt.core import kernels_triton as TT

    row(
        "0 setup",
        "device",
        torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        f"torch {torch.__version__}, triton "
        f"{__import__('triton').__version__}, Triton available: {TT.available()}",
    )
    from mezo_ckpt.core.backends import use_triton

    engine = "Triton kernels" if use_triton(device) else "eager torch (no Triton here)"
    row("0 setup", f"engine for {device} tensors", f"mezo_ckpt's own dispatch: {engine}")

    with part("1 exactness", "kernel spot checks", budget, 20 if not dry else 1) as go:
        if go:
            kernel_spot_checks(device, dry)
    if not args.skip_pytest:
        with part("1 exactness", "kernel tests", budget, 60 if not dry else 1) as go:
            if go and importlib.util.find_spec("pytest") is None:
                row("1 exactness", "kernel tests", "SKIPPED", "pytest is not installed")
            elif go:
                kernel_tests(budget, dry)

    where = "GPU" if cuda else "CPU (Triton interpreter)"
    big = TINY if dry else BIG
    small = TINY if dry else SMALL
    with tempfile.TemporaryDirectory() as d:
        data = {
            "train_file": write_jsonl(Path(d) / "train.jsonl", toy_sentiment(400, 0)),
            "dev_file": write_jsonl(Path(d) / "dev.jsonl", toy_sentiment(32, 1)),
        }
        need = 15 if dry else 90
        exactness_run(
            f"train fp32 normal16 on {where}, replay CPU + {where}",
            big,
            "float32",
            device,
            device,
            data,
            steps,
            budget,
            need,
            z="normal16",
        )
        exactness_run(
            f"train bf16 stochastic normal16 (2 directions, decay) on {where}, replay CPU + "
            + where,
            big,
            "bfloat16",
            device,
            device,
            data,
            steps,
            budget,
            need,
            z="normal16",
            rounding="stochastic",
            n_directions=2,
            weight_decay=0.01,
        )
        for dt, extra in (
            ("float16", dict(z="rademacher")),
            ("bfloat16", dict(z="normal16", rounding="stochastic")),
        ):
            label = f"train {dt} {extra.get('rounding', 'nearest')} {extra['z']} on CPU, "
            exactness_run(
                label + "replay CPU + " + where,
                small,
                dt,
                "cpu",
                device,
                data,
                steps,
                budget,
                10 if dry else 30,
                **extra,
            )

    model = None
    with part("2-4 setup", "build the bf16 model", budget, 30 if not dry else 1) as go:
        if go:
            model = build_model(big, torch.bfloat16, device)
    if model is not None:
        batch, tokens = (2, 16) if dry else (16, 256)
        step_time_and_memory(model, device, batch, tokens, budget, dry)
        replay_throughput(model, device, steps, budget, dry)
    row("done", "wall time", f"{time.perf_counter() - budget.t0:.0f} s", f"budget {args.budget}")


if __name__ == "__main__":
    main()
