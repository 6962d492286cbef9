"""`mezo-ckpt replay`: rebuild fine-tuned weights from a trajectory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mezo_ckpt.api import OUTPUT_KINDS
from mezo_ckpt.cli.common import STEP_HELP, parse_step
from mezo_ckpt.util.text import clean

FORMATS = tuple(OUTPUT_KINDS)


def _si(x: float) -> str:
    """1234567 -> '1.23 M' (k, M, G, T)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


@click.command(
    epilog="""\b
Examples:
  mezo-ckpt replay trajectory.zst                     # -> trajectory-step100/
  mezo-ckpt replay trajectory.zst --step best -o best/
  mezo-ckpt replay trajectory.zst --step 50 --format safetensors -o s50.safetensors
  mezo-ckpt replay trajectory.zst --format delta -o delta.safetensors
  mezo-ckpt apply-delta delta.safetensors -o tuned/   # base + delta, bit for bit
  mezo-ckpt replay run.zst --base ./my-local-base/    # base trained from a local folder
  mezo-ckpt replay run.zst --base init.safetensors --format safetensors -o out.safetensors
"""
)
@click.argument("trajectory", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--base",
    "base_spec",
    metavar="PATH|REPO",
    help="Base model: a local folder or a Hub repo id, or the initial weights as one "
    ".safetensors file (a mezo_ckpt.MeZO run over a plain module; with --format "
    "safetensors). Default: the base recorded in the trajectory (embedded default or Hub "
    "repo at its pinned commit).",
)
@click.option("--step", "step", metavar="N|best|last", default=None, help=STEP_HELP)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write. Default: <trajectory>-step<N>[.safetensors].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="hf",
    show_default=True,
    help="hf: a folder AutoModelForCausalLM.from_pretrained loads (for a LoRA run: the "
    "adapter merged into the base; a prefix run has no merged form); safetensors: one "
    "file under the model's state-dict names (model.load_state_dict(load_file(f)) "
    "works); delta: an exact patch, trained minus base for the trained tensors; peft: "
    "the adapter folder of a LoRA/prefix run (PeftModel.from_pretrained loads it).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option(
    "--ignore-base-mismatch",
    is_flag=True,
    help="Replay even onto a base whose identity differs (loud warning; recorded in the "
    "output's provenance). The stored fingerprint is still checked.",
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Allow a step after the file's last checkpoint (a cut or unsealed file).",
)
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Replay an hf output shard by shard (peak memory: one safetensors shard) instead of "
    "loading the whole base. Default: stream when the base would not fit in half the free "
    "memory.",
)
@click.option("--no-verify", is_flag=True, help="Do not compare with the stored fingerprint.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; only the result lines.")
def replay(
    trajectory: Path,
    base_spec: str | None,
    step: str | None,
    output: Path | None,
    fmt: str,
    overwrite: bool,
    ignore_base_mismatch: bool,
    allow_unverified: bool,
    stream: bool | None,
    no_verify: bool,
    threads: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Rebuild the fine-tuned weights from TRAJECTORY, bit for bit.

    Loads the base and checks its whole identity against the trajectory (every tensor,
    trainable or frozen, the config and the tokenizer files) before touching a weight;
    re-applies the recorded steps (no forward pass: element-parallel, seconds for a 135M
    model); verifies the trainer's fingerprint; writes the result. The output is checked
    before any work: an existing output is kept unless --overwrite, and the trajectory
    and the base are never written over.
    """
    from mezo_ckpt.api import replay_to

    r = replay_to(
        trajectory,
        base=base_spec,
        step=parse_step(step),
        output=output,
        fmt=fmt,
        overwrite=overwrite,
        ignore_base_mismatch=ignore_base_mismatch,
        allow_unverified=allow_unverified,
        verify=not no_verify,
        stream=stream,
        threads=threads,
        progress=not (as_json or quiet) and sys.stderr.isatty(),
    )
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(
        f"Replayed {r['applied_steps']} steps to step {r['step']} "
        f"({_si(r['element_steps'])} element-steps at {_si(r['rate'])}/s); "
        f"{r['verification']}."
    )
    click.echo(f"Base checked: {clean('; '.join(r['checked']))}.")
    if r["base_mismatch"]:
        click.echo(
            "WARNING: the base differs from the trajectory's (--ignore-base-mismatch):", err=True
        )
        for d in r["base_mismatch"]:
            click.echo(f"  - {clean(d)}", err=True)
    click.echo(f"Wrote {r['format']} -> {clean(r['output'])}")
