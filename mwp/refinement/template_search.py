"""Enumeration search for weakly-supervised equations (the LBF / ComSearch baseline of From Large to Tiny).

Given a problem's numbers N0..Nk (exact values, the numbering of `mwp.verify.masking.mask_question`)
and its final answer, list the templates over N0..Nk and a few constants whose value is the answer.
It is fast and has no notion of meaning: "N0*N1" is kept whenever it reaches the answer, for the
right reason or not, which is what the ablation against the model-based refinement measures.

How the search stays small (ComSearch's idea): expressions are built bottom-up by operator count,
and for every set of used numbers only one expression per value is kept: two expressions over the
same numbers with the same value lead to the same values in every larger expression, so dropping
the second loses no reachable value, only a spelling of it. Further reductions, each value-complete:

* For a target >= 0 only non-negative intermediate values are kept: any tree's |value| is reached by
  a tree of the same size whose intermediate values are the |values| of the original's
  (|a-b| is a-b or b-a, |a*b| = |a|*|b|, ...). Zeros are kept only for a zero target.
* A subtree of constants alone ("2*60") is not built; constants appear next to problem numbers.
* The last operator level is not built at all: for each expression A one level down and each
  operator the value B that would reach the target (t-A, t/A, A-t, ...) is looked up by bisection
  in the sorted values of the matching level (a meet-in-the-middle step), so `max_ops` operators
  cost what building `max_ops - 1` levels costs.

Values are built in floats (a pre-filter: deduplication keys are floats truncated to 1e-9) and every
hit is confirmed exactly: the expression is re-evaluated in `Fraction`s and compared with
`mwp.verify.compare.answers_match`. A float collision can at worst drop a candidate, never admit a
wrong one. Magnitudes are bounded (1e-9 <= |value| <= 1e12), `max_ops` is a hard bound on the
number of operators, and `time_limit_s` bounds the wall time of one problem.

Operators: + - * /. Powers are left out: Math23K and SVAMP gold equations almost never use them,
and with a free exponent they multiply the candidates reaching a given answer by coincidence.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

from mwp.data.problem import Problem
from mwp.verify.compare import answers_match
from mwp.verify.masking import mask_question
from mwp.verify.numbers import format_number, parse_number

__all__ = [
    "DEFAULT_MAX_OPS",
    "ENUMERATION_CONSTANTS",
    "EnumerationSearch",
    "SearchStats",
    "enumerate_equations",
    "search_problem",
]

log = logging.getLogger(__name__)

# A shorter list than the equation format's allowed constants (`DEFAULT_CONSTANTS`): every constant
# multiplies the search, and these are the ones word problems use most (complements, halves,
# percents, pi, dozens, minutes). Measured on Math23K train at this list and max_ops=3.
ENUMERATION_CONSTANTS: tuple[str, ...] = ("1", "2", "100", "3.14", "12", "60")

DEFAULT_MAX_OPS = 3
DEFAULT_MAX_RESULTS = 8
DEFAULT_MAX_CONSTANTS = 1
DEFAULT_TIME_LIMIT_S = 10.0  # generous: the default depth needs < 0.5 s per problem; a bound, not a budget
MAX_OPS_LIMIT = 5

_MAX_MAGNITUDE = 1e12
_MIN_MAGNITUDE = 1e-9
_KEY_SCALE = 1e9  # dedup key: the value truncated to 1e-9 (int() of a product costs far less than round())
_CLOCK_EVERY = 4095  # look at the clock once per 4096 candidates (a mask, so a power of two minus one)

# An entry is a tuple (fast to build in the inner loop):
# (float value, mask of used numbers, constants used, operators, precedence, leaf order, node)
# where node is the leaf's exact value or (operator, left entry, right entry).
_VALUE, _MASK, _CONSTS, _OPS, _PREC, _LEAVES, _NODE = range(7)
_LEAF_PREC = 3
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class SearchStats:
    """What one problem's search did: expressions built (operations tried), distinct values kept
    (over all number subsets and levels), wall time, and whether `time_limit_s` cut it short."""

    candidates: int = 0
    distinct_values: int = 0
    seconds: float = 0.0
    timed_out: bool = False


class _TimeUp(Exception):
    pass


def _exact(entry: tuple) -> Fraction:
    node = entry[_NODE]
    if isinstance(node, Fraction):
        return node
    op, left, right = node
    return _apply(op, _exact(left), _exact(right))


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # callers never build a division by an exact zero (its float is 0 and is skipped)


def _render(entry: tuple, names: Sequence[str]) -> str:
    """Canonical infix, no spaces, parentheses only where precedence or associativity needs them."""
    node = entry[_NODE]
    if isinstance(node, Fraction):
        return names[entry[_LEAVES][0]]
    op, left, right = node
    prec = _PRECEDENCE[op]
    left_text = _render(left, names)
    right_text = _render(right, names)
    if left[_PREC] < prec:
        left_text = f"({left_text})"
    if right[_PREC] < prec or (right[_PREC] == prec and op in "-/"):
        right_text = f"({right_text})"
    return f"{left_text}{op}{right_text}"


def _target_tolerance(target: Fraction) -> float:
    """A float window at least as wide as what `answers_match` accepts around `target`."""
    scale = abs(float(target))
    # Two integers never match, so an integer target only admits float round-off (rule 2).
    tolerance = 1e-9 * scale if target.denominator == 1 else max(1e-4 * scale, 1e-6)
    return 1.5 * tolerance + 1e-12 * max(1.0, scale)


def _parse_constants(constants: Iterable[str | int | Fraction]) -> list[tuple[str, Fraction]]:
    parsed = []
    for constant in constants:
        value = constant if isinstance(constant, Fraction) else parse_number(constant)
        if value is None:
            raise ValueError(f"constant {constant!r} is not a number (enumeration constants)")
        parsed.append((format_number(value) or str(constant), value))
    return parsed


class _Search:
    def __init__(
        self,
        values: Sequence[Fraction | None],
        target: Fraction,
        constants: Sequence[tuple[str, Fraction]],
        max_ops: int,
        use_each_number_once: bool,
        max_constants: int,
        deadline: float,
    ):
        self.target = target
        self.target_float = float(target)
        self.window = _target_tolerance(target)
        self.once = use_each_number_once
        self.max_constants = max_constants
        self.max_ops = max_ops
        self.deadline = deadline
        self.keep_negative = target < 0
        self.keep_zero = target == 0
        self.candidates = 0
        self.names = [f"N{k}" for k in range(len(values))] + [text for text, _ in constants]
        leaves = [
            (float(value), 1 << k, 0, 0, _LEAF_PREC, (k,), value)
            for k, value in enumerate(values)
            if value is not None and abs(float(value)) <= _MAX_MAGNITUDE
        ]
        leaves += [
            (float(value), 0, 1, 0, _LEAF_PREC, (len(values) + c,), value)
            for c, (_text, value) in enumerate(constants)
        ]
        self.seen: dict[tuple[int, int], int] = {}
        for leaf in leaves:
            self.seen.setdefault((leaf[_MASK], int(leaf[_VALUE] * _KEY_SCALE)), 0)
        self.levels: list[list[tuple]] = [sorted(leaves, key=lambda entry: entry[_VALUE])]
        self.hits: dict[tuple[int, Fraction], tuple] = {}

    # -- building levels ---------------------------------------------------------------------------
    def build_level(self, k: int) -> None:
        current: dict[tuple[int, int], tuple] = {}
        for i in range((k - 1) // 2 + 1):
            j = k - 1 - i
            right_level = self.levels[j]
            for ai, a in enumerate(self.levels[i]):
                if time.monotonic() > self.deadline:
                    raise _TimeUp
                start = (ai + 1 if self.once else ai) if i == j else 0
                for b in right_level[start:]:
                    if self.once and a[_MASK] & b[_MASK]:
                        continue
                    mask = a[_MASK] | b[_MASK]
                    consts = a[_CONSTS] + b[_CONSTS]
                    if not mask or consts > self.max_constants:
                        continue
                    self._combine(current, k, a, b, mask, consts)
        for key in current:
            self.seen[key] = k
        level = sorted(current.values(), key=lambda entry: entry[_VALUE])
        self.levels.append(level)

    def _combine(self, current: dict, k: int, a: tuple, b: tuple, mask: int, consts: int) -> None:
        x, y = a[_VALUE], b[_VALUE]
        first, second = (a, b) if a[_LEAVES] <= b[_LEAVES] else (b, a)
        self._offer(current, k, x + y, ("+", first, second), mask, consts, 1)
        self._offer(current, k, x * y, ("*", first, second), mask, consts, 2)
        if x >= y or self.keep_negative:
            self._offer(current, k, x - y, ("-", a, b), mask, consts, 1)
        if y >= x or self.keep_negative:
            self._offer(current, k, y - x, ("-", b, a), mask, consts, 1)
        if y != 0:
            self._offer(current, k, x / y, ("/", a, b), mask, consts, 2)
        if x != 0:
            self._offer(current, k, y / x, ("/", b, a), mask, consts, 2)

    def _offer(
        self, current: dict, k: int, value: float, node: tuple, mask: int, consts: int, prec: int
    ) -> None:
        self.candidates += 1
        if not self.candidates & _CLOCK_EVERY and time.monotonic() > self.deadline:
            raise _TimeUp
        magnitude = abs(value)
        if magnitude > _MAX_MAGNITUDE or (magnitude < _MIN_MAGNITUDE and not (value == 0 and self.keep_zero)):
            return
        key = (mask, int(value * _KEY_SCALE))
        if key in self.seen:
            return
        leaves = node[1][_LEAVES] + node[2][_LEAVES]
        held = current.get(key)
        if held is not None and (held[_CONSTS], held[_LEAVES]) <= (consts, leaves):
            return
        current[key] = (value, mask, consts, k, prec, leaves, node)

    # -- hits ----------------------------------------------------------------------------------------
    def collect_level_hits(self, level: list[tuple]) -> None:
        low = bisect_left(level, self.target_float - self.window, key=lambda entry: entry[_VALUE])
        high = bisect_right(level, self.target_float + self.window, key=lambda entry: entry[_VALUE])
        for entry in level[low:high]:
            if entry[_MASK]:
                try:
                    exact = _exact(entry)
                except ZeroDivisionError:  # a float cancellation hid an exact zero denominator
                    continue
                self._confirm(entry, exact)

    def _confirm(self, entry: tuple, exact: Fraction) -> None:
        if not answers_match(exact, self.target):
            return
        key = (entry[_MASK], exact)
        held = self.hits.get(key)
        if held is None or _order(entry) < _order(held):
            self.hits[key] = entry

    def lookup_top_level(self) -> None:
        """Hits with exactly `max_ops` operators, without building that level (module docstring)."""
        k = self.max_ops
        t, window = self.target_float, self.window
        for i in range((k - 1) // 2 + 1):
            j = k - 1 - i
            level = self.levels[j]
            floats = [entry[_VALUE] for entry in level]
            for a in self.levels[i]:
                if time.monotonic() > self.deadline:
                    raise _TimeUp
                x = a[_VALUE]
                slack = window + 1e-12 * (abs(x) + abs(t))
                wanted = [("+", t - x, slack, False), ("-", x - t, slack, False), ("-", x + t, slack, True)]
                if x != 0:
                    wanted.append(("*", t / x, window / abs(x) + 1e-12 * abs(t / x), False))
                    wanted.append(("/", t * x, window * abs(x) + 1e-12 * abs(t * x), True))
                if t != 0:
                    b_value = x / t
                    wanted.append(("/", b_value, abs(b_value) * 2 * window / abs(t) + 1e-12, False))
                for op, b_value, half_width, b_first in wanted:
                    low = bisect_left(floats, b_value - half_width)
                    high = bisect_right(floats, b_value + half_width)
                    for b in level[low:high]:
                        self._lookup_candidate(k, op, a, b, b_first)

    def _lookup_candidate(self, k: int, op: str, a: tuple, b: tuple, b_first: bool) -> None:
        self.candidates += 1
        if self.once and a[_MASK] & b[_MASK]:
            return
        mask = a[_MASK] | b[_MASK]
        consts = a[_CONSTS] + b[_CONSTS]
        if not mask or consts > self.max_constants:
            return
        left, right = (b, a) if b_first else (a, b)
        if op in "+*" and right[_LEAVES] < left[_LEAVES]:
            left, right = right, left
        try:
            exact = _apply(op, _exact(left), _exact(right))
        except ZeroDivisionError:  # a float cancellation hid an exact zero denominator
            return
        entry = (
            float(exact),
            mask,
            consts,
            k,
            _PRECEDENCE[op],
            left[_LEAVES] + right[_LEAVES],
            (op, left, right),
        )
        self._confirm(entry, exact)

    def run(self) -> bool:
        """Search; True when it finished, False when the deadline cut it short (hits so far stay)."""
        try:
            self.collect_level_hits(self.levels[0])
            for k in range(1, self.max_ops):
                self.build_level(k)
                self.collect_level_hits(self.levels[k])
            if self.max_ops >= 1:
                self.lookup_top_level()
        except _TimeUp:
            return False
        return True

    def templates(self, max_results: int) -> list[str]:
        ranked = sorted((_order(entry), _render(entry, self.names)) for entry in self.hits.values())
        out: list[str] = []
        for _order_key, text in ranked:
            if text not in out:
                out.append(text)
            if len(out) == max_results:
                break
        return out


def _order(entry: tuple) -> tuple:
    """Simplicity: fewer operators, fewer constants, then the numbers used in reading order."""
    return (entry[_OPS], entry[_CONSTS], entry[_LEAVES])


def _check_bounds(max_ops: int, max_results: int, max_constants: int) -> None:
    if not 0 <= max_ops <= MAX_OPS_LIMIT:
        raise ValueError(f"max_ops={max_ops} is outside 0..{MAX_OPS_LIMIT} (enumeration search)")
    if max_results < 1:
        raise ValueError(f"max_results={max_results} must be at least 1 (enumeration search)")
    if max_constants < 0:
        raise ValueError(f"max_constants={max_constants} must be >= 0 (enumeration search)")


def _enumerate(
    values: Sequence[Fraction | None],
    target: Fraction | None,
    *,
    constants: Iterable[str | int | Fraction],
    max_ops: int,
    max_results: int,
    use_each_number_once: bool,
    allow_constants: bool,
    max_constants: int,
    time_limit_s: float | None,
) -> tuple[list[str], SearchStats]:
    _check_bounds(max_ops, max_results, max_constants)
    started = time.monotonic()
    if target is None or not any(value is not None for value in values):
        return [], SearchStats(seconds=time.monotonic() - started)
    parsed = _parse_constants(constants) if allow_constants else []
    deadline = started + time_limit_s if time_limit_s is not None else math.inf
    search = _Search(
        values,
        target,
        parsed,
        max_ops,
        use_each_number_once,
        max_constants if allow_constants else 0,
        deadline,
    )
    finished = search.run()
    stats = SearchStats(
        candidates=search.candidates,
        distinct_values=sum(len(level) for level in search.levels),
        seconds=time.monotonic() - started,
        timed_out=not finished,
    )
    return search.templates(max_results), stats


def enumerate_equations(
    values: Sequence[Fraction | None],
    target: Fraction,
    *,
    constants: Iterable[str | int | Fraction] = ENUMERATION_CONSTANTS,
    max_ops: int = DEFAULT_MAX_OPS,
    max_results: int = DEFAULT_MAX_RESULTS,
    use_each_number_once: bool = True,
    allow_constants: bool = True,
    max_constants: int = DEFAULT_MAX_CONSTANTS,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> list[str]:
    """Templates over N0..Nk (values[k] is Nk; None values are never used) that evaluate to `target`.

    At most `max_ops` operators and `max_constants` uses of `constants` (none unless
    `allow_constants`); each number at most once unless `use_each_number_once` is False. Ordered by
    fewer operators, fewer constants, then the numbers used in reading order; at most `max_results`.
    Canonical infix without spaces and with minimal parentheses: "(N0-N1)*N2", "N0/(N1+1)".
    """
    templates, _stats = _enumerate(
        values,
        target,
        constants=constants,
        max_ops=max_ops,
        max_results=max_results,
        use_each_number_once=use_each_number_once,
        allow_constants=allow_constants,
        max_constants=max_constants,
        time_limit_s=time_limit_s,
    )
    return templates


@dataclass(frozen=True)
class _Settings:
    constants: tuple[str | int | Fraction, ...]
    max_ops: int
    max_results: int
    use_each_number_once: bool
    allow_constants: bool
    max_constants: int
    time_limit_s: float | None


def _search_one(settings: _Settings, item: tuple[str, str, Fraction | None]) -> tuple[list[str], SearchStats]:
    question, language, answer = item
    return _enumerate(
        mask_question(question, language).values,
        answer,
        constants=settings.constants,
        max_ops=settings.max_ops,
        max_results=settings.max_results,
        use_each_number_once=settings.use_each_number_once,
        allow_constants=settings.allow_constants,
        max_constants=settings.max_constants,
        time_limit_s=settings.time_limit_s,
    )


def search_problem(problem: Problem, **options) -> tuple[list[str], SearchStats]:
    """`enumerate_equations` over a problem's masked numbers and gold answer, with its stats."""
    settings = EnumerationSearch(**options).settings
    return _search_one(settings, (problem.question, problem.language, problem.answer))


