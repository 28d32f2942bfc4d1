"""Problem numbers <-> placeholders N0..Nk: the one owner of what "the k-th number of a problem" means.

`mask_question` replaces each number of a question, in order of appearance, by N<k>; the
equation format's sources are masked questions and its targets are templates over the same
N0..Nk (`mwp.verify.equations.equation_to_template`), scored by substituting `numbers` back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from mwp.verify.numbers import NUMBER_PATTERN, parse_number

__all__ = ["MaskedQuestion", "mask_question", "number_spans"]

# Math23K's convention: "(1/2)" and "7(2/3)" are one number each; "15%" keeps its percent sign.
_CHINESE_NUMBER = re.compile(r"\d+\(\d+/\d+\)|\(\d+/\d+\)|\d+(?:\.\d+)?%?")


@dataclass(frozen=True)
class MaskedQuestion:
    """A question with its numbers replaced by N0..Nk; `numbers[k]` is the text N<k> stands for."""

    text: str
    numbers: tuple[str, ...]
    values: tuple[Fraction | None, ...]
    spans: tuple[tuple[int, int], ...]


def number_spans(text: str, language: str = "en") -> list[tuple[int, int, str]]:
    """(start, end, number text) of every number of `text`, in order."""
    pattern = _CHINESE_NUMBER if language == "zh" else NUMBER_PATTERN
    return [(m.start(), m.end(), m.group(0)) for m in pattern.finditer(text)]


def mask_question(question: str, language: str = "en") -> MaskedQuestion:
    """Replace every number of `question` by N<k>, k its position in order of appearance."""
    spans = number_spans(question, language)
    out: list[str] = []
    cursor = 0
    for k, (start, end, _text) in enumerate(spans):
        out.append(question[cursor:start])
        out.append(f"N{k}")
        cursor = end
    out.append(question[cursor:])
    numbers = tuple(number for _, _, number in spans)
    return MaskedQuestion(
        text="".join(out),
        numbers=numbers,
        values=tuple(parse_number(n) for n in numbers),
        spans=tuple((start, end) for start, end, _ in spans),
    )
