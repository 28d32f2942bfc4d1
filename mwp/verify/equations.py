"""Equations with one unknown: solve "x=(11-1)*2" or "3*x+5=20", and map numbers to N0..Nk templates.

Both sides go through the same tokenizer and AST whitelist as `safe_eval`; a side that is just the
unknown is evaluated exactly, anything else is turned into sympy objects built from the validated
tree (never from the raw text) and solved as a polynomial equation of bounded degree.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Callable, Collection, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar

from mwp.verify.numbers import parse_number
from mwp.verify.safe_eval import (
    BoundedArithmetic,
    EvalLimits,
    EvaluationError,
    ParsedExpression,
    Token,
    evaluate_parsed,
    parse_expression,
    render_tokens,
    tokenize,
)

if TYPE_CHECKING:
    import sympy

__all__ = [
    "DEFAULT_CONSTANTS",
    "EquationError",
    "NumberMappingError",
    "equation_to_template",
    "is_unknown_alone",
    "solve_equation",
    "split_equation",
    "template_to_equation",
]

# Numbers an equation may use without their occurring in the problem: "1 -" complements, "/ 2"
# halves, "/ 100" percents, pi as 3.14, and unit conversions (10, 12, 24, 60, 7 days, 1000). Of
# Math23K's 21,162 training equations, 4,747 use 1 and 222 use 3.14 beyond the problem's numbers;
# the rest are the English datasets' and teachers' conversions. Pass `constants=` to change the set.
DEFAULT_CONSTANTS: tuple[str, ...] = ("1", "2", "0.5", "3.14", "7", "10", "12", "24", "60", "100", "1000")

DEFAULT_MAX_DEGREE = 4
DEFAULT_SOLVE_TIMEOUT_S = 2.0

_T = TypeVar("_T")


class EquationError(EvaluationError):
    """An equation that cannot be solved to one rational value (or is malformed)."""


class NumberMappingError(EquationError):
    """An equation uses a number that is neither in the problem nor an allowed constant."""


def split_equation(
    equation: str, unknown: str = "x", *, limits: EvalLimits | None = None
) -> tuple[list[Token], list[Token]]:
    """Tokenize an equation and split it at its single '='."""
    tokens = tokenize(equation, unknowns=(unknown,), limits=limits)
    cuts = [i for i, token in enumerate(tokens) if token.kind == "="]
    text = render_tokens(tokens)
    if not cuts:
        raise EquationError(f"no '=' in {text!r}")
    if len(cuts) > 1:
        raise EquationError(f"{len(cuts)} '=' signs in {text!r}; expected one")
    left, right = tokens[: cuts[0]], tokens[cuts[0] + 1 :]
    if not left or not right:
        raise EquationError(f"an empty side in {text!r}")
    return left, right


def is_unknown_alone(side: list[Token], unknown: str) -> bool:
    """Is this side of an equation just the unknown ("x", "(x)")?"""
    while len(side) >= 3 and side[0].kind == "(" and side[-1].kind == ")":
        side = side[1:-1]
    return len(side) == 1 and side[0].kind == "name" and side[0].text == unknown


def _mentions(side: list[Token], unknown: str) -> bool:
    return any(token.kind == "name" and token.text == unknown for token in side)


def solve_equation(
    equation: str,
    unknown: str = "x",
    *,
    max_degree: int = DEFAULT_MAX_DEGREE,
    timeout_s: float = DEFAULT_SOLVE_TIMEOUT_S,
    limits: EvalLimits | None = None,
) -> Fraction:
    """The unique rational value of `unknown` that satisfies `equation`.

    "x=(11-1)*2" evaluates the right side exactly; "3*x+5=20", "x/4=2+1" or "2(x+3)=10" are solved
    with sympy (polynomials up to `max_degree` after clearing denominators, within `timeout_s`).
    Raises EquationError when there is no '=', no unknown, no rational solution, several, or every
    value is a solution; UnsafeExpressionError for anything beyond arithmetic.
    """
    limits = limits or EvalLimits()
    left, right = split_equation(equation, unknown, limits=limits)
    if is_unknown_alone(left, unknown) and not _mentions(right, unknown):
        return evaluate_parsed(parse_expression(right, limits=limits), limits=limits)
    if is_unknown_alone(right, unknown) and not _mentions(left, unknown):
        return evaluate_parsed(parse_expression(left, limits=limits), limits=limits)
    text = render_tokens(left) + "=" + render_tokens(right)
    if not (_mentions(left, unknown) or _mentions(right, unknown)):
        raise EquationError(f"no unknown {unknown!r} in {text!r}")
    sides = (
        parse_expression(left, unknowns=(unknown,), limits=limits),
        parse_expression(right, unknowns=(unknown,), limits=limits),
    )
    import sympy  # noqa: F401  (imported here, outside the timed solve: the first import takes a while)

    roots = _call_with_timeout(lambda: _rational_roots(sides, unknown, max_degree, limits), timeout_s, text)
    solutions = [root for root in roots if _satisfies(sides, unknown, root, limits)]
    if not solutions:
        raise EquationError(f"no rational value of {unknown} satisfies {text!r}")
    if len(solutions) > 1:
        listed = ", ".join(str(s) for s in solutions)
        raise EquationError(f"{text!r} has {len(solutions)} solutions ({listed}); expected one")
    return solutions[0]


def _satisfies(
    sides: tuple[ParsedExpression, ParsedExpression], unknown: str, value: Fraction, limits: EvalLimits
) -> bool:
    try:
        left, right = (evaluate_parsed(side, {unknown: value}, limits=limits) for side in sides)
    except EvaluationError:
        return False  # e.g. the root makes a denominator vanish
    return left == right


def _call_with_timeout(work: Callable[[], _T], timeout_s: float, text: str) -> _T:
    """Run `work` in a daemon thread and give up after `timeout_s` (sympy cannot be interrupted;
    the sizes allowed by the limits keep an abandoned computation short)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="mwp-solve-equation", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise EquationError(f"solving {text!r} took longer than {timeout_s} s")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, EvaluationError):
            raise error
        raise EquationError(f"cannot solve {text!r}: {type(error).__name__}: {error}") from error
    return outcome["value"]


