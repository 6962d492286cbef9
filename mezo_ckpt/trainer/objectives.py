"""What the forward passes measure: the objective of a MeZO run.

Built in: ``ce`` (MeZO's loss, every task), ``accuracy`` (classification and multiple
choice), ``f1`` and ``exact_match`` (generation, on greedy generations under the current
perturbation). A user objective is ``python:MODULE:FUNCTION``:

.. code-block:: python

    # my_module.py, importable from the current folder or the Python path
    def score(examples: list[dict], outputs: list) -> list[float]:
        '''One score per example, higher is better.

        outputs[i] is what the model does with examples[i] under the current
        perturbation: the predicted label (classification), the predicted option index
        (multiple choice), or the greedy generation (generation tasks).'''
        return [float(o == ex["label"]) for ex, o in zip(examples, outputs)]

MeZO minimises minus the mean score. The function's qualified name and the sha256 of
its source file are recorded in the trajectory header (provenance); the file never
stores code, and a resumed run must name the function again on the command line.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.trainer.data import Split
from mezo_ckpt.trainer.dist import Dist
from mezo_ckpt.trainer.perturb import Perturber
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

PREFIX = "python:"


@dataclass(frozen=True)
class UserObjective:
    """A user scoring function and its provenance."""

    spec: str
    fn: Callable[[list[dict], list[Any]], Any]
    qualname: str
    source_sha256: str

    def provenance(self) -> dict[str, str]:
        return {"function": self.qualname, "source_sha256": self.source_sha256}

    def scores(self, examples: list[dict], outputs: list[Any]) -> list[float]:
        """Call the function and check what it returns.

        Raises:
            DataError: not one finite number per example.
        """
        try:
            got = self.fn(examples, outputs)
        except SystemExit as e:  # exit() in the user's code must not end the run silently
            raise DataError(
                f"objective {self.qualname} called exit({e.code!r}); it must return scores"
            ) from None
        except Exception as e:  # the user's code: report, do not hide
            raise DataError(f"objective {self.qualname} raised {type(e).__name__}: {e}") from e
        if isinstance(got, (str, bytes, Mapping)) or not hasattr(got, "__len__"):
            raise DataError(
                f"objective {self.qualname} must return a list of numbers (one per example), "
                f"got {type(got).__name__}"
            )
        try:
            vals = [float(v) for v in got]
        except (TypeError, ValueError, OverflowError):
            raise DataError(
                f"objective {self.qualname} must return one number per example (finite), "
                f"got a {type(got).__name__} holding something else"
            ) from None
        if len(vals) != len(examples):
            raise DataError(
                f"objective {self.qualname} returned {len(vals)} scores for {len(examples)} "
                "examples"
            )
        if not all(math.isfinite(v) for v in vals):
            raise DataError(f"objective {self.qualname} returned a non-finite score")
        return vals


def load_user_objective(spec: str) -> UserObjective:
    """Import ``python:MODULE:FUNCTION`` (the current folder is importable).

    Raises:
        ConfigError: malformed spec, module or function not found, not callable.
    """
    if not spec.startswith(PREFIX) or spec.count(":") != 2:
        raise ConfigError(f"objective {spec!r}: use python:MODULE:FUNCTION")
    _, module_name, fn_name = spec.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # ImportError, or the module's own error or exit
        raise ConfigError(
            f"objective {spec!r}: cannot import {module_name}: {type(e).__name__}: {e}"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ConfigError(f"objective {spec!r}: {module_name} has no function {fn_name}")
    if not inspect.isfunction(fn):  # builtins, classes, objects: no source to record
        raise ConfigError(
            f"objective {spec!r}: {module_name}.{fn_name} is a {type(fn).__name__}, not a "
            "Python function `def f(examples, outputs)` whose source can be recorded"
        )
    try:
        path = inspect.getsourcefile(fn) or inspect.getfile(module)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        digest = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    return UserObjective(spec, fn, f"{module_name}.{fn_name}", digest)


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

    def bias_rows(self, head: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Entries ``ids`` of the output layer's bias as the current forward sees them."""
        bias = head.bias.view(-1, 1)
        p = self.perturber
        if p is None:
            return bias.detach()[ids.to(bias.device)].view(-1)
        return p.rows(bias, p.name_of(head, "bias"), ids).view(-1)

    def scores(self, enc: Encoded) -> torch.Tensor:
        """Candidate scores of a batch under the current perturbation."""
        return score_candidates(self.model, enc, self.rows, self.bias_rows)

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
                else predictions(self.scores(enc), enc)
            )
            scores = self.user.scores(enc.examples, outputs)
            return LossTerms(-float(sum(scores)), n, float(sum(scores)))
        return loss_terms(self.scores(enc), enc, self.objective)

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
        order = sorted(mine, key=lambda i: len(self.task.text(split.examples[i])))
        ordered = [split.examples[i] for i in order]
        with torch.inference_mode():
            for lo in range(0, len(ordered), batch_size):
                enc = self.task.encode(self.tokenizer, ordered[lo : lo + batch_size])
                truncated += enc.truncated
                total = total + loss_terms(self.scores(enc), enc, "ce")
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


def make_step(
    cfg: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    task: PromptTask,
    user: UserObjective | None,
    trainable: list[str],
    params: dict[str, torch.Tensor],
    header: Any,
    dist: Dist,
    reduce: Any = None,
) -> tuple[Objective, Any]:
    """(what the forwards measure, the MeZO step) of a run: perturbed forwards of the
    trainable tensors, the configured objective, the estimator and update of ``cfg``."""
    from mezo_ckpt.core.update import UpdateSpec
    from mezo_ckpt.trainer.step import MezoStep

    perturber = Perturber(model, trainable, cfg.seed, cfg.z, cfg.eps)
    objective = Objective(task, cfg.objective, model, tokenizer, perturber, user, dist)
    step = MezoStep.from_config(
        cfg,
        params,
        perturber,
        UpdateSpec.from_header(header),
        objective,
        reduce=reduce or dist.reduce,
        owns=dist.owns,
    )
    return objective, step
