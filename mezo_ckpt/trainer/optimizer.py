"""MeZO as an optimizer for your own training loop: ``loss = opt.step(closure)``.

.. code-block:: python

    opt = mezo_ckpt.MeZO(model, lr=1e-3, eps=1e-3, output="run.zst")
    with opt:
        for x, y in batches:
            loss = opt.step(lambda: F.cross_entropy(model(x), y))   # forwards only
    model2 = mezo_ckpt.replay("run.zst", base=initial_state_dict)   # == model, bit for bit

The closure runs forward passes and returns the loss (a scalar tensor or a float); MeZO
calls it once per perturbed forward (twice per direction for SPSA), with the perturbation
applied on the fly: the weights are never written until the update, which is the update
rule replay runs. A closure that loops over micro-batches is gradient accumulation under
one direction. Any ``torch.nn.Module`` works: a Hugging Face model is recorded as
``mezo-ckpt train`` records one; any other module by the fingerprint of every tensor of
its initial state, and replay then takes that state dict (or a safetensors file of it) as
the base.

The optimizer is the same machinery as ``mezo-ckpt train``: the same settings and typed
errors (:class:`~mezo_ckpt.trainer.config.TrainConfig`), the same perturbed forwards
(:mod:`.perturb`), step (:mod:`.step`), journal, lock and seal. Every step's record is
durable before the weights move; ``close()`` (or leaving a ``with`` block) fingerprints
the weights and seals the file; ``MeZO(..., resume=True)`` on the initial model replays
what a killed loop recorded, checks each fingerprint, and continues at
:attr:`MeZO.steps_done`. Forwards run in eval mode (dropout off, batch-norm statistics
frozen): the two forwards of a direction must compute the same function, and replay
rebuilds parameters only.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.core.hashing import canonical_parameters, tensors_sha256
from mezo_ckpt.core.update import UpdateSpec
from mezo_ckpt.errors import (
    BaseMismatchError,
    ConfigError,
    DataError,
    OutputError,
    OutputExistsError,
    TrainingDivergedError,
)
from mezo_ckpt.models.base import LoadedBase, verify_base
from mezo_ckpt.trainer.config import ALIASES, TrainConfig
from mezo_ckpt.trainer.model import build_header, identity_of
from mezo_ckpt.trainer.params import decay_params, select_trainable
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trainer.resume import locate, paths_for
from mezo_ckpt.trainer.step import DIVERGED_AFTER, MezoStep, StepEstimate, take_step
from mezo_ckpt.trainer.tasks import LossTerms
from mezo_ckpt.trajectory import Evaluation, TrajectoryWriter, compact
from mezo_ckpt.trajectory.header import MAX_STEPS, Header
from mezo_ckpt.trajectory.journal import rewrite_journal
from mezo_ckpt.util.fsutil import check_output, exclusive_lock, os_errors, staged_file

#: The MeZO settings a loop can pass (the names and meanings of ``mezo-ckpt train``).
SETTINGS = (
    "schedule",
    "warmup_steps",
    "min_lr_ratio",
    "weight_decay",
    "no_decay",
    "n_directions",
    "estimator",
    "momentum",
    "momentum_window",
    "z",
    "rounding",
    "trainable",
    "frozen",
    "record_losses",
)
#: Settings that may differ on resume (they change nothing in the file's meaning).
RESUMABLE = ("fsync",)
#: Names the header's ``config`` marks a user loop's file with.
LOOP = "mezo_ckpt.MeZO"


def _unknown(name: str) -> ConfigError:
    known = ("lr", "eps", "seed", "total_steps", *SETTINGS, *RESUMABLE)
    guess = [ALIASES[name]] if name in ALIASES else difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    return ConfigError(f"MeZO(): unknown setting {name!r}{hint} (settings: {', '.join(known)})")


def as_loss(value: Any) -> float:
    """The closure's loss as a float: a number or a one-element real tensor.

    Raises:
        DataError: anything else (a batch of losses, a string, None, a meta or complex
            tensor, a number beyond float range).
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise DataError(
                f"the closure returned a tensor of shape {tuple(value.shape)}: return one "
                "scalar loss (e.g. loss.mean())"
            )
        if value.is_meta or value.is_complex():
            raise DataError(
                f"the closure returned a {'meta' if value.is_meta else 'complex'} tensor: "
                "return a real loss with a value"
            )
        return float(value.detach().reshape(()).item())
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_np_number(value):
        raise DataError(
            f"the closure must return the loss (a scalar tensor or a float), not "
            f"{type(value).__name__}"
        )
    try:
        return float(value)
    except (OverflowError, TypeError, ValueError):
        raise DataError(f"the closure returned {str(value)[:40]}, beyond a float's range") from None


