"""From-Large-to-Tiny's checks of a teacher-written equation, in order, naming the first that fails.

1. extract  - find the equation in free teacher text ("So x = 5 * (3 + 2) = 25 apples.", "列式：x＝36÷6＋3").
2. format   - correct its spelling: full-width symbols, × ÷, "x" between numbers as a product, a
              missing "x=" ("36÷6+3=9" becomes "x=36/6+3"), a trailing "= 25" result dropped.
3. numbers  - map its numbers to the problem's N0..Nk (plus allowed constants).
4. evaluate - solve it for the unknown to one rational value.
5. answer   - compare that value with the gold answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from mwp.verify.compare import answers_match
from mwp.verify.equations import (
    DEFAULT_CONSTANTS,
    EquationError,
    NumberMappingError,
    equation_to_template,
    is_unknown_alone,
    solve_equation,
    split_equation,
)
from mwp.verify.numbers import find_numbers
from mwp.verify.safe_eval import EvaluationError, Token, parse_expression, render_tokens, tokenize

__all__ = [
    "CHECKS",
    "EquationCheck",
    "EquationFormatError",
    "check_teacher_equation",
    "correct_equation_format",
    "equation_parses",
    "extract_equation",
]

CHECKS: tuple[str, ...] = ("extract", "format", "numbers", "evaluate", "answer")


class EquationFormatError(EquationError):
    """Teacher text whose equation cannot be brought into the form "x=..." or "lhs=rhs"."""


class _ProblemLike(Protocol):
    question: str
    answer: Fraction | None
    numbers: Sequence[str]
    language: str


@dataclass(frozen=True)
class EquationCheck:
    """The outcome of the checks: `failed` names the first failing check (None when all pass)."""

    failed: str | None
    message: str = ""
    equation: str | None = None  # as found in the text
    corrected: str | None = None  # after format correction
    template: str | None = None  # with N0..Nk
    value: Fraction | None = None

    @property
    def passed(self) -> bool:
        return self.failed is None


_GROUPED_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TRAILING_QUESTION = re.compile(r"=\s*[?？]*\s*$")


def _prepare(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    return _GROUPED_THOUSANDS.sub("", text)


def _candidate_pattern(unknown: str) -> re.Pattern[str]:
    letter = re.escape(unknown)
    # A "." only as a decimal point, so that a candidate stops at the end of a sentence.
    body = (
        rf"(?:\d|{letter}|\.(?=\d)|[-+*/×÷·⋅()%^=\[\]{{}}−]|[ \t](?=[^\sA-Za-z.]|\.\d|{letter}(?![A-Za-z])))"
    )
    return re.compile(rf"(?<![A-Za-z]){body}+")


def _has_operation(candidate: str, unknown: str) -> bool:
    letter = re.escape(unknown)
    return bool(re.search(rf"[+*/×÷·⋅^%]|(?<=[\d)\s])-|\d\s*{letter}", candidate))


def _score(candidate: str, unknown: str) -> int:
    """Higher is more likely the teacher's equation."""
    operation = _has_operation(candidate, unknown)
    if "=" not in candidate:
        return 3 if operation else 0
    sides = [side.strip().strip("()").strip() for side in candidate.split("=")]
    isolated = unknown in (sides[0], sides[-1])
    if isolated and operation:
        return 6  # "x = 5 * (3 + 2)"
    if unknown in candidate and operation:
        return 5  # "3x + 5 = 20"
    if operation:
        return 4  # "36÷6+3=9"
    return 2 if isolated else 0  # "x = 20" is a result, not a derivation


_LOOSE_ENDS = " \t.=+*/×÷^"


def _trim(candidate: str) -> str:
    """Drop what a prose boundary leaves hanging: "9(" before "(元)", a closing "." or "=", a stray ")"."""
    previous = None
    while candidate != previous:
        previous = candidate
        candidate = _TRAILING_QUESTION.sub("", candidate).strip(_LOOSE_ENDS)
        if candidate.endswith(("(", "[", "-")):
            candidate = candidate[:-1]
        if candidate.startswith((")", "]")):
            candidate = candidate[1:]
        if candidate.count("(") > candidate.count(")") and candidate.startswith("("):
            candidate = candidate[1:]
        if candidate.count(")") > candidate.count("(") and candidate.endswith(")"):
            candidate = candidate[:-1]
    return candidate


# How much of a rationale `extract_equation` reads; 100k characters of "(" took ~12 s unbounded.
MAX_EQUATION_TEXT_CHARS = 8_000


