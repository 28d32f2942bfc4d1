"""The one owner of "is this the same problem?": normalised question text, and leakage filtering.

Ids say nothing about content: MultiArith repeats questions under different ids, and ASDiv-A,
MultiArith and SVAMP share problems across datasets. Everything that keeps training and
evaluation apart (the validation hold-out, exemplar choice, evaluation sets) compares
`normalize_question` keys, never ids alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mwp.data.problem import Problem

# "1,000" -> "1000": a thousands separator is formatting, not content.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# "5.0" / "5.00" -> "5"; "2.50" -> "2.5": trailing zeros after a decimal point.
_TRAILING_ZEROS = re.compile(r"(?<=\d)\.(\d*?)0+\b")
# Any run of characters that are neither letters, digits nor a decimal point between digits.
_SEPARATORS = re.compile(r"(?:(?<!\d)\.|\.(?!\d)|[^\w.])+|_+")


def normalize_question(text: str) -> str:
    """A question's content key: same key = same problem.

    Conservative on purpose: Unicode compatibility forms (full-width digits), case, whitespace,
    punctuation, thousands separators and trailing decimal zeros are formatting; words, numbers and
    their order are content. "Sam has 5.0 apples ,  then..." and "sam has 5 apples, then" match;
    questions with one different number do not.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _THOUSANDS.sub("", text)
    text = _TRAILING_ZEROS.sub(lambda m: "." + m.group(1) if m.group(1) else "", text)
    return _SEPARATORS.sub(" ", text).strip()


def question_keys(problems: Iterable[Problem]) -> set[str]:
    """The normalised questions of `problems`."""
    return {normalize_question(p.question) for p in problems}


@dataclass(frozen=True)
class Filtered:
    """An evaluation set split into the problems kept and those dropped as seen in training."""

    kept: list[Problem]
    dropped: list[Problem]


def drop_seen(problems: Sequence[Problem], seen: set[str] | frozenset[str]) -> Filtered:
    """Drop every problem whose normalised question is in `seen` (the training side's keys).

    Only the evaluation side loses problems: a test problem the student trained on measures
    memory, not skill, while training on it is harmless to every other measurement.
    """
    kept: list[Problem] = []
    dropped: list[Problem] = []
    for problem in problems:
        (dropped if normalize_question(problem.question) in seen else kept).append(problem)
    return Filtered(kept, dropped)
