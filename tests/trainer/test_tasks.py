"""mezo_ckpt.trainer.tasks: prompt tasks, candidates, references, encoding and metrics."""

from __future__ import annotations

import math

import pytest
import torch
from tinymodels import tiny_tokenizer

from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.trainer.data import Split
from mezo_ckpt.trainer.tasks import (
    LossTerms,
    PromptTask,
    cross_entropy,
    cross_entropy_terms,
    cut_at_stop,
    exact_match,
    loss_terms,
    n_correct,
    normalize_answer,
    predictions,
    template_fields,
    token_f1,
)

VERB = {"pos": "+", "neg": "-"}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def ids(text: str) -> list[int]:
    """Token ids of the tiny character tokenizer (printable ASCII; anything else is 0)."""
    return [ord(c) - 31 if 32 <= ord(c) < 127 else 0 for c in text]


def classify(**kw) -> PromptTask:
    return PromptTask(template="{text} =", verbalizer=dict(VERB), **kw)


def choice(**kw) -> PromptTask:
    return PromptTask(template="{q}", options_field="options", **kw)


def generate_task(**kw) -> PromptTask:
    kw.setdefault("target_template", " {target}.")
    return PromptTask(template="Q: {q} A:", target_field="answer", **kw)


def test_the_tiny_tokenizer_is_per_character(tok):
    assert tok("ab c~", add_special_tokens=True)["input_ids"] == ids("ab c~")
    assert tok("é", add_special_tokens=False)["input_ids"] == [0]
    assert tok.pad_token_id == 0


# ----------------------------------------------------------------------------- kinds


def test_kinds():
    assert classify().kind == "classification"
    assert choice().kind == "multiple_choice"
    assert generate_task().kind == "generation"
    # an answer field makes it generation, whatever else is set
    both = PromptTask(template="{q}", options_field="options", target_field="answer")
    assert both.kind == "generation"


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"template": "", "verbalizer": VERB}, "the prompt template is empty"),
        ({"template": "{text", "verbalizer": VERB}, "bad prompt template"),
        ({"template": "text}", "verbalizer": VERB}, "bad prompt template"),
        ({"template": "{text}"}, "at least two labels"),
        ({"template": "{text}", "verbalizer": {"pos": "+"}}, "at least two labels"),
        (
            {"template": "{q}", "options_field": "o", "option_template": " {opt}"},
            "option_template must contain {option}",
        ),
        (
            {"template": "{q}", "target_field": "a", "target_template": " {answer}"},
            "target_template must contain {target}",
        ),
    ],
)
def test_construction_errors(kw, why):
    with pytest.raises(ConfigError, match=why.replace("{", r"\{").replace("}", r"\}")):
        PromptTask(**kw)


def test_option_template_only_matters_for_multiple_choice():
    assert classify(option_template="no placeholder").kind == "classification"
    assert generate_task(option_template="x").kind == "generation"


def test_template_fields():
    assert template_fields("{premise} What was the {question}?") == ["premise", "question"]
    assert template_fields("{{literal}} {text}") == ["text"]
    assert template_fields("no fields") == []
    assert template_fields("{a}{a}") == ["a", "a"]
    assert template_fields("{text!r:>10}") == ["text"]


def test_resolved_records_what_each_kind_uses():
    c = classify().resolved()
    assert c == {
        "kind": "classification",
        "template": "{text} =",
        "chat_template": False,
        "max_length": 256,
        "verbalizer": VERB,
        "label_field": "label",
    }
    m = choice(label_field="gold").resolved()
    assert m["kind"] == "multiple_choice" and m["options_field"] == "options"
    assert m["option_template"] == " {option}" and m["label_field"] == "gold"
    assert "verbalizer" not in m
    g = generate_task(stop=("\n", "###"), max_new_tokens=5).resolved()
    assert g["kind"] == "generation" and g["target_field"] == "answer"
    assert g["stop"] == ["\n", "###"] and g["max_new_tokens"] == 5
    assert g["target_template"] == " {target}."
    assert "label_field" not in g


# ----------------------------------------------------------------------------- validate


def test_validate_accepts_good_examples():
    classify().validate(
        Split("train", [{"text": "a", "label": "pos"}, {"text": "", "label": "neg"}])
    )
    choice().validate(Split("train", [{"q": "?", "options": ["x", "y"], "label": 1}]))
    generate_task().validate(Split("train", [{"q": "?", "answer": ["x", "y"]}]))


