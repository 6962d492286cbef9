"""The MeZO training loop: data, evaluation, the trajectory journal, resume, Ctrl-C.

The step itself (forwards, SPSA estimate, update rule) is in step.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mezo_ckpt import __version__
from mezo_ckpt.errors import ConfigError, DataError, TrajectoryError
from mezo_ckpt.format import (
    Evaluation,
    Trajectory,
    TrajectoryWriter,
    compact,
)
from mezo_ckpt.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.header import (
    CHAIN_RULE,
    BaseIdentity,
    Header,
    OptimizerInfo,
    Perturbation,
    RecordLayout,
    Tool,
    UpdateRule,
)
from mezo_ckpt.runtime import resolve_device, set_threads
from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.step import MezoStep
from mezo_ckpt.trainer.tasks import (
    Example,
    PromptTask,
    data_fingerprint,
    load_examples,
    losses_from_scores,
    score_candidates,
)
from mezo_ckpt.update import UpdateSpec


@dataclass
class TrainResult:
    """What a run produced."""

    output: Path
    steps: int
    total_steps: int
    interrupted: bool
    evaluations: list[Evaluation]
    seconds: float
    seconds_per_step: float
    fingerprint: str
    model: Any = field(repr=False, default=None)
    tokenizer: Any = field(repr=False, default=None)

    def metric(self, split: str, step: int, name: str = "accuracy") -> float | None:
        for e in self.evaluations:
            if e.split == split and e.step == step and name in e.metrics:
                return e.metrics[name]
        return None


# ----------------------------------------------------------------------------- helpers


def select_trainable(
    names: Sequence[str], include: Sequence[str], exclude: Sequence[str]
) -> list[str]:
    """Canonical names matching any include glob and no exclude glob."""
    out = [
        n
        for n in names
        if any(fnmatchcase(n, p) for p in include) and not any(fnmatchcase(n, p) for p in exclude)
    ]
    if not out:
        raise ConfigError(
            f"no parameter matches trainable={list(include)} minus "
            f"frozen={list(exclude)}; names look like {list(names)[:4]}"
        )
    return sorted(out)


def decay_params(
    params: dict[str, torch.nn.Parameter],
    trainable: Sequence[str],
    weight_decay: float,
    no_decay: Sequence[str],
) -> list[str]:
    """Trainable parameters that get weight decay: not 1-D, no no_decay substring."""
    if weight_decay == 0:
        return []
    return sorted(
        n
        for n in trainable
        if params[n].ndim > 1 and not any(s.lower() in n.lower() for s in no_decay)
    )


def batch_indices(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """The training examples of one step: a pure function of (seed, step), resume-safe."""
    rng = np.random.default_rng([seed, step, 0x6D657A6F])
    return rng.choice(n, size=min(size, n), replace=False)


def eval_subset(examples: list[Example], k: int) -> list[Example]:
    """A fixed random subset (same for every run and seed, in file order), so that
    evaluations are comparable across runs and not biased by how the file is sorted."""
    if k >= len(examples):
        return examples
    idx = np.sort(np.random.default_rng(0x65766C).choice(len(examples), size=k, replace=False))
    return [examples[i] for i in idx]


def build_task(cfg: TrainConfig) -> tuple[PromptTask, dict[str, list[Example]]]:
    """The prompt task and its train/dev/test examples (built-in data or files)."""
    builtin = cfg.builtin()
    task = PromptTask(
        template=cfg.template or builtin.get("template", ""),
        verbalizer=dict(cfg.verbalizer or builtin.get("verbalizer") or {}),
        label_field=cfg.label_field,
        options_field=cfg.options_field,
        option_template=cfg.option_template,
        max_length=cfg.max_length,
    )
    splits: dict[str, list[Example]] = {}
    if cfg.train_file:
        splits["train"] = load_examples(cfg.train_file, limit=cfg.train_examples)
        if cfg.dev_file:
            splits["dev"] = load_examples(cfg.dev_file)
        if cfg.test_file:
            splits["test"] = load_examples(cfg.test_file)
    elif cfg.task in ("sentiment",):
        from mezo_ckpt.data import load_split

        splits["train"] = load_split("train")[: cfg.train_examples or None]
        splits["dev"] = load_split("dev")
        splits["test"] = load_split("test")
    else:
        raise ConfigError("no training data: set train_file")
    if "dev" in splits and cfg.eval_examples:
        splits["dev"] = eval_subset(splits["dev"], cfg.eval_examples)
    if "test" in splits and cfg.test_examples:
        splits["test"] = eval_subset(splits["test"], cfg.test_examples)
    for name, exs in splits.items():
        task.validate(exs, f"{name} data")
    return task, splits


def load_tokenizer(folder: Path | None, model_spec: str | None):
    from transformers import AutoTokenizer

    src = str(folder) if folder is not None else model_spec
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load a tokenizer for {src}: {e}") from None
    return tok


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current step, then stop cleanly. Second: stop now."""
    hits = {"n": 0}

    def handler(signum, frame):  # noqa: ARG001
        hits["n"] += 1
        if hits["n"] > 1:
            raise KeyboardInterrupt
        print(
            "\nInterrupted: finishing the current step and saving a valid trajectory "
            "(Ctrl-C again to stop at once).",
            flush=True,
        )

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: hits["n"] > 0
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model,
    tokenizer,
    task: PromptTask,
    examples: Sequence[Example],
    *,
    batch_size: int,
    objective: str = "ce",
) -> dict[str, float]:
    """Accuracy and loss of the current weights on ``examples`` (no perturbation)."""
    correct = 0.0
    loss = 0.0
    # Batch similar lengths together: much less padding, same per-example scores.
    ordered = sorted(examples, key=lambda ex: len(task.template.format(**ex)))
    with torch.inference_mode():
        for lo in range(0, len(ordered), batch_size):
            chunk = ordered[lo : lo + batch_size]
            enc = task.encode(tokenizer, chunk)
            batch_loss, acc = losses_from_scores(score_candidates(model, enc), enc, "ce")
            correct += acc * len(chunk)
            loss += batch_loss * len(chunk)
    n = max(1, len(examples))
    return {"accuracy": correct / n, "loss": loss / n, "examples": float(len(examples))}


