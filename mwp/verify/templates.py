"""Equation templates over placeholders N0..Nk: compile once, evaluate exactly, verify fast.

A template is what the equation format's student writes and what the teacher's equations become
(`mwp.verify.equations.equation_to_template`): "N0/N1", "x=(N0-N1)*2", "number0 * number1". The
grammar is small on purpose: placeholders, unsigned decimal literals (a trailing "%" divides by 100),
`+ - * /`, `^` or `**` (right-associative, binding tighter than unary minus, as in Python) and
parentheses. Teacher text is untrusted: it is only ever tokenized by one regular expression and
parsed by a recursive-descent parser with caps on length, node count and nesting; evaluation is over
`Fraction` with an integer-exponent cap and a size cap on every intermediate value.

Compiled templates are cached by their text (`compile_template`), since the same candidate
templates recur across problems; evaluation of a compiled template is a chain of closures, no
parsing. `verify_template` is the hot path of equation search and of the weak-supervision checks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from math import gcd

from mwp.verify.compare import answers_match
from mwp.verify.equations import DEFAULT_CONSTANTS
from mwp.verify.numbers import format_number, parse_number
from mwp.verify.safe_eval import EvaluationError

__all__ = [
    "MAX_TEMPLATE_CHARS",
    "Template",
    "TemplateError",
    "Verification",
    "canonical_infix",
    "compile_template",
    "equivalent",
    "from_prefix",
    "to_prefix",
    "verify_template",
]

MAX_TEMPLATE_CHARS = 256
MAX_TEMPLATE_NODES = 128
MAX_TEMPLATE_DEPTH = 32
# |exponent| of "^": areas and volumes need 2 and 3; compound interest over a few dozen periods.
MAX_EXPONENT = 64
# Bits of any numerator or denominator during evaluation (about 300 decimal digits).
MAX_VALUE_BITS = 1000
_MAX_LITERAL_DIGITS = 30

_CACHE_SIZE = 65536


class TemplateError(EvaluationError):
    """A template that is malformed, too large, or cannot be evaluated (division by zero, overflow)."""


# One token per match; group names say the kind. Whitespace is skipped between tokens.
_TOKEN = re.compile(
    r"\s*(?:(?P<ph>(?:N|number)(?P<index>\d{1,4}))(?![\w.])"
    r"|(?P<num>\d+(?:\.\d+)?|\.\d+)(?P<pct>%)?(?![\w.])"
    r"|(?P<op>\*\*|[-+*/^()]))"
)
_EQUATION_PREFIX = re.compile(r"^\s*[xX]\s*=")
_EQUATION_SUFFIX = re.compile(r"=\s*[xX]\s*$")
_SPELLINGS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-", "[": "(", "]": ")", "{": "(", "}": ")"})

# Tree nodes: ("N", k) | ("C", value) | ("neg", operand) | (op, left, right) with op in "+-*/^".
Node = tuple
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4, "N": 5, "C": 5}


@dataclass(frozen=True)
class Template:
    """A compiled template: its tree, the placeholder indices it uses and its literal constants."""

    text: str
    tree: Node = field(repr=False)
    placeholders: tuple[int, ...]
    constants: tuple[Fraction, ...]
    max_index: int  # the largest placeholder index, -1 for a template without placeholders
    _run: Callable[[Sequence[tuple[int, int]]], tuple[int, int]] = field(repr=False, compare=False)

    def evaluate(self, values: Sequence[Fraction]) -> Fraction:
        """The exact value with N<k> bound to values[k]; TemplateError on a missing value or bad arithmetic."""
        numerator, denominator = self.evaluate_pair(values)
        return Fraction(numerator, denominator)

    def evaluate_pair(self, values: Sequence[Fraction | None]) -> tuple[int, int]:
        """The value as an unreduced (numerator, denominator > 0) pair, for callers that compare many."""
        if self.max_index >= len(values):
            raise TemplateError(
                f"N{self.max_index} in {self.text!r} refers to number {self.max_index}, "
                f"but the problem has {len(values)}"
            )
        try:
            return self._run(_pairs(values, self.placeholders))
        except ZeroDivisionError:
            raise TemplateError(f"division by zero in {self.text!r}") from None
        except TemplateError as error:
            raise TemplateError(f"{error} in {self.text!r}") from None


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify_template`: `reason` is "" when ok, else says what failed."""

    ok: bool
    reason: str
    value: Fraction | None


