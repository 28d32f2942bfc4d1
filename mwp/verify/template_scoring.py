"""Score the equation format: read a generated template, put the problem's numbers back, evaluate safely.

A student's completion is untrusted text. It is capped in length and compiled as a template over
N0..Nk by the bounded template parser (`mwp.verify.templates`: infix "(N0-N1)*N2", or prefix
"* - N0 N1 N2" with `notation="prefix"`); `verify_template` evaluates it exactly on the problem's
values (a placeholder past the problem's numbers, a constant outside the allowed list, a division
by zero are failures, not guesses) and compares it with the gold answer (`answers_match`); the
substituted equation is recorded with `mwp.verify.equations.template_to_equation`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from mwp.verify.equations import template_to_equation
from mwp.verify.numbers import parse_number
from mwp.verify.templates import (
    MAX_TEMPLATE_CHARS,
    TemplateError,
    compile_template,
    from_prefix,
    verify_template,
)

__all__ = [
    "EQUATION_EXTRACTION",
    "MAX_TEMPLATE_CHARS",
    "EquationScore",
    "most_frequent_template",
    "score_template",
]

# The extraction mode the results table names for the equation format.
EQUATION_EXTRACTION = "equation"


@dataclass(frozen=True)
class EquationScore:
    """A scored completion: the infix template read, the equation with numbers, its value, and why it failed."""

    template: str | None
    equation: str | None
    value: Fraction | None
    correct: bool
    error: str | None = None


def score_template(
    text: str,
    numbers: Sequence[str],
    gold: Fraction | None,
    *,
    notation: str = "infix",
    max_chars: int = MAX_TEMPLATE_CHARS,
) -> EquationScore:
    """Read `text` as a template in `notation`, substitute `numbers` for N0..Nk, evaluate, compare with `gold`."""
    if len(text) > max_chars:
        return EquationScore(None, None, None, False, f"completion longer than {max_chars} characters")
    try:
        # A word-level vocabulary decodes with a space between tokens ("N0 - N1", "3 . 14").
        template = from_prefix(text) if notation == "prefix" else compile_template("".join(text.split()))
    except TemplateError as err:
        return EquationScore(None, None, None, False, str(err))
    values = [parse_number(n) for n in numbers]
    verification = verify_template(template, values, gold)
    equation = None
    if template.max_index < len(numbers):
        equation = template_to_equation(template.text.removeprefix("x="), numbers)
    error = None if verification.ok or verification.value is not None else verification.reason
    return EquationScore(template.text, equation, verification.value, verification.ok, error)


def most_frequent_template(templates: Iterable[str]) -> tuple[str, int] | None:
    """The most frequent template and its count (ties: the first seen), or None for no templates."""
    counts = Counter(templates)
    if not counts:
        return None
    return counts.most_common(1)[0]
