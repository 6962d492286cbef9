"""What a run writes and returns: the checks that keep it from clobbering anything, the
result, and the optional trained-weights folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import OutputError, OutputExistsError, TrainingDivergedError
from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.params import Selection
from mezo_ckpt.trajectory import Evaluation
from mezo_ckpt.util.fsutil import check_output, is_inside, same_path


@dataclass
class TrainResult:
    """What a run produced."""

    output: Path
    steps: int
    total_steps: int
    interrupted: bool
    evaluations: list[Evaluation]
    seconds: float  # wall time of the whole call (loading included)
    train_seconds: float  # the loop alone
    seconds_per_step: float  # train_seconds / steps run now
    fingerprint: str
    selection: Selection | None = None
    notes: list[str] = field(default_factory=list)
    model: Any = field(repr=False, default=None)
    tokenizer: Any = field(repr=False, default=None)

    def metric(self, split: str, step: int, name: str = "accuracy") -> float | None:
        for e in self.evaluations:
            if e.split == split and e.step == step and name in e.metrics:
                return e.metrics[name]
        return None


class FollowerWriter:
    """What a data-parallel rank other than 0 has instead of the journal: it counts the
    steps (rank 0 alone writes the file)."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def append_steps(self, rec) -> None:
        self.num_steps += len(rec)

    def append_evaluation(self, e: Evaluation) -> Evaluation:
        return e

    def append_checkpoint(self, step: int, digest: str) -> None:
        pass

    def close(self) -> None:
        pass


def check_outputs(
    cfg: TrainConfig,
    out: Path,
    journal: Path,
    log_path: Path,
    *,
    resuming: bool,
    overwrite: bool,
) -> None:
    """Refuse, before any work, an output that is an input, a log that is the run's own
    file, and (for a new run) an existing output, journal or log without ``overwrite``.

    Raises:
        OutputError, OutputExistsError: saying what to do instead.
    """
    inputs = [p for p in (cfg.train_file, cfg.dev_file, cfg.test_file, cfg.dataset) if p]
    for p in (cfg.model, cfg.device_map):
        if p and Path(p).expanduser().exists():
            inputs.append(str(Path(p).expanduser()))
    for p in (out, journal, log_path):
        for src in inputs:
            if same_path(p, src) or (Path(src).is_dir() and is_inside(p, src)):
                raise OutputError(
                    f"{p} is (inside) one of this run's inputs: choose another output"
                )
    for p in (out, journal):  # the log must be neither the file nor its journal
        if same_path(log_path, p):
            raise OutputError(f"--log-file {log_path} is the run's own {p.name}")
    if not resuming:
        for p, what in ((out, "output"), (journal, "journal of an earlier run")):
            if p.exists() and not overwrite:
                hint = f"continue it with --resume {out}, or pass --overwrite to start over"
                raise OutputExistsError(f"{p} exists ({what}): {hint}")
        if log_path.exists() and not overwrite:
            raise OutputExistsError(
                f"the log {log_path} exists (from an earlier run): pass --overwrite to "
                "replace it, or choose another -o / --log-file"
            )
        check_output(out, kind="file", overwrite=overwrite, inputs=inputs)
    if cfg.save_model:
        check_output(
            cfg.save_model,
            kind="folder",
            overwrite=overwrite,
            flag="--save-model",
            inputs=inputs + [str(out)],
        )


def check_late_settings(cfg: TrainConfig, task: Any, tokenizer: Any, splits: dict) -> None:
    """What would otherwise fail only at the first evaluation or report: the chat
    template renders, the reporter's package exists. Checked before the journal is
    created, so a mistake leaves nothing behind."""
    if task.chat_template:
        for split in splits.values():
            if split.examples:
                task.render(tokenizer, split.examples[0])
    from mezo_ckpt.trainer.report import reporter_module

    reporter_module(cfg.report_to)


def save_model(
    model: Any, cfg: TrainConfig, header: Any, base_folder: Path | None, *, step: int, out: Path,
    adapter: bool, overwrite: bool,
) -> None:  # fmt: skip
    """``--save-model``: the trained weights (or adapter) as a from_pretrained folder."""
    from mezo_ckpt.models.export import export_adapter_folder, export_hf

    meta = {"tool": "mezo-ckpt", "trajectory": str(out), "step": step}
    if adapter:
        export_adapter_folder(
            model, cfg.save_model, header=header, folder=base_folder, meta=meta, replace=overwrite
        )
    else:
        export_hf(model, cfg.save_model, tokenizer_from=base_folder, meta=meta, replace=overwrite)


def diverged_error(cfg: TrainConfig, out: Path, at: int, why: str) -> TrainingDivergedError:
    """The error of a run that diverged (its file already sealed at step ``at``)."""
    return TrainingDivergedError(
        f"training diverged: {why}. The learning rate is far too large for this model "
        f"(lr={cfg.lr}); {out} holds the {at} steps so far (replayable). "
        "Start again with a smaller --lr (MeZO's usual range is 1e-7 to 1e-4)"
    )


def disk_error(e: OutputError, journal: Path, out: Path, step: int) -> OutputError:
    """A write that failed (full disk, ...): what was kept and how to go on."""
    return OutputError(
        f"{e}. The journal {journal} keeps every step recorded before that "
        f"(through step {step}); free some space and continue with: "
        f"mezo-ckpt train --resume {out}"
    )


def record_checkpoint(
    writer: Any, dist: Any, checkpoints: dict[int, str], params: dict, trainable: Any, at: int
) -> str:
    """Record the fingerprint of the trained tensors after ``at`` steps (hashed once per
    step; every rank must hold the same), so a replay to any evaluated step verifies
    itself."""
    from mezo_ckpt.core.hashing import tensors_sha256

    if at not in checkpoints:
        digest = tensors_sha256(params, trainable)
        dist.check_same(digest, at)  # every rank holds the same weights
        checkpoints[at] = digest
        writer.append_checkpoint(at, digest)
    return checkpoints[at]


def seal(writer: Any, dist: Any, journal: Path, out: Path) -> None:
    """Close the journal, compact it into the final file and remove it (rank 0), then
    wait for every rank."""
    from mezo_ckpt.trajectory import compact
    from mezo_ckpt.util.fsutil import os_errors

    writer.close()
    if dist.is_main:
        compact(journal, out)
        with os_errors(journal, "remove the finished journal"):
            journal.unlink()
    dist.barrier()
