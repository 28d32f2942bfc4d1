"""Exact, bounded arithmetic on untrusted text: "(84 / 2)", "x=100*(1+20%)", "3×4÷2", "2^3".

Teacher text goes through three gates before any arithmetic happens: a length cap, a tokenizer that
knows only numbers, operators, parentheses and (for equations) named unknowns, and a whitelist walk
over the `ast` tree built from the tokens. Numbers never pass through `float`: each literal becomes a
placeholder name bound to an exact `Fraction`, and every operation checks exponent size, result size
and a wall-clock deadline.
"""

from __future__ import annotations

import ast
import math
import re
import time
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "BoundedArithmetic",
    "EvalLimits",
    "EvaluationError",
    "ParsedExpression",
    "Token",
    "UnsafeExpressionError",
    "evaluate_parsed",
    "normalize_expression",
    "parse_expression",
    "render_tokens",
    "safe_eval",
    "tokenize",
]


class EvaluationError(ValueError):
    """An expression that cannot be evaluated: malformed, division by zero, too large, too slow."""


class UnsafeExpressionError(EvaluationError):
    """An expression that uses anything beyond numbers and arithmetic (names, calls, attributes, ...)."""


DEFAULT_MAX_LEN = 512
DEFAULT_MAX_EXPONENT = 1000
DEFAULT_MAX_DIGITS = 1000
DEFAULT_MAX_DEPTH = 64
DEFAULT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class EvalLimits:
    """Bounds on one evaluation.

    `max_len` caps the input characters, `max_depth` the parenthesis nesting, `max_exponent` the
    |exponent| of `**`, `max_digits` the decimal digits of any numerator or denominator (literal or
    intermediate), `timeout_s` the wall time of the whole evaluation.
    """

    max_len: int = DEFAULT_MAX_LEN
    max_exponent: int = DEFAULT_MAX_EXPONENT
    max_digits: int = DEFAULT_MAX_DIGITS
    max_depth: int = DEFAULT_MAX_DEPTH
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def max_bits(self) -> int:
        return math.ceil(self.max_digits * math.log2(10)) + 1


# Spellings teachers use for the four operations, mapped to one ASCII form.
_CHAR_MAP = str.maketrans(
    {
        "×": "*",
        "✕": "*",
        "✖": "*",
        "⋅": "*",
        "·": "*",
        "∙": "*",
        "∗": "*",
        "÷": "/",
        "∕": "/",
        "⁄": "/",
        "−": "-",
        "–": "-",
        "—": "-",
        "﹣": "-",
        "[": "(",
        "]": ")",
        "{": "(",
        "}": ")",
        "〔": "(",
        "〕": ")",
        "【": "(",
        "】": ")",
    }
)

_NUMBER = re.compile(
    r"(?P<grouped>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?)"
    r"|(?P<plain>(?:\d+\.?\d*|\.\d+))(?P<exp>[eE][-+]?\d+)?"
)
_NAME = re.compile(r"[A-Za-z_]+")
_OPERATORS = ("**", "//", "+", "-", "*", "/", "%", "^")
_CURRENCY_BEFORE_NUMBER = re.compile(r"[$€£¥]\s*(?=\.?\d)")
# What may follow a postfix percent sign ("20%)", "20% *", "20%" at the end); anything else makes
# "%" the modulo operator ("7 % 3").
_AFTER_PERCENT = frozenset({")", "=", "+", "-", "*", "/", "//", "**"})


@dataclass(frozen=True)
class Token:
    """One lexical unit of an expression.

    `kind` is "num", "op", "(", ")", "name", "=" or "pct" (a postfix percent sign). Number tokens
    carry their exact value; `start`/`end` index the normalized text (-1 for inserted tokens).
    """

    kind: str
    text: str
    start: int = -1
    end: int = -1
    value: Fraction | None = None


def _normalize_chars(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_CHAR_MAP)


