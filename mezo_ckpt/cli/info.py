"""`mezo-ckpt info`: what a trajectory holds."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


@click.command()
@click.argument("trajectory", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def info(trajectory: Path, as_json: bool) -> None:
    """Summarize TRAJECTORY: base, settings, steps, statistics, evaluations, size.

    The file is fully validated on the way (every frame, checksum and record).

    \b
    Examples:
      mezo-ckpt info trajectory.zst
      mezo-ckpt info trajectory.zst --json | jq .evaluations
    """
    from mezo_ckpt.api import summarize

    s = summarize(trajectory)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    b, p, u = s["base"], s["perturbation"], s["update"]
    base = b.get("repo_id") or (b.get("embedded") or {}).get("gguf_file") or "local folder"
    rev = f"@{b['revision'][:12]}" if b.get("revision") else ""
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['steps']}/{s['total_steps']})"
    lines = [
        f"{trajectory}  ({s['bytes']:,} bytes, format {s['format_version']}, "
        f"written by {s['tool']['name']} {s['tool']['version']})",
        f"base        {b['kind']}: {base}{rev}  {b['architecture']} {b['dtype']}, "
        f"{b['num_parameters']:,} params, tied embeddings: {b['tie_word_embeddings']}",
        f"            trainable fingerprint {b['trainable_sha256'][:16]}...  "
        f"({s['trainable_tensors']} trainable tensors)",
        f"steps       {s['steps']} recorded, {state}; {s['skipped_steps']} skipped; "
        f"{_fmt(s['bytes_per_step'])} bytes/step",
        f"perturb     {p['generator']}, z={p['z']}, eps={p['eps']}, seed={p['seed']}, "
        f"directions={p['n_directions']}",
        f"update      {u['arithmetic']}, rounding={u['rounding']}, "
        f"weight_decay={u['weight_decay']}",
        f"optimizer   {json.dumps(s['optimizer'], sort_keys=True)}",
    ]
    c = s["coefficients"]
    if c:
        lines.append(
            f"coef        mean {_fmt(c['mean'])}  std {_fmt(c['std'])}  "
            f"|mean| {_fmt(c['abs_mean'])}  min {_fmt(c['min'])}  max {_fmt(c['max'])}"
        )
    if s["losses"]:
        lo = s["losses"]
        lines.append(
            f"loss        mean {_fmt(lo['mean'])}  min {_fmt(lo['min'])}  max {_fmt(lo['max'])}"
        )
    if s["evaluations"]:
        lines.append("evaluations")
        for e in s["evaluations"]:
            m = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(e["metrics"].items()))
            star = "  <- best" if e["step"] == s["best_step"] and e["split"] == "dev" else ""
            lines.append(f"  step {e['step']:>6}  {e['split']:<5} {m}{star}")
    if s["checkpoints"]:
        lines.append("fingerprints at steps " + ", ".join(s["checkpoints"]))
    click.echo("\n".join(lines))
