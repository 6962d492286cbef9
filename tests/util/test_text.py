"""mezo_ckpt.util.text: untrusted strings made safe for a terminal (clean), for inline
markdown (md), for a code span (md_code) and for a fenced Python snippet (py_literal)."""

from __future__ import annotations

import ast
import re

import pytest

from mezo_ckpt.util.text import clean, md, md_code, py_literal

#: Every character clean() must neutralize, and how it shows it.
UNSAFE = {
    "\x00": "\\x00",
    "\x07": "\\x07",
    "\x08": "\\x08",
    "\x0b": "\\x0b",
    "\x0c": "\\x0c",
    "\r": "\\x0d",
    "\x1b": "\\x1b",
    "\x1f": "\\x1f",
    "\x7f": "\\x7f",
    "\x85": "\\x85",
    "\x9b": "\\x9b",
    "\x9f": "\\x9f",
    "\u200e": "\\u200e",
    "\u200f": "\\u200f",
    "\u202a": "\\u202a",
    "\u202e": "\\u202e",
    "\u2066": "\\u2066",
    "\u2069": "\\u2069",
}


@pytest.mark.parametrize("char,shown", list(UNSAFE.items()), ids=lambda v: ascii(v))
def test_clean_shows_each_control_character_escaped(char, shown):
    assert clean(f"a{char}b") == f"a{shown}b"
    assert clean(f"a{char}b", keep_newlines=True) == f"a{shown}b"


def test_clean_keeps_printable_text_and_unicode():
    text = "Grüße, 世界! ~ \u00a0 é \U0001f600 {x} [y](z) `c` \\x1b"
    assert clean(text) == text
    assert clean("") == ""


def test_clean_newlines_and_tabs():
    assert clean("one\ntwo\tthree") == "one\\ntwo three"
    assert clean("one\ntwo\tthree", keep_newlines=True) == "one\ntwo\tthree"
    # a CR is always escaped: it could overwrite the line it is on
    assert clean("ok\rFAKE", keep_newlines=True) == "ok\\x0dFAKE"


def test_clean_terminal_escape_sequence_is_inert():
    hostile = "\x1b]0;pwned\x07\x1b[2J\x1b[8mhidden\u202eevil"
    out = clean(hostile)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e]", out)
    assert out == "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[8mhidden\\u202eevil"


def test_clean_converts_non_strings():
    assert clean(42) == "42"
    assert clean(None) == "None"
    assert clean(["a\x1b", 1]) == "['a\\x1b', 1]"  # str() of a list shows the repr
    assert clean(b"x\n") == "b'x\\n'"  # the repr already escapes


def test_md_escapes_every_markup_character():
    special = "\\`*_{}[]()#+-.!|<>~^$&"
    assert md(special) == "".join("\\" + c for c in special)
    assert md("[click](http://evil.example)") == "\\[click\\]\\(http://evil\\.example\\)"
    assert md("<img src=x onerror=alert(1)>") == "\\<img src=x onerror=alert\\(1\\)\\>"
    assert md("plain words, 42: fine") == "plain words, 42: fine"


def test_md_is_one_clean_line():
    out = md("# title\n\n```\ncode\x1b")
    assert "\n" not in out and "\x1b" not in out
    # the newline becomes a literal backslash-n, whose backslash is itself escaped
    assert out.startswith("\\# title\\\\n")
    assert "\\`\\`\\`" in out
    assert md(3.5) == "3\\.5"


def test_md_code_has_no_backticks():
    assert md_code("a`b``c") == "a'b''c"
    assert md_code("x\x1by\nz") == "x\\x1by\\nz"
    assert md_code("*not* [markup]") == "*not* [markup]"  # a code span shows it as is


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "with `backticks` and ```fences```",
        "quotes ' and \" and \\ backslash",
        "controls \x1b[31m \x00 \x7f and bidi \u202e\u2066 and newline\n",
        "unicode Grüße 世界",
        "",
    ],
    ids=range(6),
)
def test_py_literal_of_a_string_evaluates_back(value):
    text = py_literal(value)
    assert "`" not in text
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text)
    assert ast.literal_eval(text) == value


@pytest.mark.parametrize(
    "value",
    [
        {"text": "a `b`", "label": "x\x1b"},
        ["first option", "second ```option```"],
        {"n": 3, "f": 0.5, "nested": ["\u202e"]},
        7,
    ],
    ids=range(4),
)
def test_py_literal_of_json_values_evaluates_back(value):
    text = py_literal(value)
    assert "`" not in text and "\x1b" not in text and "\u202e" not in text
    assert ast.literal_eval(text) == value


def test_py_literal_spells_python_not_json():
    import ast

    for value in (True, None, [1, "a", True, None], {"p": " good", "f": False}):
        assert ast.literal_eval(py_literal(value)) == value
    assert py_literal(float("nan")) == "float('nan')"