def _check_length(text: str, limits: EvalLimits) -> None:
    if not isinstance(text, str):
        raise EvaluationError(f"expected an expression string, got {type(text).__name__}")
    if len(text) > limits.max_len:
        raise EvaluationError(f"expression is {len(text)} characters long; the limit is {limits.max_len}")


def _literal_value(match: re.Match[str], limits: EvalLimits) -> Fraction:
    text = match.group(0)
    if match.group("grouped"):
        mantissa = match.group("grouped").replace(",", "")
        exponent = 0
    else:
        mantissa = match.group("plain")
        exponent = int(match.group("exp")[1:]) if match.group("exp") else 0
    digits = sum(ch.isdigit() for ch in mantissa)
    if digits > limits.max_digits or abs(exponent) > limits.max_digits:
        raise EvaluationError(f"number {text[:40]!r} has more than {limits.max_digits} digits")
    if mantissa.endswith("."):
        mantissa = mantissa[:-1]
    return Fraction(mantissa) * Fraction(10) ** exponent


def tokenize(text: str, *, unknowns: Collection[str] = (), limits: EvalLimits | None = None) -> list[Token]:
    """Split an expression or equation into tokens, resolving teacher spellings.

    "×", "÷", "x" between numbers, "^", "[ ]", "{ }", full-width symbols, thousands commas and
    currency signs are normalized; "%" after a number or ")" is a percent sign unless a number or
    "(" follows it (then it is modulo). A product written without "*" is made explicit where it is
    unambiguous ("(2+3)(4)", "3x" for an unknown x, "2(x+1)"); a number directly before a bare
    fraction ("7(2/3)") is rejected because Math23K uses that spelling for a mixed number.
    Raises UnsafeExpressionError for names other than `unknowns` and for any other character.
    """
    limits = limits or EvalLimits()
    _check_length(text, limits)
    unknown_set = frozenset(unknowns)
    for name in unknown_set:
        if not _NAME.fullmatch(name) or name.startswith("_"):
            raise ValueError(f"unknown {name!r} must be a plain ASCII letter name")
    source = _normalize_chars(text)
    raw: list[Token] = []
    depth = 0
    i = 0
    while i < len(source):
        ch = source[i]
        if ch.isspace():
            i += 1
            continue
        currency = _CURRENCY_BEFORE_NUMBER.match(source, i)
        if currency:
            i = currency.end()
            continue
        number = _NUMBER.match(source, i)
        if number:
            raw.append(Token("num", number.group(0), i, number.end(), _literal_value(number, limits)))
            i = number.end()
            continue
        name = _NAME.match(source, i)
        if name:
            raw.append(Token("name", name.group(0), i, name.end()))
            i = name.end()
            continue
        if ch in "()":
            depth += 1 if ch == "(" else -1
            if depth > limits.max_depth:
                raise EvaluationError(f"parentheses nested deeper than {limits.max_depth}")
            if depth < 0:
                raise EvaluationError(f"unbalanced ')' at position {i} of {_preview(source)}")
            raw.append(Token(ch, ch, i, i + 1))
            i += 1
            continue
        if ch == "=":
            if source.startswith("==", i):
                raise EvaluationError(f"'==' at position {i}: write an equation with a single '='")
            raw.append(Token("=", "=", i, i + 1))
            i += 1
            continue
        op = next((op for op in _OPERATORS if source.startswith(op, i)), None)
        if op:
            raw.append(Token("op", "**" if op == "^" else op, i, i + len(op)))
            i += len(op)
            continue
        raise UnsafeExpressionError(f"unexpected character {ch!r} at position {i} of {_preview(source)}")
    if depth != 0:
        raise EvaluationError(f"unbalanced '(' in {_preview(source)}")
    return _disambiguate(raw, unknown_set, source)


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _ends_operand(token: Token | None) -> bool:
    return token is not None and token.kind in ("num", ")", "pct", "name")


def _starts_operand(token: Token | None) -> bool:
    return token is not None and token.kind in ("num", "(", "name")


