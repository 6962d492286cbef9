"""The MeZO training engine: perturbed forwards, SPSA estimates, trajectory writing.

``train(...)`` runs a :class:`~mezo_ckpt.trainer.recipe.MezoRecipe` (setup, loop, finish)
from a :class:`~mezo_ckpt.trainer.config.TrainConfig` or keyword settings.
"""

from __future__ import annotations

from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.outputs import TrainResult
from mezo_ckpt.trainer.recipe import MezoRecipe
from mezo_ckpt.trainer.run import train

__all__ = ["MezoRecipe", "TrainConfig", "TrainResult", "train"]