def _rational_roots(
    sides: tuple[ParsedExpression, ParsedExpression], unknown: str, max_degree: int, limits: EvalLimits
) -> list[Fraction]:
    import sympy

    symbol = sympy.Symbol(unknown)
    evaluator = BoundedArithmetic(limits, deadline=float("inf"))
    converted = [_SympyBuilder(side, symbol, max_degree, evaluator).build() for side in sides]
    difference = sympy.together(_as_sympy(converted[0]) - _as_sympy(converted[1]))
    numerator, _denominator = sympy.fraction(difference)
    text = f"{sides[0].text}={sides[1].text}"
    poly = sympy.Poly(sympy.expand(numerator), symbol, domain="QQ")
    if poly.is_zero:
        raise EquationError(f"every value of {unknown} satisfies {text!r}")
    degree = poly.degree()
    if degree == 0:
        raise EquationError(f"no value of {unknown} satisfies {text!r}")
    if degree > max_degree:
        raise EquationError(f"{text!r} is of degree {degree}; the limit is {max_degree}")
    if degree == 1:
        slope, intercept = poly.all_coeffs()
        return [_fraction(-intercept / slope)]
    roots = []
    for factor, _multiplicity in poly.factor_list()[1]:
        if factor.degree() == 1:
            slope, intercept = factor.all_coeffs()
            roots.append(_fraction(-intercept / slope))
    return sorted(set(roots))


def _fraction(value: sympy.Expr) -> Fraction:
    import sympy

    rational = sympy.Rational(value)
    return Fraction(int(rational.p), int(rational.q))


def _as_sympy(value: Fraction | sympy.Expr) -> sympy.Expr:
    import sympy

    if isinstance(value, Fraction):
        return sympy.Rational(value.numerator, value.denominator)
    return value