# ---------------------------------------------------------------------------------------------- parsing


def _tokens(text: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    position = 0
    length = len(text)
    while position < length:
        match = _TOKEN.match(text, position)
        if match is None:
            rest = text[position:].lstrip()
            if not rest:
                break
            raise TemplateError(f"unexpected {rest[:20]!r} at character {length - len(rest)} of {text!r}")
        position = match.end()
        if match.group("ph"):
            out.append(("N", int(match.group("index"))))
        elif match.group("num"):
            digits = match.group("num")
            if len(digits) > _MAX_LITERAL_DIGITS:
                raise TemplateError(f"literal {digits[:20]}... in {text!r} is too long")
            value = Fraction(digits)
            out.append(("C", value / 100 if match.group("pct") else value))
        else:
            op = match.group("op")
            out.append(("op", "^" if op == "**" else op))
    return out


class _Parser:
    """Recursive descent: sum := product (('+'|'-') product)*; product := unary (('*'|'/') unary)*;
    unary := '-' unary | '+' unary | power; power := atom ('^' unary)?; atom := N | C | '(' sum ')'."""

    def __init__(self, tokens: list[tuple[str, object]], text: str):
        self.tokens = tokens
        self.text = text
        self.i = 0
        self.depth = 0

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"{what} in template {self.text!r}")

    def peek(self) -> tuple[str, object] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("nothing to evaluate")
        tree = self.sum()
        if self.i != len(self.tokens):
            raise self.fail(f"unexpected {self.tokens[self.i][1]!r} after a complete expression")
        return tree

    def sum(self) -> Node:
        node = self.product()
        while (token := self.peek()) is not None and token[0] == "op" and token[1] in ("+", "-"):
            self.i += 1
            node = (token[1], node, self.product())
        return node

    def product(self) -> Node:
        node = self.unary()
        while (token := self.peek()) is not None and token[0] == "op" and token[1] in ("*", "/"):
            self.i += 1
            node = (token[1], node, self.unary())
        return node

    def unary(self) -> Node:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in ("-", "+"):
            self.i += 1
            self.enter()
            operand = self.unary()
            self.depth -= 1
            return ("neg", operand) if token[1] == "-" else operand
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        token = self.peek()
        if token is not None and token == ("op", "^"):
            self.i += 1
            self.enter()
            exponent = self.unary()
            self.depth -= 1
            return ("^", base, exponent)
        return base

    def atom(self) -> Node:
        token = self.peek()
        if token is None:
            raise self.fail("an operand missing at the end")
        self.i += 1
        kind, value = token
        if kind in ("N", "C"):
            return token
        if value == "(":
            self.enter()
            node = self.sum()
            self.depth -= 1
            if self.peek() != ("op", ")"):
                raise self.fail("an unclosed '('")
            self.i += 1
            return node
        raise self.fail(f"an operand expected, got {value!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_TEMPLATE_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_TEMPLATE_DEPTH}")


def _strip_unknown(text: str) -> str:
    """ "x=N0/N1" and "N0/N1=x" are the template "N0/N1"."""
    if "=" not in text:
        return text
    stripped = _EQUATION_PREFIX.sub("", text, count=1)
    if stripped == text:
        stripped = _EQUATION_SUFFIX.sub("", text, count=1)
    if "=" in stripped:
        raise TemplateError(f"template {text!r} must be an expression or 'x=<expression>'")
    return stripped


