"""`mezo-ckpt info`: what a trajectory holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mezo_ckpt.util.text import clean


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _state(s: dict) -> str:
    if s["state"] == "cut":
        last = s["last_verified_step"]
        return (
            f"CUT: {s['steps']} steps recorded but the last checkpoint covers only "
            f"{'none' if last is None else f'steps 0..{last}'} (the file was cut or its run "
            "killed; resume the run to seal it)"
        )
    if s["state"] == "incomplete":
        return f"INCOMPLETE ({s['steps']}/{s['total_steps']} steps; resumable)"
    return "complete" + (", sealed" if s["bound"] else " (format 1.0: records not bound)")


def _task_lines(config: dict) -> list[str]:
    """The task and data lines (a trainer's header records them in ``config``)."""
    task = config.get("resolved_task")
    data = config.get("data")
    out = []
    if isinstance(task, dict) and isinstance(task.get("template"), str):
        kind = "masked LM, " if task.get("masked_lm") is True else ""
        out.append(f"task        {kind}{task.get('kind')}, template {task['template']!r}")
    if isinstance(data, dict):
        n = data.get("train_examples")
        text = f"{n:,} training examples" if isinstance(n, int) else "training examples"
        k = data.get("k_shot")
        if isinstance(k, dict) and isinstance(k.get("k"), int):
            text += (
                f" (k-shot: {k['k']} per class, data seed {k.get('seed')}; the rows drawn: --json)"
            )
        out.append(f"data        {data.get('source')}: {text}")
    return out


@click.command(
    epilog="""\b
Examples:
  mezo-ckpt info trajectory.zst
  mezo-ckpt info trajectory.zst --json | jq .evaluations
  mezo-ckpt info trajectory.zst --plot curve.png
"""
)
@click.argument("trajectory", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option(
    "--plot",
    "plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the evaluation curve and the training loss into this PNG (needs "
    "matplotlib: pip install 'mezo-ckpt[plot]').",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
def info(trajectory: Path, as_json: bool, plot: Path | None, overwrite: bool) -> None:
    """Summarize TRAJECTORY: base, settings, steps, statistics, evaluations, size.

    The file is fully validated on the way (every frame, checksum and record, and the
    chain that binds the records to their checkpoints). Strings from the file are shown
    with control characters escaped.
    """
    from mezo_ckpt.api import summarize

    if plot is not None:
        from mezo_ckpt.util.fsutil import check_output

        check_output(plot, kind="file", overwrite=overwrite, inputs=[trajectory], flag="--plot")
    s = summarize(trajectory)
    if plot is not None:
        from mezo_ckpt.plot import plot_trajectory

        plot_trajectory(trajectory, plot)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    b, p, u = s["base"], s["perturbation"], s["update"]
    emb = b.get("embedded") or {}
    base = b.get("repo_id") or emb.get("gguf_file") or "local folder"
    rev = f"@{b['revision'][:12]}" if b.get("revision") else ""
    n_tr = s["trainable_tensors"]
    el = s["trainable_elements"]
    share = ""
    if s["perturbation"] and s.get("adapter"):
        share = f" ({s['adapter']} adapter tensors; the base is frozen)"
    elif el is not None and b.get("num_parameters"):
        share = f", {el:,} elements = {100 * el / b['num_parameters']:.1f}% of the model"
    pinned = (
        f"every tensor {b['tensors_sha256'][:16]}..., config {b['config_sha256'][:12]}..., "
        f"{len(b.get('tokenizer') or {})} tokenizer file(s)"
        if b.get("tensors_sha256")
        else f"trainable tensors only {b['trainable_sha256'][:16]}... (format 1.0)"
    )
    lines = [
        f"{trajectory}  ({s['bytes']:,} bytes, format {s['format_version']}, "
        f"written by {s['tool']['name']} {s['tool']['version']})",
        f"base        {b['kind']}: {base}{rev}  {b['architecture']} {b['dtype']}, "
        f"{b['num_parameters']:,} params, tied embeddings: {b['tie_word_embeddings']}",
        f"            pinned: {pinned}",
        f"trainable   {n_tr} tensors{share}",
        f"steps       {s['steps']} recorded, {_state(s)}; {s['skipped_steps']} skipped; "
        f"{_fmt(s['bytes_per_step'])} bytes/step",
        f"perturb     {p['generator']}, z={p['z']}, eps={p['eps']}, seed={p['seed']}, "
        f"directions={p['n_directions']}",
        f"update      {u['arithmetic']}, rounding={u['rounding']}, "
        f"weight_decay={u['weight_decay']}",
        f"optimizer   {json.dumps(s['optimizer'], sort_keys=True)}",
        *_task_lines(s.get("config") or {}),
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
    if plot is not None:
        lines.append(f"plot        {plot}")
    click.echo("\n".join(clean(line) for line in lines))
