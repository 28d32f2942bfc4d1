"""What every refinement method shares: candidate verification, recovered rows, round statistics, precision."""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mwp.data.artifact import DistilledRow
from mwp.data.formats import problem_numbers
from mwp.data.gold_templates import gold_template
from mwp.data.problem import Problem
from mwp.verify.equations import DEFAULT_CONSTANTS, template_to_equation
from mwp.verify.numbers import format_number, parse_number
from mwp.verify.templates import MAX_TEMPLATE_CHARS, canonical_infix, equivalent, verify_template

_SPACES = re.compile(r"\s+")
_LEADING_UNKNOWN = re.compile(r"^\s*x\s*=")


def verified_template(
    problem: Problem, template: str, constants: Collection[str] = DEFAULT_CONSTANTS
) -> str | None:
    """The canonical template if `template` (over N0..Nk, "x=" optional) solves `problem`, else None.

    The candidate is untrusted model or teacher text: it is bounded in length and checked by
    `mwp.verify.templates.verify_template` (a small parser with caps, exact bounded arithmetic, only
    the problem's numbers and `constants`, the answer compared as the distill stage compares it).
    """
    text = _SPACES.sub("", template)
    if not text or len(text) > MAX_TEMPLATE_CHARS or problem.answer is None:
        return None
    values = [parse_number(n) for n in problem_numbers(problem)]
    if not verify_template(text, values, problem.answer, constants=tuple(constants)).ok:
        return None
    return canonical_infix(text)


def recovered_row(
    problem: Problem, template: str, *, method: str, round_index: int, teacher: str
) -> DistilledRow:
    """A refined row for a verified canonical template ("x=N0+N1" or "N0+N1")."""
    body = _LEADING_UNKNOWN.sub("", template)
    equation = "x=" + template_to_equation(body, problem_numbers(problem))
    return DistilledRow(
        problem=problem,
        rationale=equation,
        teacher=teacher,
        sample_index=0,
        pred=format_number(problem.answer),
        equation=equation,
        template=body,
        method=method,
        round=round_index,
    )


def template_key(template: str | None) -> str:
    """Two spellings of one template ("x = N0+N1", "N0+N1") share a key."""
    return _LEADING_UNKNOWN.sub("", _SPACES.sub("", template or ""))


@dataclass
class RoundStats:
    """One round of one method: what it tried, what it recovered, what it cost."""

    method: str
    round: int
    attempted: int
    recovered: int = 0
    remaining: int = 0
    candidates: int = 0
    verified_candidates: int = 0
    teacher_calls: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0
    search_s: float = 0.0
    precision: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def candidates_per_s(self) -> float:
        """Candidates decoded (or enumerated, or asked for) per second of search time."""
        seconds = self.search_s or self.wall_s
        return self.candidates / seconds if seconds > 0 else 0.0

    def finish(self, remaining: int) -> RoundStats:
        self.remaining = remaining
        self.wall_s = time.perf_counter() - self.started
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("started")
        data["candidates_per_s"] = round(self.candidates_per_s, 2)
        for key in ("wall_s", "train_s", "search_s"):
            data[key] = round(data[key], 3)
        return data


def semantic_precision(rows: Iterable[DistilledRow]) -> dict[str, Any]:
    """The share of kept templates equivalent to the dataset's gold template (where it has one).

    Rows are counted per template; a problem without a gold equation, or whose gold equation does not
    map onto its numbers, is left out of the denominator and counted as `without_gold`.
    """
    with_gold = equal = without_gold = 0
    for row in rows:
        if row.template is None:
            continue
        gold = gold_template(row.problem)
        if gold is None:
            without_gold += 1
            continue
        with_gold += 1
        if equivalent(template_key(row.template), template_key(gold), len(problem_numbers(row.problem))):
            equal += 1
    return {
        "with_gold": with_gold,
        "equivalent": equal,
        "without_gold": without_gold,
        "precision": round(equal / with_gold, 4) if with_gold else None,
    }


def distinct_verified(
    problem: Problem, candidates: Sequence[str], constants: Collection[str], limit: int
) -> list[str]:
    """Up to `limit` distinct verified canonical templates among `candidates`, in order."""
    kept: list[str] = []
    for candidate in candidates:
        template = verified_template(problem, candidate, constants)
        if template is not None and template_key(template) not in {template_key(t) for t in kept}:
            kept.append(template)
            if len(kept) >= limit:
                break
    return kept
