"""`mezo-ckpt diff` and `mezo-ckpt apply-delta`: compare fine-tunes, apply exact deltas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from mezo_ckpt.cli.common import parse_step
from mezo_ckpt.util.text import clean


def _num(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.4g}"


@click.command(
    epilog="""\b
Examples:
  mezo-ckpt diff run.zst                        # base (step 0) -> last step
  mezo-ckpt diff run.zst --from 25 --to best     # between two steps of one run
  mezo-ckpt diff a.zst b.zst                     # two runs on the same base
  mezo-ckpt diff run.zst --json | jq '.layers'
"""
)
@click.argument("a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--from",
    "step_a",
    metavar="N|best|last",
    default=None,
    help="Step of A (default: 0, the base, for one trajectory; the last step for two).",
)
@click.option(
    "--to",
    "step_b",
    metavar="N|best|last",
    default=None,
    help="Step of B (or of A when only A is given). Default: the last step.",
)
@click.option(
    "--base",
    "base_spec",
    metavar="PATH|REPO",
    default=None,
    help="Base model, for trajectories trained from a local folder (or the initial "
    "weights as one .safetensors file, for a mezo_ckpt.MeZO run over a plain module).",
)
@click.option(
    "--top", type=int, default=10, show_default=True, help="Tensors listed, by relative change."
)
@click.option("--json", "as_json", is_flag=True, help="Every tensor and layer as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def diff(
    a: Path,
    b: Path | None,
    step_a: str | None,
    step_b: str | None,
    base_spec: str | None,
    top: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """How much a fine-tune changed the weights: per tensor and per layer, the norm of the
    change, the change relative to the weights' norm, and the largest change of one
    element. Between two steps of trajectory A, or between A and B (same base).

    Tensors are replayed one at a time: memory stays at one model plus two tensors.
    """
    from mezo_ckpt.api import diff_trajectories

    r = diff_trajectories(
        a,
        b,
        step_a=parse_step(step_a, "--from"),
        step_b=parse_step(step_b, "--to"),
        base=base_spec,
        progress=not (quiet or as_json),
    )
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    t = r["total"]
    click.echo(
        f"{clean(r['a']['trajectory'])}@{r['a']['step']} -> "
        f"{clean(r['b']['trajectory'])}@{r['b']['step']}: {t['tensors']} tensors, "
        f"||change|| {_num(t['norm'])} ({_num(100 * t['relative'])}% of the weights' "
        f"norm), max |change| {_num(t['max_abs'])}"
    )
    click.echo(f"\n{'layer':<40} {'norm':>10} {'relative':>10} {'max abs':>10}")
    for name, row in r["layers"].items():  # in layer order (layers.3 before layers.20)
        click.echo(
            f"{clean(name)[:40]:<40} {_num(row['norm']):>10} "
            f"{_num(row['relative']):>10} {_num(row['max_abs']):>10}"
        )
    ranked = sorted(r["tensors"].items(), key=lambda kv: -kv[1]["relative"])[:top]
    click.echo(f"\n{'tensor (largest relative change first)':<56} {'relative':>10} {'max abs':>10}")
    for name, row in ranked:
        click.echo(f"{clean(name)[:56]:<56} {_num(row['relative']):>10} {_num(row['max_abs']):>10}")


@click.command(
    "apply-delta",
    epilog="""\b
Examples:
  mezo-ckpt replay run.zst --format delta -o delta.safetensors
  mezo-ckpt apply-delta delta.safetensors -o tuned/
  mezo-ckpt apply-delta delta.safetensors --base ./my-local-base/ -o tuned/
\b
Python (the same rule):
  from mezo_ckpt.models.export import apply_delta, load_delta
  tensors, _ = load_delta("delta.safetensors"); apply_delta(model, tensors)
""",
)
@click.argument("delta", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write (from_pretrained-ready).",
)
@click.option(
    "--base",
    "base_spec",
    metavar="PATH|REPO",
    default=None,
    help="Base model, for deltas of trajectories trained from a local folder.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def apply_delta(
    delta: Path, output: Path, base_spec: str | None, overwrite: bool, as_json: bool, quiet: bool
) -> None:
    """Rebuild fine-tuned weights from the base and DELTA (written by `replay --format
    delta`), bit for bit: the result is checked against the fingerprint the delta
    records."""
    from mezo_ckpt.api import apply_delta_file

    r = apply_delta_file(
        delta, output, base=base_spec, overwrite=overwrite, progress=not (quiet or as_json)
    )
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(
        f"Applied {r['tensors']} tensors of {clean(r['delta'])} (step {r['step']}); "
        f"{r['verification']}."
    )
    click.echo(f"Base checked: {clean('; '.join(r['checked']))}.")
    click.echo(f"Wrote hf -> {clean(r['output'])}")