# ----------------------------------------------------------------------------- header


def build_header(
    cfg: TrainConfig,
    base_identity: BaseIdentity,
    trainable: list[str],
    decay: list[str],
    data_info: dict,
) -> Header:
    return Header.build(
        tool=Tool("mezo-ckpt", __version__),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        base=base_identity,
        trainable=tuple(trainable),
        perturbation=Perturbation(
            z=cfg.z, seed=cfg.seed, eps=cfg.eps, n_directions=cfg.n_directions
        ),
        update=UpdateRule(cfg.rounding, cfg.weight_decay, tuple(decay)),
        optimizer=OptimizerInfo(
            lr=cfg.lr,
            schedule=cfg.schedule,
            warmup_steps=cfg.warmup_steps,
            min_lr_ratio=cfg.min_lr_ratio,
            weight_decay=cfg.weight_decay,
            objective=cfg.objective,
            batch_size=cfg.batch_size,
        ),
        records=RecordLayout(decay=bool(decay), losses=cfg.record_losses),
        total_steps=cfg.steps,
        config={**cfg.to_dict(), "data": data_info},
        chain=CHAIN_RULE,
    )


_VOLATILE = ("created", "tool")
_VOLATILE_CONFIG = ("output", "log_file", "save_model", "fsync", "threads", "device")


def _comparable(header: Header) -> dict:
    doc = header.to_json()
    h = {k: v for k, v in doc.items() if k not in _VOLATILE}
    h["config"] = {k: v for k, v in doc["config"].items() if k not in _VOLATILE_CONFIG}
    return h