# Evaluation runs on unreduced (numerator, denominator) integer pairs: Fraction's gcd on every
# operation costs more than the arithmetic itself, and templates are short. A pair is reduced only
# when it grows past the size cap, and once at the end. Denominators are kept positive.
Pair = tuple[int, int]


def _bounded(numerator: int, denominator: int) -> Pair:
    if numerator.bit_length() > MAX_VALUE_BITS or denominator.bit_length() > MAX_VALUE_BITS:
        common = gcd(numerator, denominator)
        numerator, denominator = numerator // common, denominator // common
        if numerator.bit_length() > MAX_VALUE_BITS or denominator.bit_length() > MAX_VALUE_BITS:
            raise TemplateError(f"an intermediate value exceeds {MAX_VALUE_BITS} bits")
    return numerator, denominator


def _add(a: Pair, b: Pair) -> Pair:
    if a[1] == b[1]:
        return _bounded(a[0] + b[0], a[1])
    return _bounded(a[0] * b[1] + b[0] * a[1], a[1] * b[1])


def _sub(a: Pair, b: Pair) -> Pair:
    if a[1] == b[1]:
        return _bounded(a[0] - b[0], a[1])
    return _bounded(a[0] * b[1] - b[0] * a[1], a[1] * b[1])


def _mul(a: Pair, b: Pair) -> Pair:
    return _bounded(a[0] * b[0], a[1] * b[1])


def _div(a: Pair, b: Pair) -> Pair:
    if b[0] == 0:
        raise ZeroDivisionError
    if b[0] < 0:
        return _bounded(-a[0] * b[1], a[1] * -b[0])
    return _bounded(a[0] * b[1], a[1] * b[0])


def _power(base: Pair, exponent: Pair) -> Pair:
    power, remainder = divmod(exponent[0], exponent[1])
    if remainder:
        raise TemplateError(f"exponent {format_number(Fraction(*exponent))} is not an integer")
    if abs(power) > MAX_EXPONENT:
        shown = str(power) if power.bit_length() < 64 else f"of {len(str(power))} digits"
        raise TemplateError(f"exponent {shown} exceeds {MAX_EXPONENT}")
    common = gcd(*base)
    numerator, denominator = base[0] // common, base[1] // common
    if max(numerator.bit_length(), denominator.bit_length()) * abs(power) > MAX_VALUE_BITS:
        raise TemplateError(f"a power exceeds {MAX_VALUE_BITS} bits")
    if power < 0:
        return _div((1, 1), (numerator**-power, denominator**-power))
    return numerator**power, denominator**power


_BINARY = {"+": _add, "-": _sub, "*": _mul, "/": _div, "^": _power}


def _closure(node: Node) -> Callable[[Sequence[Pair]], Pair]:
    kind = node[0]
    if kind == "N":
        index = node[1]
        return lambda values: values[index]
    if kind == "C":
        constant = (node[1].numerator, node[1].denominator)
        return lambda values: constant
    if kind == "neg":
        operand = _closure(node[1])

        def negate(values: Sequence[Pair]) -> Pair:
            numerator, denominator = operand(values)
            return -numerator, denominator

        return negate
    left, right, operation = _closure(node[1]), _closure(node[2]), _BINARY[kind]
    return lambda values: operation(left(values), right(values))


def _pairs(values: Sequence[Fraction | None], used: tuple[int, ...]) -> list[Pair]:
    """Values as pairs; a placeholder the template does not use may be None."""
    try:
        return [(value.numerator, value.denominator) for value in values]  # type: ignore[union-attr]
    except AttributeError:
        pass
    pairs: list[Pair] = [(0, 1)] * len(values)
    for k in used:
        value = values[k]
        if not isinstance(value, Fraction | int):
            raise TemplateError(f"N{k} has no numeric value")
        pairs[k] = (value.numerator, value.denominator)
    return pairs


