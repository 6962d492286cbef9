"""mezo_ckpt.trainer.objectives: user scoring functions (what they must return, how they
are imported and recorded) and what the forward passes measure on a tiny model."""

from __future__ import annotations

import hashlib
import sys
import uuid

import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer, toy_sentiment

from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.trainer.data import Split
from mezo_ckpt.trainer.objectives import PREFIX, Objective, UserObjective, load_user_objective
from mezo_ckpt.trainer.tasks import (
    LossTerms,
    PromptTask,
    loss_terms,
    predictions,
    score_candidates,
    token_f1,
)

EXAMPLES = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]


def user(fn) -> UserObjective:
    return UserObjective("python:m:f", fn, "m.f", "0" * 64)


# ----------------------------------------------------------------------------- scores


def test_scores_accepts_any_sequence_of_finite_numbers():
    assert user(lambda ex, out: [1, 0]).scores(EXAMPLES, ["pos", "pos"]) == [1.0, 0.0]
    assert user(lambda ex, out: (0.5, True)).scores(EXAMPLES, [0, 0]) == [0.5, 1.0]
    got = user(lambda ex, out: torch.tensor([0.25, -2.0])).scores(EXAMPLES, [0, 0])
    assert got == [0.25, -2.0] and all(type(v) is float for v in got)
    seen = []
    user(lambda ex, out: seen.append((ex, out)) or [0, 0]).scores(EXAMPLES, ["x", "y"])
    assert seen == [(EXAMPLES, ["x", "y"])]


def test_provenance_names_the_function_and_its_source():
    u = UserObjective("python:mod:fn", lambda e, o: [], "mod.fn", "ab" * 32)
    assert u.provenance() == {"function": "mod.fn", "source_sha256": "ab" * 32}


@pytest.mark.parametrize(
    "returned, message",
    [
        ("10", r"must return a list of numbers \(one per example\), got str"),
        (b"10", r"must return a list of numbers .* got bytes"),
        ({"a": 1, "b": 2}, r"must return a list of numbers .* got dict"),
        (1.0, r"must return a list of numbers .* got float"),
        (None, r"must return a list of numbers .* got NoneType"),
        ([1.0, "high"], r"one number per example \(finite\), got a list holding something"),
        ([1.0, None], r"got a list holding something else"),
        ([1.0, 10**400], r"got a list holding something else"),
        ([1.0], r"returned 1 scores for 2 examples"),
        ([1.0, 2.0, 3.0], r"returned 3 scores for 2 examples"),
        ([1.0, float("nan")], r"returned a non-finite score"),
        ([float("-inf"), 0.0], r"returned a non-finite score"),
    ],
)
def test_scores_refuses_what_is_not_one_finite_number_per_example(returned, message):
    with pytest.raises(DataError, match=r"^objective m\.f .*" + message):
        user(lambda ex, out: returned).scores(EXAMPLES, [0, 0])


def test_scores_reports_the_users_exception_and_exit():
    def boom(ex, out):
        raise KeyError("label")

    with pytest.raises(DataError, match=r"objective m\.f raised KeyError: 'label'") as e:
        user(boom).scores(EXAMPLES, [0, 0])
    assert isinstance(e.value.__cause__, KeyError)

    def leaves(ex, out):
        sys.exit(3)

    with pytest.raises(DataError, match=r"objective m\.f called exit\(3\); it must return"):
        user(leaves).scores(EXAMPLES, [0, 0])


