"""`mezo-ckpt replay`: rebuild fine-tuned weights from a trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mezo_ckpt.cli.main import parse_step


@click.command()
@click.argument("trajectory", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--base",
    "base_spec",
    metavar="PATH|REPO",
    help="Base model: a local folder or a Hub repo id. Default: the base recorded in "
    "the trajectory (embedded default or Hub repo at its pinned commit).",
)
@click.option(
    "--step",
    "step",
    metavar="N|best|last",
    default=None,
    help="Reconstruct the weights after step N (0 = the base), at the best evaluated "
    "step, or at the last recorded step (default).",
)
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
    type=click.Choice(["hf", "safetensors", "delta"]),
    default="hf",
    show_default=True,
    help="hf: a folder AutoModelForCausalLM.from_pretrained loads; safetensors: one "
    "file of all weights; delta: trained minus base (fp32) for trained tensors.",
)
@click.option(
    "--skip-base-check",
    is_flag=True,
    help="Replay even if the base's identity differs (the final fingerprint is still "
    "checked, so a wrong base fails there instead).",
)
@click.option("--no-verify", is_flag=True, help="Do not compare with the stored fingerprint.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def replay(
    trajectory: Path,
    base_spec: str | None,
    step: str | None,
    output: Path | None,
    fmt: str,
    skip_base_check: bool,
    no_verify: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """Rebuild the fine-tuned weights from TRAJECTORY, bit for bit.

    Loads the base, checks its identity against the trajectory header before touching a
    weight, re-applies the recorded steps (no forward pass: element-parallel, a few
    seconds for a 135M model), verifies the fingerprint recorded by the trainer, and
    writes the result.

    \b
    Examples:
      mezo-ckpt replay trajectory.zst                     # -> trajectory-step200/
      mezo-ckpt replay trajectory.zst --step best -o best/
      mezo-ckpt replay trajectory.zst --step 50 --format safetensors -o s50.safetensors
      mezo-ckpt replay trajectory.zst --format delta -o delta.safetensors
      mezo-ckpt replay run.zst --base ./my-local-base/    # base trained from a local folder
    """
    from mezo_ckpt.api import replay_to

    result = replay_to(
        trajectory,
        base=base_spec,
        step=parse_step(step),
        output=output,
        fmt=fmt,
        check_base=not skip_base_check,
        verify=not no_verify,
        threads=threads,
        progress=not as_json,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        r = result
        check = "verified against the trainer's fingerprint" if r["verified"] else "not verified"
        click.echo(
            f"Replayed {r['applied_steps']} steps to step {r['step']} "
            f"({r['element_steps'] / 1e9:.2f} G element-steps at "
            f"{r['rate'] / 1e6:.0f} M/s); {check}."
        )
        click.echo(f"Wrote {r['format']} -> {r['output']}")