def test_validate_template_with_indexed_fields(tok):
    task = PromptTask(template="{q} A) {options[0]} B) {options[1]}", options_field="options")
    ex = {"q": "?", "options": ["x", "y"], "label": 0}
    assert task.render(tok, ex) == ids("? A) x B) y")
    task.validate(Split("train", [ex]))


def test_validate_missing_fields_names_the_origin_and_what_it_has():
    s = Split(
        "train", [{"text": "a", "label": "pos"}, {"txt": "b", "label": "neg"}], ["t:1", "t:2"]
    )
    with pytest.raises(DataError) as e:
        classify().validate(s)
    msg = str(e.value)
    assert msg.startswith("t:2: lacks field(s) ['text']; it has ['label', 'txt']")
    assert "--columns" in msg


def test_validate_missing_label_field():
    with pytest.raises(DataError, match=r"lacks field\(s\) \['label'\]"):
        classify().validate(Split("dev", [{"text": "a"}]))


def test_validate_unmapped_label():
    s = Split("train", [{"text": "a", "label": "pos"}, {"text": "b", "label": "maybe"}])
    with pytest.raises(DataError) as e:
        classify().validate(s)
    assert str(e.value).startswith("train example 2: label 'maybe' is not mapped")
    assert "['neg', 'pos']" in str(e.value)


def test_validate_numeric_labels_match_text_keys():
    task = PromptTask(template="{text}", verbalizer={"0": " no", "1": " yes"})
    task.validate(Split("train", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]))
    with pytest.raises(DataError, match="label 2 is not mapped"):
        task.validate(Split("train", [{"text": "a", "label": 2}]))


def test_validate_multiple_choice_fields():
    task = PromptTask(template="{premise}", options_field="choice1,choice2")
    with pytest.raises(DataError, match=r"lacks field\(s\) \['choice2'\]"):
        task.validate(Split("train", [{"premise": "p", "choice1": "a", "label": 0}]))
    with pytest.raises(DataError, match="f:1: answer index 5 is out of range for 2 options"):
        task.validate(
            Split("train", [{"premise": "p", "choice1": "a", "choice2": "b", "label": 5}], ["f:1"])
        )


def test_validate_generation_references():
    task = generate_task()
    with pytest.raises(DataError, match=r"lacks field\(s\) \['answer'\]"):
        task.validate(Split("train", [{"q": "?"}]))
    with pytest.raises(DataError, match="answer must be a non-empty string or list of strings"):
        task.validate(Split("train", [{"q": "?", "answer": []}]))


# ----------------------------------------------------------------------------- candidates


def test_candidates_classification():
    words, gold, labels = classify().candidates({"text": "x", "label": "neg"})
    assert words == ["+", "-"]
    assert gold == 1
    assert labels == ["pos", "neg"]


@pytest.mark.parametrize(
    "answer, gold",
    [
        (1, 1),
        (0, 0),
        ("b", 1),
        ("1", 1),
        (" 2 ", 2),
        (["c", "a"], 2),  # ReCoRD: several accepted answers, the first is gold
        ([2], 2),
    ],
)
def test_candidates_multiple_choice_answers(answer, gold):
    words, g, labels = choice().candidates({"q": "?", "options": ["a", "b", "c"], "label": answer})
    assert words == [" a", " b", " c"]
    assert g == gold
    assert labels == [0, 1, 2]


def test_candidates_an_answer_that_is_an_option_text_wins_over_an_index():
    # options that are digits: "3" is the option "3", not index 3
    _, g, _ = choice().candidates({"q": "?", "options": ["1", "2", "3"], "label": "3"})
    assert g == 2
    _, g, _ = choice().candidates({"q": "?", "options": ["1", "2", "3"], "label": "0"})
    assert g == 0


def test_candidates_several_option_fields():
    task = PromptTask(
        template="{premise}", options_field=" choice1 , choice2 ", option_template=" so {option}"
    )
    ex = {"premise": "p", "choice1": "it rained", "choice2": "it was sunny", "label": 1}
    words, gold, labels = task.candidates(ex)
    assert words == [" so it rained", " so it was sunny"]
    assert (gold, labels) == (1, [0, 1])
    ex["label"] = "it rained"
    assert task.candidates(ex)[1] == 0


def test_candidates_unicode_options():
    words, gold, _ = choice().candidates({"q": "?", "options": ["café", "thé"], "label": "thé"})
    assert words == [" café", " thé"] and gold == 1


