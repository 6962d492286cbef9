"""The MeZO training engine: perturbed forwards, SPSA estimates, trajectory writing."""

from __future__ import annotations

from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.trainer.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
