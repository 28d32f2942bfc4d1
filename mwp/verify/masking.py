"""Problem numbers <-> placeholders N0..Nk: the one owner of what "the k-th number of a problem" means.

`mask_question` replaces each number of a question, in order of appearance, by N<k>; the
equation format's sources are masked questions and its targets are templates over the same
N0..Nk (`mwp.verify.equations.equation_to_template`), scored by substituting `numbers` back.
Every loader's `Problem.numbers` comes from `number_spans`, so masks and numbers always agree.

What one number is:

- English: grouped thousands "1,234.5", decimals ".5", percents "15%", fractions "1/2" and
  "(1/2)" (the parentheses stay outside the span), prose mixed numbers "7 2/3", negatives where
  the "-" cannot be an operator or a range dash.
- Chinese (Math23K's convention): "(1/2)" and a mixed "7(2/3)" are one number each, parentheses
  included; "15%" keeps its percent sign; a bare "1300/600" is two numbers, since Math23K's prose
  uses "/" for division.
- Full-width digits, "．" between digits, "％", "／" and full-width parentheses are read as their
  ASCII forms (NFKC); spans index the original text, the number strings are the ASCII forms.
- Chinese numerals are not numbers here: in these datasets they are overwhelmingly articles,
  ordinals and idioms ("一个工程队", "第一天", "一些", "一样"), the datasets' own number lists
  (Weak12K's num_list) never include them, and a quantity spelled that way ("一半", "三个") is
  reached through an allowed constant instead.
- Repeated numbers: each occurrence is its own placeholder.

Known ambiguity: prose "4 1/2 pound steaks" (GSM8K train/1111) means four half-pound steaks, yet
reads as the mixed number 4 1/2, as "1 1/2 rolls each" (train/197) rightly does. English number
words ("six", "forty-two") are not masked; ASDiv spells many problem numbers that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from mwp.verify.numbers import NUMBER_PATTERN, parse_number

__all__ = ["MaskedQuestion", "mask_question", "number_spans"]

# One-to-one replacements only, so that offsets in the translated text are offsets in the original.
_FULL_WIDTH = str.maketrans(
    {**{chr(0xFF10 + d): str(d) for d in range(10)}, "％": "%", "／": "/", "（": "(", "）": ")"}
)
_FULL_WIDTH_POINT = re.compile(r"(?<=\d)．(?=\d)")

_CHINESE_NUMBER = re.compile(
    r"\d+\(\d+/\d+\)|\(\d+/\d+\)|(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:e-?\d+)?%?"
)
# A prose mixed number "7 2/3" before the general pattern, which would read it as 7 and 2/3.
_ENGLISH_NUMBER = re.compile(r"(?<![A-Za-z0-9_.)%/])\d+ \d+/\d+(?![\d/]|\.\d)|" + NUMBER_PATTERN.pattern)


@dataclass(frozen=True)
class MaskedQuestion:
    """A question with its numbers replaced by N0..Nk; `numbers[k]` is the text N<k> stands for."""

    text: str
    numbers: tuple[str, ...]
    values: tuple[Fraction | None, ...]
    spans: tuple[tuple[int, int], ...]


def _ascii_digits(text: str) -> str:
    if text.isascii():
        return text
    return _FULL_WIDTH_POINT.sub(".", text.translate(_FULL_WIDTH))


def number_spans(text: str, language: str = "en") -> list[tuple[int, int, str]]:
    """(start, end, number text) of every number of `text`, in order (module doc: what one number is)."""
    pattern = _CHINESE_NUMBER if language == "zh" else _ENGLISH_NUMBER
    return [(m.start(), m.end(), m.group(0)) for m in pattern.finditer(_ascii_digits(text))]


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
