"""`mezo-ckpt train`: MeZO fine-tuning that writes a trajectory.

The options are generated from :class:`mezo_ckpt.trainer.config.TrainConfig`, so flags,
YAML recipes and ``--set`` accept the same settings with the same rules.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click

from mezo_ckpt.trainer.config import TrainConfig
from mezo_ckpt.util.text import clean

_D = TrainConfig()
RUN = "Config files and run control"
SECTION_ORDER = (
    "Base model",
    "Task and data",
    "MeZO",
    "Evaluation",
    "Output and run",
    RUN,
)


class SectionedCommand(click.Command):
    """Lists the options in sections (base model, data, MeZO, ...) instead of one list."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx)
            if rec is not None:
                groups.setdefault(getattr(param, "section", RUN), []).append(rec)
        for section in sorted(
            groups, key=lambda s: SECTION_ORDER.index(s) if s in SECTION_ORDER else 99
        ):
            with formatter.section(section):
                formatter.write_dl(groups[section])


def _default_text(name: str) -> str:
    v = getattr(_D, name)
    if v is None or v == [] or v == {}:
        return ""
    if isinstance(v, list):
        v = ",".join(repr(x) if x != x.strip() else x for x in v)
    elif isinstance(v, dict):
        v = ",".join(f"{k}={w}" for k, w in v.items())
    elif isinstance(v, str) and v != v.strip():
        v = repr(v)
    return f"  [default: {v}]"


def _schema_options(func):
    """Add one option per TrainConfig field (in reverse, so --help keeps field order)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in reversed(dataclasses.fields(TrainConfig)):
        opt = f.metadata["opt"]
        if not opt.cli:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag] if opt.short is None else [opt.short, flag]
        help_text = opt.help
        if opt.choices:
            help_text += f" One of: {', '.join(opt.choices)}."
        help_text += _default_text(f.name)
        if hints[f.name] is bool:
            decl = f"{flag}/--no-{f.name.replace('_', '-')}"
            option = click.option(decl, f.name, default=None, help=help_text)
        else:
            option = click.option(
                *names,
                f.name,
                default=None,
                metavar=opt.metavar or _metavar(hints[f.name]),
                help=help_text,
            )
        func = option(func)
        func.__click_params__[-1].section = opt.section
    return func


def _metavar(hint: Any) -> str:
    text = str(hint)
    if "float" in text:
        return "NUMBER"
    if "int" in text:
        return "N"
    if "list" in text:
        return "A,B,..."
    return "TEXT"


#: Text settings in which a typed \n, \t or \\ means a newline, a tab or a backslash
#: (a shell passes them as two characters; YAML double-quoted strings already decode them).
ESCAPED = frozenset({"template", "option_template", "target_template", "stop", "verbalizer"})
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape_text(value: Any) -> Any:
    """``value`` with \n, \t and \\ decoded (any other backslash is kept as typed)."""
    if not isinstance(value, str) or "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPES:
            out.append(_ESCAPES[value[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _unescape_set(item: str) -> str:
    key, eq, raw = item.partition("=")
    if eq and key.strip().replace("-", "_") in ESCAPED:
        return f"{key}={unescape_text(raw)}"
    return item


def _run_option(*args: Any, **kw: Any):
    def deco(func):
        func = click.option(*args, **kw)(func)
        func.__click_params__[-1].section = RUN
        return func

    return deco


EXAMPLES = """\b
Examples:
  mezo-ckpt train                                  # embedded default, offline, CPU
  mezo-ckpt train --steps 500 --lr 1e-5 -o sst.zst
  mezo-ckpt train -c recipe.yaml --set lr=5e-7 --set seed=3
  mezo-ckpt train -c sst2 --model facebook/opt-1.3b  # MeZO's SST-2 recipe (packaged)
  mezo-ckpt train --peft lora --lr 3e-3 --eps 1e-2  # MeZO-LoRA (q_proj, v_proj; r 8)
  mezo-ckpt train --estimator fzoo --n-directions 4 --z rademacher --lr 5e-3
  mezo-ckpt train --momentum 0.8 --momentum-window 8 --lr 1e-5
  mezo-ckpt train --target-field label --max-new-tokens 2 \\
      --template "Review: {text}\\nIs this review positive or negative? Answer:"
                                                   # answer with a word: generation
  mezo-ckpt train --model ./my-model --train-file train.jsonl --dev-file dev.jsonl \\
      --template "{text} It was" --verbalizer "positive= great,negative= terrible"
  mezo-ckpt train --train-file data.csv --columns text=review,label=stars ...
  mezo-ckpt train --dataset ./my_dataset/ --template "{question}" --target-field answer \\
      --objective f1                               # a generation task, optimising F1
  mezo-ckpt train --trainable 'model.layers.2*.*' --frozen '*norm*'
  mezo-ckpt train -c sst2-mlm --model ./roberta-large --k-shot 16 --data-seed 13
                                                   # a masked LM, MeZO's k-shot protocol
  mezo-ckpt train --model HuggingFaceTB/SmolLM2-360M --device cuda --dtype bf16
  mezo-ckpt train --resume trajectory.zst          # continue a killed or stopped run
  mezo-ckpt train --resume trajectory.zst --steps 200   # extend a finished run
