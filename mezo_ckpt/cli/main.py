"""Command group and shared helpers for the `mezo-ckpt` CLI."""

from __future__ import annotations

import sys

import click

from mezo_ckpt import __version__
from mezo_ckpt.errors import MezoCkptError


def parse_step(value: str | None) -> int | str | None:
    """--step value: an integer, 'best', 'last', or None."""
    if value is None or value in ("best", "last"):
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("use an integer, 'best' or 'last'", param_hint="--step") from None


class Group(click.Group):
    """Turns our typed errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MezoCkptError as e:
            name = type(e).__name__
            click.echo(f"Error ({name}): {e}", err=True)
            sys.exit(2)


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="mezo-ckpt")
def main() -> None:
    """Fine-tune language models with MeZO and share them as tiny, bit-exact trajectories.

    \b
    A MeZO fine-tune is fully determined by the base weights plus, per step, a seed
    and one scalar. `train` writes those into a trajectory file of a few hundred KB;
    `replay` rebuilds the fine-tuned weights from it bit for bit.

    \b
    Quick start (offline, embedded SmolLM2-135M + movie-review sentiment):
      mezo-ckpt train                       # writes trajectory.zst
      mezo-ckpt info trajectory.zst         # what is inside
      mezo-ckpt replay trajectory.zst -o tuned/   # from_pretrained-ready folder
    """


def _register() -> None:
    from mezo_ckpt.cli import info, replay

    main.add_command(replay.replay)
    main.add_command(info.info)
    try:
        from mezo_ckpt.cli import train
    except ImportError:  # pragma: no cover - during development
        pass
    else:
        main.add_command(train.train)
    try:
        from mezo_ckpt.cli import hub
    except ImportError:  # pragma: no cover
        pass
    else:
        main.add_command(hub.push)
        main.add_command(hub.pull)


_register()
