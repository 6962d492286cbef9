"""The command line itself (mezo_ckpt/cli): how typed text reaches the settings.

End-to-end CLI behaviour lives in test_everyday.py and test_trust.py; this file holds
the CLI layer's own rules.
"""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from mezo_ckpt.cli import main
from mezo_ckpt.cli.train import unescape_text


def resolved(*args: str) -> dict:
    r = CliRunner().invoke(main, ["train", *args, "--print-config"])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.output)


def test_typed_newlines_and_tabs_in_text_settings_are_decoded():
    cfg = resolved(
        "--template",
        r"Review: {text}\nSentiment:",
        "--stop",
        r"\n,###",
        "--set",
        r"option_template=\t{option}",
        "--verbalizer",
        r"positive=\tyes,negative=\tno",
    )
    assert cfg["template"] == "Review: {text}\nSentiment:"
    assert cfg["stop"] == ["\n", "###"]
    assert cfg["option_template"] == "\t{option}"
    assert cfg["verbalizer"] == {"positive": "\tyes", "negative": "\tno"}


def test_other_backslashes_are_kept_and_paths_are_not_touched():
    assert unescape_text(r"C:\data\new") == "C:\\data\new"  # only \n, \t, \\ decode
    assert unescape_text(r"a\\nb") == "a\\nb"  # an escaped backslash stays one
    assert unescape_text(r"\d+") == r"\d+"
    assert unescape_text(3) == 3
    cfg = resolved(
        "--train-file", r"C:\new\table.jsonl", "--template", "{text}", "--target-field", "y"
    )
    assert cfg["train_file"] == r"C:\new\table.jsonl"  # not a text setting


def test_a_packaged_recipe_by_name():
    cfg = resolved("-c", "sst2")
    assert cfg["template"] == "{sentence} It was" and cfg["dataset"] == "stanfordnlp/sst2"
    r = CliRunner().invoke(main, ["train", "-c", "sst3", "--print-config"])
    assert r.exit_code == 2 and "packaged recipes: sst2" in r.output
