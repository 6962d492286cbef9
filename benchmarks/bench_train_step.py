"""One training step, side by side: two plain forwards vs a mezo-ckpt MeZO step vs the
official in-place MeZO step vs a backprop + AdamW step (time and peak memory).

Modes (same model, same batch, same loss: ``score_candidates`` + cross-entropy over the
label words, as in ``mezo_ckpt.trainer``):

* ``forward2``: two plain forwards of the batch (``score_candidates`` and its
  loss, twice, under ``torch.inference_mode`` in eval mode): what the two loss
  evaluations of any MeZO step cost at least.
* ``mezo``: one mezo-ckpt step as ``mezo_ckpt/trainer/recipe.py`` runs it (``MezoStep``
  built from the config): the perturbed forwards (``Perturber.perturbed`` + the run's
  objective, one per sign; single-token label words read only their rows of the output
  layer), the losses, the rounded coefficient and ``apply_to_tensors``. Not included:
  tokenization (all modes use one pre-encoded batch) and writing the step record.
* ``official``: the in-place recipe of princeton-nlp/MeZO (large_models/trainer.py):
  a fresh seed from numpy; for every parameter in ``named_parameters()`` order and a
  ``torch.manual_seed(seed)`` before each pass, ``z = torch.normal(0, 1)`` in the
  parameter's dtype; theta += eps z, loss+; theta -= 2 eps z, loss-; theta += eps z;
  regenerate z and theta -= lr g z. The weights are rebound as ``param.data = param.data
  + c * z * eps`` exactly as that code does.
* ``backprop``: the same loss with autograd, ``loss.backward()`` and one
  ``torch.optim.AdamW`` step on every parameter (eval mode; the model has no dropout).

Time: one warm-up step per mode, then ``--repeats`` interleaved rounds (forward2, mezo,
official, backprop, forward2, ...) so background load hits every mode alike; reported
are the median seconds per step and the median over rounds of (mode / forward2 of the
same round). The machine is shared: compare ratios from one run, not absolute seconds.

Memory: RSS high-water marks are per process, so each mode runs 3 steps in its own
subprocess (``--mode X --measure-memory``), which prints JSON. ``inference`` is the
forward2 subprocess; it never imports numba/llvmlite (checked and reported), while the
mezo step does (its kernels are compiled with numba), and their RSS counts for mezo.
Peaks are read from VmHWM (/proc/self/status), not ru_maxrss: a subprocess's ru_maxrss
starts at its parent's high-water mark on Linux. VmHWM is reset after loading so that
"peak in steps" is the steps' own peak; "peak RSS" is the subprocess's lifetime peak.

--tiny is a smoke test (a 20k-parameter Llama, toy data, 1 thread, the memory
subprocesses 4 at a time); its numbers mean nothing.

    PYTHONPATH=. python benchmarks/bench_train_step.py              # SmolLM2-135M, batch 16
    PYTHONPATH=. python benchmarks/bench_train_step.py --tiny       # seconds: a smoke test
    PYTHONPATH=. python benchmarks/bench_train_step.py --modes forward2,mezo --skip-memory
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
MODES = ("forward2", "mezo", "lora", "official", "backprop")
DESCRIPTIONS = {
    "forward2": "two plain forwards (inference_mode)",
    "mezo": "mezo-ckpt step (two perturbed forwards + update)",
    "lora": "mezo-ckpt MeZO-LoRA step (r 8, alpha 16, q_proj/v_proj)",
    "official": "official in-place MeZO step (4 passes of torch.normal)",
    "backprop": "backprop + AdamW step",
}
#: AdamW learning rate of the backprop mode (a typical full fine-tuning value).
BACKPROP_LR = 1e-5
#: Toy task of --tiny (character-level tokenizer: single-character label words).
TINY_TEMPLATE = "{text} ="
TINY_VERBALIZER = {"pos": "+", "neg": "-"}
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------- machine


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def proc_status_kib(field_name: str) -> int:
    """A KiB field of /proc/self/status (VmRSS: resident now; VmHWM: high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def maxrss_kib() -> int:
    """getrusage's ru_maxrss (KiB on Linux). Caveat: in a process started by fork + exec
    (subprocess), Linux keeps the larger of the parent's high-water mark at the fork and
    the child's own, so it overstates a child's peak; VmHWM does not."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def heavy_modules() -> dict[str, bool]:
    return {m: m in sys.modules for m in ("numba", "llvmlite")}


# ----------------------------------------------------------------------------- setup


@dataclass
class Setup:
    model: Any
    enc: Any
    cfg: Any
    folder: Path
    info: dict[str, Any] = field(default_factory=dict)


def default_folder() -> Path:
    from mezo_ckpt.models import embedded  # stdlib-only module: no numba

    return embedded.default_model_dir()


def setup(args: argparse.Namespace, *, tiny_data: bool) -> Setup:
    """Load the model (as mezo_ckpt.models.base.load_folder does, but through transformers
    directly: no numba import) and encode the batch every mode uses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mezo_ckpt.models.base import parse_dtype
    from mezo_ckpt.trainer.config import BUILTIN_TASKS, TrainConfig
    from mezo_ckpt.trainer.data import Split
    from mezo_ckpt.trainer.inputs import batch_indices
    from mezo_ckpt.trainer.tasks import PromptTask

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    folder = Path(args.model) if args.model else default_folder()
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=parse_dtype(args.dtype), use_safetensors=True, low_cpu_mem_usage=True
    )
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    cfg = TrainConfig(
        model=str(folder),
        dtype=args.dtype,
        rounding=args.rounding,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    if tiny_data:
        sys.path.insert(0, str(ROOT / "tests"))
        from tinymodels import toy_sentiment

        task = PromptTask(
            template=TINY_TEMPLATE, verbalizer=dict(TINY_VERBALIZER), max_length=cfg.max_length
        )
        examples = toy_sentiment(256, seed=0)
        data_name = "toy sentiment (tests/tinymodels.toy_sentiment)"
    else:
        from mezo_ckpt.data import load_split

        b = BUILTIN_TASKS[cfg.task]
        task = PromptTask(
            template=b["template"],
            verbalizer=dict(b["verbalizer"]),
            label_field=b.get("label_field", "label"),
            max_length=cfg.max_length,
        )
        examples = load_split("train")
        data_name = f"built-in '{cfg.task}' task, train split"
    task.validate(Split("train", examples))
    task.check_tokens(tokenizer)
    idx = batch_indices(cfg.seed, 0, len(examples), cfg.batch_size)  # training's step-0 batch
    enc = task.encode(tokenizer, [examples[i] for i in idx])
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    info = {
        "folder": str(folder),
        "model_type": str(getattr(model.config, "model_type", "?")),
        "parameters": n_params,
        "dtype": args.dtype,
        "rounding": args.rounding,
        "data": data_name,
        "examples": len(idx),
        "candidates": sum(enc.n_cands),
        "single_token": bool(enc.single_token),
        "width": int(enc.input_ids.shape[1]),
        "mezo": {
            k: getattr(cfg, k)
            for k in ("z", "eps", "lr", "n_directions", "weight_decay", "objective")
        },
    }
    return Setup(model, enc, cfg, folder, info)


# ----------------------------------------------------------------------------- the modes


def make_forward2(s: Setup) -> Callable[[], None]:
    import torch

    from mezo_ckpt.trainer.tasks import loss_terms, score_candidates

    model, enc = s.model, s.enc

    def step() -> None:
        model.eval()
        with torch.inference_mode():
            for _ in range(2):  # the model's own forward: full logits at the last position
                loss_terms(score_candidates(model, enc), enc, "ce")

    return step


def make_mezo(s: Setup) -> Callable[[], None]:
    """One training step exactly as mezo_ckpt/trainer/recipe.py runs it (MezoStep)."""
    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.core.update import UpdateSpec
    from mezo_ckpt.trainer.inputs import build_task
    from mezo_ckpt.trainer.objectives import Objective
    from mezo_ckpt.trainer.params import decay_params, select_trainable
    from mezo_ckpt.trainer.perturb import Perturber
    from mezo_ckpt.trainer.step import MezoStep

    model, enc, cfg = s.model, s.enc, s.cfg
    params = canonical_parameters(model)
    trainable = list(select_trainable(model, cfg.trainable, cfg.frozen).trainable)
    decay = decay_params(params, trainable, cfg.weight_decay, cfg.no_decay)
    spec = UpdateSpec(cfg.seed, cfg.z, cfg.rounding, tuple(trainable), frozenset(decay))
    perturber = Perturber(model, trainable, cfg.seed, cfg.z, cfg.eps)
    objective = Objective(build_task(cfg), cfg.objective, model, None, perturber)
    stepper = MezoStep.from_config(cfg, params, perturber, spec, objective)
    state = {"step": 0}

    def step() -> None:
        t = state["step"]
        state["step"] += 1
        lr_t = cfg.lr_at(t)
        stepper.apply(stepper.estimate(t, enc, lr_t))

    return step


#: False in a memory subprocess (one mode per process): the LoRA mode then wraps the
#: loaded model itself instead of a copy.
SHARED_MODEL = True


def make_lora(s: Setup) -> Callable[[], None]:
    """A MeZO-LoRA step as the trainer runs it (adapter from mezo_ckpt.models.adapters, portable
    init); on a copy of the model when other modes share it."""
    import copy

    from mezo_ckpt.core.hashing import canonical_parameters
    from mezo_ckpt.core.update import UpdateSpec
    from mezo_ckpt.models.adapters import adapter_config, adapter_names, attach
    from mezo_ckpt.trainer.inputs import build_task
    from mezo_ckpt.trainer.objectives import Objective
    from mezo_ckpt.trainer.perturb import Perturber
    from mezo_ckpt.trainer.step import MezoStep

    cfg = s.cfg
    base = copy.deepcopy(s.model) if SHARED_MODEL else s.model
    conf = adapter_config("lora", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model = attach(base, "lora", conf, cfg.seed)
    params = canonical_parameters(model)
    trainable = sorted(adapter_names(model))
    spec = UpdateSpec(cfg.seed, cfg.z, cfg.rounding, tuple(trainable), frozenset())
    perturber = Perturber(model, trainable, cfg.seed, cfg.z, 1e-2)
    objective = Objective(build_task(cfg), cfg.objective, model, None, perturber)
    stepper = MezoStep.from_config(cfg, params, perturber, spec, objective)
    state = {"step": 0}

    def step() -> None:
        t = state["step"]
        state["step"] += 1
        stepper.apply(stepper.estimate(t, s.enc, 3e-3))

    return step


def make_official(s: Setup) -> Callable[[], None]:
    """princeton-nlp/MeZO large_models/trainer.py: zo_step + zo_update, rewritten here."""
    import numpy as np
    import torch

    from mezo_ckpt.trainer.tasks import loss_terms, score_candidates

    model, enc, cfg = s.model, s.enc, s.cfg
    eps, lr, wd = float(cfg.eps), float(cfg.lr), float(cfg.weight_decay)
    # MeZO optimizes the parameters with requires_grad; here every parameter is trainable
    # (the default trainable=["*"]); named_parameters() lists tied weights once.
    named = list(model.named_parameters())
    no_decay = ("bias", "layer_norm", "layernorm")
    rng = np.random.RandomState(cfg.seed)

    def perturb(seed: int, scaling: float) -> None:
        torch.manual_seed(seed)
        for _, p in named:
            z = torch.normal(
                mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype
            )
            p.data = p.data + scaling * z * eps

    def zo_forward() -> float:
        model.eval()
        with torch.inference_mode():
            return loss_terms(score_candidates(model, enc), enc, cfg.objective).loss

    def step() -> None:
        seed = int(rng.randint(1000000000))
        perturb(seed, 1.0)
        loss1 = zo_forward()
        perturb(seed, -2.0)
        loss2 = zo_forward()
        g = (loss1 - loss2) / (2 * eps)
        perturb(seed, 1.0)
        torch.manual_seed(seed)
        for name, p in named:
            z = torch.normal(
                mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype
            )
            if wd and not any(k in name for k in no_decay):
                p.data = p.data - lr * (g * z + wd * p.data)
            else:
                p.data = p.data - lr * (g * z)

    return step


def make_backprop(s: Setup) -> Callable[[], None]:
    import torch

    from mezo_ckpt.trainer.tasks import cross_entropy, score_candidates

    model, enc = s.model, s.enc
    params = list(model.parameters())  # tied weights once
    opt = torch.optim.AdamW(params, lr=BACKPROP_LR)

    def step() -> None:
        # requires_grad only while this step runs, so that the modes can share one model
        model.requires_grad_(True)
        try:
            cross_entropy(score_candidates(model, enc), enc).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            model.requires_grad_(False)

    return step


BUILDERS = {
    "forward2": make_forward2,
    "mezo": make_mezo,
    "lora": make_lora,
    "official": make_official,
    "backprop": make_backprop,
}


def set_all_threads(mode: str, threads: int) -> None:
    """mezo, lora: what train() does (torch + numba threads); others: torch only (no numba)."""
    import torch

    if mode in ("mezo", "lora"):
        from mezo_ckpt.core import kernels_cpu  # noqa: F401  (the step's first call would import it)
        from mezo_ckpt.util.runtime import set_threads

        set_threads(threads)
    else:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- memory child


def measure_memory(args: argparse.Namespace) -> None:
    """Child process: load, record the RSS baseline, run the steps, print JSON.

    Peaks come from VmHWM (this process's own high-water mark); ru_maxrss is recorded
    too but, in a subprocess, includes the parent's peak at the fork (see maxrss_kib).
    After the baseline VmHWM is reset, so ``hwm_steps_kib`` is the peak of the steps
    alone (the mode's own setup, e.g. the Perturber or the optimizer, included).
    """
    mode = args.mode
    s = setup(args, tiny_data=args.tiny)
    import gc

    gc.collect()
    rss_load, hwm_load, maxrss_load = (
        proc_status_kib("VmRSS"),
        proc_status_kib("VmHWM"),
        maxrss_kib(),
    )
    was_reset = reset_hwm()
    set_all_threads(mode, args.threads)
    global SHARED_MODEL
    SHARED_MODEL = False
    step = BUILDERS[mode](s)
    rss_setup = proc_status_kib("VmRSS")
    seconds = []
    for _ in range(args.memory_steps):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    hwm_end = proc_status_kib("VmHWM")
    out = {
        "mode": mode,
        "rss_after_load_kib": rss_load,
        "hwm_after_load_kib": hwm_load,
        "hwm_reset": was_reset,
        "rss_after_setup_kib": rss_setup,
        "hwm_steps_kib": hwm_end if was_reset else None,
        "peak_kib": max(hwm_load, hwm_end),
        "rss_end_kib": proc_status_kib("VmRSS"),
        "ru_maxrss_after_load_kib": maxrss_load,
        "ru_maxrss_kib": maxrss_kib(),
        "steps": args.memory_steps,
        "seconds": seconds,
        "modules": heavy_modules(),
        "info": s.info,
    }
    print(RESULT_TAG + json.dumps(out), flush=True)


def memory_children(
    modes: list[str], args: argparse.Namespace, model: str | None
) -> dict[str, dict]:
    """Run one memory subprocess per mode, ``args.memory_jobs`` at a time (RSS is per
    process, so running them side by side changes their times, not their peaks)."""
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, dict] = {}
    pending = list(modes)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    while pending or procs:
        while pending and len(procs) < max(1, args.memory_jobs):
            m = pending.pop(0)
            procs[m] = subprocess.Popen(
                child_command(m, args, model),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        m = next(iter(procs))
        out, err = procs[m].communicate()
        results[m] = parse_child(m, procs.pop(m).returncode, out, err)
    return {m: results[m] for m in modes}


def child_command(mode: str, args: argparse.Namespace, model: str | None) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--mode",
        mode,
        "--measure-memory",
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--dtype",
        args.dtype,
        "--rounding",
        args.rounding,
        "--memory-steps",
        str(args.memory_steps),
    ]
    if model:
        cmd += ["--model", model]
    if args.tiny:
        cmd.append("--tiny")
    return cmd


def parse_child(mode: str, returncode: int, out: str, err: str) -> dict:
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (err or out).strip().splitlines()[-5:]
    return {"mode": mode, "error": f"exit {returncode}: " + " | ".join(tail)}


# ----------------------------------------------------------------------------- parent


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[-3:]),
    )
    ap.add_argument(
        "--model",
        default=None,
        help="local Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)",
    )
    ap.add_argument("--batch-size", type=int, default=16, help="examples per step (16)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch (and numba) threads (default 2; 1 with --tiny, where a "
        "second thread only spins)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per mode first (1)")
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    ap.add_argument(
        "--skip-memory", action="store_true", help="skip the per-mode memory subprocesses"
    )
    ap.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="(float32)"
    )
    ap.add_argument(
        "--rounding",
        default="nearest",
        choices=("nearest", "stochastic"),
        help="rounding of bf16/fp16 updates (nearest)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny Llama (tests/tinymodels.save_tiny) and toy data: a smoke test",
    )
    ap.add_argument(
        "--memory-jobs",
        type=int,
        default=None,
        metavar="N",
        help="memory subprocesses run at once (default 1; 4 with --tiny)",
    )
    ap.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    ap.add_argument("--memory-steps", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.measure_memory:
        if not args.mode:
            ap.error("--measure-memory needs --mode")
        measure_memory(args)
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"unknown mode(s) {bad}; use a subset of {','.join(MODES)}")
    modes = [m for m in MODES if m in modes]  # canonical order
    if args.threads is None:
        args.threads = 1 if args.tiny else 2
    if args.memory_jobs is None:
        args.memory_jobs = 4 if args.tiny else 1
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    load_before = load_avg()
    t_begin = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_step_") if args.tiny else None
    try:
        if tmp is not None and not args.model:
            sys.path.insert(0, str(ROOT / "tests"))
            from tinymodels import save_tiny

            save_tiny(tmp.name, "llama")
            args.model = tmp.name
        run(args, modes, load_before, t_begin)
    finally:
        if tmp is not None:
            tmp.cleanup()