# ----------------------------------------------------------------------------- loading


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder made current, and a writer of uniquely named modules in it (forgotten by
    the import system afterwards)."""
    monkeypatch.chdir(tmp_path)
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_objective_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_load_user_objective_imports_from_the_current_folder(module_dir, tmp_path):
    name = module_dir(
        "def score(examples, outputs):\n"
        "    return [float(o == ex['label']) for ex, o in zip(examples, outputs)]\n"
        "NOT_A_FUNCTION = 3\n"
    )
    before = list(sys.path)
    u = load_user_objective(f"python:{name}:score")
    assert sys.path == before  # the current folder was added only for the import
    assert u.spec == f"python:{name}:score"
    assert u.qualname == f"{name}.score"
    digest = hashlib.sha256((tmp_path / f"{name}.py").read_bytes()).hexdigest()
    assert u.source_sha256 == digest
    assert u.provenance() == {"function": f"{name}.score", "source_sha256": digest}
    assert u.scores(EXAMPLES, ["pos", "pos"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match=rf"{name}\.NOT_A_FUNCTION is a int, not a Python"):
        load_user_objective(f"python:{name}:NOT_A_FUNCTION")


@pytest.mark.parametrize("spec", ["mod:fn", "python:mod", "python:a:b:c", "py:mod:fn", ""])
def test_load_user_objective_refuses_malformed_specs(spec):
    with pytest.raises(ConfigError, match="use python:MODULE:FUNCTION"):
        load_user_objective(spec)
    assert PREFIX == "python:"


def test_load_user_objective_import_failures(module_dir):
    with pytest.raises(ConfigError, match=r"cannot import no_such_mod_q7: ModuleNotFoundError"):
        load_user_objective("python:no_such_mod_q7:f")
    broken = module_dir("raise RuntimeError('bad module')\n")
    with pytest.raises(ConfigError, match=rf"cannot import {broken}: RuntimeError: bad module"):
        load_user_objective(f"python:{broken}:f")
    exits = module_dir("import sys\nsys.exit(5)\n")
    with pytest.raises(ConfigError, match=rf"cannot import {exits}: SystemExit: 5"):
        load_user_objective(f"python:{exits}:f")
    syntax = module_dir("def f(:\n")
    with pytest.raises(ConfigError, match=rf"cannot import {syntax}: SyntaxError"):
        load_user_objective(f"python:{syntax}:f")


def test_load_user_objective_needs_a_python_function(module_dir):
    name = module_dir("from math import sqrt\nclass Scorer:\n    pass\n\nscorer = Scorer()\n")
    with pytest.raises(ConfigError, match=rf"{name} has no function missing"):
        load_user_objective(f"python:{name}:missing")
    with pytest.raises(ConfigError, match=r"\.Scorer is a type, not a Python function"):
        load_user_objective(f"python:{name}:Scorer")
    with pytest.raises(ConfigError, match=r"\.scorer is a Scorer, not a Python function"):
        load_user_objective(f"python:{name}:scorer")
    with pytest.raises(ConfigError, match=r"\.sqrt is a builtin_function_or_method"):
        load_user_objective(f"python:{name}:sqrt")


# ----------------------------------------------------------------------------- Objective


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama"), tiny_tokenizer()


CLS = PromptTask(template="{text} =", verbalizer={"pos": "+", "neg": "-"})


def test_ce_and_accuracy_objectives_measure_the_batch(lm):
    model, tok = lm
    examples = toy_sentiment(6)
    enc = CLS.encode(tok, examples)
    ce = Objective(CLS, "ce", model, tok, None)
    scores = score_candidates(model, enc, ce.rows)
    got = ce(enc)
    assert got == loss_terms(scores, enc, "ce")
    assert got.count == 6 and got.loss > 0
    preds = predictions(scores, enc)
    correct = sum(p == ex["label"] for p, ex in zip(preds, examples))
    assert got.correct == correct
    acc = Objective(CLS, "accuracy", model, tok, None)(enc)
    assert acc == LossTerms(float(6 - correct), 6, float(correct))


def test_rows_without_a_perturber_are_the_head_rows(lm):
    model, tok = lm
    head = torch.nn.Linear(3, 5, bias=False)
    rows = Objective(CLS, "ce", model, tok, None).rows(head, torch.tensor([4, 0]))
    assert torch.equal(rows, head.weight.detach()[[4, 0]])


def test_user_objective_gets_the_predictions(lm):
    model, tok = lm
    examples = toy_sentiment(5, seed=3)
    enc = CLS.encode(tok, examples)
    seen = []

    def score(exs, outs):
        seen.append((exs, outs))
        return [2.0 * (o == ex["label"]) for ex, o in zip(exs, outs)]

    got = Objective(CLS, "ce", model, tok, None, user(score))(enc)
    preds = predictions(score_candidates(model, enc), enc)
    assert seen == [(examples, preds)]
    hits = sum(p == ex["label"] for p, ex in zip(preds, examples))
    assert got == LossTerms(-2.0 * hits, 5, 2.0 * hits)


def test_evaluate_classification_metrics_and_progress(lm):
    model, tok = lm
    examples = toy_sentiment(7, seed=1)
    obj = Objective(CLS, "ce", model, tok, None)
    done: list[int] = []
    metrics, truncated = obj.evaluate(Split("dev", examples), 3, done.append)
    assert truncated == 0
    assert done == [3, 3, 1]
    enc = CLS.encode(tok, examples)
    ref = loss_terms(score_candidates(model, enc), enc, "ce")
    assert set(metrics) == {"accuracy", "loss", "examples"}
    assert metrics["examples"] == 7.0
    assert metrics["accuracy"] == pytest.approx(ref.correct / 7)
    assert metrics["loss"] == pytest.approx(ref.loss, rel=1e-5)
    # the batch size changes padding, not the result
    again, _ = obj.evaluate(Split("dev", examples), 1)
    assert again["accuracy"] == metrics["accuracy"]
    assert again["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_evaluate_counts_truncated_prompts(lm):
    model, tok = lm
    short = PromptTask(template="{text} =", verbalizer={"pos": "+", "neg": "-"}, max_length=8)
    examples = [{"text": "x" * 20, "label": "pos"}, {"text": "y", "label": "neg"}]
    _, truncated = Objective(short, "ce", model, tok, None).evaluate(Split("dev", examples), 2)
    assert truncated == 1


def test_generation_objectives_score_greedy_answers(lm):
    model, tok = lm
    gen = PromptTask(template="{q}=", target_field="a", max_new_tokens=3)
    examples = [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": ["4", "four"]}]
    enc = gen.encode(tok, examples)
    f1 = Objective(gen, "f1", model, tok, None)
    answers = f1._generate(enc)
    assert len(answers) == 2
    want = sum(token_f1(a, r) for a, r in zip(answers, enc.references))
    assert f1(enc) == LossTerms(2.0 - want, 2, want)
    # references equal to the generations: every answer is an exact match
    same = [{"q": ex["q"], "a": a} for ex, a in zip(examples, answers) if a.strip()]
    if same:
        enc2 = gen.encode(tok, same)
        em = Objective(gen, "exact_match", model, tok, None)(enc2)
        assert em == LossTerms(0.0, len(same), float(len(same)))
    outs: list = []
    u = user(lambda exs, o: outs.extend(o) or [0.5] * len(o))
    assert Objective(gen, "ce", model, tok, None, u)(enc) == LossTerms(-1.0, 2, 1.0)
    assert outs == answers
    metrics, _ = f1.evaluate(Split("dev", examples), 2)
    assert set(metrics) == {"loss", "exact_match", "f1", "examples"}
    assert metrics["f1"] == pytest.approx(want / 2)