@pytest.mark.parametrize(
    "options, answer, why",
    [
        (["a", "b"], 2, "answer index 2 is out of range for 2 options"),
        (["a", "b"], -1, "answer index -1 is out of range"),
        (["a", "b"], "7", "answer index 7 is out of range"),
        (["a", "b"], "z", "answer 'z' is neither an index nor one of the options"),
        (["a", "b"], True, "answer True is neither an index"),
        (["a", "b"], [], "neither an index"),
        (["only"], 0, "options must be a list of at least two options"),
        ([], 0, "options must be a list of at least two options"),
        ("a,b", 0, "options must be a list of at least two options"),
    ],
)
def test_candidates_multiple_choice_errors(options, answer, why):
    with pytest.raises(DataError, match=why):
        choice().candidates({"q": "?", "options": options, "label": answer})


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    "value, refs",
    [
        ("Paris", ["Paris"]),
        (["Paris", "paris, France"], ["Paris", "paris, France"]),
        (
            {"text": ["Denver Broncos", "Broncos"], "answer_start": [177, 186]},
            ["Denver Broncos", "Broncos"],
        ),
        ({"spans": ["3 touchdowns"], "types": ["span"]}, ["3 touchdowns"]),
        ({"text": ["ünïcode"]}, ["ünïcode"]),
    ],
)
def test_references(value, refs):
    assert generate_task().references({"answer": value}) == refs


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        [],
        ["ok", ""],
        ["ok", 3],
        3,
        None,
        {"text": []},  # SQuAD v2: unanswerable
        {"answer": "x"},
        {"text": "not a list"},
    ],
)
def test_references_refused(value):
    with pytest.raises(DataError, match="answer must be a non-empty string or list of strings"):
        generate_task().references({"answer": value})


# ----------------------------------------------------------------------------- encode


def test_encode_classification_shapes(tok):
    task = classify()
    exs = [{"text": "ab", "label": "pos"}, {"text": "abcd", "label": "neg"}]
    enc = task.encode(tok, exs)
    assert enc.kind == "classification"
    assert enc.input_ids.shape == (4, 7)  # 2 examples x 2 labels; "abcd =" + 1 token
    assert enc.attention_mask.sum(1).tolist() == [5, 5, 7, 7]
    assert enc.input_ids[0].tolist() == [0, 0, *ids("ab =+")]
    assert enc.input_ids[1].tolist() == [0, 0, *ids("ab =-")]
    assert enc.input_ids[3].tolist() == ids("abcd =-")
    assert enc.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert enc.n_cands == [2, 2] and enc.n_examples == 2
    assert enc.gold.tolist() == [0, 1]
    assert enc.single_token
    assert enc.cand_ids.tolist() == ids("+-+-")
    assert enc.input_ids[:, -1].tolist() == enc.cand_ids.tolist()
    assert enc.cand_len.tolist() == [1, 1, 1, 1]
    assert enc.labels == [["pos", "neg"], ["pos", "neg"]]
    assert enc.examples == exs
    assert enc.truncated == 0
    assert enc.prompt_ids is None and enc.references == []


def test_encode_marks_unknown_characters_as_real_tokens(tok):
    # the tokenizer maps "é" to its unk id, which is also the pad id: only the mask tells
    enc = classify().encode(tok, [{"text": "é", "label": "pos"}, {"text": "abc", "label": "neg"}])
    assert enc.input_ids[0].tolist() == [0, 0, 0, *ids(" =+")]
    assert enc.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1]


def test_encode_multi_token_label_words(tok):
    task = PromptTask(template="{text}", verbalizer={"pos": " good", "neg": " bad"})
    enc = task.encode(tok, [{"text": "xy", "label": "neg"}])
    assert not enc.single_token and enc.cand_ids is None
    assert enc.cand_len.tolist() == [5, 4]
    assert enc.input_ids.tolist() == [ids("xy good"), [0, *ids("xy bad")]]
    assert enc.gold.tolist() == [1]


def test_encode_multiple_choice_with_different_option_counts(tok):
    exs = [
        {"q": "a?", "options": ["x", "y"], "label": 1},
        {"q": "b?", "options": ["x", "y", "zz"], "label": "zz"},
    ]
    enc = choice().encode(tok, exs)
    assert enc.kind == "multiple_choice"
    assert enc.n_cands == [2, 3]
    assert enc.input_ids.shape[0] == 5
    assert enc.gold.tolist() == [1, 2]
    assert not enc.single_token  # " x" is two characters
    assert enc.cand_len.tolist() == [2, 2, 2, 2, 3]
    assert enc.labels == [[0, 1], [0, 1, 2]]


