"""`mezo-ckpt train`: MeZO fine-tuning that writes a trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mezo_ckpt.trainer.config import TrainConfig

_D = TrainConfig()


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _verbalizer(value: str | None) -> dict[str, str] | None:
    """'positive= great,negative= terrible' or a JSON object."""
    if value is None:
        return None
    if value.strip().startswith("{"):
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise click.BadParameter("must be a JSON object label -> word")
        return {str(k): str(v) for k, v in obj.items()}
    out = {}
    for item in value.split(","):
        if "=" not in item:
            raise click.BadParameter("use label=word pairs separated by commas, or JSON")
        k, _, v = item.partition("=")
        out[k.strip()] = v
    return out


@click.command(context_settings={"show_default": True})
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML recipe; flags given on the command line win over it.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any config field (repeatable), e.g. --set eval_every=25.",
)
@click.option(
    "--model",
    help="Base model: local folder or Hub repo id. [default: embedded SmolLM2-135M-Instruct]",
)
@click.option("--revision", help="Hub branch/tag/commit of the base (recorded as a commit sha).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help=f"Parameter dtype.  [default: {_D.dtype}]",
)
@click.option("--device", default=None, help=f"auto, cpu or cuda[:N].  [default: {_D.device}]")
@click.option(
    "--task", default=None, help=f"Built-in task (sentiment) or custom.  [default: {_D.task}]"
)
@click.option("--train-file", type=click.Path(dir_okay=False), help="JSONL/JSON/CSV/TSV examples.")
@click.option(
    "--dev-file",
    type=click.Path(dir_okay=False),
    help="Dev split (evaluated every --eval-every steps).",
)
@click.option("--test-file", type=click.Path(dir_okay=False), help="Test split (step 0 and end).")
@click.option("--template", help='Prompt template over example fields, e.g. "{text} It was".')
@click.option("--verbalizer", help='Label words: "positive= great,negative= terrible" or JSON.')
@click.option("--label-field", default=None, help=f"[default: {_D.label_field}]")
@click.option("--options-field", default=None, help="Multiple choice: field with the options list.")
@click.option(
    "--objective",
    type=click.Choice(["ce", "accuracy"]),
    default=None,
    help="ce: cross-entropy over label words (MeZO); accuracy: 1 - accuracy.",
)
@click.option("--steps", type=int, help=f"[default: {_D.steps}]")
@click.option("--batch-size", type=int, help=f"[default: {_D.batch_size}]")
@click.option("--lr", type=float, help=f"Learning rate.  [default: {_D.lr}]")
@click.option("--eps", type=float, help=f"Perturbation scale.  [default: {_D.eps}]")
@click.option(
    "--schedule",
    type=click.Choice(["constant", "linear", "cosine"]),
    default=None,
    help=f"[default: {_D.schedule}]",
)
@click.option("--warmup-steps", type=int, help=f"[default: {_D.warmup_steps}]")
@click.option("--weight-decay", type=float, help=f"[default: {_D.weight_decay}]")
@click.option(
    "--n-directions", type=int, help=f"n-SPSA directions per step.  [default: {_D.n_directions}]"
)
@click.option(
    "--z",
    "z",
    type=click.Choice(["normal16", "rademacher"]),
    default=None,
    help=f"Direction distribution.  [default: {_D.z}]",
)
@click.option(
    "--rounding",
    type=click.Choice(["nearest", "stochastic"]),
    default=None,
    help=f"Rounding of bf16/fp16 updates.  [default: {_D.rounding}]",
)
@click.option("--seed", type=int, help=f"[default: {_D.seed}]")
@click.option("--trainable", help="Comma-separated globs of parameters to train. [default: *]")
@click.option("--frozen", help="Comma-separated globs of parameters to keep frozen.")
@click.option("--eval-every", type=int, help=f"0 disables.  [default: {_D.eval_every}]")
@click.option(
    "--eval-examples", type=int, help=f"Dev examples used.  [default: {_D.eval_examples}]"
)
@click.option("--no-test", is_flag=True, default=None, help="Skip the test-split evaluations.")
@click.option("-o", "--output", help=f"Trajectory file.  [default: {_D.output}]")
@click.option("--save-model", help="Also write the trained weights to this folder.")
@click.option("--threads", type=int, help="CPU threads. [default: all cores]")
@click.option(
    "--resume",
    "resume",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Continue an interrupted run from its trajectory (settings come from it).",
)
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(
    config_file: Path | None,
    sets: tuple[str, ...],
    resume: Path | None,
    print_config: bool,
    quiet: bool,
    **flags,
) -> None:
    """Fine-tune a causal LM with MeZO and write a trajectory file.

    With no arguments: fine-tunes the embedded SmolLM2-135M-Instruct on movie-review
    sentiment, offline on the CPU, and writes trajectory.zst (a few KB). Evaluates on the
    dev split every --eval-every steps and on the test split at step 0 and at the end.

    Only forward passes run, in eval mode; perturbations never write to the weights, so
    the weights change only by the recorded update and `mezo-ckpt replay` rebuilds them
    bit for bit. Ctrl-C stops after the current step with a valid, resumable file.

    \b
    Examples:
      mezo-ckpt train
      mezo-ckpt train --steps 500 --lr 1e-5 -o sst.zst
      mezo-ckpt train -c recipe.yaml --set lr=5e-6 --set seed=3
      mezo-ckpt train --model ./my-model --task custom --train-file train.jsonl \\
          --dev-file dev.jsonl --template "{text} It was" \\
          --verbalizer "positive= great,negative= terrible"
      mezo-ckpt train --model HuggingFaceTB/SmolLM2-360M --device cuda --dtype bfloat16
      mezo-ckpt train --resume trajectory.zst
    """
    import yaml

    from mezo_ckpt.trainer.config import resolve_config
    from mezo_ckpt.trainer.loop import config_from_trajectory
    from mezo_ckpt.trainer.loop import train as run

    if resume is not None:
        cfg = config_from_trajectory(resume)
        name = resume.name.removesuffix(".partial")
        cfg = cfg.replace(output=str(resume.with_name(name)))
    else:
        flags["trainable"] = _csv(flags.get("trainable"))
        flags["frozen"] = _csv(flags.get("frozen"))
        flags["verbalizer"] = _verbalizer(flags.get("verbalizer"))
        no_test = flags.pop("no_test", None)
        if no_test:
            flags["eval_test"] = False
        if flags.get("train_file") and not flags.get("task"):
            flags["task"] = "custom"
        cfg = resolve_config(config_file, flags, list(sets))
    if print_config:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    result = run(cfg, resume=resume, progress=not quiet, log=click.echo)
    size = result.output.stat().st_size
    click.echo(
        f"Wrote {result.output} ({size:,} bytes, {result.steps} steps, "
        f"{result.seconds_per_step:.2f} s/step)"
    )
    for split in ("dev", "test"):
        first = result.metric(split, 0)
        last = result.metric(split, result.steps)
        if first is not None and last is not None:
            click.echo(
                f"{split} accuracy: {first:.4f} at step 0 -> {last:.4f} at step "
                f"{result.steps} ({100 * (last - first):+.1f} points)"
            )
    if not result.interrupted:
        base = f" --base {cfg.model}" if cfg.model and Path(cfg.model).exists() else ""
        click.echo(f"Rebuild the weights with: mezo-ckpt replay {result.output}{base}")