def _walk(node: Node) -> list[Node]:
    stack, out = [node], []
    while stack:
        current = stack.pop()
        out.append(current)
        if current[0] not in ("N", "C"):
            stack.extend(current[1:])
    return out


def _build(text: str, tree: Node) -> Template:
    nodes = _walk(tree)
    if len(nodes) > MAX_TEMPLATE_NODES:
        raise TemplateError(f"template {text!r} has {len(nodes)} nodes; the limit is {MAX_TEMPLATE_NODES}")
    placeholders = tuple(sorted({n[1] for n in nodes if n[0] == "N"}))
    constants = tuple(sorted({n[1] for n in nodes if n[0] == "C"}))
    return Template(
        text=text,
        tree=tree,
        placeholders=placeholders,
        constants=constants,
        max_index=placeholders[-1] if placeholders else -1,
        _run=_closure(tree),
    )


def compile_template(text: str) -> Template:
    """Parse a template ("N0/N1", "x=N0/N1", "(N0 - N1) * 2", "number0 * number1"), cached by its text.

    Raises TemplateError naming the template and the place for anything else: other names, "=" other
    than a leading "x=", unbalanced parentheses, more than MAX_TEMPLATE_CHARS characters.
    """
    compiled = _compile_cached(text) if isinstance(text, str) else _compile(text)
    if isinstance(compiled, TemplateError):
        raise compiled
    return compiled


# Failures are cached too: an enumeration or a teacher repeats the same malformed text.
@lru_cache(maxsize=_CACHE_SIZE)
def _compile_cached(text: str) -> Template | TemplateError:
    return _compile(text)


def _compile(text: str) -> Template | TemplateError:
    try:
        return _parse(text)
    except TemplateError as error:
        return error


def _parse(text: str) -> Template:
    if not isinstance(text, str):
        raise TemplateError(f"expected a template string, got {type(text).__name__}")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is {len(text)} characters long; the limit is {MAX_TEMPLATE_CHARS}")
    body = _strip_unknown(text.translate(_SPELLINGS))
    return _build(text, _Parser(_tokens(body), text).parse())


def _as_template(template: Template | str) -> Template:
    if isinstance(template, Template):
        return template
    compiled = _compile_cached(template) if isinstance(template, str) else _compile(template)
    if isinstance(compiled, TemplateError):
        raise compiled
    return compiled


# ---------------------------------------------------------------------------------------------- verification


@lru_cache(maxsize=256)
def _constant_values(constants: tuple[str, ...] | frozenset[str]) -> frozenset[Fraction]:
    values = set()
    for text in constants:
        value = parse_number(text)
        if value is None:
            raise TemplateError(f"allowed constant {text!r} is not a number")
        values.add(value)
    return frozenset(values)


def _allowed(constants: Collection[str] | frozenset[Fraction]) -> frozenset[Fraction]:
    if isinstance(constants, frozenset) and all(isinstance(c, Fraction) for c in constants):
        return constants  # type: ignore[return-value]
    key = constants if isinstance(constants, tuple | frozenset) else tuple(constants)
    return _constant_values(key)  # type: ignore[arg-type]


_DEFAULT_ALLOWED = _constant_values(DEFAULT_CONSTANTS)