def _is_bare_fraction(tokens: list[Token], i: int) -> bool:
    """tokens[i] is "(" opening "(a/b)" or "((a)/(b))" with integer a and b."""
    kinds = "".join(
        "n" if t.kind == "num" else t.text if t.kind in "()" or t.text == "/" else "?"
        for t in tokens[i : i + 9]
    )
    return kinds.startswith("(n/n)") or kinds.startswith("((n)/(n))")


def _disambiguate(raw: list[Token], unknowns: frozenset[str], source: str) -> list[Token]:
    out: list[Token] = []
    for i, token in enumerate(raw):
        prev = out[-1] if out else None
        nxt = raw[i + 1] if i + 1 < len(raw) else None
        if token.kind == "name" and token.text not in unknowns:
            if (
                token.text in ("x", "X")
                and _ends_operand(prev)
                and nxt is not None
                and nxt.kind in ("num", "(")
            ):
                out.append(Token("op", "*", token.start, token.end))
                continue
            raise UnsafeExpressionError(
                f"name {token.text!r} at position {token.start} is not allowed in {_preview(source)}"
            )
        percent_sign = (
            token.kind == "op" and token.text == "%" and prev is not None and prev.kind in ("num", ")")
        )
        if percent_sign and (nxt is None or (nxt.kind in ("op", ")", "=") and nxt.text in _AFTER_PERCENT)):
            out.append(Token("pct", "%", token.start, token.end))
            continue
        if _ends_operand(prev) and _starts_operand(token):
            assert prev is not None
            if prev.kind == "num" and token.kind == "num":
                raise EvaluationError(
                    f"two numbers without an operator at position {token.start} of {_preview(source)}"
                )
            if prev.kind == "num" and token.kind == "(" and _is_bare_fraction(raw, i):
                raise EvaluationError(
                    f"ambiguous {source[prev.start : prev.end]}(...) at position {prev.start}: a mixed number "
                    f"or a product? Write '+' or '*' explicitly"
                )
            if prev.kind == "name" and token.kind == "num":
                raise EvaluationError(f"number right after {prev.text!r} at position {token.start}")
            out.append(Token("op", "*"))
        out.append(token)
    return out


def render_tokens(tokens: list[Token]) -> str:
    """The canonical text of a token list: "x=(11-1)*2", "100*(1+20%)"."""
    parts: list[str] = []
    for token in tokens:
        if token.kind == "num":
            parts.append(token.text.replace(",", ""))
        else:
            parts.append(token.text)
    return "".join(parts)


def normalize_expression(text: str, *, unknowns: Collection[str] = ()) -> str:
    """The canonical ASCII spelling of an expression or equation ("3×4÷2" -> "3*4/2", "2^3" -> "2**3")."""
    return render_tokens(tokenize(text, unknowns=unknowns))


@dataclass(frozen=True)
class ParsedExpression:
    """A validated expression tree whose number literals are placeholder names bound in `numbers`."""

    tree: ast.Expression
    numbers: Mapping[str, Fraction]
    unknowns: frozenset[str]
    text: str


_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_ALLOWED_UNARY = (ast.UAdd, ast.USub)
_STRUCTURAL_NODES = (ast.Expression, ast.Load, *_ALLOWED_BINOPS, *_ALLOWED_UNARY)


def _percent_resolved(tokens: list[Token]) -> list[Token]:
    """Turn postfix percent signs into exact divisions by 100 that bind tighter than any operator."""
    out: list[Token] = []
    for token in tokens:
        if token.kind != "pct":
            out.append(token)
            continue
        prev = out[-1]
        if prev.kind == "num":
            assert prev.value is not None
            out[-1] = Token("num", prev.text + "%", prev.start, token.end, prev.value / 100)
            continue
        depth = 0
        for j in range(len(out) - 1, -1, -1):
            depth += (out[j].kind == ")") - (out[j].kind == "(")
            if depth == 0:
                break
        out[j:] = [
            Token("(", "("),
            *out[j:],
            Token("op", "/"),
            Token("num", "100", value=Fraction(100)),
            Token(")", ")"),
        ]
    return out


