"""`mezo-ckpt train` (mezo_ckpt/cli/train.py) up to the point where training would start:
--print-config, the options generated from TrainConfig, the deprecated --no-test alias,
settings precedence, typed text, and bad values as one line with exit code 2."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from mezo_ckpt.cli import main
from mezo_ckpt.cli.train import (
    ESCAPED,
    SECTION_ORDER,
    _default_text,
    _metavar,
    _unescape_set,
    unescape_text,
)
from mezo_ckpt.trainer.config import TrainConfig


def train(*args: object):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def resolved(*args: object) -> dict:
    r = train(*args, "--print-config")
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.stdout)


# ----------------------------------------------------------------------------- --print-config


def test_print_config_without_flags_is_the_default_config():
    assert resolved() == TrainConfig().to_dict()


def test_print_config_shows_flags_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolved("--steps", "7", "--lr", "2e-4", "--seed", "3", "--no-eval-test")
    assert cfg["steps"] == 7 and cfg["lr"] == 2e-4 and cfg["seed"] == 3
    assert cfg["eval_test"] is False
    assert list(tmp_path.iterdir()) == []  # no trajectory, no journal


def test_settings_precedence_recipe_then_flags_then_set():
    assert resolved("-c", "sst2")["dataset"] == "stanfordnlp/sst2"
    assert resolved("-c", "sst2", "--lr", "1e-3")["lr"] == 1e-3
    assert resolved("-c", "sst2", "--lr", "1e-3", "--set", "lr=2e-3")["lr"] == 2e-3
    assert resolved("--set", "eval-every=9")["eval_every"] == 9  # - or _ in keys


def test_a_recipe_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 11\nlr: 0.5\n")
    cfg = resolved("-c", recipe, "--lr", "0.25")
    assert cfg["steps"] == 11 and cfg["lr"] == 0.25


@pytest.mark.parametrize("flag", ["--train-file", "--dataset"])
def test_data_without_a_task_means_the_custom_task(flag):
    cfg = resolved(flag, "data.jsonl", "--template", "{text}", "--target-field", "y")
    assert cfg["task"] == "custom"


def test_typed_escapes_are_decoded_in_text_settings_only():
    cfg = resolved(
        "--template", r"Q: {text}\nA:", "--set", r"target_template=\t{y}", "--target-field", "y"
    )
    assert cfg["template"] == "Q: {text}\nA:"
    assert cfg["target_template"] == "\t{y}"


# ----------------------------------------------------------------------------- --no-test


def test_the_deprecated_no_test_flag_still_works_with_a_note():
    r = train("--no-test", "--print-config")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout)["eval_test"] is False
    assert r.stderr == (
        "Note: --no-test is deprecated and will be removed in 0.4; use --no-eval-test.\n"
    )


def test_an_explicit_eval_test_wins_over_the_deprecated_flag():
    r = train("--no-test", "--eval-test", "--print-config")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout)["eval_test"] is True
    assert "deprecated" in r.stderr


def test_the_deprecated_flag_is_hidden_from_help():
    r = train("--help")
    assert r.exit_code == 0
    assert "--no-eval-test" in r.stdout
    assert "--no-test " not in r.stdout and "--no-test\n" not in r.stdout


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "abc"], "--lr: lr='abc': must be a number"),
        (["--steps", "-3"], "--steps: steps=-3: must be a positive integer"),
        (["--steps", "ten"], "--steps: steps='ten': must be an integer"),
        (["--z", "gauss"], "--z: z='gauss': use one of normal16, rademacher"),
        (["--set", "nosuch=1"], "--set nosuch=1: unknown setting 'nosuch'"),
        (["--set", "lr"], "--set 'lr': use key=value"),
        (["-c", "sst3"], "packaged recipes: sst2"),
    ],
)
def test_a_bad_value_is_one_config_error_line_and_exit_2(args, message):
    r = train(*args, "--print-config")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.startswith("Error (ConfigError): ")
    assert message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output


def test_a_custom_task_without_data_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """The settings are complete (data may come in memory through the API); the data
    loader refuses (before the model loads) and leaves nothing behind."""
    monkeypatch.chdir(tmp_path)
    r = train("--task", "custom", "--template", "{text} =", "--verbalizer", "p=a,n=b", "-q")
    assert r.exit_code == 2, r.output
    assert r.stderr == (
        "Error (ConfigError): task 'custom' has no training data: set --train-file or "
        "--dataset (or pass data= to mezo_ckpt.train)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_resume_and_overwrite_together_are_refused(tmp_path):
    r = train("--resume", tmp_path / "run.zst", "--overwrite")
    assert r.exit_code == 2
    assert r.stderr == (
        "Error (ConfigError): --resume continues a run; --overwrite starts one over: pick one\n"
    )


def test_an_option_of_the_wrong_kind_is_a_usage_error():
    r = train("--eval-test=maybe")
    assert r.exit_code == 2
    assert "Option '--eval-test' does not take a value" in r.stderr


# ----------------------------------------------------------------------------- --help


def test_help_lists_the_options_in_sections_in_order():
    r = train("--help")
    assert r.exit_code == 0
    at = [r.stdout.index(f"\n{s}:\n") for s in SECTION_ORDER]
    assert at == sorted(at)
    run_section = r.stdout[at[-1] :]
    for flag in ("--config", "--set", "--resume", "--overwrite", "--print-config", "--quiet"):
        assert flag in run_section
    assert "Settings precedence: defaults < -c recipe.yaml < flags < --set key=value" in r.stdout


def test_every_command_line_setting_has_an_option():
    r = train("--help")
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["opt"].cli:
            assert "--" + f.name.replace("_", "-") in r.stdout, f.name


def test_default_text_and_metavars():
    assert _default_text("lr") == f"  [default: {TrainConfig().lr}]"
    assert _default_text("model") == ""  # None shows no default
    assert _metavar(float) == "NUMBER" and _metavar(int | None) == "N"
    assert _metavar(list[str]) == "A,B,..." and _metavar(str) == "TEXT"


def test_unescape_helpers():
    assert unescape_text(r"a\nb\tc\\d") == "a\nb\tc\\d"
    assert unescape_text(r"trailing\\") == "trailing\\"
    assert unescape_text("\\") == "\\"
    assert unescape_text(None) is None
    assert _unescape_set(r"template={x}\n") == "template={x}\n"
    assert _unescape_set(r"option-template=\t{o}") == "option-template=\t{o}"
    assert _unescape_set(r"train_file=C:\new") == r"train_file=C:\new"
    assert _unescape_set("no-equals-sign") == "no-equals-sign"
    assert {"template", "stop", "verbalizer"} <= ESCAPED