\b
Settings precedence: defaults < -c recipe.yaml < flags < --set key=value. Every
setting can also go in the YAML recipe or --set (use the flag's name with _ or -).
In --template, --option-template, --target-template, --stop and --verbalizer, a typed
\\n or \\t means a newline or a tab (\\\\ a backslash).
"""


@click.command(cls=SectionedCommand, epilog=EXAMPLES)
@_schema_options
@_run_option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML recipe file, or a packaged recipe by name (sst2, rte, cb, boolq, wsc, wic, "
    "multirc, copa, record, squad, drop); flags given on the command line win over it.",
)
@_run_option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any setting (repeatable), e.g. --set eval_every=25.",
)
@_run_option(
    "--resume",
    "resume",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Continue (or, with --steps, extend) the run of this trajectory or its .partial "
    "journal; its settings come from the file.",
)
@_run_option("--overwrite", is_flag=True, help="Replace an existing output, journal and log.")
@_run_option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@_run_option(
    "-q", "--quiet", is_flag=True, help="No progress bar or library chatter; results only."
)
@_run_option("--no-test", "old_no_test", is_flag=True, hidden=True)  # 0.1 name of --no-eval-test
def train(
    config_file: Path | None,
    sets: tuple[str, ...],
    resume: Path | None,
    overwrite: bool,
    print_config: bool,
    quiet: bool,
    old_no_test: bool,
    **flags: Any,
) -> None:
    """Fine-tune a causal or masked LM with MeZO and write a trajectory file.

    With no arguments: fine-tunes the embedded SmolLM2-135M-Instruct on movie-review
    sentiment, offline on the CPU, and writes trajectory.zst (a few KB). Evaluates on the
    dev split every --eval-every steps and on the test split at step 0 and at the end.

    Only forward passes run, in eval mode; perturbations never write to the weights, so
    the weights change only by the recorded update and `mezo-ckpt replay` rebuilds them
    bit for bit. Ctrl-C stops after the current step with a valid, resumable file; so
    does a killed process (resume it with --resume). An existing output is never
    replaced unless you pass --overwrite.
    """
    import yaml

    from mezo_ckpt.trainer.config import resolve_config
    from mezo_ckpt.trainer.run import train as run

    if old_no_test:
        click.echo(
            "Note: --no-test is deprecated and will be removed in 0.4; use --no-eval-test.",
            err=True,
        )
        if flags.get("eval_test") is None:
            flags["eval_test"] = False
    flags = {k: unescape_text(v) if k in ESCAPED else v for k, v in flags.items()}
    sets = tuple(_unescape_set(item) for item in sets)
    if resume is not None:
        from mezo_ckpt.errors import ConfigError
        from mezo_ckpt.trainer.resume import resume_config

        if overwrite:
            raise ConfigError("--resume continues a run; --overwrite starts one over: pick one")
        cfg, _, notes = resume_config(resume, flags, sets, config_file)
        for note in notes:
            click.echo(f"Note: {clean(note)}", err=True)
    else:
        if (flags.get("train_file") or flags.get("dataset")) and not flags.get("task"):
            flags["task"] = "custom"
        cfg = resolve_config(config_file, flags, list(sets))
    if print_config:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    if resume is None:
        result = run(cfg, overwrite=overwrite, progress=not quiet, log=click.echo)
    else:
        result = _resume(cfg, resume, quiet)
    _summary(result, cfg)


def _resume(cfg: TrainConfig, resume: Path, quiet: bool):
    from mezo_ckpt.trainer.recipe import MezoRecipe

    with MezoRecipe(cfg, resume=resume, progress=not quiet, log=click.echo) as recipe:
        recipe.setup()
        recipe.loop()
        return recipe.finish()


def _summary(result, cfg: TrainConfig) -> None:
    from mezo_ckpt.trainer.dist import env_world

    if env_world()[0] != 0:  # under torchrun, rank 0 speaks for the run
        return
    size = result.output.stat().st_size
    ran = result.steps
    click.echo(
        f"Wrote {result.output} ({size:,} bytes, {ran} steps): {result.seconds_per_step:.2f} "
        f"s/step, {result.train_seconds:.0f} s training, {result.seconds:.0f} s in all"
    )
    metric = "f1" if cfg.generation else "accuracy"
    for split in ("dev", "test"):
        first = result.metric(split, 0, metric)
        last = result.metric(split, result.steps, metric)
        if first is not None and last is not None:
            click.echo(
                f"{split} {metric}: {first:.4f} at step 0 -> {last:.4f} at step "
                f"{result.steps} ({100 * (last - first):+.1f} points)"
            )
    if not result.interrupted:
        base = f" --base {cfg.model}" if cfg.model and Path(cfg.model).exists() else ""
        click.echo(f"Rebuild the weights with: mezo-ckpt replay {result.output}{base}")
