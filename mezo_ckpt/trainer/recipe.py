"""A MeZO training run with a visible shape: setup, the loop, finish.

:class:`MezoRecipe` follows torchtune's recipe layout: :meth:`~MezoRecipe.setup` builds
everything a run needs (lock, data and task, base model, trainable set, header,
trajectory journal, perturbation, step, reporting), :meth:`~MezoRecipe.loop` runs the
steps, :meth:`~MezoRecipe.finish` seals and compacts the file. :func:`train` runs the
three.

What a user can count on:

* nothing they have is overwritten unless they ask (``overwrite``), two runs pointed at
  the same output cannot both write it (an exclusive lock), and no output is one of the
  run's inputs;
* every step's record is durable before the weights move, so a killed run loses at most
  the step in flight and ``--resume`` continues it (redoing any evaluation or checkpoint
  the kill cut off);
* Ctrl-C stops after the current step with a valid, sealed file; a full disk or a
  diverging run stops with a typed error that says what was kept and how to go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mezo_ckpt import __version__
from mezo_ckpt.adapters import adapter_names
from mezo_ckpt.errors import (
    ConfigError,
    DataError,
    OutputError,
    OutputExistsError,
    TrainingDivergedError,
)
from mezo_ckpt.format import Evaluation, Trajectory, TrajectoryWriter, compact
from mezo_ckpt.fsutil import (
    check_output,
    exclusive_lock,
    is_inside,
    os_errors,
    same_path,
    staged_file,
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
from mezo_ckpt.offload import OffloadedWeights, parse_device_map, parse_max_memory
from mezo_ckpt.runtime import quiet_progress, resolve_device, set_threads
from mezo_ckpt.trainer.config import TrainConfig, sources_of
from mezo_ckpt.trainer.data import Split, fingerprint, load_dataset_split, load_file, map_columns
from mezo_ckpt.trainer.dist import Dist
from mezo_ckpt.trainer.objectives import UserObjective, load_user_objective
from mezo_ckpt.trainer.params import Selection, decay_params, select_trainable
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.report import Reporter
from mezo_ckpt.trainer.resume import paths_for
from mezo_ckpt.trainer.step import MezoStep, Reduce
from mezo_ckpt.trainer.tasks import (
    Encoded,
    LossTerms,
    PromptTask,
    exact_match,
    generate,
    loss_terms,
    predictions,
    score_candidates,
    token_f1,
)
from mezo_ckpt.update import UpdateSpec

#: Salt of the per-step batch sampler (ASCII "mezo").
BATCH_SALT = 0x6D657A6F
#: Consecutive steps with non-finite losses after which a run counts as diverged.
DIVERGED_AFTER = 3


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


def batch_indices(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """The training examples of one step: a pure function of (seed, step), resume-safe."""
    rng = np.random.default_rng([seed, step, BATCH_SALT])
    return rng.choice(n, size=min(size, n), replace=False)


@contextlib.contextmanager
def graceful_interrupt(message: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current step, then stop cleanly. Second: stop now."""
    hits = {"n": 0}

    def handler(signum, frame):  # noqa: ARG001
        hits["n"] += 1
        if hits["n"] > 1:
            raise KeyboardInterrupt
        message(
            "Interrupted: finishing the current step and saving a valid trajectory "
            "(Ctrl-C again to stop at once)."
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


# ----------------------------------------------------------------------------- task + data


def build_task(cfg: TrainConfig) -> PromptTask:
    builtin = cfg.builtin()
    return PromptTask(
        template=cfg.template or builtin.get("template", ""),
        verbalizer=dict(cfg.verbalizer or builtin.get("verbalizer") or {}),
        label_field=cfg.label_field,
        options_field=cfg.options_field,
        option_template=cfg.option_template,
        target_field=cfg.target_field,
        target_template=cfg.target_template,
        max_length=cfg.max_length,
        chat_template=cfg.chat_template,
        max_new_tokens=cfg.max_new_tokens,
        stop=tuple(cfg.stop),
    )


def load_splits(
    cfg: TrainConfig, data: dict[str, Sequence[dict]] | None = None
) -> dict[str, Split]:
    """The train/dev/test examples: in memory, from files, a dataset, or the built-in task."""
    splits: dict[str, Split] = {}
    if data is not None:
        if "train" not in data or not data["train"]:
            raise DataError("data= needs a non-empty 'train' list of examples")
        for name, rows in data.items():
            rows = [dict(r) for r in rows]
            splits[name] = Split(name, rows, [f"{name} row {i + 1}" for i in range(len(rows))])
        splits["train"] = splits["train"].head(cfg.train_examples)
    elif cfg.dataset:
        train = load_dataset_split(
            cfg.dataset,
            cfg.train_split,
            name="train",
            config=cfg.dataset_config,
            limit=cfg.train_examples,
        )
        assert train is not None
        splits["train"] = train
        given = sources_of(cfg)
        for name, split in (("dev", cfg.dev_split), ("test", cfg.test_split)):
            if split:
                got = load_dataset_split(
                    cfg.dataset,
                    split,
                    name=name,
                    config=cfg.dataset_config,
                    required=f"{name}_split" in given,
                )
                if got is not None:
                    splits[name] = got
        if cfg.dev_file:
            splits["dev"] = load_file(cfg.dev_file, name="dev")
        if cfg.test_file:
            splits["test"] = load_file(cfg.test_file, name="test")
    elif cfg.train_file:
        splits["train"] = load_file(cfg.train_file, name="train", limit=cfg.train_examples)
        if cfg.dev_file:
            splits["dev"] = load_file(cfg.dev_file, name="dev")
        if cfg.test_file:
            splits["test"] = load_file(cfg.test_file, name="test")
    elif cfg.task in ("sentiment",):
        from mezo_ckpt.data import load_split

        for name in ("train", "dev", "test"):
            rows = load_split(name)
            splits[name] = Split(
                name, rows, [f"built-in {name}.jsonl:{i + 1}" for i in range(len(rows))]
            )
        splits["train"] = splits["train"].head(cfg.train_examples)
    else:
        raise ConfigError("no training data: set --train-file or --dataset")
    splits = {k: map_columns(v, cfg.columns) for k, v in splits.items()}
    if "dev" in splits and cfg.eval_examples:
        splits["dev"] = splits["dev"].subset(cfg.eval_examples)
    if "test" in splits and cfg.test_examples:
        splits["test"] = splits["test"].subset(cfg.test_examples)
    return splits


def load_tokenizer(folder: Path | None, model_spec: str | None):
    from transformers import AutoTokenizer

    src = str(folder) if folder is not None else model_spec
    try:
        return AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load a tokenizer for {src}: {e}") from None


# ----------------------------------------------------------------------------- measuring


class Objective:
    """Measures a batch (under whatever perturbation is active) and evaluates splits."""

    def __init__(
        self,
        task: PromptTask,
        objective: str,
        model: torch.nn.Module,
        tokenizer,
        perturber: Perturber | None,
        user: UserObjective | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.dist = dist
        self.task = task
        self.objective = objective
        self.model = model
        self.tokenizer = tokenizer
        self.perturber = perturber
        self.user = user

    def rows(self, head: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        p = self.perturber
        if p is None:
            return head.weight.detach()[ids.to(head.weight.device)]
        return p.rows(head.weight, p.name_of(head, "weight"), ids)

    def _generate(self, enc: Encoded) -> list[str]:
        return generate(
            self.model,
            self.tokenizer,
            enc,
            max_new_tokens=self.task.max_new_tokens,
            stop=self.task.stop,
        )

    def __call__(self, enc: Encoded) -> LossTerms:
        n = enc.n_examples
        if self.objective in ("f1", "exact_match"):
            metric = token_f1 if self.objective == "f1" else exact_match
            got = [metric(t, r) for t, r in zip(self._generate(enc), enc.references)]
            return LossTerms(float(n - sum(got)), n, float(sum(got)))
        if self.user is not None:
            outputs = (
                self._generate(enc)
                if enc.kind == "generation"
                else predictions(score_candidates(self.model, enc, self.rows), enc)
            )
            scores = self.user.scores(enc.examples, outputs)
            return LossTerms(-float(sum(scores)), n, float(sum(scores)))
        return loss_terms(score_candidates(self.model, enc, self.rows), enc, self.objective)

    def evaluate(
        self, split: Split, batch_size: int, progress: Callable[[int], None] | None = None
    ) -> tuple[dict[str, float], int]:
        """(metrics, prompts truncated) of the current weights on a split (under
        torchrun each rank evaluates its share and the sums are added up); ``progress``
        gets the number of examples of each batch done."""
        total = LossTerms(0.0, 0, 0.0)
        em = f1 = 0.0
        truncated = 0
        dist = self.dist
        mine = range(len(split.examples))
        if dist is not None and dist.active:
            mine = range(dist.rank, len(split.examples), dist.world)
        # Batch similar lengths together: much less padding, same per-example scores.
        order = sorted(mine, key=lambda i: len(self.task.template.format(**split.examples[i])))
        ordered = [split.examples[i] for i in order]
        with torch.inference_mode():
            for lo in range(0, len(ordered), batch_size):
                enc = self.task.encode(self.tokenizer, ordered[lo : lo + batch_size])
                truncated += enc.truncated
                total = total + loss_terms(score_candidates(self.model, enc, self.rows), enc, "ce")
                if enc.kind == "generation":
                    for t, r in zip(self._generate(enc), enc.references):
                        em += exact_match(t, r)
                        f1 += token_f1(t, r)
                if progress is not None:
                    progress(enc.n_examples)
        if dist is not None and dist.active:
            ls, cnt, cor, em, f1, truncated = dist.sum_floats(
                [total.loss_sum, float(total.count), total.correct, em, f1, float(truncated)]
            )
            total = LossTerms(ls, int(round(cnt)), cor)
            truncated = int(round(truncated))
        n = max(1, total.count)
        if self.task.kind == "generation":
            metrics = {"loss": total.loss, "exact_match": em / n, "f1": f1 / n}
        else:
            metrics = {"accuracy": total.correct / n, "loss": total.loss}
        metrics["examples"] = float(total.count)
        return metrics, truncated


# ----------------------------------------------------------------------------- recipe


class _FollowerWriter:
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
        self.writer: TrajectoryWriter | None = None
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
    def _check_outputs(self) -> None:
        cfg = self.cfg
        inputs = [p for p in (cfg.train_file, cfg.dev_file, cfg.test_file, cfg.dataset) if p]
        for p in (cfg.model, cfg.device_map):
            if p and Path(p).expanduser().exists():
                inputs.append(str(Path(p).expanduser()))
        for p in (self.out, self.journal, self.log_path):
            for src in inputs:
                if same_path(p, src) or (Path(src).is_dir() and is_inside(p, src)):
                    raise OutputError(
                        f"{p} is (inside) one of this run's inputs: choose another output"
                    )
        for p in (self.out, self.journal):  # the log must be neither the file nor its journal
            if same_path(self.log_path, p):
                raise OutputError(f"--log-file {self.log_path} is the run's own {p.name}")
        if self.resume is None:
            for p, what in ((self.out, "output"), (self.journal, "journal of an earlier run")):
                if p.exists() and not self.overwrite:
                    hint = (
                        f"continue it with --resume {self.out}, or pass --overwrite to start over"
                    )
                    raise OutputExistsError(f"{p} exists ({what}): {hint}")
            if self.log_path.exists() and not self.overwrite:
                raise OutputExistsError(
                    f"the log {self.log_path} exists (from an earlier run): pass --overwrite to "
                    "replace it, or choose another -o / --log-file"
                )
            check_output(self.out, kind="file", overwrite=self.overwrite, inputs=inputs)
        if cfg.save_model:
            check_output(
                cfg.save_model,
                kind="folder",
                overwrite=self.overwrite,
                flag="--save-model",
                inputs=inputs + [str(self.out)],
            )

    def setup(self) -> None:
        cfg = self.cfg
        cfg.validate()
        if cfg.peft != "none" and cfg.device_map:
            raise ConfigError(
                "--peft with --device-map is not supported: adapters are small, train them on "
                "a model that fits (or offload without adapters)"
            )
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
            self._check_outputs()
        self.task = build_task(cfg)
        self.splits = load_splits(cfg, self._data_arg)
        for split in self.splits.values():
            self.task.validate(split)
        self.user = (
            load_user_objective(cfg.objective) if cfg.objective.startswith("python:") else None
        )
        self._load_model()
        for warning in self.task.check_tokens(self.tokenizer):
            self.notes.append(warning)
            self._log(f"Note: {warning}")
        if self.resume is not None:
            self._open_resumed()  # checks the plain base, then attaches the run's adapter
        elif cfg.peft != "none":
            self._attach_adapter()
        model = self.model
        adapter = adapter_names(model) if self.peft_kind else None
        self.selection = select_trainable(model, cfg.trainable, cfg.frozen, within=adapter)
        trainable = list(self.selection.trainable)
        if self.offload.active:  # trained offloaded weights get writable copies
            self.offload = OffloadedWeights(model, trainable, self._offload_dir())
        self.params = dict(canonical_parameters(model))
        self.params.update(self.offload.tensors)  # the real tensors of offloaded weights
        decay = decay_params(self.params, trainable, cfg.weight_decay, cfg.no_decay)
        if self.resume is not None:
            h = self.header
            if list(h.trainable) != trainable or list(h.update.decay_params) != decay:
                raise ConfigError(
                    f"cannot resume {self.out}: the trainable set of this model differs from "
                    "the run's (same --trainable/--frozen, same base?)"
                )
        else:
            self.header = self.build_header(trainable, decay)
            if not self.main:
                self.writer = _FollowerWriter(0)
            else:
                if self.overwrite:
                    with os_errors(self.log_path, "replace the log"):
                        self.log_path.unlink(missing_ok=True)
                self._check_late_settings()
                self.writer = TrajectoryWriter.create(self.journal, self.header, fsync=cfg.fsync)
                self._fresh_journal = True
        self.spec = UpdateSpec.from_header(self.header)
        self.perturber = Perturber(model, trainable, cfg.seed, cfg.z, cfg.eps)
        self.objective = Objective(
            self.task, cfg.objective, model, self.tokenizer, self.perturber, self.user, self.dist
        )
        self.stepper = MezoStep.from_config(
            cfg,
            self.params,
            self.perturber,
            self.spec,
            self.objective,
            reduce=self._reduce or self.dist.reduce,
            owns=self.dist.owns,
        )
        if self.resume is not None and self.start > 0:  # momentum terms need the past steps
            self.stepper.remember(self.traj.records.slice(0, self.start))
        self.reporter = Reporter(
            total=cfg.steps,
            start=self.start,
            progress=self.progress and self.main,
            log=self._log if self.main else (lambda text: None),
            log_path=self.log_path if self.main else None,
            report_to=cfg.report_to if self.main else "none",
            report_dir=self.out.with_name(self.out.name + ".tensorboard"),
            run_name=self.out.name,
            config=cfg.to_dict(),
        )
        self.message(self.selection.describe())
        if self.dist.active:
            share = "batch" if self.dist.mode == "data" else "n-SPSA directions"
            self.message(
                f"data parallel: {self.dist.world} ranks ({self.dist.backend}), each a share "
                f"of the {share}"
            )
        self._note_truncation()
        if self.resume is not None and self.start > 0:
            self._redo_missing(upto=self.start)

    def _note_truncation(self) -> None:
        """Say once how many training prompts --max-length cuts (dev/test: at step 0)."""
        train = self.splits["train"]
        cut = 0
        for lo in range(0, len(train.examples), 64):
            cut += self.task.encode(self.tokenizer, train.examples[lo : lo + 64]).truncated
        if cut:
            self.message(
                f"Note: {cut} of {len(train)} training prompts are longer than --max-length "
                f"{self.cfg.max_length} tokens and are cut from the left"
            )

    def _check_late_settings(self) -> None:
        """What would otherwise fail only at the first evaluation or report: the chat
        template renders, the reporter's package exists. Checked before the journal is
        created, so a mistake leaves nothing behind."""
        if self.task.chat_template:
            for split in self.splits.values():
                if split.examples:
                    self.task.render(self.tokenizer, split.examples[0])
        if self.cfg.report_to == "tensorboard":
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "--report-to tensorboard needs the tensorboard package: "
                    "pip install 'mezo-ckpt[report]' (or tensorboard)"
                ) from None
        elif self.cfg.report_to == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "--report-to wandb needs the wandb package: pip install wandb"
                ) from None

    def _load_model(self) -> None:
        from mezo_ckpt.base import LoadedBase, load_base

        cfg = self.cfg
        if self._model_arg is not None:
            model = self._model_arg
            model.eval()
            model.requires_grad_(False)
            self.loaded = LoadedBase(model, "local", folder=None)
            if self._tokenizer_arg is None:
                raise ConfigError("model= needs tokenizer= too")
            self.tokenizer = self._tokenizer_arg
        else:
            # library bars only on a terminal (in a log they are lines of carriage returns)
            with quiet_progress(self.progress and sys.stderr.isatty()):
                self.loaded = load_base(
                    cfg.model,
                    dtype=cfg.dtype,
                    device=self.device,
                    revision=cfg.revision,
                    progress=self.progress,
                    device_map=parse_device_map(cfg.device_map),
                    max_memory=parse_max_memory(cfg.max_memory),
                    offload_folder=cfg.offload_folder,
                )
                self.tokenizer = self._tokenizer_arg or load_tokenizer(
                    self.loaded.folder, cfg.model
                )
        self.model = self.loaded.model
        self.offload = OffloadedWeights(self.model, [], None)  # read access, for hashing

    def _offload_dir(self) -> Path:
        if self.cfg.offload_folder:
            return Path(self.cfg.offload_folder)
        return self.out.with_name(self.out.name + ".offload")

    def data_info(self) -> dict[str, Any]:
        source = (
            "memory"
            if self._data_arg is not None
            else (
                "dataset" if self.cfg.dataset else ("files" if self.cfg.train_file else "builtin")
            )
        )
        return {
            "source": source,
            "train_sha256": fingerprint(self.splits["train"].examples),
            "train_examples": len(self.splits["train"]),
            **{
                f"{k}_sha256": fingerprint(v.examples)
                for k, v in self.splits.items()
                if k != "train"
            },
            "task_kind": self.task.kind,
        }

    def build_header(self, trainable: list[str], decay: list[str]) -> Header:
        from mezo_ckpt.base import describe_base

        cfg = self.cfg
        ident: BaseIdentity = self.base_identity or describe_base(
            self.model,
            trainable,
            values=self.offload,
            kind=self.loaded.kind,
            repo_id=self.loaded.repo_id,
            revision=self.loaded.revision,
            files=self.loaded.files,
            embedded=self.loaded.embedded,
            folder=self.loaded.folder,
            tokenizer=self.tokenizer if self.loaded.folder is None else None,
        )
        config: dict[str, Any] = {
            **cfg.to_dict(),
            "data": self.data_info(),
            "resolved_task": self.task.resolved(),
        }
        if self.user is not None:
            config["objective_provenance"] = self.user.provenance()
        return Header.build(
            tool=Tool("mezo-ckpt", __version__),
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            base=ident,
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
                extra={
                    "name": "mezo-sgd",
                    "estimator": cfg.estimator,
                    **(
                        {"momentum": cfg.momentum, "momentum_window": cfg.momentum_window}
                        if cfg.momentum
                        else {}
                    ),
                },
            ),
            records=RecordLayout(
                decay=bool(decay), losses=cfg.record_losses, history=cfg.history_window
            ),
            total_steps=cfg.steps,
            config=config,
            chain=CHAIN_RULE,
            peft=self.adapter_info,
        )

    # ------------------------------------------------------------------ resume
    def _attach_adapter(self) -> None:
        """Describe the plain base, then wrap it with the configured adapter (portable init)."""
        from mezo_ckpt.adapters import adapter_config, attach, info_for
        from mezo_ckpt.base import describe_base

        cfg = self.cfg
        self.base_identity = describe_base(
            self.model,
            [],
            kind=self.loaded.kind,
            repo_id=self.loaded.repo_id,
            revision=self.loaded.revision,
            files=self.loaded.files,
            embedded=self.loaded.embedded,
            folder=self.loaded.folder,
            tokenizer=self.tokenizer if self.loaded.folder is None else None,
        )
        if cfg.peft == "lora":
            conf = adapter_config(
                "lora", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_targets
            )
        else:
            conf = adapter_config("prefix", num_virtual_tokens=cfg.prefix_tokens)
        self.model = attach(self.model, cfg.peft, conf, cfg.seed)
        self.peft_kind = cfg.peft
        self.adapter_info = info_for(self.model, cfg.peft, conf)

    def _open_resumed(self) -> None:
        from mezo_ckpt.adapters import prepare
        from mezo_ckpt.base import verify_base

        cfg = self.cfg
        assert self.dist is not None
        src = self.journal if self.journal.exists() else self.out
        if self.main:
            if src == self.out:  # a finished (or interrupted and compacted) file: journal again
                with os_errors(self.journal, "write"):
                    self.journal.write_bytes(self.out.read_bytes())
            writer, traj = TrajectoryWriter.open_for_resume(self.journal, fsync=cfg.fsync)
        if self.dist.active:  # every rank replays rank 0's journal
            from mezo_ckpt.format import parse_trajectory

            data = self.dist.broadcast_bytes(
                self.journal.read_bytes()[: traj.valid_length] if self.main else None
            )
            traj = parse_trajectory(data, allow_truncated_tail=True)
            if not self.main:
                writer = _FollowerWriter(traj.num_steps)
        h = traj.header
        try:
            stored = h.config.get("data") or {}
            now = self.data_info()
            for key in sorted(set(stored) | set(now)):
                if key.endswith("_sha256") and stored.get(key) != now.get(key):
                    raise DataError(
                        f"cannot resume {src}: the {key.removesuffix('_sha256')} data differs "
                        "from what the run trained on (its fingerprint changed); pass the same "
                        "files, columns and example limits"
                    )
            check = verify_base(h, self.model, offered=self.loaded, values=self.offload)
            self.notes.append("base checked: " + check.summary())
            self.model = prepare(h, self.model)
            self.peft_kind = h.peft.type if h.peft is not None else None
        except BaseException:
            writer.close()
            if self.main and src == self.out:  # the copy made above: nothing was resumed
                with contextlib.suppress(OSError):
                    self.journal.unlink()
            raise
        self.writer = writer
        self.header = h
        self.traj = traj
        self.evaluations = list(traj.evaluations)
        self.checkpoints = dict(traj.checkpoints)
        self.start = traj.num_steps
        if cfg.steps != h.total_steps:
            self._extend(traj, cfg.steps)
        elif src == self.out and traj.complete and self.start == h.total_steps:
            # a finished file (a journal at its last step still needs its final
            # evaluations and compaction: finish() does them)
            self.writer.close()
            if self.main:
                with os_errors(self.journal, "remove"):
                    self.journal.unlink()
            raise ConfigError(
                f"{self.out} is already complete ({traj.num_steps}/{h.total_steps} steps); "
                f"extend it with --resume {self.out} --steps N (N > {h.total_steps})"
            )
        self.message(f"Resuming {self.out} at step {self.start}/{self.header.total_steps}")

    def _extend(self, traj: Trajectory, steps: int) -> None:
        """Rewrite the journal under a header with the new number of steps (the records,
        evaluations and fingerprints carry over, re-bound to the new header)."""
        if not self.main:
            self.header = self.header.with_(total_steps=steps)
            return
        cfg_json = dict(self.header.config)
        cfg_json["steps"] = steps
        history = list(cfg_json.get("extended_from") or [])
        history.append({"total_steps": self.header.total_steps, "recorded": traj.num_steps})
        cfg_json["extended_from"] = history
        header = self.header.with_(total_steps=steps, config=cfg_json)
        assert self.writer is not None
        self.writer.close()
        with staged_file(self.journal) as tmp:
            w = TrajectoryWriter.create(tmp, header, fsync=self.cfg.fsync)
            w.append_steps(traj.records)
            for e in traj.evaluations:
                w.append_evaluation(e)
            for s, d in sorted(traj.checkpoints.items()):
                w.append_checkpoint(s, d)
            w.close()
        writer, traj2 = TrajectoryWriter.open_for_resume(self.journal, fsync=self.cfg.fsync)
        self.writer, self.header, self.traj = writer, traj2.header, traj2
        self.evaluations = list(traj2.evaluations)

    def eval_plan(self, upto: int) -> list[tuple[int, str]]:
        """(step, split) evaluations a run of this config makes at or before ``upto``."""
        cfg = self.cfg
        plan = [(0, "dev")] + ([(0, "test")] if cfg.eval_test else [])
        if cfg.eval_every:
            plan += [(s, "dev") for s in range(cfg.eval_every, cfg.steps, cfg.eval_every)]
        return [(s, sp) for s, sp in plan if s <= upto and sp in self.splits]

    def _redo_missing(self, upto: int) -> None:
        """Replay the resumed steps onto the base, stopping where an evaluation or a
        checkpoint is missing (a kill between a step and its evaluation) to make it, and
        checking every recorded fingerprint on the way."""
        from mezo_ckpt.rebuild import ModelSink, Plan, TensorsSource, rebuild

        traj = self.traj
        done = {(e.step, e.split) for e in self.evaluations}
        plan = self.eval_plan(upto)
        stops = sorted({s for s, _ in plan} | set(traj.checkpoints) | {upto})
        at = 0
        with torch.no_grad():
            for s in (s for s in stops if s <= upto):
                # the steps [at, s) on the weights, the fingerprint at s checked if recorded
                rebuild(Plan(traj, s, start=at), TensorsSource(self.params), ModelSink())
                at = s
                missing = [sp for st, sp in plan if st == s and (st, sp) not in done]
                if missing:
                    self.message(f"Redoing what the interrupted run left out at step {s}")
                    self.run_eval(s, missing)

    # ------------------------------------------------------------------ loop pieces
    def checkpoint(self, at: int) -> str:
        """Record the fingerprint of the trainable tensors after ``at`` steps (hashed once
        per step), so a replay to any evaluated step verifies itself."""
        assert self.writer is not None and self.dist is not None
        if at not in self.checkpoints:
            digest = tensors_sha256(self.params, self.header.trainable)
            self.dist.check_same(digest, at)  # every rank holds the same weights
            self.checkpoints[at] = digest
            self.writer.append_checkpoint(at, digest)
        return self.checkpoints[at]

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
                self.message(
                    f"Note: {truncated} of {len(self.splits[split])} {split} prompts are longer "
                    f"than --max-length {self.cfg.max_length} tokens and were cut from the left"
                )
            if not all(math.isfinite(v) for v in metrics.values()):
                self._diverged(at, f"the {split} evaluation at step {at} is not finite ({metrics})")
            e = self.writer.append_evaluation(Evaluation(at, split, metrics))
            self.evaluations.append(e)
            self.reporter.evaluation(at, split, metrics)

    def _seal_and_compact(self, at: int) -> None:
        assert self.writer is not None and self.dist is not None
        self.checkpoint(at)
        self.writer.close()
        if self.main:
            compact(self.journal, self.out)
            with os_errors(self.journal, "remove the finished journal"):
                self.journal.unlink()
        self.dist.barrier()

    def _diverged(self, at: int, why: str) -> None:
        self._seal_and_compact(at)
        raise TrainingDivergedError(
            f"training diverged: {why}. The learning rate is far too large for this model "
            f"(lr={self.cfg.lr}); {self.out} holds the {at} steps so far (replayable). "
            "Start again with a smaller --lr (MeZO's usual range is 1e-7 to 1e-4)"
        )

    def _disk_failed(self, e: OutputError, step: int) -> None:
        raise OutputError(
            f"{e}. The journal {self.journal} keeps every step recorded before that "
            f"(through step {step}); free some space and continue with: "
            f"mezo-ckpt train --resume {self.out}"
        ) from e

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
                    est = self.stepper.estimate(step, enc, lr)
                    # The record is durable before the weights move.
                    self.writer.append_steps(est.record(with_losses=cfg.record_losses))
                    self.stepper.apply(est)
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
                self._disk_failed(e, self.writer.num_steps)
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
            self._disk_failed(e, step)
        if self.interrupted and self.main:
            self.message(
                f"Stopped after step {step}/{cfg.steps}. Resume with: "
                f"mezo-ckpt train --resume {self.out}"
            )
        if cfg.save_model and not self.interrupted and self.main:
            from mezo_ckpt.export import export_adapter_folder, export_hf

            meta = {"tool": "mezo-ckpt", "trajectory": str(self.out), "step": step}
            if self.peft_kind:
                export_adapter_folder(
                    self.model,
                    cfg.save_model,
                    header=self.header,
                    folder=self.loaded.folder,
                    meta=meta,
                    replace=self.overwrite,
                )
            else:
                export_hf(
                    self.model,
                    cfg.save_model,
                    tokenizer_from=self.loaded.folder,
                    meta=meta,
                    replace=self.overwrite,
                )
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


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    keep_model: bool = False,
    log: Callable[[str], None] = print,
    model: Any = None,
    tokenizer: Any = None,
    data: dict[str, Sequence[dict]] | None = None,
    reduce: Reduce | None = None,
    **settings: Any,
) -> TrainResult:
    """Run MeZO and write the trajectory (see ``mezo-ckpt train --help``).

    Args:
        cfg: the configuration; or pass settings as keywords (``train(steps=50, lr=1e-5)``).
        resume: continue the run whose trajectory (or ``.partial`` journal) this is; the
            settings then come from the file (paths must be passed again, see
            :mod:`mezo_ckpt.trainer.resume`).
        overwrite: replace an existing output, journal and log.
        progress: show progress.
        keep_model: return the trained model and tokenizer in the result.
        log: where human-readable messages go.
        model: an already loaded base model (with ``tokenizer``), or a folder / repo id
            (the ``model`` setting).
        data: examples in memory: ``{"train": [...], "dev": [...], "test": [...]}``.
        reduce: sums loss terms across data-parallel ranks (see mezo_ckpt.trainer.dist).
    """
    if isinstance(model, (str, os.PathLike)):  # a folder or repo id: the `model` setting
        settings["model"] = str(model)
        model = None
    if data is not None and resume is None:  # examples in memory: a custom task
        if cfg is None:
            settings.setdefault("task", "custom")
        settings["_in_memory"] = True
    if resume is not None:
        from mezo_ckpt.trainer.resume import resume_config

        # A config given with resume= must agree with the file (paths it names count as
        # named by the caller); keywords are what changes, e.g. train(resume=p, steps=200).
        given = {**(cfg.to_dict() if cfg is not None else {}), **settings}
        given.pop("output", None)
        cfg, _, notes = resume_config(resume, given, in_memory=data is not None)
        for n in notes:
            log(f"Note: {n}")
    else:
        in_memory = settings.pop("_in_memory", False)
        if cfg is None:
            cfg = TrainConfig.from_dict(settings, where="train()", in_memory=in_memory)
        elif settings or in_memory:
            cfg = dataclasses.replace(cfg, **settings)
            if in_memory:
                cfg.task = "custom"
            cfg.in_memory = in_memory
            cfg.validate()
    with MezoRecipe(
        cfg,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        log=log,
        model=model,
        tokenizer=tokenizer,
        data=data,
        reduce=reduce,
    ) as recipe:
        recipe.setup()
        recipe.loop()
        result = recipe.finish()
        if keep_model:
            result.model, result.tokenizer = recipe.model, recipe.tokenizer
    return result
