"""Making untrusted strings (from trajectory headers, data, configs) safe to show.

A trajectory header is data anyone can write. Before one of its strings reaches a
terminal it loses every control character (an ESC sequence could retitle the window,
move the cursor or hide text) and the bidirectional overrides that reorder what is
displayed; before it reaches a model card's markdown it is also escaped, so it renders
as the text it is and never as markup, links, HTML or a code fence.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: C0 and C1 controls (tab and newline handled by the callers), DEL, and the Unicode
#: bidirectional embedding / override / isolate characters.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~^$&])")


def clean(value: Any, *, keep_newlines: bool = False) -> str:
    """``str(value)`` without control characters (each shown as ``\\xNN`` / ``\\uNNNN``)."""
    s = value if isinstance(value, str) else str(value)
    if not keep_newlines:
        s = s.replace("\n", "\\n").replace("\t", " ")

    def show(m: re.Match) -> str:
        c = ord(m.group(0))
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _UNSAFE.sub(show, s)


def md(value: Any) -> str:
    """Inline markdown text: cleaned, one line, every markup character escaped."""
    return _MD_SPECIAL.sub(r"\\\1", clean(value))


def md_code(value: Any) -> str:
    """Text for inside a single-backtick code span (cleaned; backticks replaced)."""
    return clean(value).replace("`", "'")


def _literal(value: Any) -> str:
    """JSON's spelling where it is Python's too; ``True``/``False``/``None`` and
    non-finite floats where JSON's is not (``true``, ``null``, ``NaN`` would not run)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return json.dumps(value)


def py_literal(value: Any) -> str:
    """A Python literal of ``value`` safe inside a fenced code block (no backticks)."""
    # repr escapes every non-printable character (controls, bidi overrides) itself.
    text = repr(value) if isinstance(value, str) else _literal(value)
    return text.replace("`", "\\x60")
