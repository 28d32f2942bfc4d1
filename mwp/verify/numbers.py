"""Exact numbers from text: the one place that turns "1,234.5", "$3", "50%", "3/4" or "7(2/3)" into a Fraction."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

PercentMode = Literal["fraction", "strip"]

# Teacher text is untrusted: cap the digits we are willing to turn into a number.
MAX_NUMBER_CHARS = 64

# A mixed number as Math23K writes it ("7((2)/(3))", "7(2/3)") or as prose does ("7 2/3").
_MIXED = re.compile(r"^(-?\d+)\s*(?:\(\(?(\d+)\)?/\(?(\d+)\)?\)|\s(\d+)/(\d+))$")
_FRACTION = re.compile(r"^\(*(-?\d+(?:\.\d+)?)\)*/\(*(-?\d+(?:\.\d+)?)\)*$")
_DECIMAL = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?$")
_GROUPED = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")

# A unit in parentheses after a number, as ASDiv writes answers: "9 (apples)", "3.5 (cm)".
_UNIT_SUFFIX = re.compile(r"\s*\((?=[^()]*[^\W\d_])[^()]*\)$")

# Numbers as they occur in running text: grouped thousands, decimals, simple fractions, percents.
# The look-behind is ASCII-only so that numbers glued to CJK text ("种了11棵") are still found
# while "x2" or "temp_a1" are not numbers; a "-" after a digit, ")" or "%" is an operator or a
# range dash ("10-5", "(3/4)-3.5", "24%-32%"), not a sign.
NUMBER_PATTERN = re.compile(
    r"(?<![A-Za-z0-9_.)%])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?%?"
    r"|(?<![A-Za-z0-9_.)%])-?\.\d+%?"
)


def parse_number(text: str | float | int | None, *, percent: PercentMode = "fraction") -> Fraction | None:
    """Parse one number exactly, or return None.

    A trailing unit in parentheses is dropped ("9 (apples)" -> 9).
    `percent="fraction"` reads "50%" as 1/2 (gold answers such as Math23K's); `percent="strip"`
    reads it as 50 (a model's "The answer is 50%" for a question that asks for the percentage).
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        if text != text or text in (float("inf"), float("-inf")):
            return None
        return Fraction(repr(text))
    s = str(text).strip()
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    s = s.replace("\u2212", "-").replace("$", "").replace("€", "").replace("£", "").replace("¥", "").strip()
    s = _UNIT_SUFFIX.sub("", s)
    s = _GROUPED.sub("", s).rstrip(".").strip()
    is_percent = s.endswith("%")
    if is_percent:
        s = s[:-1].strip()
    if s.startswith("(") and s.endswith(")") and _balanced(s[1:-1]):
        s = s[1:-1].strip()
    value = _parse_plain(s)
    if value is None:
        return None
    if is_percent and percent == "fraction":
        value /= 100
    return value


def _parse_plain(s: str) -> Fraction | None:
    if _DECIMAL.match(s):
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    m = _MIXED.match(s)
    if m:
        whole = int(m.group(1))
        num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
        if int(den) == 0:
            return None
        frac = Fraction(int(num), int(den))
        return whole - frac if s.startswith("-") else whole + frac
    m = _FRACTION.match(s.replace(" ", ""))
    if m:
        num, den = Fraction(m.group(1)), Fraction(m.group(2))
        return None if den == 0 else num / den
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


# The same without bare "a/b": Math23K writes "1300/600的商" for a division, "(1/2)" for a fraction.
_PARENTHESIZED_FRACTIONS_PATTERN = re.compile(
    r"(?<=\()-?\d+(?:\.\d+)?/\d+(?:\.\d+)?(?=\))"
    r"|(?<![A-Za-z0-9_.)%])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?%?"
    r"|(?<![A-Za-z0-9_.)%])-?\.\d+%?"
)


def find_numbers(text: str, *, bare_fractions: bool = True) -> list[str]:
    """The number strings of a text, in order (what N0..Nk placeholders and number checks refer to).

    With `bare_fractions=False` only a parenthesized "(a/b)" is one number (returned as "a/b"); a
    bare "a/b" is two numbers, as Math23K's text uses "/" for division.
    """
    pattern = NUMBER_PATTERN if bare_fractions else _PARENTHESIZED_FRACTIONS_PATTERN
    return [m.group(0) for m in pattern.finditer(text)]


def format_number(value: Fraction | None) -> str | None:
    """A short, exact, JSON-friendly rendering: "42", "0.375", "2/3"."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a terminating decimal
        text = f"{float(value):.12f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"