def test_encode_generation(tok):
    task = generate_task()
    exs = [{"q": "hi", "answer": ["Yo", "yo!"]}, {"q": "what", "answer": {"text": ["It"]}}]
    enc = task.encode(tok, exs)
    assert enc.kind == "generation"
    assert enc.references == [["Yo", "yo!"], ["It"]]
    assert enc.n_cands == [1, 1] and enc.gold.tolist() == [0, 0]
    assert not enc.single_token and enc.cand_ids is None
    assert enc.cand_len.tolist() == [4, 4]  # " Yo." and " It."
    assert enc.input_ids[1].tolist() == ids("Q: what A: It.")
    assert enc.input_ids[0].tolist() == [0, 0, *ids("Q: hi A: Yo.")]
    assert enc.prompt_ids.tolist() == [[0, 0, *ids("Q: hi A:")], ids("Q: what A:")]
    assert enc.prompt_mask.tolist() == [[0, 0] + [1] * 8, [1] * 10]


def test_encode_truncates_prompts_from_the_left(tok):
    task = classify(max_length=5)
    exs = [
        {"text": "abcdefgh", "label": "pos"},
        {"text": "a", "label": "neg"},
        {"text": "xyzxyz", "label": "neg"},
    ]
    enc = task.encode(tok, exs)
    assert enc.truncated == 2
    assert enc.input_ids.shape == (6, 5)
    assert enc.input_ids[0].tolist() == ids("gh =+")  # the end of the prompt is kept
    assert enc.input_ids[3].tolist() == [0, *ids("a =-")]  # short prompts are only padded
    assert enc.gold.tolist() == [0, 1, 1]


def test_encode_exact_fit_is_not_truncated(tok):
    enc = classify(max_length=5).encode(tok, [{"text": "ab", "label": "pos"}])  # "ab =" + 1
    assert enc.truncated == 0
    assert enc.input_ids[0].tolist() == ids("ab =+")


def test_encode_generation_truncation_counts(tok):
    task = generate_task(max_length=8)
    enc = task.encode(tok, [{"q": "long question", "answer": "ok"}])
    assert enc.truncated == 1
    # 8 tokens: the last 4 of the prompt, then the whole answer " ok."
    assert enc.input_ids.tolist() == [ids("n A: ok.")]
    assert enc.prompt_ids.tolist() == [ids("n A:")]
    assert enc.cand_len.tolist() == [4]


def test_encode_answer_too_long(tok):
    task = generate_task(max_length=4)
    with pytest.raises(ConfigError, match="not less than max_length=4: raise --max-length"):
        task.encode(tok, [{"q": "?", "answer": "abcdef"}])


def test_encode_empty_candidate(tok):
    task = PromptTask(template="{text}", verbalizer={"pos": "", "neg": "-"})
    with pytest.raises(ConfigError, match="a candidate tokenizes to nothing"):
        task.encode(tok, [{"text": "a", "label": "pos"}])


def test_encode_chat_template_needs_one(tok):
    with pytest.raises(ConfigError, match="this tokenizer has no chat template"):
        classify(chat_template=True).encode(tok, [{"text": "a", "label": "pos"}])


def test_check_tokens(tok):
    assert classify().check_tokens(tok) == []
    warn = PromptTask(template="{t}", verbalizer={"pos": " good", "neg": "-"}).check_tokens(tok)
    assert len(warn) == 1 and "' good' (pos) is 5 tokens" in warn[0]
    with pytest.raises(ConfigError, match="is empty after tokenization"):
        PromptTask(template="{t}", verbalizer={"pos": "", "neg": "-"}).check_tokens(tok)
    with pytest.raises(ConfigError, match="tokenize identically"):
        PromptTask(template="{t}", verbalizer={"pos": "é", "neg": "ü"}).check_tokens(tok)
    assert choice().check_tokens(tok) == []


# ----------------------------------------------------------------------------- losses


def test_scores_to_predictions_and_losses(tok):
    enc = classify().encode(tok, [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    scores = torch.tensor([2.0, 0.0, 1.0, 0.0])  # example 2 predicted wrong
    assert predictions(scores, enc) == ["pos", "pos"]
    assert n_correct(scores, enc) == 1
    terms = cross_entropy_terms(scores, enc)
    expected = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(1.0))]
    assert terms.tolist() == pytest.approx(expected)
    assert float(cross_entropy(scores, enc)) == pytest.approx(sum(expected) / 2)
    ce = loss_terms(scores, enc, "ce")
    assert (ce.count, ce.correct) == (2, 1.0)
    assert ce.loss == pytest.approx(sum(expected) / 2)
    acc = loss_terms(scores, enc, "accuracy")
    assert (acc.loss_sum, acc.count, acc.correct) == (1.0, 2, 1.0)


