"""mezo_ckpt.trainer.config: coercion, precedence, suggestions, validation, recipes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from mezo_ckpt.errors import ConfigError
from mezo_ckpt.recipes import MEDIUM, NAMES
from mezo_ckpt.trainer.config import (
    ALIASES,
    NO_DECAY_DEFAULT,
    TrainConfig,
    coerce,
    parse_set,
    resolve_config,
    resolve_with_sources,
)
from mezo_ckpt.trainer.schedule import SCHEDULES
from mezo_ckpt.trainer.yaml_files import load_sweep, load_yaml

#: Flags that make a valid custom classification task without touching the disk.
CUSTOM = {
    "task": "custom",
    "train_file": "train.jsonl",
    "template": "{text} =",
    "verbalizer": "pos=+,neg=-",
}


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-5", 1e-5),
        ("3e-05", 3e-5),
        ("1E-5", 1e-5),
        ("1.0e-3", 1e-3),
        (" 2.5e-4 ", 2.5e-4),
        ("0.00003", 3e-5),
        (".5", 0.5),
        ("1_000", 1000.0),
        ("-0", 0.0),
        (1, 1.0),
        (2.5, 2.5),
    ],
)
def test_float_accepts_the_ways_people_type_numbers(text, expected):
    v = coerce("lr", text, "--lr")
    assert isinstance(v, float)
    assert v == pytest.approx(expected, rel=0, abs=0)


@pytest.mark.parametrize("text", ["abc", "1e-5x", "", "3e-5,", "5%", "inf", "-inf", "nan", True])
def test_float_refuses_non_numbers_naming_source_and_setting(text):
    with pytest.raises(ConfigError) as e:
        coerce("lr", text, "--lr")
    msg = str(e.value)
    assert msg.startswith("--lr: lr=")
    assert "number" in msg


@pytest.mark.parametrize(
    "text, expected",
    [("1_000", 1000), ("1e3", 1000), ("20000", 20000), (" 7 ", 7), (5.0, 5), (12, 12), ("-3", -3)],
)
def test_int_accepts_notations(text, expected):
    v = coerce("steps", text, "--steps")
    assert type(v) is int
    assert v == expected


@pytest.mark.parametrize("text", ["1.5", "abc", "", "inf", "nan", True, False, 2.5, "1e-3"])
def test_int_refuses_fractions_bools_and_words(text):
    with pytest.raises(ConfigError, match=r"--steps: steps=.*must be an integer"):
        coerce("steps", text, "--steps")


@pytest.mark.parametrize("seed", [2**53 + 1, 12345678901234567, 2**63 - 1])
def test_large_integer_typed_as_text_is_exact(seed):
    assert coerce("seed", str(seed), "--seed") == seed


def test_large_integer_given_as_int_is_exact():
    assert coerce("seed", 2**63 - 1, "config") == 2**63 - 1


# ----------------------------------------------------------------------------- booleans


@pytest.mark.parametrize("text", ["true", "True", "TRUE", "yes", "Yes", " on ", "1", "y", 1, True])
def test_bool_true_spellings(text):
    assert coerce("eval_test", text, "--set") is True


@pytest.mark.parametrize("text", ["false", "False", "no", "NO", "off", "0", "n", 0, False])
def test_bool_false_spellings(text):
    assert coerce("eval_test", text, "--set") is False


@pytest.mark.parametrize("text", ["maybe", "", 2, -1, 1.0, "t", None, ["true"]])
def test_bool_refuses_other_values(text):
    with pytest.raises(ConfigError, match="eval_test"):
        coerce("eval_test", text, "--set")


# ----------------------------------------------------------------------------- none, strings


@pytest.mark.parametrize("text", ["none", "None", "null", "~", "", "  "])
def test_optional_settings_accept_none_spellings(text):
    assert coerce("train_examples", text, "x") is None
    assert coerce("template", text, "x") is None
    assert coerce("verbalizer", text, "x") is None


def test_required_setting_refuses_none():
    with pytest.raises(ConfigError, match="steps=None: a value is required"):
        coerce("steps", None, "recipe.yaml:3")


def test_required_string_keeps_the_word_none():
    # only optional settings read "none" as no value
    assert coerce("label_field", "none", "x") == "none"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fp32", "float32"),
        ("BF16", "bfloat16"),
        ("fp16", "float16"),
        ("half", "float16"),
        (" Float32 ", "float32"),
        ("bfloat16", "bfloat16"),
    ],
)
def test_dtype_aliases(text, expected):
    assert coerce("dtype", text, "--dtype") == expected


def test_dtype_unknown():
    with pytest.raises(ConfigError, match="use one of float32, bfloat16, float16"):
        coerce("dtype", "float64", "--dtype")


def test_choice_typo_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean 'cosine'\?"):
        coerce("schedule", "cosin", "--schedule")


def test_choice_far_off_gets_no_suggestion():
    with pytest.raises(ConfigError) as e:
        coerce("schedule", "zzzzzz", "--schedule")
    assert "did you mean" not in str(e.value)
    for s in SCHEDULES:
        assert s in str(e.value)


def test_string_from_number_and_refusals():
    assert coerce("template", 5, "x") == "5"
    assert coerce("template", "héllo {text} ✓", "x") == "héllo {text} ✓"
    for bad in (True, ["a"], {"a": 1}):
        with pytest.raises(ConfigError, match="must be a string"):
            coerce("template", bad, "x")


def test_string_keeps_surrounding_spaces():
    assert coerce("option_template", " {option}", "x") == " {option}"


# ----------------------------------------------------------------------------- lists


@pytest.mark.parametrize(
    "value, expected",
    [
        ("q_proj,v_proj", ["q_proj", "v_proj"]),
        (" q_proj , v_proj ,, ", ["q_proj", "v_proj"]),
        ("q_proj", ["q_proj"]),
        ("", []),
        (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
        (("a", "b"), ["a", "b"]),
        (["layer", 3, 1.5], ["layer", "3", "1.5"]),
        ("ünï,cødé", ["ünï", "cødé"]),
    ],
)
def test_list_values(value, expected):
    assert coerce("lora_targets", value, "x") == expected


@pytest.mark.parametrize("value", [{"a": "b"}, [["a"]], [{"a": 1}], 5])
def test_list_refuses_other_shapes(value):
    with pytest.raises(ConfigError, match="lora_targets"):
        coerce("lora_targets", value, "x")


def test_stop_given_as_a_newline_string_keeps_it():
    assert coerce("stop", "\n", "recipe.yaml:4") == ["\n"]


def test_stop_given_as_a_yaml_list_keeps_whitespace():
    assert coerce("stop", ["\n", "###"], "x") == ["\n", "###"]


# ----------------------------------------------------------------------------- mappings


@pytest.mark.parametrize(
    "value, expected",
    [
        ("pos=+,neg=-", {"pos": "+", "neg": "-"}),
        ("positive= great,negative= terrible", {"positive": " great", "negative": " terrible"}),
        (" pos = +, neg = -", {"pos": " +", "neg": " -"}),
        ("a=1=2", {"a": "1=2"}),
        ("pos=👍,neg=👎", {"pos": "👍", "neg": "👎"}),
        ('{"0": " terrible", "1": " great"}', {"0": " terrible", "1": " great"}),
        ({0: "no", 1: "yes"}, {"0": "no", "1": "yes"}),
        ("pos=+,,neg=-,", {"pos": "+", "neg": "-"}),
    ],
)
def test_mapping_values(value, expected):
    assert coerce("verbalizer", value, "--verbalizer") == expected


def test_mapping_empty_text_for_required_mapping():
    assert coerce("columns", "", "x") == {}
    assert coerce("columns", "text=sentence, label=gold", "x") == {
        "text": "sentence",
        "label": "gold",
    }


@pytest.mark.parametrize(
    "value, why",
    [
        ("pos", "key=value pairs"),
        ("pos=+,neg", "key=value pairs"),
        ('{"pos": "+",}', "not valid JSON"),
        (["pos", "neg"], "must be a mapping"),
        (5, "must be a mapping"),
    ],
)
def test_mapping_refusals(value, why):
    with pytest.raises(ConfigError, match=why) as e:
        coerce("verbalizer", value, "--verbalizer")
    assert str(e.value).startswith("--verbalizer: verbalizer=")


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    "name, guess",
    [
        ("learning_rate", "lr"),
        ("epsilon", "eps"),
        ("max_steps", "steps"),
        ("bs", "batch_size"),
        ("lr_scheduler_type", "schedule"),
        ("stpes", "steps"),
        ("batchsize", "batch_size"),
        ("warmup_step", "warmup_steps"),
    ],
)
def test_unknown_setting_suggests(name, guess):
    with pytest.raises(ConfigError) as e:
        coerce(name, "1", "recipe.yaml:7")
    msg = str(e.value)
    assert msg.startswith("recipe.yaml:7: unknown setting")
    assert f"did you mean {guess!r}?" in msg


def test_unknown_setting_without_a_close_name():
    with pytest.raises(ConfigError) as e:
        coerce("qqqqqqqqqq", "1", "--set qqqqqqqqqq=1")
    assert "did you mean" not in str(e.value)
    assert "'qqqqqqqqqq'" in str(e.value)


def test_every_alias_names_a_real_setting():
    fields = set(TrainConfig.fields())
    assert set(ALIASES.values()) <= fields
    assert not set(ALIASES) & fields  # an alias never shadows a real setting


def test_unknown_key_in_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "steps: 10\nlearning_rate: 1e-5\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(p)
    assert str(e.value).startswith(f"{p}:2: unknown setting 'learning_rate'")
    assert "did you mean 'lr'" in str(e.value)


# ----------------------------------------------------------------------------- sources


def test_resolve_defaults_equal_the_dataclass():
    assert resolve_config() == TrainConfig()
    assert resolve_with_sources()[1] == {}


def test_precedence_defaults_yaml_flags_set(tmp_path):
    p = write(tmp_path, "lr: 1e-4\nbatch_size: 8\nsteps: 50\nseed: 3\n")
    cfg, src = resolve_with_sources(
        p,
        flags={"lr": "2e-4", "batch_size": None, "seed": "4"},
        sets=["lr=3e-4", "eps=1e-2"],
    )
    assert cfg.lr == 3e-4  # --set beats flag beats YAML
    assert cfg.seed == 4  # flag beats YAML
    assert cfg.batch_size == 8  # a None flag is "not given"
    assert cfg.steps == 50  # YAML beats default
    assert cfg.eps == 1e-2
    assert cfg.schedule == "constant"  # default
    assert src["lr"] == "--set lr=3e-4"
    assert src["seed"] == "--seed"
    assert src["batch_size"] == f"{p}:2"
    assert src["steps"] == f"{p}:3"
    assert "schedule" not in src


def test_later_set_beats_earlier_set():
    cfg, src = resolve_with_sources(sets=["steps=5", "steps=7"])
    assert cfg.steps == 7
    assert src["steps"] == "--set steps=7"


def test_base_config_is_the_starting_point():
    base = TrainConfig(steps=11, lr=1e-2)
    cfg = resolve_config(flags={"lr": "5e-3"}, base=base)
    assert (cfg.steps, cfg.lr) == (11, 5e-3)


def test_flag_error_names_the_flag_with_dashes():
    with pytest.raises(ConfigError) as e:
        resolve_config(flags={"batch_size": "eight"})
    assert str(e.value).startswith("--batch-size: batch_size='eight'")


def test_validation_error_names_the_source(tmp_path):
    p = write(tmp_path, "# comment\nsteps: 0\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(p)
    assert str(e.value).startswith(f"{p}:2: steps=0: must be a positive integer")
    with pytest.raises(ConfigError) as e:
        resolve_config(sets=["steps=0"])
    assert str(e.value).startswith("--set steps=0: steps=0")


# ----------------------------------------------------------------------------- YAML


def test_yaml_dashes_and_yaml11_exponents(tmp_path):
    # YAML 1.1 reads 1e-5 (no dot) as a string: it must still be a number
    p = write(tmp_path, "batch-size: 4\nlr: 1e-5\neps: 1.0e-3\nwarmup_steps: 1_000\n")
    cfg = resolve_config(p)
    assert cfg.batch_size == 4
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.eps == 1e-3
    assert cfg.warmup_steps == 1000


def test_yaml_line_numbers(tmp_path):
    p = write(tmp_path, "steps: 10\n\n# x\nseed: 3\n")
    data, lines = load_yaml(p)
    assert data == {"steps": 10, "seed": 3}
    assert lines == {"steps": 1, "seed": 4}


def test_yaml_empty_file_is_defaults(tmp_path):
    assert resolve_config(write(tmp_path, "")) == TrainConfig()
    assert resolve_config(write(tmp_path, "# only a comment\n", "c.yaml")) == TrainConfig()


def test_yaml_with_bom_and_unicode(tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_bytes("\ufefftemplate: '{text} – ça'\n".encode())
    assert resolve_config(p).template == "{text} – ça"


@pytest.mark.parametrize(
    "text, why",
    [
        ("- steps: 1\n", "top level must be a mapping"),
        ("just a string\n", "top level must be a mapping"),
        ("steps: [1, 2\n", "not valid YAML"),
    ],
)
def test_yaml_bad_shapes(tmp_path, text, why):
    with pytest.raises(ConfigError, match=why):
        resolve_config(write(tmp_path, text))


def test_yaml_not_utf8(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes("template: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve_config(p)


def test_yaml_missing_file_lists_packaged_recipes(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_config(tmp_path / "nope.yaml")
    assert "config file not found" in str(e.value)
    assert "sst2" in str(e.value)


# ----------------------------------------------------------------------------- --set


def test_parse_set_keeps_the_value_as_typed():
    assert parse_set("template= {text} It was") == ("template", " {text} It was")
    assert parse_set("batch-size=8") == ("batch_size", "8")
    assert parse_set("lr=1e-5") == ("lr", "1e-5")


def test_parse_set_flow_style_lists_and_mappings():
    assert parse_set("stop=[a, '###']") == ("stop", ["a", "###"])
    assert parse_set('verbalizer={pos: " +", neg: " -"}') == (
        "verbalizer",
        {"pos": " +", "neg": " -"},
    )
    # a scalar setting keeps brackets as text
    assert parse_set("template=[{text}]") == ("template", "[{text}]")


def test_set_mapping_keeps_leading_spaces():
    cfg = resolve_config(flags=CUSTOM, sets=["verbalizer=positive= great,negative= bad"])
    assert cfg.verbalizer == {"positive": " great", "negative": " bad"}


@pytest.mark.parametrize("item, why", [("lr", "use key=value"), ("=3", "the key is empty")])
def test_parse_set_refusals(item, why):
    with pytest.raises(ConfigError, match=why):
        parse_set(item)


def test_parse_set_bad_flow_style():
    with pytest.raises(ConfigError, match="not a valid list or mapping"):
        parse_set("stop=[a, b")


def test_set_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"--set learning_rate=1e-5: unknown setting.*'lr'"):
        resolve_config(sets=["learning_rate=1e-5"])


def test_set_empty_list_clears_it():
    assert resolve_config(sets=["frozen="]).frozen == []


# ----------------------------------------------------------------------------- validate

INVALID = [
    ({"device": "gpu"}, "device"),
    ({"device": "CUDA"}, "device"),
    ({"task": "custom"}, "template"),
    ({"task": "custom", "train_file": "t.jsonl"}, "template"),
    ({"task": "custom", "train_file": "t.jsonl", "template": "{x}"}, "verbalizer"),
    ({"objective": "python:mod"}, "objective"),
    ({"objective": "python::fn"}, "objective"),
    ({"objective": "python:a:b:c"}, "objective"),
    ({"objective": "mse"}, "objective"),
    ({"objective": "f1"}, "objective"),
    ({"objective": "exact_match"}, "objective"),
    (
        {**CUSTOM, "verbalizer": None, "target_field": "answer", "objective": "accuracy"},
        "objective",
    ),
    ({"steps": 0}, "steps"),
    ({"steps": 2**32}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -4}, "batch_size"),
    ({"max_length": 0}, "max_length"),
    ({"n_directions": 0}, "n_directions"),
    ({"n_directions": 65}, "n_directions"),
    ({"eval_batch_size": 0}, "eval_batch_size"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"lora_r": 0}, "lora_r"),
    ({"prefix_tokens": 0}, "prefix_tokens"),
    ({"estimator": "fzoo"}, "estimator"),
    ({"estimator": "fzoo", "n_directions": 1}, "estimator"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"momentum_window": 0}, "momentum_window"),
    ({"momentum_window": 65}, "momentum_window"),
    ({"lr": -1e-5}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"min_lr_ratio": -0.5}, "min_lr_ratio"),
    ({"lora_dropout": -0.1}, "lora_dropout"),
    ({"lora_dropout": 0.05}, "lora_dropout"),
    ({"eps": 0}, "eps"),
    ({"eps": -1e-3}, "eps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"eval_every": -1}, "eval_every"),
    ({"eval_examples": -1}, "eval_examples"),
    ({"trainable": ""}, "trainable"),
    ({"threads": 0}, "threads"),
    ({"schedule": "step"}, "schedule"),
    ({"z": "uniform"}, "z"),
    ({"rounding": "floor"}, "rounding"),
    ({"peft": "ia3"}, "peft"),
    ({"report_to": "mlflow"}, "report_to"),
    ({"dist_mode": "model"}, "dist_mode"),
    ({"task": "qa"}, "task"),
]


@pytest.mark.parametrize(
    "flags, name", INVALID, ids=[f"{n}-{i}" for i, (_, n) in enumerate(INVALID)]
)
def test_validate_rule_names_the_setting(flags, name):
    with pytest.raises(ConfigError) as e:
        resolve_config(flags=flags)
    msg = str(e.value)
    assert f"{name}=" in msg
    # the setting that broke the rule was given as a flag: the message says which
    if name in flags:
        assert msg.startswith("--" + name.replace("_", "-") + ":")


@pytest.mark.parametrize(
    "flags",
    [
        {"device": "cuda:1"},
        {"device": "cpu"},
        {"device": "cuda"},
        {"steps": 2**32 - 1},
        {"n_directions": 64},
        {"estimator": "fzoo", "n_directions": 2},
        {"estimator": "one-sided"},
        {"momentum": 0.999, "momentum_window": 64},
        {"momentum_window": 1},
        {"seed": 2**63 - 1},
        {"seed": 0},
        {"lr": 0},
        {"eps": 1e-12},
        {"warmup_steps": 0, "eval_every": 0, "eval_examples": 0},
        {"threads": 1},
        {"objective": "python:my.module:score"},
        {"objective": "accuracy"},
        {**CUSTOM, "verbalizer": None, "target_field": "answer", "objective": "f1"},
        {**CUSTOM, "verbalizer": None, "options_field": "choice1,choice2"},
        {**CUSTOM, "train_file": None, "dataset": "some/dataset"},
    ],
)
def test_validate_accepts_boundaries(flags):
    resolve_config(flags=flags)


def test_custom_task_settings_need_no_files():
    """Examples may come in memory (train(data=...)): the loader, not the settings, says
    when a custom task has no data (tests/trainer/test_inputs.py)."""
    flags = {k: v for k, v in CUSTOM.items() if k != "train_file"}
    cfg = resolve_config(flags=flags)
    assert cfg.task == "custom" and cfg.verbalizer == {"pos": "+", "neg": "-"}
    assert TrainConfig.from_dict(flags).template == "{text} ="


@pytest.mark.parametrize("name", ["train_examples", "test_examples"])
def test_validate_refuses_negative_example_counts(name):
    with pytest.raises(ConfigError, match=name):
        resolve_config(flags={name: "-1"})


def test_validate_checks_types_of_a_hand_built_config():
    with pytest.raises(ConfigError, match="lr='fast'"):
        TrainConfig(lr="fast").validate()
    with pytest.raises(ConfigError, match="device"):
        TrainConfig().replace(device="tpu")


@pytest.mark.parametrize("change", [{"steps": "200"}, {"lr": "1e-5"}])
def test_replace_with_text_values_is_coerced_or_refused(change):
    try:
        out = TrainConfig().replace(**change)
    except ConfigError:
        return
    (name, text), *_ = change.items()
    assert getattr(out, name) == coerce(name, text, "x")


def test_replace_validates_and_keeps_the_original():
    cfg = TrainConfig()
    new = cfg.replace(steps=7)
    assert new.steps == 7 and cfg.steps == 100
    with pytest.raises(ConfigError, match="steps"):
        cfg.replace(steps=0)


# ----------------------------------------------------------------------------- helpers


def test_history_window():
    assert TrainConfig().history_window == 0
    assert TrainConfig(momentum=0.0, momentum_window=16).history_window == 0
    assert TrainConfig(momentum=0.9, momentum_window=16).history_window == 16
    assert TrainConfig(momentum=0.5).history_window == 8


def test_lr_at_follows_the_schedule():
    cfg = resolve_config(
        flags={"lr": "1e-3", "schedule": "linear", "steps": "10", "warmup_steps": "2"}
    )
    assert cfg.lr_at(0) == pytest.approx(5e-4)
    assert cfg.lr_at(1) == pytest.approx(1e-3)
    assert cfg.lr_at(2) == pytest.approx(1e-3)
    assert cfg.lr_at(6) == pytest.approx(5e-4)
    assert cfg.lr_at(10) == pytest.approx(0.0)
    const = TrainConfig(lr=2e-5)
    assert {const.lr_at(s) for s in (0, 50, 99, 1000)} == {2e-5}
    cos = TrainConfig(lr=1.0, schedule="cosine", steps=100, min_lr_ratio=0.1)
    assert cos.lr_at(50) == pytest.approx(0.55)
    assert cos.lr_at(100) == pytest.approx(0.1)


def test_to_dict_from_dict_round_trip():
    cfg = resolve_config(
        flags={
            **CUSTOM,
            "lr": "1e-5",
            "schedule": "cosine",
            "stop": None,
            "columns": "text=sentence",
            "max_memory": "0=20GiB,cpu=60GiB",
            "seed": "42",
            "threads": "2",
            "eval_test": "no",
            "lora_alpha": "32",
        },
        sets=['stop=["\\n", "###"]'],
    )
    d = cfg.to_dict()
    assert set(d) == set(TrainConfig.fields())
    back = TrainConfig.from_dict(d)
    assert back == cfg
    assert back.to_dict() == d
    assert back.stop == ["\n", "###"]
    assert back.lora_alpha == 32.0 and isinstance(back.lora_alpha, float)


def test_from_dict_names_where():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"steps": "many"}, where="train()")
    assert str(e.value).startswith("train(): steps='many'")


def test_default_lists_are_not_shared():
    a, b = TrainConfig(), TrainConfig()
    a.no_decay.append("extra")
    a.stop.append("###")
    assert b.no_decay == NO_DECAY_DEFAULT and "extra" not in NO_DECAY_DEFAULT
    assert b.stop == ["\n"]


def test_option_metadata():
    assert TrainConfig.option("model").trust == "repo"
    assert TrainConfig.option("train_file").trust == "path"
    assert TrainConfig.option("schedule").choices == SCHEDULES
    assert TrainConfig.option("steps").on_resume is True
    assert TrainConfig.option("fsync").cli is False
    assert TrainConfig.option("output").short == "-o"


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", NAMES)
def test_every_packaged_recipe_resolves(name):
    cfg, src = resolve_with_sources(name)
    assert cfg.task == "custom"
    assert cfg.dataset
    assert cfg.template
    if name in MEDIUM:  # Table 18's protocol: k = 16, batch 64, 100k steps, a grid
        assert cfg.k_shot == 16 and cfg.batch_size == 64 and cfg.steps == 100_000
        assert "{mask}" in cfg.template and cfg.test_examples == 1000
        sweep = load_sweep(name)
        assert sweep["grid"] == {"lr": [1e-7, 1e-6, 1e-5]}
        assert sweep["seeds"] == [13, 21, 42, 87, 100]
    else:
        assert cfg.steps == 20000 and load_sweep(name) == {}
    assert cfg.lr == 1e-6 and cfg.eps == 1e-3
    assert resolve_config(name + ".yaml") == cfg
    assert src["template"].startswith(name)


def test_sst2_recipe_and_override():
    cfg = resolve_config("sst2")
    assert cfg.dataset == "stanfordnlp/sst2"
    assert cfg.verbalizer == {"0": " terrible", "1": " great"}
    assert cfg.test_split is None
    assert not cfg.generation
    over = resolve_config("sst2", flags={"steps": "100", "lr": "1e-5"}, sets=["batch_size=4"])
    assert (over.steps, over.lr, over.batch_size) == (100, 1e-5, 4)
    assert over.dataset == "stanfordnlp/sst2"


def test_generation_recipes():
    squad = resolve_config("squad")
    assert squad.generation and squad.target_field
    drop = resolve_config("drop")
    assert drop.stop == ["\n"] and drop.max_length == 2048


def test_unknown_recipe_and_folder_names():
    with pytest.raises(ConfigError, match="packaged recipes: sst2"):
        resolve_config("sst3")
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config("recipes/sst2")


def test_a_local_file_named_like_a_recipe_is_named_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "steps: 3\n", "sst2")
    assert resolve_config("sst2").steps == 20000  # the packaged recipe, never the file
    cfg = resolve_config("./sst2")
    assert cfg.steps == 3 and cfg.dataset is None
    assert math.isclose(cfg.lr, TrainConfig().lr)


@pytest.mark.parametrize(
    "flags,match",
    [
        ({"min_lr_ratio": "1.5"}, "min_lr_ratio"),
        ({"device": "cuda:"}, "device"),
        ({"device": "cuda:abc"}, "device"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_more_refused_values(flags, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(flags=flags)


def test_cuda_device_forms_are_accepted():
    for dev in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert resolve_config(flags={"device": dev}).device == dev


def test_a_config_carries_only_its_settings():
    """Sources and in-memory data live beside the config, not patched onto it; values are
    typed at construction, and validate() checks without changing anything."""
    cfg, sources = resolve_with_sources(sets=["lr=2e-5"])
    assert sources == {"lr": "--set lr=2e-5"}
    assert set(vars(cfg)) == set(TrainConfig.fields())
    typed = TrainConfig(lr="1e-5", dtype="bf16", trainable="a*,b*")
    assert typed.lr == 1e-5 and typed.dtype == "bfloat16" and typed.trainable == ["a*", "b*"]
    before = typed.to_dict()
    typed.validate()
    assert typed.to_dict() == before
    # whether a custom task has its data is the data loader's question (a file, a dataset,
    # or examples handed over in memory): the settings alone are complete
    TrainConfig(task="custom", template="{text} =", verbalizer={"p": " p"}).validate()


def test_a_config_is_checked_once_when_built(monkeypatch):
    """Construction checks (every way of building one: the constructor, replace,
    dataclasses.replace, resolve); nothing downstream checks again."""
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="steps"):
        dataclasses.replace(TrainConfig(), steps=0)
    with pytest.raises(dataclasses.FrozenInstanceError):  # so it cannot go bad later
        TrainConfig().steps = 0
    calls = []
    real = TrainConfig.validate
    monkeypatch.setattr(TrainConfig, "validate", lambda self, *a: calls.append(1) or real(self, *a))
    resolve_config(flags={"lr": "1e-5"}, sets=["steps=3"])
    assert len(calls) == 1
    with pytest.raises(ConfigError) as e:
        resolve_config(flags={"batch_size": "0"})
    assert str(e.value).startswith("--batch-size: batch_size=0") and e.value.setting == "batch_size"
