"""Generation tasks and their objectives (ce, f1, exact_match, a user function).

A synthetic QA task the tiny models can learn: the question repeats an animal word, the
answer is its capital first letter ("dog dog" -> "D"). The letters avoid "A", which SQuAD's
normalisation drops as an article.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch
from tinymodels import save_tiny

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trainer import TrainConfig, train
from mezo_ckpt.trainer.objectives import load_user_objective
from mezo_ckpt.trainer.tasks import cut_at_stop, exact_match, normalize_answer, token_f1
from mezo_ckpt.trajectory import read_trajectory

USER_OBJECTIVE = '''
SEEN = []


def first_letter(examples, outputs):
    """1 when the generation starts with the answer's letter."""
    SEEN.append((len(examples), list(outputs)))
    return [float(o.strip()[:1] == ex["answer"]) for ex, o in zip(examples, outputs)]


def wrong_length(examples, outputs):
    return [1.0]


def not_numbers(examples, outputs):
    return ["x" for _ in examples]


def raises(examples, outputs):
    raise KeyError("answer2")
'''


def qa_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.choice(["cat", "dog"])
        out.append({"question": " ".join([a] * rng.randint(1, 3)), "answer": a[0].upper()})
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen") / "llama"
    save_tiny(d, "llama")
    return str(d)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "gen_objective_mod.py").write_text(USER_OBJECTIVE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gen_objective_mod", raising=False)
    yield "gen_objective_mod"
    sys.modules.pop("gen_objective_mod", None)


def run(base, out, **kw):
    settings = dict(
        model=base,
        target_field="answer",
        template="Q: {question} A:",
        max_new_tokens=2,
        steps=4,
        batch_size=8,
        lr=2e-2,
        eps=1e-1,
        eval_every=2,
        eval_examples=8,
        eval_test=False,
        fsync=False,
        output=str(out),
    )
    settings.update(kw)
    return train(
        data={"train": qa_rows(64, 0), "dev": qa_rows(24, 1)},
        progress=False,
        log=lambda s: None,
        keep_model=True,
        **settings,
    )


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in canonical_parameters(model).items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- metrics


def test_squad_normalisation_and_metrics():
    assert normalize_answer("  The Eiffel-Tower!! ") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("the Paris.", ["paris", "Lyon"]) == 1.0
    assert exact_match("Paris France", ["paris"]) == 0.0
    assert token_f1("Paris France", ["paris"]) == pytest.approx(2 / 3)
    assert token_f1("in Paris", ["Lyon", "Paris"]) == pytest.approx(2 / 3)  # best reference
    assert token_f1("", [""]) == 1.0 and token_f1("x", [""]) == 0.0
    assert token_f1("x b b", ["b b c"]) == pytest.approx(2 / 3)  # counts, not sets


def test_stop_strings_cut_the_generation():
    assert cut_at_stop(" D\nQ: cat", ["\n"]) == " D"
    assert cut_at_stop("xy.z\n", ["\n", "."]) == "xy"
    assert cut_at_stop("abc", ["", "zz"]) == "abc"


# ----------------------------------------------------------------------------- promises


@pytest.mark.parametrize("objective", ["ce", "f1", "exact_match", "python"])
def test_replay_equals_training_and_lr_zero_is_identity(base, tmp_path, objective, request):
    if objective == "python":
        objective = f"python:{request.getfixturevalue('user_module')}:first_letter"
    r = run(base, tmp_path / "t.zst", objective=objective)
    traj = read_trajectory(tmp_path / "t.zst")
    assert traj.complete and traj.num_steps == 4
    assert traj.header.optimizer.objective == objective
    model = load_base(base).model
    assert replay_model(traj, model).verified
    assert_same(state(r.model), state(model))
    before = state(load_base(base).model)
    moved = any(not torch.equal(before[k], v) for k, v in state(r.model).items())
    # A discrete objective can tie under +eps and -eps (no step); then nothing moves.
    assert moved == bool((traj.records.coefs != 0).any())
    if objective in ("ce", "f1"):
        assert moved
    zero = run(base, tmp_path / "z.zst", objective=objective, lr=0.0)
    assert_same(before, state(zero.model))


@pytest.mark.parametrize("objective", ["f1", "ce", "python"])
def test_generation_resume_after_a_crash_equals_the_straight_run(
    base, tmp_path, monkeypatch, objective, request
):
    again = {}  # what a resume names again on its own command line
    if objective == "python":
        objective = f"python:{request.getfixturevalue('user_module')}:first_letter"
        again = {"objective": objective}
    straight = run(base, tmp_path / "a.zst", objective=objective, steps=6)
    real = TrainConfig.lr_at

    def dying(self, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return real(self, step)

    monkeypatch.setattr(TrainConfig, "lr_at", dying)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(base, tmp_path / "b.zst", objective=objective, steps=6)
    monkeypatch.setattr(TrainConfig, "lr_at", real)
    with pytest.raises((ConfigError, DataError), match="train"):  # other examples: refused
        train(
            resume=tmp_path / "b.zst",
            model=base,
            data={"train": qa_rows(64, 5), "dev": qa_rows(24, 1)},
            progress=False,
            log=lambda s: None,
            **again,
        )
    if again:  # the file never makes mezo-ckpt import code by itself
        with pytest.raises(ConfigError, match="python:"):
            train(
                resume=tmp_path / "b.zst",
                model=base,
                data={"train": qa_rows(64, 0), "dev": qa_rows(24, 1)},
                progress=False,
                log=lambda s: None,
            )
    resumed = train(
        resume=tmp_path / "b.zst",
        model=base,
        data={"train": qa_rows(64, 0), "dev": qa_rows(24, 1)},
        progress=False,
        log=lambda s: None,
        keep_model=True,
        **again,
    )
    assert_same(state(straight.model), state(resumed.model))
    a, b = read_trajectory(tmp_path / "a.zst"), read_trajectory(tmp_path / "b.zst")
    assert (a.records.coefs == b.records.coefs).all()
    assert [e.metrics for e in a.evaluations] == [e.metrics for e in b.evaluations]


def test_f1_objective_raises_dev_f1_over_step_zero(base, tmp_path):
    # The curve on this machine (2 cores, 2026-12-01), dev F1 at steps 0/10/20/30/40:
    # 0.00 / 0.00 / 0.03 / 0.47 / 0.47.
    r = run(
        base,
        tmp_path / "f1.zst",
        objective="f1",
        steps=40,
        batch_size=16,
        eval_every=10,
        eval_examples=24,
        lr=1e-2,
        eps=5e-2,
    )
    curve = [(e.step, e.metrics["f1"]) for e in r.evaluations if e.split == "dev"]
    assert [s for s, _ in curve] == [0, 10, 20, 30, 40]
    assert curve[-1][1] >= curve[0][1] + 0.3, curve


def test_user_objective_sees_the_generations_under_each_perturbation(base, tmp_path, user_module):
    run(base, tmp_path / "u.zst", objective=f"python:{user_module}:first_letter", steps=2)
    seen = sys.modules[user_module].SEEN
    # two perturbed generations of the batch per step, every one a string
    assert len(seen) == 4 and all(n == 8 for n, _ in seen)
    assert all(isinstance(o, str) for _, outs in seen for o in outs)
    assert seen[0][1] != seen[1][1] or seen[2][1] != seen[3][1]  # +eps and -eps differ


@pytest.mark.parametrize(
    "fn,match",
    [
        ("wrong_length", "returned 1 scores for 8"),
        ("not_numbers", "one number per example"),
        ("raises", "raised KeyError"),
    ],
)
def test_a_broken_user_objective_is_a_typed_error(base, tmp_path, user_module, fn, match):
    with pytest.raises(DataError, match=match):
        run(base, tmp_path / "x.zst", objective=f"python:{user_module}:{fn}", steps=1)
    assert not (tmp_path / "x.zst").exists()


def test_user_objective_spec_errors(user_module):
    with pytest.raises(ConfigError):
        load_user_objective("python:gen_objective_mod")
    with pytest.raises(ConfigError, match="no function nope"):
        load_user_objective(f"python:{user_module}:nope")
    with pytest.raises(ConfigError):
        load_user_objective("python:no_such_module_xyz:f")


def test_generation_objectives_need_a_generation_task(base, tmp_path):
    with pytest.raises(ConfigError):
        train(
            model=base,
            data={"train": [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]},
            template="{text} =",
            verbalizer={"pos": "+", "neg": "-"},
            objective="f1",
            steps=1,
            output=str(tmp_path / "c.zst"),
            progress=False,
            log=lambda s: None,
        )


def test_stop_strings_end_generation_early_with_the_same_answers():
    """Rows stop generating once their answer holds a stop string: the answers equal a run
    to max_new_tokens cut afterwards, in fewer forwards. A stop string that spans the
    prompt's end does not count."""
    from tinymodels import tiny_model, tiny_tokenizer

    from mezo_ckpt.trainer.tasks import PromptTask, generate

    model, tok = tiny_model("llama").eval(), tiny_tokenizer()
    task = PromptTask(template="Q: {question} A:", target_field="answer")
    enc = task.encode(tok, qa_rows(6, 3))
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    full = generate(model, tok, enc, max_new_tokens=12, stop=[])
    n_full = len(calls)
    assert n_full == 12 and all(len(t) >= 3 for t in full)
    for stop in ([t[1] for t in full], [t[2] for t in full], ["A:" + full[0][0]], [":"]):
        calls.clear()
        got = generate(model, tok, enc, max_new_tokens=12, stop=stop)
        assert got == [cut_at_stop(t, stop) for t in full], stop
        if all(any(s in t for s in stop) for t in full[:]) and stop[0] != ":":
            assert len(calls) < n_full  # every row stopped early
