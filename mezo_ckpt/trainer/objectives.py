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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mezo_ckpt.errors import ConfigError, DataError

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
        except Exception as e:  # the user's code: report, do not hide
            raise DataError(f"objective {self.qualname} raised {type(e).__name__}: {e}") from e
        try:
            vals = [float(v) for v in got]
        except (TypeError, ValueError):
            raise DataError(
                f"objective {self.qualname} must return one number per example, got "
                f"{type(got).__name__}"
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
    except Exception as e:  # ImportError, or the module's own error
        raise ConfigError(f"objective {spec!r}: cannot import {module_name}: {e}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"objective {spec!r}: {module_name} has no function {fn_name}")
    try:
        path = inspect.getsourcefile(fn) or inspect.getfile(module)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        digest = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    return UserObjective(spec, fn, f"{module_name}.{fn_name}", digest)
