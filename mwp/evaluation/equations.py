"""Score the equation format: read a generated template, put the problem's numbers back, evaluate safely.

A student's completion is untrusted text. It is capped in length, read as a template over N0..Nk
(infix "(N0-N1)*N2", or prefix "* - N0 N1 N2" converted to infix first), its placeholders are
replaced by the problem's numbers (`mwp.verify.equations.template_to_equation`: a placeholder past
the problem's numbers is an error, not a guess) and the equation is evaluated by the bounded exact
evaluator (`mwp.verify.safe_eval`). Every failure is recorded as the prediction's `error`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from mwp.verify.compare import answers_match
from mwp.verify.equations import template_to_equation
from mwp.verify.safe_eval import EvaluationError, safe_eval

__all__ = [
    "EQUATION_EXTRACTION",
    "MAX_TEMPLATE_CHARS",
    "EquationScore",
    "infix_to_prefix",
    "most_frequent_template",
    "prefix_to_infix",
    "score_template",
]

# The extraction mode the results table names for the equation format.
EQUATION_EXTRACTION = "equation"
# SVAMP's and Math23K's longest gold templates are under 100 characters.
MAX_TEMPLATE_CHARS = 400

_OPERATORS = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 3}
_TOKEN = re.compile(r"\s*(N\d+|\d+(?:\.\d+)?%?|\*\*|[-+*/^()])")


class TemplateSyntaxError(ValueError):
    """A template that is not a well-formed expression over numbers and N0..Nk."""


def _tokens(template: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = template.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise TemplateSyntaxError(
                f"unexpected {text[position : position + 10]!r} in template {template!r}"
            )
        tokens.append("^" if match.group(1) == "**" else match.group(1))
        position = match.end()
    return tokens


def infix_to_prefix(template: str) -> str:
    """ "(N0-N1)*N2" -> "* - N0 N1 N2" (binary operators only; left-associative, ^ right-associative)."""
    operands: list[str] = []
    operators: list[str] = []

    def reduce() -> None:
        if len(operands) < 2:
            raise TemplateSyntaxError(f"operator without two operands in {template!r}")
        right, left = operands.pop(), operands.pop()
        operands.append(f"{operators.pop()} {left} {right}")

    expect_operand = True
    for token in _tokens(template):
        if token == "(":
            if not expect_operand:
                raise TemplateSyntaxError(f"implicit product before '(' in {template!r}")
            operators.append(token)
        elif token == ")":
            while operators and operators[-1] != "(":
                reduce()
            if not operators:
                raise TemplateSyntaxError(f"unbalanced ')' in {template!r}")
            operators.pop()
            expect_operand = False
        elif token in _OPERATORS:
            if expect_operand:
                raise TemplateSyntaxError(f"unary {token!r} in {template!r} has no prefix form here")
            while (
                operators
                and operators[-1] != "("
                and (
                    _OPERATORS[operators[-1]] > _OPERATORS[token]
                    or (_OPERATORS[operators[-1]] == _OPERATORS[token] and token != "^")
                )
            ):
                reduce()
            operators.append(token)
            expect_operand = True
        else:
            if not expect_operand:
                raise TemplateSyntaxError(f"two operands in a row in {template!r}")
            operands.append(token)
            expect_operand = False
    while operators:
        if operators[-1] == "(":
            raise TemplateSyntaxError(f"unbalanced '(' in {template!r}")
        reduce()
    if len(operands) != 1 or expect_operand:
        raise TemplateSyntaxError(f"incomplete template {template!r}")
    return operands[0]


def prefix_to_infix(text: str) -> str:
    """ "* - N0 N1 N2" -> "(N0-N1)*N2": fully parenthesised sub-expressions, outer ones dropped."""
    stack: list[str] = []
    tokens = _tokens(text)
    if not tokens:
        raise TemplateSyntaxError("empty prefix template")
    for token in reversed(tokens):
        if token in _OPERATORS:
            if len(stack) < 2:
                raise TemplateSyntaxError(f"operator {token!r} without two operands in {text!r}")
            left, right = stack.pop(), stack.pop()
            stack.append(f"({left}{token}{right})")
        elif token in "()":
            raise TemplateSyntaxError(f"parentheses in prefix template {text!r}")
        else:
            stack.append(token)
    if len(stack) != 1:
        raise TemplateSyntaxError(f"{len(stack)} expressions left over in prefix template {text!r}")
    result = stack[0]
    return result[1:-1] if result.startswith("(") and len(tokens) > 1 else result


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
        template = prefix_to_infix(text) if notation == "prefix" else "".join(text.split())
    except TemplateSyntaxError as err:
        return EquationScore(None, None, None, False, str(err))
    template = template.removeprefix("x=")
    if not template:
        return EquationScore(None, None, None, False, "empty completion")
    try:
        equation = template_to_equation(template, numbers)
    except EvaluationError as err:  # a placeholder past the problem's numbers
        return EquationScore(template, None, None, False, str(err))
    try:
        value = safe_eval(equation, max_len=max_chars * 4)
    except ValueError as err:  # malformed, unsafe, division by zero or a limit hit
        return EquationScore(template, equation, None, False, str(err))
    return EquationScore(template, equation, value, answers_match(value, gold))


def most_frequent_template(templates: Iterable[str]) -> tuple[str, int] | None:
    """The most frequent template and its count (ties: the first seen), or None for no templates."""
    counts = Counter(templates)
    if not counts:
        return None
    return counts.most_common(1)[0]