def _is_np_number(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (np.floating, np.integer)) and not isinstance(value, np.bool_)


class MeZO:
    """MeZO (zeroth-order SGD) over ``model``, writing a replayable trajectory.

    Args:
        model: any ``torch.nn.Module`` in its initial state (one parameter dtype).
        lr: learning rate (peak of the schedule).
        eps: perturbation scale.
        output: the trajectory file (its journal ``output.partial`` while running).
        seed: run seed (the directions).
        total_steps: the loop's length (needed by the linear and cosine schedules); None:
            open-ended, the file records the steps taken when it is closed.
        resume: continue the run in ``output`` (True), or continue it if it exists and
            start it otherwise ("auto"); ``model`` must be the initial model again.
        resume_from: continue from this trajectory instead (a checkpoint's copy of the
            run: what ``output``'s journal holds beyond it is dropped); ``output`` is only
            written when the run is sealed.
        overwrite: replace an existing ``output`` (and journal) instead of refusing.
        tokenizer: a Hugging Face model's tokenizer, pinned in the header with the base.
        **settings: ``estimator``, ``n_directions``, ``momentum``, ``momentum_window``,
            ``z``, ``weight_decay``, ``no_decay``, ``rounding``, ``trainable``,
            ``frozen``, ``schedule``, ``warmup_steps``, ``min_lr_ratio``,
            ``record_losses``, ``fsync``: as ``mezo-ckpt train`` (see its ``--help``).

    Raises:
        ConfigError: a setting is invalid or unknown; a resumed run's settings differ.
        OutputExistsError: ``output`` exists (pass ``resume=True`` or ``overwrite=True``).
        RunLockedError: another process is writing ``output``.
        BaseMismatchError: resuming onto a model that is not the run's initial model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lr: float,
        eps: float = 1e-3,
        output: str | Path = "trajectory.zst",
        seed: int = 0,
        total_steps: int | None = None,
        resume: bool | str = False,
        overwrite: bool = False,
        tokenizer: Any = None,
        resume_from: str | Path | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"MeZO needs a torch.nn.Module, not {type(model).__name__}")
        for name in settings:
            if name not in SETTINGS and name not in RESUMABLE:
                raise _unknown(name)
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ConfigError(f"MeZO(): total_steps={total_steps!r}: a positive integer or None")
        if resume not in (True, False, "auto"):
            raise ConfigError(f"MeZO(): resume={resume!r}: use True, False or 'auto'")
        self.cfg = TrainConfig(
            lr=lr, eps=eps, seed=seed, steps=total_steps or 1, output=str(output), **settings
        )
        if total_steps is None and self.cfg.schedule != "constant":
            raise ConfigError(
                f"MeZO(): the {self.cfg.schedule} schedule needs total_steps (the length of "
                "the decay)"
            )
        self.model = model
        self.total_steps = total_steps
        self.out, self.journal = paths_for(output)
        self.last: StepEstimate | None = None
        self.evaluations: list[Evaluation] = []
        self.checkpoints: dict[int, str] = {}
        self._bad = 0
        self._busy = False  # inside step(): the closure may not call back in
        self._fresh = False
        self._closed = False
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(exclusive_lock(self.out, "training into"))
            if resume == "auto":
                resume = self.out.exists() or self.journal.exists()
            model.eval()
            self.selection = _selection(model, self.cfg)
            self.params = dict(canonical_parameters(model))
            if resume_from is not None:
                self._resume(Path(resume_from))
            elif resume:
                self._resume(None)
            else:
                self._start(tokenizer, overwrite)
            perturber = Perturber(
                model, self.header.trainable, self.cfg.seed, self.cfg.z, self.cfg.eps
            )
            self.stepper = MezoStep.from_config(
                self.cfg,
                self.params,
                perturber,
                UpdateSpec.from_header(self.header),
                self._measure,
            )
            if self.writer.num_steps:  # momentum terms need the recorded steps
                self.stepper.remember(self._resumed.records)
        except BaseException:
            self._abandon()
            raise

    # ------------------------------------------------------------------ opening
    def _config(self) -> dict[str, Any]:
        cfg = self.cfg
        keep = {k: getattr(cfg, k) for k in ("lr", "eps", "seed", *SETTINGS)}
        return {**keep, "total_steps": self.total_steps, "loop": LOOP, "world": 1}

    def _start(self, tokenizer: Any, overwrite: bool) -> None:
        for p, what in ((self.out, "a trajectory"), (self.journal, "the journal of a run")):
            if p.is_dir():
                raise OutputError(f"output {p} is a folder: name the trajectory file to write")
            if p.exists() and not overwrite:
                raise OutputExistsError(
                    f"{p} exists ({what}): continue it with MeZO(..., resume=True), or pass "
                    "overwrite=True to start over"
                )
        check_output(self.out, kind="file", overwrite=overwrite, flag="output")
        trainable = list(self.selection.trainable)
        decay = decay_params(self.params, trainable, self.cfg.weight_decay, self.cfg.no_decay)
        try:
            identity = identity_of(
                LoadedBase(self.model, "local", folder=None), self.model, tokenizer, trainable
            )
        except ValueError as e:  # mixed dtypes
            raise ConfigError(f"MeZO(): {e}; cast the model to one dtype first") from None
        header = build_header(self.cfg, identity, trainable, decay, self._config(), None)
        self.header = header.with_(
            total_steps=self.total_steps or MAX_STEPS,
            optimizer=_informational(header),
        )
        self.writer = TrajectoryWriter.create(self.journal, self.header, fsync=self.cfg.fsync)
        self._fresh = True

    def _resume(self, source: Path | None) -> None:
        """Continue the run of ``output`` (its journal, else its sealed file) or of
        ``source``: every check and the catch-up run on the file as read, before the
        journal is written; ``output`` itself is never touched here."""
        from mezo_ckpt.rebuild.inplace import catch_up
        from mezo_ckpt.trajectory.codec import parse_trajectory, read_trajectory_bytes

        src = source if source is not None else locate(self.out)[2]
        data = read_trajectory_bytes(src)  # read once: what is checked is what is copied
        traj = parse_trajectory(data, allow_truncated_tail=src == self.journal)
        h = traj.header
        self._check_resumable(h, src)
        if self.total_steps is not None and self.total_steps < traj.num_steps:
            raise ConfigError(
                f"cannot resume {src}: total_steps={self.total_steps} but the run already "
                f"recorded {traj.num_steps} steps"
            )
        try:
            verify_base(h, self.model)
        except BaseMismatchError as e:
            raise BaseMismatchError(
                f"cannot resume {src}: MeZO(resume=True) takes the model in its initial "
                "state (as the run started) and replays the recorded steps onto it; this "
                "model is not that state",
                e.differences,
            ) from None
        if list(h.trainable) != list(self.selection.trainable):
            raise ConfigError(f"cannot resume {src}: the trainable set differs from the run's")
        catch_up(traj, self.params, traj.num_steps)  # checks each recorded fingerprint
        if src != self.journal:  # a sealed file or a checkpoint: journal it again
            with staged_file(self.journal) as tmp, os_errors(self.journal, "write"):
                tmp.write_bytes(data)
        writer, traj = TrajectoryWriter.open_for_resume(self.journal, fsync=self.cfg.fsync)
        want = self.total_steps or MAX_STEPS
        if traj.header.total_steps != want:
            writer.close()
            writer, traj = rewrite_journal(
                self.journal, traj, traj.header.with_(total_steps=want), fsync=self.cfg.fsync
            )
        self.writer, self.header, self._resumed = writer, traj.header, traj
        self.evaluations = list(traj.evaluations)
        self.checkpoints = dict(traj.checkpoints)

    def _check_resumable(self, h: Header, src: Path) -> None:
        stored = dict(h.config)
        if stored.get("loop") != LOOP:
            raise ConfigError(
                f"cannot resume {src} with MeZO(): it was written by `mezo-ckpt train` "
                f"(continue it with: mezo-ckpt train --resume {self.out})"
            )
        now = self._config()
        for key in ("lr", "eps", "seed", *SETTINGS):
            if stored.get(key) != now[key]:
                raise ConfigError(
                    f"cannot resume {src}: {key} cannot change (the run used "
                    f"{key}={stored.get(key)!r}, now {now[key]!r}); pass the same settings, "
                    "or start a new run in another output"
                )
        was = stored.get("total_steps")
        if was != self.total_steps and self.cfg.schedule != "constant":
            raise ConfigError(
                f"cannot resume {src}: its {self.cfg.schedule} schedule depends on "
                f"total_steps (the run used {was}, now {self.total_steps})"
            )
        if h.records.history != self.cfg.history_window:
            raise ConfigError(f"cannot resume {src}: its records' momentum window differs")

    # ------------------------------------------------------------------ stepping
    @property
    def steps_done(self) -> int:
        """Steps recorded so far (the index of the next step)."""
        return self.writer.num_steps

    @property
    def forwards_per_step(self) -> int:
        """Closure calls per step: 2n for SPSA, n + 1 for the one-sided estimators."""
        return self.stepper.forwards_per_step

    def lr_at(self, step: int) -> float:
        """The learning rate the schedule gives step ``step``."""
        return self.cfg.lr_at(step)

    def _measure(self, closure: Callable[[], Any]) -> LossTerms:
        return LossTerms(as_loss(closure()), 1, 0.0)

    def _check_open(self) -> None:
        if self._closed:
            raise OutputError(f"this MeZO optimizer is closed ({self.out} is sealed)")

    def _not_inside(self, what: str) -> None:
        if self._busy:
            raise ConfigError(
                f"MeZO.{what}() was called from inside the step's closure: the closure only "
                "runs forwards and returns the loss; step and record after it returns"
            )

    def step(self, closure: Callable[[], Any], *, lr: float | None = None) -> float:
        """One MeZO step: ``closure`` (forwards only, returning the loss) is called
        :attr:`forwards_per_step` times under the step's perturbations; the record is
        written, then the weights move. Returns the mean of the measured losses.

        Args:
            lr: this step's learning rate (default: the schedule's; a Trainer passes its
                scheduler's). The coefficient the step applies is stored, so replay never
                needs the schedule.

        Raises:
            DataError: the closure returned something that is not one loss.
            TrainingDivergedError: the last 3 steps had non-finite losses (the file is
                sealed first, replayable).
            OutputError: the journal could not be written (nothing of the step applied).
        """
        if closure is None or not callable(closure):
            raise TypeError("MeZO.step needs a closure that runs the forwards and returns the loss")
        self._check_open()
        self._not_inside("step")
        at = self.steps_done
        if at >= self.header.total_steps:
            raise ConfigError(
                f"all {self.header.total_steps} steps of this run are done (total_steps); "
                "close it, or start it with a larger total_steps"
            )
        rate = self.cfg.lr_at(at) if lr is None else float(lr)
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(f"MeZO.step(lr={lr!r}): the learning rate must be finite and >= 0")
        self.model.eval()
        self._busy = True
        try:
            est = take_step(
                self.stepper, self.writer, at, closure, rate, with_losses=self.cfg.record_losses
            )
        except OutputError as e:
            raise OutputError(
                f"{e}. The journal {self.journal} keeps the {at} steps recorded before; free "
                "some space and continue with MeZO(..., resume=True)"
            ) from e
        finally:
            self._busy = False
        self.last = est
        self._bad = self._bad + 1 if est.skipped else 0
        if self._bad >= DIVERGED_AFTER:
            self.close()
            raise TrainingDivergedError(
                f"training diverged: the last {DIVERGED_AFTER} steps had non-finite losses "
                f"(lr={rate}); {self.out} holds the {self.steps_done} steps so far "
                "(replayable). Start again with a smaller lr"
            )
        return est.loss

    # ------------------------------------------------------------------ records
    def checkpoint(self) -> str:
        """Record the fingerprint of the trained tensors now (once per step): a replay to
        this step then verifies itself. Returns the sha256."""
        self._check_open()
        self._not_inside("checkpoint")
        at = self.steps_done
        if at not in self.checkpoints:
            digest = tensors_sha256(self.params, self.header.trainable)
            self.writer.append_checkpoint(at, digest)
            self.checkpoints[at] = digest
        return self.checkpoints[at]

    def record_eval(
        self, metrics: Mapping[str, float], *, split: str = "dev", step: int | None = None
    ) -> Evaluation:
        """Record an evaluation of the current weights (with their fingerprint), e.g.
        ``opt.record_eval({"accuracy": 0.91})``; ``mezo-ckpt replay --step best`` and
        ``info`` use them.

        Raises:
            DataError: a metric is not a finite number.
            ValueError: ``step`` is given and is not :attr:`steps_done`.
        """
        self._check_open()
        self._not_inside("record_eval")
        at = self.steps_done
        if step is not None and step != at:
            raise ValueError(
                f"record_eval(step={step}): the weights are at step {at}; evaluate and record "
                "right after the step you measured"
            )
        if not isinstance(split, str) or not split.strip():
            raise DataError("record_eval(split=...): a non-empty name such as 'dev'")
        if not isinstance(metrics, Mapping) or not metrics:
            raise DataError("record_eval(metrics): a mapping of names to numbers")
        clean: dict[str, float] = {}
        for k, v in metrics.items():
            try:
                f = as_loss(v)
            except DataError:
                f = math.nan
            if not isinstance(k, str) or not math.isfinite(f):
                raise DataError(f"record_eval: metric {k!r}={v!r} is not a finite number")
            clean[k] = f
        try:
            from mezo_ckpt.trajectory.codec import eval_frame

            eval_frame(Evaluation(at, split, clean))  # what a reader would refuse, refused
        except ValueError as err:
            raise DataError(f"record_eval: {err}") from None
        self.checkpoint()
        e = self.writer.append_evaluation(Evaluation(at, split, clean))
        self.evaluations.append(e)
        return e

    def snapshot(self, path: str | Path) -> Path:
        """The trajectory so far, fingerprinted and sealed at ``path`` (a checkpoint of a
        run that goes on: it replays to :attr:`steps_done`)."""
        self._check_open()
        self.checkpoint()
        compact(self.journal, path)
        return Path(path)

    # ------------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> Path:
        """Fingerprint the weights, seal the file and release the run's lock. Returns the
        trajectory's path. Closing twice does nothing more."""
        if self._closed:
            return self.out
        try:
            at = self.steps_done
            self.checkpoint()
            if self.total_steps is None and self.header.total_steps != at:
                traj = _read_journal(self.journal)
                self.writer.close()
                self.writer, traj = rewrite_journal(
                    self.journal, traj, self.header.with_(total_steps=at), fsync=self.cfg.fsync
                )
                self.header = traj.header
            self.writer.close()
            compact(self.journal, self.out)
            with os_errors(self.journal, "remove the finished journal"):
                self.journal.unlink()
        finally:
            self._closed = True
            self.writer.close()
            self._stack.close()
        return self.out

    def _abandon(self) -> None:
        """Release everything after a failure; a fresh run with no step leaves nothing."""
        self._closed = True
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
            if self._fresh and writer.num_steps == 0:
                with contextlib.suppress(OSError):
                    self.journal.unlink()
        self._stack.close()

    def __enter__(self) -> MeZO:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._closed:
            return
        if exc_type is not None and self.steps_done == 0:
            self._abandon()
            return
        self.close()  # a failed loop's steps so far: sealed, replayable and resumable

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step {self.steps_done}"
        return f"MeZO(lr={self.cfg.lr}, eps={self.cfg.eps}, output={str(self.out)!r}, {state})"


def _selection(model: torch.nn.Module, cfg: TrainConfig):
    """The trainable set: the ``trainable``/``frozen`` globs, minus the parameters the
    model marks ``requires_grad=False`` when it marks some (a model frozen whole, as for
    inference, trains by the globs alone)."""
    from mezo_ckpt.trainer.params import parameter_names

    flags = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
    frozen = list(cfg.frozen)
    if any(flags.values()) and not all(flags.values()):
        frozen += [
            canon
            for canon, names in parameter_names(model).items()
            if not any(flags[n] for n in names)
        ]
    return select_trainable(model, cfg.trainable, frozen)


def _informational(header: Header):
    """The optimizer description of a user loop: no batch size or built-in objective."""
    import dataclasses

    return dataclasses.replace(header.optimizer, objective="closure", batch_size=None)


def _read_journal(path: Path):
    from mezo_ckpt.trajectory import read_trajectory

    return read_trajectory(path, allow_truncated_tail=True)
