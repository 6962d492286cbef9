"""The MeZO training engine: perturbed forwards, SPSA estimates, trajectory writing.

``train(...)`` runs a :class:`~mezo_ckpt.trainer.recipe.MezoRecipe` (setup, loop, finish)
from a :class:`~mezo_ckpt.trainer.config.TrainConfig` or keyword settings;
:class:`~mezo_ckpt.trainer.optimizer.MeZO` is the same step for a loop of your own, and
:class:`~mezo_ckpt.trainer.hf_trainer.MezoTrainer` the same inside ``transformers.Trainer``.
"""

from __future__ import annotations

from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.optimizer import MeZO
from mezo_ckpt.trainer.outputs import TrainResult
from mezo_ckpt.trainer.recipe import MezoRecipe
from mezo_ckpt.trainer.run import train

__all__ = ["MeZO", "MezoRecipe", "TrainConfig", "TrainResult", "train"]