def parse_expression(
    text: str | list[Token], *, unknowns: Collection[str] = (), limits: EvalLimits | None = None
) -> ParsedExpression:
    """Tokenize, parse with `ast.parse(mode="eval")` and validate an expression (no '=')."""
    limits = limits or EvalLimits()
    tokens = text if isinstance(text, list) else tokenize(text, unknowns=unknowns, limits=limits)
    if not tokens:
        raise EvaluationError("empty expression")
    if any(t.kind == "=" for t in tokens):
        raise EvaluationError(f"'=' in {render_tokens(tokens)!r}: an equation, not an expression")
    numbers: dict[str, Fraction] = {}
    parts: list[str] = []
    for token in _percent_resolved(tokens):
        if token.kind == "num":
            placeholder = f"_n{len(numbers)}"
            assert token.value is not None
            numbers[placeholder] = token.value
            parts.append(placeholder)
        else:
            parts.append(token.text)
    source = " ".join(parts)
    display = render_tokens(tokens)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise EvaluationError(f"malformed expression {display!r}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise EvaluationError(f"expression {display[:60]!r} is too complex: {type(exc).__name__}") from None
    unknown_set = frozenset(unknowns)
    _validate(tree, numbers, unknown_set, display)
    return ParsedExpression(tree, numbers, unknown_set, display)


def _validate(
    tree: ast.Expression, numbers: Mapping[str, Fraction], unknowns: frozenset[str], display: str
) -> None:
    for node in ast.walk(tree):
        if isinstance(node, _STRUCTURAL_NODES):
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, _ALLOWED_BINOPS):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _ALLOWED_UNARY):
            continue
        if isinstance(node, ast.Name) and (node.id in numbers or node.id in unknowns):
            continue
        raise UnsafeExpressionError(f"{type(node).__name__} is not allowed in {display!r}")