def extract_equation(text: str, unknown: str = "x") -> str | None:
    """The equation (or bare expression) a teacher wrote in prose, or None.

    Prefers "x = ..." with arithmetic (the unknown alone on one side), then any equation with the
    unknown, then an equation of numbers ("36÷6+3=9"), then an arithmetic expression, then a bare
    "x = 20"; the first of the best kind wins, since a derivation comes before its results.
    """
    # Candidate matching backtracks on runs of "(": bound the untrusted text (the head holds the derivation).
    prepared = _prepare(text[:MAX_EQUATION_TEXT_CHARS])
    best: tuple[int, int, str] | None = None
    for match in _candidate_pattern(unknown).finditer(prepared):
        candidate = _trim(match.group(0))
        if not re.search(r"\d", candidate):
            continue
        score = _score(candidate, unknown)
        if score == 0:
            continue
        if best is None or score > best[0]:
            best = (score, match.start(), candidate)
    return best[2] if best else None


def _times_between_numbers(equation: str, unknown: str) -> str:
    """ "5 x 3" is a product even when x is the unknown; "3x + 5" is not."""
    letter = re.escape(unknown)
    return re.sub(rf"(?<=[\d)])\s*{letter}\s*(?=[\d(])", "*", equation)


def _split_sides(tokens: list[Token]) -> list[list[Token]]:
    sides: list[list[Token]] = [[]]
    for token in tokens:
        if token.kind == "=":
            sides.append([])
        else:
            sides[-1].append(token)
    return sides


def _mentions(side: list[Token], unknown: str) -> bool:
    return any(t.kind == "name" and t.text == unknown for t in side)


def correct_equation_format(equation: str, unknown: str = "x") -> str:
    """The canonical "x=..." (or "lhs=rhs") form of a teacher's equation; EquationFormatError if none."""
    prepared = _TRAILING_QUESTION.sub("", _prepare(equation).strip().rstrip(".。")).strip()
    prepared = _times_between_numbers(prepared, unknown)
    tokens = tokenize(prepared, unknowns=(unknown,))
    sides = _split_sides(tokens)
    if any(not side for side in sides):
        raise EquationFormatError(f"an empty side in {render_tokens(tokens)!r}")
    text = render_tokens
    if len(sides) == 1:
        if _mentions(sides[0], unknown):
            raise EquationFormatError(f"{text(tokens)!r} mentions {unknown} but has no '='")
        return f"{unknown}={text(sides[0])}"
    if is_unknown_alone(sides[0], unknown):
        return f"{unknown}={text(sides[1])}"  # "x = 5*(3+2) = 25": the rest are results
    if is_unknown_alone(sides[-1], unknown):
        return f"{unknown}={text(sides[-2])}"
    if not any(_mentions(side, unknown) for side in sides):
        return f"{unknown}={text(sides[0])}"  # "5*(3+2)=25": the implicit "x="
    if len(sides) == 2:
        return f"{text(sides[0])}={text(sides[1])}"
    raise EquationFormatError(f"{text(tokens)!r} chains {len(sides) - 1} '=' signs around {unknown}")


def equation_parses(equation: str, unknown: str = "x") -> bool:
    """Whether `equation` is one "lhs=rhs" whose sides are well-formed arithmetic (values not checked)."""
    try:
        left, right = split_equation(equation, unknown)
        parse_expression(left, unknowns=(unknown,))
        parse_expression(right, unknowns=(unknown,))
    except (EvaluationError, ValueError):
        return False
    return True


def check_teacher_equation(
    text: str,
    problem: _ProblemLike,
    *,
    unknown: str = "x",
    constants: Collection[str] = DEFAULT_CONSTANTS,
    rel_tol: float = 1e-4,
) -> EquationCheck:
    """Run the checks on a teacher's text for `problem` (a `mwp.data.Problem`); see the module doc.

    The problem's `numbers` are what N0..Nk refer to; when it has none they are read from its
    question (a bare "a/b" counts as a division in Chinese text, as Math23K writes it).
    """
    equation = extract_equation(text, unknown)
    if equation is None:
        return EquationCheck("extract", "no equation or arithmetic expression in the text")
    try:
        corrected = correct_equation_format(equation, unknown)
    except EvaluationError as exc:
        return EquationCheck("format", str(exc), equation)
    numbers = list(problem.numbers) or find_numbers(problem.question, bare_fractions=problem.language != "zh")
    try:
        template = equation_to_template(corrected, numbers, unknown=unknown, constants=constants)
    except NumberMappingError as exc:
        return EquationCheck("numbers", str(exc), equation, corrected)
    try:
        value = solve_equation(corrected, unknown)
    except EvaluationError as exc:
        return EquationCheck("evaluate", str(exc), equation, corrected, template)
    if problem.answer is None:
        return EquationCheck(
            "answer", "the problem has no numeric gold answer", equation, corrected, template, value
        )
    if not answers_match(value, problem.answer, rel_tol=rel_tol):
        return EquationCheck(
            "answer",
            f"{corrected} gives {value}, the gold answer is {problem.answer}",
            equation,
            corrected,
            template,
            value,
        )
    return EquationCheck(None, "", equation, corrected, template, value)