class _SympyBuilder:
    """Turns a validated tree into sympy; subtrees without the unknown are evaluated exactly first."""

    def __init__(
        self, parsed: ParsedExpression, symbol: sympy.Symbol, max_degree: int, evaluator: BoundedArithmetic
    ):
        self.parsed = parsed
        self.symbol = symbol
        self.unknown = symbol.name
        self.max_degree = max_degree
        self.evaluator = evaluator

    def build(self) -> Fraction | sympy.Expr:
        value, _degree = self.visit(self.parsed.tree.body)
        return value

    def visit(self, node: ast.AST) -> tuple[Fraction | sympy.Expr, int]:
        """The node's value and an upper bound on the degree of the unknown in it."""
        if isinstance(node, ast.Name):
            if node.id == self.unknown:
                return self.symbol, 1
            return self.parsed.numbers[node.id], 0
        if isinstance(node, ast.UnaryOp):
            value, degree = self.visit(node.operand)
            return (-value if isinstance(node.op, ast.USub) else value), degree
        if not isinstance(node, ast.BinOp):
            raise EquationError(f"{type(node).__name__} is not allowed in {self.parsed.text!r}")
        left, left_degree = self.visit(node.left)
        right, right_degree = self.visit(node.right)
        if isinstance(left, Fraction) and isinstance(right, Fraction):
            return self.evaluator.binop(node.op, left, right), 0
        op = node.op
        if isinstance(op, ast.Add | ast.Sub):
            degree = max(left_degree, right_degree)
            value = (
                _as_sympy(left) + _as_sympy(right)
                if isinstance(op, ast.Add)
                else _as_sympy(left) - _as_sympy(right)
            )
        elif isinstance(op, ast.Mult):
            degree = left_degree + right_degree
            value = _as_sympy(left) * _as_sympy(right)
        elif isinstance(op, ast.Div):
            if isinstance(right, Fraction) and right == 0:
                raise EquationError(f"division by zero in {self.parsed.text!r}")
            degree = left_degree + right_degree
            value = _as_sympy(left) / _as_sympy(right)
        elif isinstance(op, ast.Pow):
            if not isinstance(right, Fraction):
                raise EquationError(f"the unknown appears in an exponent in {self.parsed.text!r}")
            if right.denominator != 1 or abs(right.numerator) > self.max_degree:
                raise EquationError(f"power {right} of the unknown in {self.parsed.text!r} is not allowed")
            degree = left_degree * abs(right.numerator)
            value = _as_sympy(left) ** int(right.numerator)
        else:
            raise EquationError(
                f"{type(op).__name__} of the unknown is not supported in {self.parsed.text!r}"
            )
        # Clearing denominators can at most add degrees; a generous bound keeps sympy's work small.
        if degree > 4 * self.max_degree:
            raise EquationError(f"{self.parsed.text!r} is of too high a degree in {self.unknown}")
        return value, degree


def _number_values(numbers: Sequence[str]) -> list[Fraction | None]:
    return [parse_number(str(n), percent="fraction") for n in numbers]


def _fraction_group(tokens: list[Token], i: int) -> tuple[Fraction, int] | None:
    """The value and token count of "(a/b)" or "((a)/(b))" starting at tokens[i]."""
    for pattern in ("(n/n)", "((n)/(n))"):
        window = tokens[i : i + len(pattern)]
        if len(window) != len(pattern):
            continue
        kinds = "".join(
            "n" if t.kind == "num" else t.text if t.kind in "()" or t.text == "/" else "?" for t in window
        )
        if kinds == pattern:
            numerator, denominator = (t.value for t in window if t.kind == "num")
            if numerator is not None and denominator:
                return numerator / denominator, len(pattern)
    return None


def _bare_fraction(tokens: list[Token], i: int) -> Fraction | None:
    """The value of "a/b" at tokens[i] when reading it as one number "(a/b)" keeps the equation's value."""
    window = tokens[i : i + 4]
    if len(window) < 3 or window[1].text != "/" or window[2].kind != "num" or window[1].kind != "op":
        return None
    if i > 0 and tokens[i - 1].kind == "op" and tokens[i - 1].text in ("/", "//", "%", "**"):
        return None
    following = window[3] if len(window) == 4 else None
    if following is not None and (following.kind == "pct" or following.text == "**"):
        return None  # "a/b%" and "a/b**2" bind b first
    numerator, denominator = window[0].value, window[2].value
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _is_unary_minus(tokens: list[Token], i: int) -> bool:
    if tokens[i].kind != "op" or tokens[i].text != "-":
        return False
    return i == 0 or tokens[i - 1].kind in ("op", "(", "=")