class BoundedArithmetic:
    """Exact Fraction arithmetic that checks exponent size, result size and a deadline."""

    def __init__(self, limits: EvalLimits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.max_bits = limits.max_bits

    def check_size(self, value: Fraction) -> Fraction:
        if value.numerator.bit_length() > self.max_bits or value.denominator.bit_length() > self.max_bits:
            raise EvaluationError(f"an intermediate result exceeds {self.limits.max_digits} digits")
        return value

    def binop(self, op: ast.operator, left: Fraction, right: Fraction) -> Fraction:
        if isinstance(op, ast.Add):
            return self.check_size(left + right)
        if isinstance(op, ast.Sub):
            return self.check_size(left - right)
        if isinstance(op, ast.Mult):
            return self.check_size(left * right)
        if isinstance(op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise EvaluationError("division by zero")
        if isinstance(op, ast.Div):
            return self.check_size(left / right)
        if isinstance(op, ast.FloorDiv):
            return self.check_size(Fraction(left // right))
        if isinstance(op, ast.Mod):
            return self.check_size(left % right)
        return self.power(left, right)

    def power(self, base: Fraction, exponent: Fraction) -> Fraction:
        root = exponent.denominator
        if root != 1:
            if root > 64:
                raise EvaluationError(f"exponent {exponent} is not an integer or a simple root")
            base = self.exact_root(base, root)
        n = exponent.numerator
        if abs(n) > self.limits.max_exponent:
            raise EvaluationError(f"exponent {n} exceeds the limit {self.limits.max_exponent}")
        if base == 0 and n < 0:
            raise EvaluationError("division by zero (0 to a negative power)")
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if size > 1 and (size - 1) * abs(n) > self.max_bits:
            raise EvaluationError(f"a power exceeds {self.limits.max_digits} digits")
        return self.check_size(base**n)

    @staticmethod
    def exact_root(base: Fraction, root: int) -> Fraction:
        negative = base < 0
        if negative and root % 2 == 0:
            raise EvaluationError(f"even root of the negative number {base}")
        parts = []
        for part in (abs(base.numerator), base.denominator):
            r = _integer_root(part, root)
            if r is None:
                raise EvaluationError(f"the {root}-th root of {base} is not rational")
            parts.append(r)
        value = Fraction(parts[0], parts[1])
        return -value if negative else value

    def run(self, node: ast.AST, bindings: Mapping[str, Fraction]) -> Fraction:
        """Post-order evaluation with an explicit stack: deep trees cannot overflow Python's stack."""
        stack: list[tuple[ast.AST, bool]] = [(node, False)]
        values: list[Fraction] = []
        while stack:
            current, expanded = stack.pop()
            if time.monotonic() > self.deadline:
                raise EvaluationError(f"evaluation took longer than {self.limits.timeout_s} s")
            if isinstance(current, ast.Expression):
                stack.append((current.body, False))
            elif isinstance(current, ast.Name):
                if current.id not in bindings:
                    raise EvaluationError(f"no value for {current.id!r}")
                values.append(bindings[current.id])
            elif isinstance(current, ast.UnaryOp):
                if expanded:
                    operand = values.pop()
                    values.append(-operand if isinstance(current.op, ast.USub) else operand)
                else:
                    stack.append((current, True))
                    stack.append((current.operand, False))
            elif isinstance(current, ast.BinOp):
                if expanded:
                    right = values.pop()
                    left = values.pop()
                    values.append(self.binop(current.op, left, right))
                else:
                    stack.append((current, True))
                    stack.append((current.right, False))
                    stack.append((current.left, False))
            else:  # _validate admits nothing else
                raise UnsafeExpressionError(f"{type(current).__name__} is not allowed")
        return values[-1]


def _integer_root(value: int, root: int) -> int | None:
    """The exact integer `root`-th root of a non-negative integer, or None (Newton's method on ints)."""
    if value < 2:
        return value
    x = 1 << -(-value.bit_length() // root)
    while True:
        y = ((root - 1) * x + value // x ** (root - 1)) // root
        if y >= x:
            break
        x = y
    return x if x**root == value else None


def evaluate_parsed(
    parsed: ParsedExpression,
    bindings: Mapping[str, Fraction] | None = None,
    *,
    limits: EvalLimits | None = None,
) -> Fraction:
    """Evaluate a validated expression exactly; `bindings` gives values to its unknowns."""
    limits = limits or EvalLimits()
    names = dict(parsed.numbers)
    for name, value in (bindings or {}).items():
        names[name] = Fraction(value)
    evaluator = BoundedArithmetic(limits, time.monotonic() + limits.timeout_s)
    return evaluator.run(parsed.tree, names)


def safe_eval(
    expr: str,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    max_exponent: int = DEFAULT_MAX_EXPONENT,
    max_digits: int = DEFAULT_MAX_DIGITS,
    max_depth: int = DEFAULT_MAX_DEPTH,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Fraction:
    """Evaluate an arithmetic expression from untrusted text exactly.

    Allowed: numbers, + - * / // % ** (or ^), unary + -, parentheses, and the teacher spellings that
    `tokenize` normalizes. Raises UnsafeExpressionError (a ValueError) for anything else and
    EvaluationError for malformed input, division by zero, or a limit exceeded.
    """
    limits = EvalLimits(
        max_len=max_len,
        max_exponent=max_exponent,
        max_digits=max_digits,
        max_depth=max_depth,
        timeout_s=timeout_s,
    )
    started = time.monotonic()
    parsed = parse_expression(expr, limits=limits)
    remaining = limits.timeout_s - (time.monotonic() - started)
    evaluator = BoundedArithmetic(limits, time.monotonic() + max(remaining, 0.0))
    return evaluator.run(parsed.tree, parsed.numbers)