def verify_template(
    template_text: str | Template,
    values: Sequence[Fraction | None],
    answer: Fraction | str | None,
    *,
    constants: Collection[str] | frozenset[Fraction] | None = None,
) -> Verification:
    """Does the template, with N<k> bound to the problem's values[k], give `answer`?

    ok only when the template compiles, every placeholder index is < len(values), every literal is an
    allowed constant (`constants`, by value; default `mwp.verify.equations.DEFAULT_CONSTANTS`), the
    arithmetic succeeds and the value matches `answer` as `mwp.verify.compare.answers_match` decides
    (a string answer is parsed with `parse_number`, "50%" being 1/2). Never raises on bad teacher text:
    the reason says what failed.
    """
    template = _compile_cached(template_text) if type(template_text) is str else template_text
    if not isinstance(template, Template):
        try:
            template = _as_template(template)
        except TemplateError as error:
            return Verification(False, f"malformed: {error}", None)
    if template.max_index >= len(values):
        return Verification(
            False, f"N{template.max_index} is out of range: the problem has {len(values)} numbers", None
        )
    if template.constants:
        allowed = (
            _DEFAULT_ALLOWED if constants is None or constants is DEFAULT_CONSTANTS else _allowed(constants)
        )
        for constant in template.constants:
            if constant not in allowed:
                return Verification(False, f"constant {format_number(constant)} is not allowed", None)
    try:
        numerator, denominator = template._run(_pairs(values, template.placeholders))
    except ZeroDivisionError:
        return Verification(False, f"cannot evaluate: division by zero in {template.text!r}", None)
    except TemplateError as error:
        return Verification(False, f"cannot evaluate: {error} in {template.text!r}", None)
    gold = parse_number(answer) if isinstance(answer, str) else answer
    if gold is None:
        return Verification(False, "the problem has no numeric answer", Fraction(numerator, denominator))
    gold_numerator, gold_denominator = gold.numerator, gold.denominator
    if numerator * gold_denominator == gold_numerator * denominator:
        return Verification(True, "", gold)
    if not _may_match(numerator, denominator, gold_numerator, gold_denominator):
        value = Fraction(numerator, denominator)
        return Verification(False, f"value {value} is not the answer {gold}", value)
    value = Fraction(numerator, denominator)
    if not answers_match(value, gold):
        return Verification(
            False, f"value {format_number(value)} is not the answer {format_number(gold)}", value
        )
    return Verification(True, "", value)


# answers_match accepts at most a relative 1e-4 (or 1e-6 absolute) difference; anything ten times
# farther apart is rejected here without building Fractions.
_NEAR_REL, _NEAR_ABS = 1e-3, 1e-5


def _may_match(numerator: int, denominator: int, gold_numerator: int, gold_denominator: int) -> bool:
    try:
        pred, gold = numerator / denominator, gold_numerator / gold_denominator
    except OverflowError:
        return True  # too large for a float: let the exact comparison decide
    return abs(pred - gold) <= max(_NEAR_REL * max(abs(pred), abs(gold)), _NEAR_ABS)


# ---------------------------------------------------------------------------------------------- spellings


def _infix(node: Node) -> str:
    kind = node[0]
    if kind == "N":
        return f"N{node[1]}"
    if kind == "C":
        return format_number(node[1]) or "0"
    if kind == "neg":
        inner = _infix(node[1])
        return f"-({inner})" if _PRECEDENCE[node[1][0]] < _PRECEDENCE["neg"] else f"-{inner}"
    precedence = _PRECEDENCE[kind]
    left, right = node[1], node[2]
    left_text, right_text = _infix(left), _infix(right)
    left_precedence, right_precedence = _PRECEDENCE[left[0]], _PRECEDENCE[right[0]]
    if kind == "^":
        # Right-associative: the base needs parentheses at or below "^", the exponent below "neg".
        if left_precedence <= precedence:
            left_text = f"({left_text})"
        if right_precedence < _PRECEDENCE["neg"]:
            right_text = f"({right_text})"
        return f"{left_text}^{right_text}"
    if left_precedence < precedence:
        left_text = f"({left_text})"
    # Exact arithmetic: a+(b-c) is a+b-c and a*(b/c) is a*b/c, so only "-" and "/" keep parentheses
    # around a right operand of their own level. A negated right operand is always parenthesized.
    if (
        right_precedence < precedence
        or (right_precedence == precedence and kind in ("-", "/"))
        or right[0] == "neg"
    ):
        right_text = f"({right_text})"
    return f"{left_text}{kind}{right_text}"