def equation_to_template(
    equation: str,
    numbers: Sequence[str],
    *,
    unknown: str = "x",
    constants: Collection[str] = DEFAULT_CONSTANTS,
) -> str:
    """Replace each number of `equation` by N<k>, k its position in the problem's `numbers`.

    Numbers match by exact value ("2.0" is "2", "0.2" is "20%"); a fraction group "(1/2)" matches a
    problem number written as a fraction. Values in `constants` that are not problem numbers stay
    literal; any other number raises NumberMappingError. The rules where a value could be either:

    - An exponent (the number right after "^"/"**") that is an allowed constant stays a constant:
      "x=3.14*[(3+2)^2-3^2]" with numbers [3, 2] is "x=3.14*((N0+N1)**2-N0**2)", not "...**N1".
    - When several problem numbers share a value, the j-th occurrence of that value in the equation
      maps to the j-th of those numbers; occurrences beyond their count map to the first of them
      ("x=3*3" with numbers [3] is "N0*N0"; with numbers [3, 3] it is "N0*N1"). Any other choice among
      equal values substitutes back to the same equation, so the value is the same whichever is taken.

    The result is the canonical spelling: "x=(11-1)*2" with numbers ["2", "11"] gives "x=(N1-1)*N0".
    """
    tokens = tokenize(equation, unknowns=(unknown,))
    values = _number_values(numbers)
    fraction_indices = [k for k, text in enumerate(numbers) if "/" in str(text)]
    constant_values = {parse_number(c) for c in constants} - {None}

    occurrences: dict[Fraction, int] = {}

    def index_of(value: Fraction, candidates: Sequence[int] | None = None) -> int | None:
        matches = [
            k for k in (candidates if candidates is not None else range(len(values))) if values[k] == value
        ]
        if not matches:
            return None
        seen = occurrences.get(value, 0)
        occurrences[value] = seen + 1
        return matches[seen] if seen < len(matches) else matches[0]

    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        group = _fraction_group(tokens, i) if token.kind == "(" else None
        if group is not None:
            k = index_of(group[0], fraction_indices)
            if k is not None:
                out.append(f"N{k}")
                i += group[1]
                continue
        if token.kind != "num":
            out.append(token.text)
            i += 1
            continue
        bare = _bare_fraction(tokens, i)
        if bare is not None:
            k = index_of(bare, fraction_indices)
            if k is not None:
                out.append(f"N{k}")
                i += 3
                continue
        assert token.value is not None
        value, text, step = token.value, token.text.replace(",", ""), 1
        if i + 1 < len(tokens) and tokens[i + 1].kind == "pct":
            value, text, step = value / 100, text + "%", 2
        is_exponent = i > 0 and tokens[i - 1].kind == "op" and tokens[i - 1].text in ("**", "^")
        k = None if is_exponent and value in constant_values else index_of(value)
        if k is None and i > 0 and tokens[i - 1].kind == "op" and tokens[i - 1].text == "-":
            k = index_of(-value)
            if k is not None:  # the sign belongs to the problem's number: "a-0.56" is "a+(-0.56)"
                out.pop()
                if not _is_unary_minus(tokens, i - 1):
                    out.append("+")
        if k is not None:
            out.append(f"N{k}")
        elif value in constant_values:
            out.append(text)
        else:
            listed = ", ".join(str(n) for n in numbers) or "none"
            raise NumberMappingError(
                f"{text} in {render_tokens(tokens)!r} is neither a number of the problem ({listed}) "
                f"nor an allowed constant ({', '.join(constants)})"
            )
        i += step
    return "".join(out)


_PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_])(?:N|number)(\d+)(?![\d.])")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?|\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def template_to_equation(template: str, numbers: Sequence[str]) -> str:
    """Put the problem's numbers back into a template: "x=(N1-1)*N0" with ["2", "11"] -> "x=(11-1)*2".

    Placeholders may be written N0 or number0 (the SVAMP files' spelling). Anything other than a plain unsigned number
    ("20%", "1/2", "-3") is wrapped in parentheses so it binds as one operand.
    """

    def substitute(match: re.Match[str]) -> str:
        k = int(match.group(1))
        if k >= len(numbers):
            raise NumberMappingError(
                f"{match.group(0)} in {template!r} refers to number {k}, but the problem has {len(numbers)}"
            )
        text = str(numbers[k]).strip()
        if _PLAIN_NUMBER.fullmatch(text):
            return text.replace(",", "")
        return f"({text})"

    return _PLACEHOLDER.sub(substitute, template)
