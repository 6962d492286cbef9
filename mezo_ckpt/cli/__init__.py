"""The `mezo-ckpt` command line: train, sweep, replay, info, push, pull (and friends).

Each command lives in its own module and imports only :mod:`mezo_ckpt.cli.common`; this
package puts them into the group. A command that fails to import is a bug and fails
loudly here, never silently vanishing from ``--help``.
"""

from __future__ import annotations

from mezo_ckpt.cli import delta, hub, info, replay, sweep, train
from mezo_ckpt.cli.main import main

main.add_command(train.train)
main.add_command(replay.replay)
main.add_command(info.info)
main.add_command(hub.push)
main.add_command(hub.pull)
main.add_command(delta.diff)
main.add_command(delta.apply_delta)
main.add_command(sweep.sweep)

__all__ = ["main"]
