"""``MezoTrainer``: a ``transformers.Trainer`` whose steps are MeZO steps and whose
checkpoints are trajectories.

.. code-block:: python

    trainer = mezo_ckpt.MezoTrainer(
        model=model,
        args=TrainingArguments("out", max_steps=500, learning_rate=1e-6, save_steps=100,
                               gradient_accumulation_steps=2, lr_scheduler_type="linear"),
        train_dataset=train, eval_dataset=dev,
        mezo={"eps": 1e-3, "estimator": "spsa"},
    )
    trainer.train()            # out/trajectory.zst: `mezo-ckpt replay` and `push` take it
    trainer.train(resume_from_checkpoint="out/checkpoint-100")   # bit for bit

Everything of ``TrainingArguments`` a zeroth-order step can honour works as usual: the
learning rate and its scheduler (each step's learning rate is the scheduler's, and the
coefficient it produced is stored), ``max_steps`` and epochs, ``seed`` (also MeZO's
seed), ``weight_decay``, logging, evaluation, callbacks and ``report_to``.
``gradient_accumulation_steps`` = k makes one MeZO step over k micro-batches under one
direction (the loss of the k micro-batches together, scaled as the Trainer scales it).
``save_steps`` writes ``checkpoint-N/trajectory.zst`` (kilobytes: no weights, no optimizer
state) and ``resume_from_checkpoint`` replays it onto the model the Trainer was given (its
initial state), checking the fingerprint, and continues exactly as the straight run
would. ``load_best_model_at_end`` has no weights to load: replay ``--step best`` instead.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer.optimizer import MeZO

#: The trajectory's name in ``output_dir`` and in each ``checkpoint-N`` folder.
TRAJECTORY_NAME = "trajectory.zst"
#: The scheduler's state in a checkpoint (the Trainer's own name for it).
SCHEDULER_FILE = "scheduler.pt"
#: Evaluation metrics that describe the machine, not the model (not recorded).
_SPEED = ("_runtime", "_samples_per_second", "_steps_per_second")


#: The model attributes a Trainer may change before the first step (``use_cache``, special
#: token ids aligned with the tokenizer): the base is recorded as the caller gave it.
_GIVEN = ("config", "generation_config")


@contextlib.contextmanager
def _as_given(model: Any, given: dict[str, Any]) -> Iterator[None]:
    """``model`` with its config and generation config as the caller passed them, for the
    block (the base identity is computed and checked on that state)."""
    now = {k: getattr(model, k) for k in given}
    try:
        for k, v in given.items():
            setattr(model, k, v)
        yield
    finally:
        for k, v in now.items():
            setattr(model, k, v)


class _NoGradients(torch.optim.Optimizer):
    """What the Trainer steps after each MeZO step: nothing (the update already ran). It
    holds the learning rate the Trainer's scheduler sets, which MeZO reads."""

    def __init__(self, lr: float) -> None:
        super().__init__([torch.zeros(0, requires_grad=True)], {"lr": lr})

    def step(self, closure: Any = None) -> None:
        return None