def test_generation_loss_is_the_negative_log_likelihood(tok):
    enc = generate_task().encode(tok, [{"q": "a", "answer": "b"}, {"q": "c", "answer": "d"}])
    scores = torch.tensor([-0.5, -2.0])
    assert cross_entropy_terms(scores, enc).tolist() == [0.5, 2.0]
    t = loss_terms(scores, enc, "ce")
    assert (t.loss_sum, t.count, t.correct) == (2.5, 2, 0.0)


def test_loss_terms_add_up():
    a, b = LossTerms(1.0, 2, 1.0), LossTerms(3.0, 2, 2.0)
    s = a + b
    assert (s.loss_sum, s.count, s.correct) == (4.0, 4, 3.0)
    assert s.loss == 1.0
    assert LossTerms(0.0, 0, 0.0).loss == 0.0  # an empty shard divides by nothing


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("  a   banana, an  apple ", "banana apple"),
        ("Theatre", "theatre"),  # "the" only as a word
        ("A", ""),
        ("", ""),
        ("U.S.A.", "usa"),
        ("rock-n-roll", "rocknroll"),
        ("Café  Ünïcode", "café ünïcode"),
        ("“quoted” — dash", "“quoted” — dash"),  # only ASCII punctuation is removed
        ("the\tanswer\nis 42", "answer is 42"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert exact_match("paris", ["London", "Paris"]) == 1.0
    assert exact_match("", [""]) == 1.0
    assert exact_match("the", ["a"]) == 1.0  # both normalise to nothing
    assert exact_match("x", []) == 0.0
    assert exact_match("", ["x"]) == 0.0


def test_token_f1():
    assert token_f1("the cat sat", ["cat sat"]) == 1.0
    assert token_f1("cat", ["cat sat"]) == pytest.approx(2 / 3)
    assert token_f1("dog", ["cat sat"]) == 0.0
    assert token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)  # repeats count once each
    assert token_f1("cat", ["dog", "cat sat", "cat"]) == 1.0  # the best reference
    assert token_f1("", [""]) == 1.0
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("x", [""]) == 0.0
    assert token_f1("x", []) == 0.0
    assert token_f1("Ünï côde", ["ünï"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "text, stop, out",
    [
        ("Paris\nQuestion: next", ["\n"], "Paris"),
        ("a###b\nc", ["\n", "###"], "a"),
        ("no stop here", ["\n"], "no stop here"),
        ("keep", ["", "\n"], "keep"),
        ("\nleading", ["\n"], ""),
        ("x", [], "x"),
    ],
)
def test_cut_at_stop(text, stop, out):
    assert cut_at_stop(text, stop) == out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_candidate_only_scoring_equals_full_logits_scoring(tok, arch):
    """Single-token label words scored from the candidates' output rows alone (what the
    trainer does to skip perturbing the whole head) give the full head's log-softmax up to
    a per-example constant: the same predictions and the same candidate cross-entropy."""
    from tinymodels import tiny_model

    from mezo_ckpt.trainer.tasks import head_rows_supported, score_candidates

    model = tiny_model(arch)
    assert head_rows_supported(model)
    task = PromptTask(template="{text} =", verbalizer={"a": "+", "b": "-", "c": "?"})
    exs = [{"text": t, "label": lab} for t, lab in (("ab", "a"), ("xyz w", "c"), ("q", "b"))]
    enc = task.encode(tok, exs)
    seen = []

    def rows(head, ids):
        seen.append(ids.tolist())
        return head.weight[ids]

    with torch.inference_mode():
        fast = score_candidates(model, enc, rows=rows)
        full = score_candidates(model, enc)
    assert seen == [sorted(set(ids("+-?")))]  # only the candidates' rows were asked for
    f, g = fast.view(3, 3), full.view(3, 3)
    torch.testing.assert_close(
        f - f.logsumexp(1, keepdim=True), g - g.logsumexp(1, keepdim=True), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(f.argmax(1), g.argmax(1))
    torch.testing.assert_close(cross_entropy(fast, enc), cross_entropy(full, enc))
