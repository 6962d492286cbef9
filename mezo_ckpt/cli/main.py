"""The `mezo-ckpt` command group (the commands are added in :mod:`mezo_ckpt.cli`)."""

from __future__ import annotations

import click

from mezo_ckpt import __version__
from mezo_ckpt.cli.common import Group


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  mezo-ckpt train                          # offline default: SmolLM2-135M + sentiment
  mezo-ckpt info trajectory.zst            # what is inside (--plot curve.png)
  mezo-ckpt replay trajectory.zst -o tuned/
  mezo-ckpt train --resume trajectory.zst --steps 200
  mezo-ckpt diff trajectory.zst            # how much each layer moved
  mezo-ckpt sweep --grid lr=1e-6,1e-5 --seeds 13,21,42 -o grid   # mean (std) over seeds
  mezo-ckpt push trajectory.zst me/my-finetune; mezo-ckpt pull me/my-finetune -o tuned/
""",
)
@click.version_option(__version__, prog_name="mezo-ckpt")
def main() -> None:
    """Fine-tune language models with MeZO and share them as tiny, bit-exact trajectories.

    \b
    A MeZO fine-tune is fully determined by the base weights plus, per step, a seed
    and one scalar. `train` writes those into a trajectory file of a few KB;
    `replay` rebuilds the fine-tuned weights from it bit for bit.

    Each command's --help explains its options and ends with examples.
    """