def run(args: argparse.Namespace, modes: list[str], load_before: str, t_begin: float) -> None:
    import torch
    import transformers

    from mezo_ckpt.util.runtime import set_threads

    s = setup(args, tiny_data=args.tiny)
    set_threads(args.threads)
    steps = {m: BUILDERS[m](s) for m in modes}

    # ---- time: warm-up, then interleaved rounds
    for m in modes:
        for _ in range(args.warmup):
            steps[m]()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for m in modes:
            t0 = time.perf_counter()
            steps[m]()
            times[m].append(time.perf_counter() - t0)
    del steps
    model_dir = str(s.folder)
    info = s.info
    del s

    # ---- memory: one subprocess per mode
    mem: dict[str, dict] = {}
    if not args.skip_memory:
        mem = memory_children(["forward2"] + [m for m in modes if m != "forward2"], args, model_dir)
    load_after = load_avg()

    # ---- report
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## bench_train_step: one training step, side by side\n")
    print(
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores ({aff} usable), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}, {now}"
    )
    print(f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}")
    print(
        "- The machine is SHARED: absolute seconds move with background load; compare the "
        "ratios (taken within each round), not seconds across runs."
    )
    print(
        f"- Model: {info['folder']} ({info['model_type']}, {info['parameters'] / 1e6:.2f} M "
        f"parameters, {info['dtype']}), threads: {args.threads}"
    )
    shape = (
        "single-token candidates: one prompt row per example, candidates read at the last position"
        if info["single_token"]
        else "multi-token candidates: one row per candidate"
    )
    print(
        f"- Batch: {info['examples']} examples (training's step-0 batch) from the "
        f"{info['data']}, {info['candidates']} candidates, {shape}; padded width "
        f"{info['width']} tokens"
    )
    mz = info["mezo"]
    print(
        f"- mezo: z={mz['z']}, eps={mz['eps']}, lr={mz['lr']}, n_directions="
        f"{mz['n_directions']}, weight_decay={mz['weight_decay']} (TrainConfig defaults); "
        f"official: same eps/lr/weight_decay, torch.normal z; backprop: AdamW "
        f"lr={BACKPROP_LR}"
    )
    print()

    print(
        f"### Time per step ({args.warmup} warm-up each, then median of {args.repeats} "
        "interleaved rounds)\n"
    )
    print("| mode | what | median s/step | min | max | x forward2 (median of per-round ratios) |")
    print("|---|---|---:|---:|---:|---:|")
    ratios: dict[str, float | None] = {}
    for m in modes:
        ts = times[m]
        if "forward2" in times:
            r = statistics.median(a / b for a, b in zip(ts, times["forward2"]))
            ratios[m] = r
            rs = f"{r:.2f}x"
        else:
            ratios[m] = None
            rs = "-"
        print(
            f"| {m} | {DESCRIPTIONS[m]} | {statistics.median(ts):.3f} | {min(ts):.3f} | "
            f"{max(ts):.3f} | {rs} |"
        )
    print()

    if mem:
        print_memory(mem, args.memory_steps)
    print(f"Total wall time {time.perf_counter() - t_begin:.1f} s.")

    if args.json:
        doc = {
            "machine": {
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "usable": aff,
                "torch": torch.__version__,
                "date": now,
                "load_before": load_before,
                "load_after": load_after,
            },
            "args": {k: v for k, v in vars(args).items() if k not in ("mode", "measure_memory")},
            "setup": info,
            "times": times,
            "ratio_to_forward2": ratios,
            "memory": mem,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def print_memory(mem: dict[str, dict], steps: int) -> None:
    print(
        f"### Peak memory (one subprocess per mode: load the model and encode the batch, "
        f"then {steps} steps)\n"
    )
    print(
        "| mode | peak RSS MiB | x inference | RSS after load MiB | peak in steps MiB | "
        "peak in steps - RSS after load MiB | x inference's | numba / llvmlite imported |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    inf = mem.get("forward2", {})
    ok_inf = "peak_kib" in inf

    def steps_peak(r: dict) -> int:
        return r["hwm_steps_kib"] if r.get("hwm_steps_kib") is not None else r["peak_kib"]

    inf_inc = steps_peak(inf) - inf["rss_after_load_kib"] if ok_inf else 0
    for m, r in mem.items():
        label = "inference (forward2)" if m == "forward2" else m
        if "error" in r:
            print(f"| {label} | failed: {r['error']} | | | | | | |")
            continue
        peak, base, sp = r["peak_kib"], r["rss_after_load_kib"], steps_peak(r)
        inc = sp - base
        x_peak = f"{peak / inf['peak_kib']:.2f}x" if ok_inf else "-"
        x_inc = f"{inc / inf_inc:.1f}x" if inf_inc > 0 else "-"
        sp_s = mib(sp) if r.get("hwm_steps_kib") is not None else "-"
        mods = "/".join("yes" if r["modules"][k] else "no" for k in ("numba", "llvmlite"))
        print(
            f"| {label} | {mib(peak)} | {x_peak} | {mib(base)} | {sp_s} | {mib(inc)} | "
            f"{x_inc} | {mods} |"
        )
    print()
    print(
        "- Peak RSS: the subprocess's VmHWM over its whole life (loading included). RSS after "
        "load: VmRSS once the model is loaded and the batch encoded (the baseline). Peak in "
        "steps: VmHWM reset to the baseline (/proc/self/clear_refs) just before the mode's "
        "setup and steps, so it holds what the steps themselves need."
    )
    print(
        "- ru_maxrss is recorded in the JSON but not used: a subprocess inherits its "
        "parent's high-water mark at the fork on Linux, which would overstate every mode."
    )
    print(
        "- The mezo subprocess imports numba/llvmlite (its z and update kernels; from "
        "numba's cache, or compiled on first use), and their RSS counts for mezo."
    )
    for m, r in mem.items():
        if "error" in r:
            continue
        setup_kib = r["rss_after_setup_kib"] - r["rss_after_load_kib"]
        if setup_kib > 1024:
            what = "importing numba/llvmlite and the kernels" if m == "mezo" else "its setup"
            print(f"- {m}: {what} (before any step) took {mib(setup_kib)} MiB of that.")
        if r.get("hwm_steps_kib") is None:
            print(f"- {m}: could not reset VmHWM; 'peak in steps' uses the lifetime peak")
        elif r["hwm_after_load_kib"] >= r["hwm_steps_kib"]:
            print(
                f"- {m}: the lifetime peak was reached while loading "
                f"({mib(r['hwm_after_load_kib'])} MiB), not during the steps"
            )
    if ok_inf and any(inf["modules"].values()):
        print(
            "- WARNING: the inference subprocess imported numba/llvmlite; its baseline is not clean"
        )
    print()


if __name__ == "__main__":
    main()
