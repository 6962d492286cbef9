"""mezo-ckpt: MeZO fine-tuning with tiny, bit-exact, replayable trajectory files.

``mezo_ckpt.load(...)`` rebuilds a fine-tune (Hub repo id, trajectory file or folder) as
``(model, tokenizer)`` through the verified replay cache (:func:`mezo_ckpt.hub.fetch.load`);
``mezo_ckpt.replay(trajectory, base)`` rebuilds it in memory onto a base you name or hold
(:func:`mezo_ckpt.api.replay_model_from`); ``mezo_ckpt.train(...)`` runs MeZO
(:func:`mezo_ckpt.trainer.train`); ``mezo_ckpt.MeZO(model, lr=...)`` is MeZO as an
optimizer for your own loop (:class:`mezo_ckpt.trainer.optimizer.MeZO`) and
``mezo_ckpt.MezoTrainer`` a ``transformers.Trainer`` that trains with it
(:class:`mezo_ckpt.trainer.hf_trainer.MezoTrainer`; ``MezoSFTTrainer`` the same for TRL's
``SFTTrainer``). They are imported on first use, so
``import mezo_ckpt`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

from mezo_ckpt.util import moved as _moved  # noqa: E402 - 0.2 module paths, for one release

_moved.install()

__all__ = ["MeZO", "MezoSFTTrainer", "MezoTrainer", "__version__", "load", "replay", "train"]

if TYPE_CHECKING:  # pragma: no cover
    from mezo_ckpt.api import replay_model_from as replay
    from mezo_ckpt.hub.fetch import load
    from mezo_ckpt.trainer import train
    from mezo_ckpt.trainer.hf_trainer import MezoTrainer
    from mezo_ckpt.trainer.optimizer import MeZO


def __dir__() -> list[str]:
    return sorted([*globals(), "MeZO", "MezoSFTTrainer", "MezoTrainer", "load", "replay", "train"])


def __getattr__(name: str) -> Any:
    if name == "load":
        from mezo_ckpt.hub.fetch import load

        return load
    if name == "replay":
        from mezo_ckpt.api import replay_model_from

        return replay_model_from
    if name == "train":
        from mezo_ckpt.trainer import train

        return train
    if name == "MeZO":
        from mezo_ckpt.trainer.optimizer import MeZO

        return MeZO
    if name in ("MezoTrainer", "MezoSFTTrainer"):
        from mezo_ckpt.trainer import hf_trainer

        return getattr(hf_trainer, name)  # MezoSFTTrainer needs TRL (mezo-ckpt[trl])
    raise AttributeError(f"module 'mezo_ckpt' has no attribute {name!r}")