def canonical_infix(template: Template | str) -> str:
    """One spelling of a template: minimal parentheses, no spaces, "N<k>" placeholders, "^" powers."""
    return _infix(_as_template(template).tree)


def _prefix(node: Node, out: list[str]) -> None:
    kind = node[0]
    if kind == "N":
        out.append(f"N{node[1]}")
    elif kind == "C":
        out.append(format_number(node[1]) or "0")
    else:
        out.append(kind)
        for child in node[1:]:
            _prefix(child, out)


def to_prefix(template: Template | str) -> str:
    """Prefix (Polish) notation, space-separated: "(N0-N1)*2" -> "* - N0 N1 2"; unary minus is "neg"."""
    out: list[str] = []
    _prefix(_as_template(template).tree, out)
    return " ".join(out)


_ARITY = {"+": 2, "-": 2, "*": 2, "/": 2, "^": 2, "neg": 1}


def from_prefix(text: str) -> Template:
    """The template of a prefix expression ("/ N0 N1"); TemplateError on anything malformed."""
    if not isinstance(text, str) or len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"prefix expression must be a string of at most {MAX_TEMPLATE_CHARS} characters")
    words = text.split()
    if not words:
        raise TemplateError("empty prefix expression")
    stack: list[Node] = []
    for word in reversed(words):
        arity = _ARITY.get("^" if word == "**" else word)
        if arity is None:
            tokens = _tokens(word)
            if len(tokens) != 1 or tokens[0][0] not in ("N", "C"):
                raise TemplateError(f"{word!r} in prefix expression {text!r} is not an operator or operand")
            stack.append(tokens[0])
            continue
        if len(stack) < arity:
            raise TemplateError(f"{word!r} in prefix expression {text!r} lacks an operand")
        operands = [stack.pop() for _ in range(arity)]
        stack.append(("^" if word == "**" else word, *operands))
    if len(stack) != 1:
        raise TemplateError(f"prefix expression {text!r} leaves {len(stack)} operands, expected one")
    tree = stack[0]
    return _build(_infix(tree), tree)


# ---------------------------------------------------------------------------------------------- equivalence


def _random_values(rng: random.Random, count: int) -> list[Fraction]:
    """Distinct non-degenerate rationals: never 0 or 1 (which hide "+N0" or "*N1"), never integers only."""
    values: list[Fraction] = []
    while len(values) < count:
        value = Fraction(rng.randint(2, 997), rng.choice((1, 1, 2, 3, 7, 11))) * rng.choice((1, 1, 1, -1))
        if value not in values and value not in (0, 1, -1):
            values.append(value)
    return values


def equivalent(
    template_a: Template | str, template_b: Template | str, n_numbers: int, *, trials: int = 8, seed: int = 0
) -> bool:
    """Are two templates over N0..N<n_numbers-1> the same function? Numerically, on `trials` random points.

    Each trial binds every placeholder to a distinct random rational (never 0 or +-1, sometimes negative,
    sometimes not an integer) and compares exact values. A trial where exactly one side fails (division
    by zero, overflow) counts as different; trials where both fail are skipped, and templates that fail
    on every trial are equivalent only when their canonical spellings agree. A template that is
    malformed or uses a placeholder >= n_numbers is equivalent to nothing. Deterministic for a seed.
    """
    try:
        a, b = _as_template(template_a), _as_template(template_b)
    except TemplateError:
        return False
    if a.max_index >= n_numbers or b.max_index >= n_numbers:
        return False
    if a.tree == b.tree:
        return True
    rng = random.Random(seed)
    compared = 0
    for _ in range(trials):
        values = _random_values(rng, n_numbers)
        results = []
        for template in (a, b):
            try:
                results.append(template.evaluate(values))
            except TemplateError:
                results.append(None)
        if results[0] is None and results[1] is None:
            continue
        if results[0] != results[1]:
            return False
        compared += 1
    return compared > 0 or canonical_infix(a) == canonical_infix(b)
