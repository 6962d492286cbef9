"""A MeZO training run with a visible shape: setup, the loop, finish.

:class:`MezoRecipe` follows torchtune's recipe layout. :meth:`~MezoRecipe.setup` takes
the lock and checks the outputs (:mod:`.outputs`), loads the data (:mod:`.inputs`) and
the model (:mod:`.model`), reopens a resumed run (:mod:`.resume`), selects what trains,
writes the header into a new journal, and builds the step (:mod:`.objectives`,
:mod:`.step`); :meth:`~MezoRecipe.loop` runs the steps; :meth:`~MezoRecipe.finish`
seals and compacts the file. :func:`mezo_ckpt.trainer.train` runs the three.

What a user can count on: nothing they have is overwritten unless they ask, two runs
pointed at one output cannot both write it, and no output is one of the run's inputs;
every step's record is durable before the weights move, so a killed run loses at most
the step in flight and ``--resume`` continues it; Ctrl-C stops after the current step
with a valid, sealed file; a full disk or a diverging run stops with a typed error that
says what was kept and how to go on.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import ConfigError, OutputError
from mezo_ckpt.models.adapters import adapter_names
from mezo_ckpt.models.base import is_masked_lm
from mezo_ckpt.models.offload import OffloadedWeights
from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.dist import Dist
from mezo_ckpt.trainer.inputs import (
    batch_indices,
    count_truncated,
    cut_note,
    load_run_data,
    task_for_model,
)
from mezo_ckpt.trainer.model import (
    attach_adapter,
    build_header,
    identity_of,
    load_model,
    run_config,
)
from mezo_ckpt.trainer.objectives import make_step
from mezo_ckpt.trainer.outputs import (
    FollowerWriter,
    TrainResult,
    check_late_settings,
    check_outputs,
    disk_error,
    diverged_error,
    record_checkpoint,
    save_model,
    seal,
)
from mezo_ckpt.trainer.params import decay_params, select_trainable
from mezo_ckpt.trainer.report import Reporter
from mezo_ckpt.trainer.resume import open_resumed, paths_for, redo_missing
from mezo_ckpt.trainer.step import DIVERGED_AFTER, Reduce, take_step
from mezo_ckpt.trajectory import Evaluation, TrajectoryWriter
from mezo_ckpt.trajectory.header import BaseIdentity
from mezo_ckpt.util.fsutil import exclusive_lock, os_errors
from mezo_ckpt.util.runtime import graceful_interrupt, resolve_device, set_threads

__all__ = ["DIVERGED_AFTER", "MezoRecipe", "TrainResult"]


class MezoRecipe:
    """One run. Use as ``with MezoRecipe(cfg) as r: r.setup(); r.loop(); result = r.finish()``.

    Args:
        cfg: the resolved configuration.
        resume: continue the run whose trajectory or journal this is (``cfg`` must come
            from :func:`mezo_ckpt.trainer.resume.resume_config`).
        overwrite: replace an existing output (and its journal and log).
        progress: show a progress bar (or plain progress lines when not on a terminal).
        log: where human-readable messages go.
        model, tokenizer: an already loaded base (instead of ``cfg.model``).
        data: examples in memory, ``{"train": [...], "dev": [...], "test": [...]}``.
        reduce: sums loss terms across data-parallel ranks.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | Path | None = None,
        overwrite: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        model: Any = None,
        tokenizer: Any = None,
        data: dict[str, Sequence[dict]] | None = None,
        reduce: Reduce | None = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self._log = log
        self._model_arg = model
        self._tokenizer_arg = tokenizer
        self._data_arg = data
        self._reduce = reduce
        self.out, self.journal = paths_for(cfg.output)
        self.dist: Dist | None = None
        self.log_path = (
            Path(cfg.log_file) if cfg.log_file else self.out.with_name(self.out.name + ".log.jsonl")
        )
        self.notes: list[str] = []
        self._stack = contextlib.ExitStack()
        self.writer: TrajectoryWriter | FollowerWriter | None = None
        self.reporter: Reporter | None = None
        self.t_call = time.perf_counter()
        self.evaluations: list[Evaluation] = []
        self.checkpoints: dict[int, str] = {}
        self.start = 0
        self.step_now = 0
        self.interrupted = False
        self.train_seconds = 0.0
        self._bad_losses = 0
        self.peft_kind: str | None = None
        self._fresh_journal = False
        self.step_seconds = 0.0
        self.adapter_info = None
        self.base_identity: BaseIdentity | None = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> MezoRecipe:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.reporter is not None:
            self.reporter.close()
        # A fresh run that failed before recording a step leaves nothing behind (no
        # journal that would block the corrected rerun, no log).
        nothing = self.writer is not None and self.writer.num_steps == 0
        if failed and self._fresh_journal and nothing and self.journal.exists():
            with contextlib.suppress(OSError):
                self.journal.unlink()
                self.log_path.unlink(missing_ok=True)
        offload = getattr(self, "offload", None)
        if offload is not None and offload.active:
            offload.discard()
        self._stack.close()
        if self.dist is not None:
            self.dist.close()

    def message(self, text: str) -> None:
        if self.reporter is not None:
            self.reporter.message(text)
        else:
            self._log(text)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything a run needs, in order: settings and ranks, the lock and outputs, the
        data, the model, the trainable set and header, the journal, the step, reporting."""
        cfg = self.cfg  # checked when it was built
        set_threads(cfg.threads)
        self.dist = Dist(cfg.dist_mode, cfg.dist_timeout)
        self.main = self.dist.is_main
        if not self.main:  # rank 0 speaks for the run
            self._log = lambda text: None
        self.device = resolve_device(self.dist.device(cfg.device))
        if self.dist.active and self.dist.mode == "directions" and cfg.n_directions < 2:
            raise ConfigError("--dist-mode directions shares n-SPSA directions: set --n-directions")
        if self.main:
            self._stack.enter_context(exclusive_lock(self.out, "training into"))
            check_outputs(
                cfg, self.out, self.journal, self.log_path,
                resuming=self.resume is not None, overwrite=self.overwrite,
            )  # fmt: skip
        self._setup_data()
        self._setup_model()
        trainable, decay = self._setup_trainable()
        self._setup_journal(trainable, decay)
        self._setup_step(trainable)
        if self.resume is not None and self.start > 0:
            redo_missing(self, upto=self.start)

    def _setup_data(self) -> None:
        d = load_run_data(self.cfg, self._data_arg)
        self.task, self.splits, self.data_info, self.user = d.task, d.splits, d.info, d.user

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.loaded, self.tokenizer = load_model(
            cfg,
            device=self.device,
            progress=self.progress,
            model=self._model_arg,
            tokenizer=self._tokenizer_arg,
        )
        self.model = self.loaded.model
        masked = is_masked_lm(self.model)
        self.task = task_for_model(cfg, self.task, self.splits, masked, self.model)
        self.offload = OffloadedWeights(self.model, [], None)  # read access, for hashing
        for warning in self.task.check_tokens(self.tokenizer):
            self.notes.append(warning)
            self._log(f"Note: {warning}")
        if self.resume is not None:
            open_resumed(self)  # checks the plain base, then attaches the run's adapter
        elif cfg.peft != "none":
            self.model, self.base_identity, self.adapter_info = attach_adapter(
                cfg, self.loaded, self.tokenizer
            )
            self.peft_kind = cfg.peft

    def _setup_trainable(self) -> tuple[list[str], list[str]]:
        cfg, model = self.cfg, self.model
        adapter = adapter_names(model) if self.peft_kind else None
        self.selection = select_trainable(model, cfg.trainable, cfg.frozen, within=adapter)
        trainable = list(self.selection.trainable)
        if self.offload.active:  # trained offloaded weights get writable copies
            offload_dir = Path(cfg.offload_folder or self.out.with_name(self.out.name + ".offload"))
            self.offload = OffloadedWeights(model, trainable, offload_dir)
        self.params = dict(canonical_parameters(model))
        self.params.update(self.offload.tensors)  # the real tensors of offloaded weights
        return trainable, decay_params(self.params, trainable, cfg.weight_decay, cfg.no_decay)

    def _setup_journal(self, trainable: list[str], decay: list[str]) -> None:
        cfg = self.cfg
        if self.resume is not None:
            h = self.header
            if list(h.trainable) != trainable or list(h.update.decay_params) != decay:
                raise ConfigError(
                    f"cannot resume {self.out}: the trainable set of this model differs from "
                    "the run's (same --trainable/--frozen, same base?)"
                )
            return
        identity = self.base_identity or identity_of(
            self.loaded, self.model, self.tokenizer, trainable, self.offload
        )
        assert self.dist is not None
        config = run_config(cfg, self.data_info, self.task, self.user, self.dist.world)
        self.header = build_header(cfg, identity, trainable, decay, config, self.adapter_info)
        if not self.main:
            self.writer = FollowerWriter(0)
            return
        if self.overwrite:
            with os_errors(self.log_path, "replace the log"):
                self.log_path.unlink(missing_ok=True)
        check_late_settings(cfg, self.task, self.tokenizer, self.splits)
        self.writer = TrajectoryWriter.create(self.journal, self.header, fsync=cfg.fsync)
        self._fresh_journal = True

    def _setup_step(self, trainable: list[str]) -> None:
        cfg = self.cfg
        assert self.dist is not None
        self.objective, self.stepper = make_step(
            cfg, self.model, self.tokenizer, self.task, self.user, trainable, self.params,
            self.header, self.dist, self._reduce,
        )  # fmt: skip
        if self.resume is not None and self.start > 0:  # momentum terms need the past steps
            self.stepper.remember(self.traj.records.slice(0, self.start))
        self.reporter = Reporter.for_run(
            cfg, self.out, self.log_path, start=self.start, progress=self.progress,
            main=self.main, log=self._log,
        )  # fmt: skip
        train = self.splits["train"]
        for line in (
            self.selection.describe(),
            self.dist.describe(),
            cut_note(
                count_truncated(self.task, self.tokenizer, train),
                len(train),
                "training",
                cfg.max_length,
            ),
        ):
            if line:
                self.message(line)

    def checkpoint(self, at: int) -> str:
        """The fingerprint of the trained tensors after ``at`` steps, recorded once."""
        assert self.writer is not None and self.dist is not None
        trainable = self.header.trainable
        return record_checkpoint(
            self.writer, self.dist, self.checkpoints, self.params, trainable, at
        )

    def run_eval(self, at: int, split_names: Sequence[str]) -> None:
        assert self.writer is not None and self.reporter is not None
        if at > 0:
            self.checkpoint(at)
        for split in split_names:
            if split not in self.splits or not self.splits[split]:
                continue
            if any(e.step == at and e.split == split for e in self.evaluations):
                continue
            n = len(self.splits[split])
            with self.reporter.evaluating(at, split, n) as progress:
                metrics, truncated = self.objective.evaluate(
                    self.splits[split], self.cfg.eval_batch_size, progress
                )
            if truncated and at == 0:
                self.message(cut_note(truncated, n, split, self.cfg.max_length))
            if not all(math.isfinite(v) for v in metrics.values()):
                self._diverged(at, f"the {split} evaluation at step {at} is not finite ({metrics})")
            e = self.writer.append_evaluation(Evaluation(at, split, metrics))
            self.evaluations.append(e)
            self.reporter.evaluation(at, split, metrics)

    def _seal_and_compact(self, at: int) -> None:
        assert self.writer is not None and self.dist is not None
        self.checkpoint(at)
        seal(self.writer, self.dist, self.journal, self.out)

    def _diverged(self, at: int, why: str) -> None:
        self._seal_and_compact(at)
        raise diverged_error(self.cfg, self.out, at, why)

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        cfg = self.cfg
        assert self.writer is not None and self.reporter is not None and self.dist is not None
        train = self.splits["train"]
        t0 = time.perf_counter()
        step = self.start
        with graceful_interrupt(self.message) as stop_requested:
            try:
                if self.start == 0:
                    self.run_eval(0, ["dev", "test"] if cfg.eval_test else ["dev"])
                for step in range(self.start, cfg.steps):
                    t_step = time.perf_counter()
                    idx = self.dist.shard(batch_indices(cfg.seed, step, len(train), cfg.batch_size))
                    enc = self.task.encode(self.tokenizer, [train.examples[i] for i in idx])
                    lr = cfg.lr_at(step)
                    est = take_step(
                        self.stepper, self.writer, step, enc, lr, with_losses=cfg.record_losses
                    )
                    took = time.perf_counter() - t_step
                    self.step_seconds += took
                    self.reporter.step(step, est, lr, took)
                    done = step + 1
                    self.step_now = done
                    self._bad_losses = self._bad_losses + 1 if est.skipped else 0
                    if self._bad_losses >= DIVERGED_AFTER:
                        self._diverged(
                            done, f"the last {DIVERGED_AFTER} steps had non-finite losses"
                        )
                    if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                        self.run_eval(done, ["dev"])
                    stop = stop_requested()
                    if self.dist.active:  # every rank stops at the same step
                        stop = self.dist.sum_floats([1.0 if stop else 0.0])[0] > 0
                    if stop:
                        self.interrupted = done < cfg.steps
                        step = done
                        break
                else:
                    step = cfg.steps
                self.step_now = step
            except OutputError as e:
                raise disk_error(e, self.journal, self.out, self.writer.num_steps) from e
        self.train_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ finish
    def finish(self) -> TrainResult:
        cfg = self.cfg
        step = self.step_now if self.step_now else self.start
        try:
            if not self.interrupted and step == cfg.steps:
                self.run_eval(step, ["dev", "test"] if cfg.eval_test else ["dev"])
            fingerprint_ = self.checkpoint(step)
            self._seal_and_compact(step)
        except OutputError as e:
            raise disk_error(e, self.journal, self.out, step) from e
        if self.interrupted and self.main:
            self.message(
                f"Stopped after step {step}/{cfg.steps}. Resume with: "
                f"mezo-ckpt train --resume {self.out}"
            )
        if cfg.save_model and not self.interrupted and self.main:
            save_model(
                self.model, cfg, self.header, self.loaded.folder, step=step, out=self.out,
                adapter=bool(self.peft_kind), overwrite=self.overwrite,
            )  # fmt: skip
        ran = max(1, step - self.start)
        return TrainResult(
            self.out,
            step,
            cfg.steps,
            self.interrupted,
            list(self.evaluations),
            time.perf_counter() - self.t_call,
            self.train_seconds,
            self.step_seconds / ran,
            fingerprint_,
            self.selection,
            self.notes,
        )
