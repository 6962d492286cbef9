"""Share fine-tunes on the Hugging Face Hub, and load them back in one line.

A published fine-tune is a Hub model repo holding small files, uploaded in one commit:
the trajectory (a few KB), ``mezo_ckpt.json`` (how to rebuild it: the base repo pinned to
a commit or the embedded GGUF's identity, the base's fingerprints, the trajectory's
sha256) and ``README.md`` (a model card following Hub conventions).

* :mod:`~mezo_ckpt.models.remote`: error mapping, downloads pinned to commits, hashes;
* :mod:`~mezo_ckpt.hub.card`: the model card, rendered from ``card_template.md``;
* :mod:`~mezo_ckpt.hub.publish`: ``push`` and the publication it uploads;
* :mod:`~mezo_ckpt.hub.fetch`: ``pull`` / ``load`` / ``fetch`` and the replay cache.
"""

from __future__ import annotations

from mezo_ckpt.errors import (
    HubAuthError,
    HubError,
    HubRevisionError,
    IntegrityError,
    NotCachedError,
    OutputExistsError,
    PublishedRepoError,
    PushRefusedError,
    RepoNotFoundError,
)
from mezo_ckpt.hub.card import render_card
from mezo_ckpt.hub.fetch import Rebuilt, fetch, load, pull, replay_cache_root
from mezo_ckpt.hub.publish import (
    CARD_FILE,
    META_FILE,
    Publication,
    PushResult,
    build_publication,
    push,
)

__all__ = [
    "CARD_FILE",
    "META_FILE",
    "HubAuthError",
    "HubError",
    "HubRevisionError",
    "IntegrityError",
    "NotCachedError",
    "OutputExistsError",
    "Publication",
    "PublishedRepoError",
    "PushRefusedError",
    "PushResult",
    "Rebuilt",
    "RepoNotFoundError",
    "build_publication",
    "fetch",
    "load",
    "pull",
    "push",
    "render_card",
    "replay_cache_root",
]
