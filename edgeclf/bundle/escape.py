"""The one way a value enters generated code or Markdown: checked against a closed set, or escaped.

Each generated language has exactly one escaper here, and the templates (code.py) accept only
`Code` values, which only these functions make. A manifest, run.json or bench.json may come
from someone else, so none of their strings is ever pasted as it is, not even into a comment.
"""
from __future__ import annotations

import math
import numbers
import re
import unicodedata

from edgeclf.bundle import BundleError

# Characters that are invisible or reorder text: shown as U+XXXX in Markdown, \u escapes in code.
INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]*")  # what a closed set may hold
PROSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.,()<=>+-]*")  # a format's own words (its install hint): no quote, no escape
REMAKE = "re-export the artefact with `edgeclf export`"


class Code(str):
    """Text that is safe to paste into a template of `lang` ("any": every language, comments too)."""

    lang: str

    def __new__(cls, text: str, lang: str) -> "Code":
        code = super().__new__(cls, text)
        code.lang = lang
        return code


def one_of(value, allowed, what: str) -> Code:
    """A value from a closed set of plain words (an arch, dtype, quant mode): safe anywhere."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed or not WORD.fullmatch(value):
        raise BundleError(f"{what} is {value!r}, not one of {', '.join(allowed)}", REMAKE)
    return Code(value, "any")


def prose(value, what: str) -> Code:
    """A short text edgeclf's own code declares (e.g. a format's install hint), checked to be plain: safe anywhere."""
    if not isinstance(value, str) or not PROSE.fullmatch(value):
        raise BundleError(f"{what} is {value!r}, which is not plain words", REMAKE)
    return Code(value, "any")


def integer(value, what: str) -> Code:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BundleError(f"{what} is {value!r}, not an integer", REMAKE)
    return Code(str(int(value)), "any")


def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise BundleError(f"{what} is {value!r}, not a finite number", REMAKE)
    return float(value)


def python(value, what: str = "value") -> Code:
    """A Python literal: `repr` of str, finite numbers, bools, None and lists/tuples of them."""
    def check(v):
        if isinstance(v, (list, tuple)):
            for item in v:
                check(item)
        elif isinstance(v, float):
            _finite(v, what)
        elif not (v is None or isinstance(v, (str, bool, int))):
            raise BundleError(f"{what} is {v!r}, which has no safe Python literal", REMAKE)
    check(value)
    return Code(repr(value), "python")


def _escape_chars(text: str, simple: dict[str, str], unicode_escape) -> str:
    if any(unicodedata.category(ch) == "Cs" for ch in text):
        raise BundleError(f"{text!r} is not valid Unicode (undecodable bytes)", REMAKE)
    out = []
    for ch in text:
        if ch in simple:
            out.append(simple[ch])
        elif ch.isascii() and ch.isprintable():
            out.append(ch)
        else:
            out.append(unicode_escape(ch))
    return "".join(out)


def _kotlin_unicode(ch: str) -> str:
    # Kotlin's \uXXXX is UTF-16; characters beyond the BMP become a surrogate pair.
    units = ch.encode("utf-16-be")
    return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04X}" for i in range(0, len(units), 2))


KOTLIN_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
SWIFT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def kotlin(value, what: str = "value") -> Code:
    """A Kotlin literal: a string with \\ " $ and every non-printable or non-ASCII character escaped,
    an Int, or a Float (`1.0f`)."""
    if isinstance(value, str):
        return Code('"' + _escape_chars(value, KOTLIN_ESCAPES, _kotlin_unicode) + '"', "kotlin")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return Code(str(int(value)), "kotlin")
    return Code(f"{_finite(value, what)!r}f", "kotlin")


def swift(value, what: str = "value") -> Code:
    """A Swift literal: a string with \\ and " escaped (so no \\( interpolation) and every
    non-printable or non-ASCII character as \\u{...}, an Int, or a Float."""
    if isinstance(value, str):
        return Code('"' + _escape_chars(value, SWIFT_ESCAPES, lambda ch: f"\\u{{{ord(ch):X}}}") + '"', "swift")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return Code(str(int(value)), "swift")
    return Code(repr(_finite(value, what)), "swift")


# Markdown punctuation that could start emphasis, code, links, tables, math or raw HTML.
MARKDOWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"} | {
    ch: "\\" + ch for ch in "\\`*_[]|~$#!{}"}


def markdown(value) -> str:
    """Inline Markdown text: HTML and Markdown metacharacters neutralised, invisible or
    text-reordering characters (U+202E, zero-width ones, line breaks) shown as U+XXXX."""
    text = "n/a" if value is None else str(value)
    out = []
    for ch in text:
        if ch in MARKDOWN_ESCAPES:
            out.append(MARKDOWN_ESCAPES[ch])
        elif unicodedata.category(ch) in INVISIBLE:
            out.append(f"U+{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)