# ----------------------------------------------------------------------------- training


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    keep_model: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run MeZO as configured and write the trajectory (see `mezo-ckpt train --help`).

    Args:
        cfg: the resolved configuration.
        resume: a trajectory (or its ``.partial`` journal) of an interrupted run of the
            same configuration; training continues from its last complete step.
        progress: show a progress bar.
        keep_model: return the trained model and tokenizer in the result.
        log: where human-readable messages go.
    """
    from tqdm.auto import tqdm

    from mezo_ckpt.base import load_base

    cfg.validate()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.output)
    journal = out.with_name(out.name + ".partial")
    log_path = Path(cfg.log_file) if cfg.log_file else out.with_name(out.name + ".log.jsonl")

    task, splits = build_task(cfg)
    loaded = load_base(
        cfg.model, dtype=cfg.dtype, device=device, revision=cfg.revision, progress=progress
    )
    model = loaded.model
    tokenizer = load_tokenizer(loaded.folder, cfg.model)
    if not task.options_field:
        task.check_tokens(tokenizer)
    params = canonical_parameters(model)
    trainable = select_trainable(list(params), cfg.trainable, cfg.frozen)
    decay = decay_params(params, trainable, cfg.weight_decay, cfg.no_decay)
    data_info = {
        "train_sha256": data_fingerprint(splits["train"]),
        "train_examples": len(splits["train"]),
        **{f"{k}_sha256": data_fingerprint(v) for k, v in splits.items() if k != "train"},
        "task_kind": task.kind,
    }
    header = build_header(cfg, loaded.identity(trainable), trainable, decay, data_info)
    spec = UpdateSpec.from_header(header)

    evaluations: list[Evaluation] = []
    if resume is not None:
        writer, previous = _resume(Path(resume), journal, header, model, cfg, log)
        evaluations = list(previous.evaluations)
        start = previous.num_steps
    else:
        writer = TrajectoryWriter.create(journal, header, fsync=cfg.fsync)
        start = 0

    perturber = Perturber(model, trainable, cfg.seed, cfg.z, cfg.eps)
    stepper = MezoStep(
        model,
        params,
        perturber,
        spec,
        eps=cfg.eps,
        n_directions=cfg.n_directions,
        objective=cfg.objective,
        weight_decay=cfg.weight_decay,
    )
    train_ex = splits["train"]
    log_f = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
    t_start = time.perf_counter()
    step = start
    interrupted = False

    checkpoints: dict[int, str] = dict(previous.checkpoints) if resume is not None else {}

    def checkpoint(at: int) -> str:
        """Record the fingerprint of the trainable tensors after ``at`` steps (hashed once
        per step), so replay to any evaluated step (e.g. --step best) verifies itself."""
        if at not in checkpoints:
            checkpoints[at] = tensors_sha256(params, trainable)
            writer.append_checkpoint(at, checkpoints[at])
        return checkpoints[at]

    def run_eval(at: int, split_names: Sequence[str]) -> None:
        if at > 0:
            checkpoint(at)
        for split in split_names:
            if split not in splits or not splits[split]:
                continue
            if any(e.step == at and e.split == split for e in evaluations):
                continue
            m = evaluate(model, tokenizer, task, splits[split], batch_size=cfg.eval_batch_size)
            e = writer.append_evaluation(Evaluation(at, split, m))
            evaluations.append(e)
            log_f.write(json.dumps({"event": "eval", "step": at, "split": split, **m}) + "\n")
            log_f.flush()
            log(f"step {at:>5}  {split:<4} accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}")

    try:
        with graceful_interrupt() as stop_requested:
            if start == 0:
                run_eval(0, ["dev", "test"] if cfg.eval_test else ["dev"])
            bar = tqdm(
                total=cfg.steps,
                initial=start,
                desc="mezo",
                unit="step",
                disable=not progress,
                dynamic_ncols=True,
            )
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                idx = batch_indices(cfg.seed, step, len(train_ex), cfg.batch_size)
                enc = task.encode(tokenizer, [train_ex[i] for i in idx])
                lr_t = cfg.lr_at(step)
                est = stepper.estimate(step, enc, lr_t)
                # The record is durable before the weights move.
                writer.append_steps(est.record(with_losses=cfg.record_losses))
                stepper.apply(est)
                dt = time.perf_counter() - t0
                mean_loss = est.loss
                log_f.write(
                    json.dumps(
                        {
                            "event": "step",
                            "step": step,
                            "loss": mean_loss,
                            "loss_plus": [p[0] for p in est.pair_losses],
                            "loss_minus": [p[1] for p in est.pair_losses],
                            "lr": lr_t,
                            "coefs": est.coefs,
                            "skipped": est.skipped,
                            "seconds": dt,
                        }
                    )
                    + "\n"
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_t:.2e}")
                bar.update(1)
                done = step + 1
                if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                    run_eval(done, ["dev"])
                if stop_requested():
                    interrupted = done < cfg.steps
                    step = done
                    break
            else:
                step = cfg.steps
            bar.close()
            if not interrupted:
                run_eval(step, ["dev", "test"] if cfg.eval_test else ["dev"])
            fingerprint = checkpoint(step)
    finally:
        writer.close()
        log_f.close()
    seconds = time.perf_counter() - t_start
    compact(journal, out)
    journal.unlink()
    if interrupted:
        log(f"Stopped after step {step}/{cfg.steps}. Resume with: mezo-ckpt train --resume {out}")
    if cfg.save_model and not interrupted:
        from mezo_ckpt.export import export_hf

        export_hf(
            model,
            cfg.save_model,
            tokenizer_from=loaded.folder,
            meta={"tool": "mezo-ckpt", "trajectory": str(out), "step": step},
        )
    n_run = max(1, step - start)
    return TrainResult(
        out,
        step,
        cfg.steps,
        interrupted,
        evaluations,
        seconds,
        seconds / n_run,
        fingerprint,
        model if keep_model else None,
        tokenizer if keep_model else None,
    )


def _resume(
    path: Path, journal: Path, header: dict, model, cfg: TrainConfig, log: Callable[[str], None]
) -> tuple[TrajectoryWriter, Trajectory]:
    """Reopen a run: continue its journal (or a copy of the compact file), replay its
    steps onto the freshly loaded base; returns the writer and what was already there."""
    import shutil

    from mezo_ckpt.replay import replay_model

    src = path
    if path != journal and journal.exists() and path == Path(cfg.output):
        src = journal  # a killed run left its journal next to the output: it has more steps
    if not src.exists():
        raise TrajectoryError(f"nothing to resume: {src} does not exist")
    if src != journal:
        shutil.copyfile(src, journal)
    writer, traj = TrajectoryWriter.open_for_resume(journal, fsync=cfg.fsync)
    if _comparable(traj.header) != _comparable(header):
        writer.close()
        diff = sorted(
            k
            for k in set(_comparable(header)) | set(_comparable(traj.header))
            if _comparable(header).get(k) != _comparable(traj.header).get(k)
        )
        raise ConfigError(
            f"cannot resume {path}: its settings differ from this run's in {diff}. "
            "Resume with the same config (mezo-ckpt train --resume FILE takes "
            "the settings from the file)."
        )
    if traj.complete:
        writer.close()
        raise ConfigError(
            f"{path} is already complete ({traj.num_steps}/{traj.total_steps} "
            "steps); nothing to resume"
        )
    replay_model(
        traj, model, step=traj.num_steps, verify=True, check_base=True, allow_unverified=True
    )
    log(f"Resuming {path} at step {traj.num_steps}/{traj.total_steps}")
    return writer, traj


def config_from_trajectory(path: str | Path) -> TrainConfig:
    """The resolved config stored in a trajectory header (for --resume)."""
    from mezo_ckpt.format import read_trajectory

    traj = read_trajectory(path, allow_truncated_tail=True)
    cfg = {k: v for k, v in traj.header.config.items() if k != "data"}
    try:
        return TrainConfig.from_dict(cfg, where=f"{path} header")
    except (ConfigError, TypeError) as e:
        raise DataError(f"{path}: stored config is not usable: {e}") from None
