"""The one record every loader returns and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from mwp.verify.numbers import format_number, parse_number

# The longest bundled question has 985 characters (GSM8K): a longer one than this is a mistake in a
# user's file, refused where it is read (with its file and line) instead of failing a later stage.
MAX_QUESTION_CHARS = 20_000


@dataclass(frozen=True)
class Problem:
    """A math word problem.

    `answer` is exact (a Fraction) where the gold answer is a number; `answer_text` keeps the
    dataset's own spelling ("9 (apples)", "3(1/2)", "50%"). `numbers` are the number strings of
    the question in order of appearance, which N0..Nk placeholders refer to.
    """

    id: str
    question: str
    answer: Fraction | None
    answer_text: str
    numbers: tuple[str, ...] = ()
    equation: str | None = None
    solution: str | None = None
    language: str = "en"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["answer"] = format_number(self.answer)
        row["numbers"] = list(self.numbers)
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Problem:
        row = dict(row)
        row["answer"] = parse_number(row.get("answer"))
        row["numbers"] = tuple(row.get("numbers") or ())
        row.setdefault("meta", {})
        return cls(**row)