class EnumerationSearch:
    """Enumeration search over many problems, in a process pool when `processes` > 1.

    `search` yields (problem, templates, stats) in the input order and logs progress every
    `log_every` problems (rate, share with at least one hit, time-outs).
    """

    def __init__(
        self,
        constants: Iterable[str | int | Fraction] = ENUMERATION_CONSTANTS,
        max_ops: int = DEFAULT_MAX_OPS,
        max_results: int = DEFAULT_MAX_RESULTS,
        processes: int = 1,
        *,
        use_each_number_once: bool = True,
        allow_constants: bool = True,
        max_constants: int = DEFAULT_MAX_CONSTANTS,
        time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
        log_every: int = 1000,
    ):
        constants = tuple(constants)
        _parse_constants(constants)  # fail here, not in a worker
        _check_bounds(max_ops, max_results, max_constants)
        if processes < 1:
            raise ValueError(f"processes={processes} must be at least 1 (enumeration search)")
        self.settings = _Settings(
            constants,
            max_ops,
            max_results,
            use_each_number_once,
            allow_constants,
            max_constants,
            time_limit_s,
        )
        self.processes = processes
        self.log_every = max(1, log_every)

    def search(self, problems: Sequence[Problem]) -> Iterator[tuple[Problem, list[str], SearchStats]]:
        items = [(problem.question, problem.language, problem.answer) for problem in problems]
        work = partial(_search_one, self.settings)
        started = time.monotonic()
        solved = timed_out = 0
        if self.processes == 1:
            results: Iterable[tuple[list[str], SearchStats]] = map(work, items)
            pool = None
        else:
            # spawn: the parent may hold threads (tokenizers, torch) that a fork would copy mid-state
            pool = multiprocessing.get_context("spawn").Pool(self.processes)
            chunk = max(1, min(64, len(items) // (self.processes * 8) or 1))
            results = pool.imap(work, items, chunksize=chunk)
        try:
            for done, (problem, (templates, stats)) in enumerate(zip(problems, results, strict=True), 1):
                solved += bool(templates)
                timed_out += stats.timed_out
                if done % self.log_every == 0 or done == len(items):
                    elapsed = time.monotonic() - started
                    log.info(
                        "enumeration search: %d/%d problems, %.1f problems/s, %.1f%% with a hit, %d timed out",
                        done,
                        len(items),
                        done / elapsed if elapsed > 0 else float("inf"),
                        100 * solved / done,
                        timed_out,
                    )
                yield problem, templates, stats
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