class MezoTrainerMixin:
    """What makes a ``transformers.Trainer`` (or a subclass, such as TRL's ``SFTTrainer``)
    train with MeZO: put it first in the bases (``class T(MezoTrainerMixin, Trainer)``).

    Args:
        mezo: MeZO settings (``eps``, ``estimator``, ``n_directions``, ``momentum``,
            ``momentum_window``, ``z``, ``rounding``, ``trainable``, ``frozen``,
            ``no_decay``, ``record_losses``, ``fsync``; ``weight_decay`` defaults to
            ``args.weight_decay``). The learning rate, its schedule and the seed come from
            ``args``.
        *args, **kwargs: as ``transformers.Trainer``.

    Raises:
        ConfigError: a setting MeZO cannot honour (``load_best_model_at_end``) or an
            invalid MeZO setting.
    """

    def __init__(self, *args: Any, mezo: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        # The Trainer turns use_cache off and aligns special tokens with the tokenizer:
        # the base is recorded as the caller gave it, so replay matches what they load.
        self._given = {
            k: copy.deepcopy(getattr(model, k)) for k in _GIVEN if getattr(model, k, None)
        }
        super().__init__(*args, **kwargs)
        self.mezo_settings = dict(mezo or {})
        for name in ("lr", "seed", "total_steps", "schedule", "warmup_steps", "min_lr_ratio"):
            if name in self.mezo_settings:
                raise ConfigError(
                    f"mezo={{{name!r}: ...}}: the learning rate, its schedule and the seed come "
                    "from TrainingArguments (learning_rate, lr_scheduler_type, warmup_steps, "
                    "seed)"
                )
        if self.args.world_size > 1:
            raise ConfigError(
                f"MezoTrainer runs in one process (this launch has {self.args.world_size}): "
                "every rank would write the same trajectory. For data parallelism use "
                "`torchrun ... mezo-ckpt train --dist-mode data`"
            )
        if self.args.load_best_model_at_end:
            raise ConfigError(
                "load_best_model_at_end: MeZO checkpoints hold no weights to load; train, then "
                "replay the best evaluated step (mezo-ckpt replay out/trajectory.zst --step best)"
            )
        self.mezo: MeZO | None = None
        self._micro: list[dict[str, Any]] = []
        self._resume_file: Path | None = None

    # ------------------------------------------------------------------ the optimizer
    @property
    def trajectory_path(self) -> Path:
        """``output_dir/trajectory.zst``: the run's trajectory."""
        return Path(self.args.output_dir) / TRAJECTORY_NAME

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = _NoGradients(self.args.learning_rate)
        return self.optimizer

    def _clip_grad_norm(self, model: Any) -> None:
        return None  # no gradients

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> None:
        return None  # no gradients: no "grad_norm: 0" in every log line

    def _open_mezo(self) -> MeZO:
        """The MeZO optimizer of this run (a resumed checkpoint's file replayed first)."""
        out = self.trajectory_path
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {"weight_decay": self.args.weight_decay, **self.mezo_settings}
        if self._resume_file is not None:  # refused before anything is read into the model
            from mezo_ckpt.trajectory import read_trajectory

            held = read_trajectory(self._resume_file).num_steps
            if held != self.state.global_step:
                raise ConfigError(
                    f"{self._resume_file} holds {held} steps but the Trainer's state resumes "
                    f"at step {self.state.global_step}: not a checkpoint of one run"
                )
        with _as_given(self.model, self._given):
            return self._mezo_for(out, settings)

    def _mezo_for(self, out: Path, settings: dict[str, Any]) -> MeZO:
        # resuming: the checkpoint's trajectory is checked and replayed before anything is
        # written, and output_dir/trajectory.zst is only replaced when the run is sealed
        return MeZO(
            self.model,
            lr=self.args.learning_rate,
            output=out,
            seed=self.args.seed,
            total_steps=self.state.max_steps,
            resume_from=self._resume_file,
            overwrite=True,  # a new train() in output_dir starts over, as a Trainer does
            tokenizer=self.processing_class if hasattr(self.model, "config") else None,
            **settings,
        )

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """Collect the micro-batches of one update; on the last, one MeZO step over all."""
        if self.mezo is None:
            self.mezo = self._open_mezo()
        self._micro.append(self._prepare_inputs(inputs))
        if len(self._micro) < self.current_gradient_accumulation_steps:
            return torch.zeros((), device=self.args.device)
        micro, self._micro = self._micro, []
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None

        def closure() -> torch.Tensor:
            total = None
            for batch in micro:
                with self.compute_loss_context_manager():
                    loss = self.mezo_loss(model, batch, num_items_in_batch)
                if self.args.n_gpu > 1:
                    loss = loss.mean()
                part = loss if scaled else loss / len(micro)
                total = part if total is None else total + part
            return total

        lr = self._get_learning_rate()
        loss = self.mezo.step(closure, lr=lr)
        return torch.tensor(loss, device=self.args.device)

    def mezo_loss(self, model: Any, batch: dict[str, Any], num_items_in_batch: Any) -> Any:
        """The loss of one micro-batch under the current perturbation (the Trainer's)."""
        return self.compute_loss(model, batch, num_items_in_batch=num_items_in_batch)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The trajectory so far (fingerprinted) in ``output_dir``: no weights."""
        target = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        target.mkdir(parents=True, exist_ok=True)
        if self.mezo is not None and not self.mezo.closed:
            self.mezo.snapshot(target / TRAJECTORY_NAME)
        elif (
            self.trajectory_path.exists()
            and (target / TRAJECTORY_NAME).resolve() != self.trajectory_path.resolve()
        ):
            shutil.copyfile(self.trajectory_path, target / TRAJECTORY_NAME)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.args.should_save and self.lr_scheduler is not None:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, SCHEDULER_FILE)
        if os.path.isfile(path) and self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(torch.load(path, weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        path = Path(resume_from_checkpoint) / TRAJECTORY_NAME
        if not path.is_file():
            raise ConfigError(
                f"{resume_from_checkpoint} holds no {TRAJECTORY_NAME}: resume from a "
                "checkpoint a MezoTrainer saved"
            )
        self._resume_file = path  # replayed onto the model when the first step opens MeZO

    # ------------------------------------------------------------------ evaluation, end
    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        metrics = super().evaluate(*args, **kwargs)
        if self.mezo is not None and not self.mezo.closed:
            kept = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and not k.endswith(_SPEED)
                and k != "epoch"
            }
            if kept:
                prefix = kwargs.get("metric_key_prefix", "eval")
                self.mezo.record_eval(kept, split=prefix)
        return metrics

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train``, then the trajectory sealed in ``output_dir`` (also when the
        loop fails: the steps so far stay replayable and resumable)."""
        self._micro = []
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.mezo is not None:
                self.mezo.close()
                self.mezo = None
            self._resume_file = None


class MezoTrainer(MezoTrainerMixin, Trainer):
    """A ``transformers.Trainer`` that trains with MeZO and writes a trajectory (see
    :class:`MezoTrainerMixin` for the ``mezo`` settings and what changes)."""


def _sft_trainer() -> type:
    """``MezoSFTTrainer``: TRL's ``SFTTrainer`` (datasets of text or conversations, chat
    templates, completion-only loss) with MeZO steps."""
    try:
        from trl import SFTTrainer
    except ImportError as e:
        raise ImportError(f"MezoSFTTrainer needs TRL: pip install 'mezo-ckpt[trl]' ({e})") from None

    class MezoSFTTrainer(MezoTrainerMixin, SFTTrainer):
        """TRL's ``SFTTrainer`` with MeZO steps and trajectory checkpoints."""

        def mezo_loss(self, model: Any, batch: dict[str, Any], num_items_in_batch: Any) -> Any:
            # SFTTrainer's own loss projects through the LM head in fused tiles that read
            # the head's weight directly, around the head module's forward, so the head
            # would not be perturbed: MeZO measures the model's loss instead (the same
            # token cross-entropy over the labels the SFT collator masked).
            inputs = {k: v for k, v in batch.items() if k in _MODEL_INPUTS}
            return Trainer.compute_loss(self, model, inputs, num_items_in_batch=num_items_in_batch)

    MezoSFTTrainer.__module__ = __name__
    MezoSFTTrainer.__qualname__ = "MezoSFTTrainer"
    return MezoSFTTrainer


#: The SFT collator's keys a model's forward takes (the others describe the batch).
_MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "position_ids", "token_type_ids")


def __getattr__(name: str) -> Any:
    if name == "MezoSFTTrainer":
        cls = _sft_trainer()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
