"""From Large to Tiny's distillation chain: three kinds of teacher calls, each with its own check.

(a) equation          - the teacher writes "x=..." for the problem (or, on a chain-of-thought route,
                        its final "The answer is (84 / 2)." expression is taken); checked on values.
(c) format_correction - an equation that failed to parse goes back to the teacher with the parse
                        error, at most `max_corrections` rounds; a repaired one is checked as in (a).
(b) masked_equation   - for every equation that verified, the teacher rewrites it over the masked
                        problem's N0..Nk; the template must use only N0..Nk and the allowed
                        constants, and evaluated with the problem's numbers give the gold answer.
(c') masked_format_correction - a masked equation that failed to parse goes back to the teacher with
                        the parse error and the names, at most `max_corrections` rounds; a repaired
                        one is checked as in (b).

Lin et al. 2024 ("From Large to Tiny", arXiv:2403.14390, the Knowledge Distilling stage) describe
equation generation, masked equation generation and format correction, each with its check; they
published no code or prompts. What mwp chooses: the prompts (`mwp.teachers.prompts`), that only
an equation that does not parse is sent for correction (a wrong value is not a format error), the
number of rounds, and that the correction serves both generation steps. stats.json counts each
step's corrections in a block of its own ("format_correction" for (a), "masked_format_correction"
for (b)).

A teacher that replays recordings cannot answer (b) or (c): then (c) and (c') are skipped and (b) is
done deterministically (`equation_to_template`), and stats.json says so in the step's "by" field.

The chain reads each problem's question, numbers and final answer, never its gold equation: the
checks compare values with the answer (weak supervision; tests/distill/test_weak_supervision.py).
Equivalent templates of one problem are kept once (`mwp.verify.templates.equivalent`: equal values
on seeded random N0..Nk); templates are stored in `canonical_infix` spelling.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from mwp.data.artifact import ARTIFACT, DistilledRow
from mwp.data.io import append_jsonl, write_json
from mwp.data.problem import Problem
from mwp.progress import SamplingProgress
from mwp.teachers.base import SamplingParams, Teacher, TeacherRequest
from mwp.teachers.prompts import (
    format_correction_request,
    masked_equation_request,
    masked_format_correction_request,
)
from mwp.teachers.usage import teacher_usage
from mwp.verify.equation_checks import EquationCheck, check_teacher_equation, equation_parses
from mwp.verify.equations import DEFAULT_CONSTANTS
from mwp.verify.extract import extract_answer_span
from mwp.verify.numbers import format_number, parse_number
from mwp.verify.templates import TemplateError, canonical_infix, compile_template, equivalent, verify_template

log = logging.getLogger(__name__)

__all__ = [
    "ChainSettings",
    "StepStats",
    "TemplateCheck",
    "check_step_equation",
    "distill_chain",
    "verify_template",
]

STATS = "stats.json"
REPLAYED = "deterministic (recorded teacher cannot answer new prompts)"
NOT_ASKED = "not asked (recorded teacher cannot answer new prompts)"
# Teacher text read for a template: the head holds the answer, and the checks' cost grows with length.
MAX_TEMPLATE_TEXT_CHARS = 2_000
# Runs of template characters (one class, so matching is linear); the first with a placeholder wins.
_TEMPLATE_RUN = re.compile(r"[N0-9xX\s+\-*/^().%=]+")
_PLACEHOLDER = re.compile(r"N\d")


@dataclass(frozen=True)
class ChainSettings:
    max_corrections: int = 2
    dedup_trials: int = 8
    constants: tuple[str, ...] = DEFAULT_CONSTANTS
    # take the final "The answer is ..." expression of a chain-of-thought completion as the equation
    final_expression: bool = False


@dataclass
class StepStats:
    """One chain step: requests sent (distinct prompts), completions received, outputs checked (a
    completion shared by identical requests is checked once per asker), passed, and why the rest failed."""

    by: str = "teacher"
    requests: int = 0
    completions: int = 0
    checked: int = 0
    passed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    rounds: int | None = None

    def record(self, failed: str | None) -> None:
        self.checked += 1
        if failed is None:
            self.passed += 1
        else:
            self.failed[failed] += 1

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "by": self.by,
            "requests": self.requests,
            "completions": self.completions,
            "checked": self.checked,
            "passed": self.passed,
            "failed": dict(sorted(self.failed.items())),
            "yield": round(self.passed / self.checked, 4) if self.checked else 0.0,
        }
        if self.rounds is not None:
            row["rounds"] = self.rounds
        return row


@dataclass(frozen=True)
class TemplateCheck:
    """A masked equation's verification: `failed` names the first failing check (None: it verified)."""

    failed: str | None
    message: str = ""
    template: str | None = None  # canonical, over N0..Nk, without "x="
    value: Fraction | None = None
    expression: str | None = None  # the equation over N0..Nk as found in the text

    @property
    def passed(self) -> bool:
        return self.failed is None


@dataclass
class _Attempt:
    problem: Problem
    sample_index: int
    rationale: str
    check: EquationCheck


def check_step_equation(
    text: str,
    problem: Problem,
    *,
    final_expression: bool = False,
    constants: Collection[str] = DEFAULT_CONSTANTS,
) -> EquationCheck:
    """Step (a)/(c)'s check: `mwp.verify.equation_checks`, with later failures of an equation that
    does not parse counted as "format" (those are what format correction is asked for)."""
    source = text
    if final_expression:
        span = extract_answer_span(text, "strict")
        if span is None:
            return EquationCheck("extract", 'no final "The answer is ..." expression')
        # "(7x = 14)": the answer phrase's parentheses wrap the whole equation, not one operand
        inner = span.strip()[1:-1] if span.strip().startswith("(") and span.strip().endswith(")") else ""
        source = inner if inner and equation_parses(inner if "=" in inner else f"x={inner}") else span
    check = check_teacher_equation(source, problem, constants=constants)
    if check.failed in ("numbers", "evaluate") and check.corrected and not equation_parses(check.corrected):
        return replace(check, failed="format")
    return check


def _extract_template(text: str) -> str | None:
    prepared = (
        unicodedata.normalize("NFKC", text[:MAX_TEMPLATE_TEXT_CHARS]).replace("×", "*").replace("÷", "/")
    )
    for match in _TEMPLATE_RUN.finditer(prepared):
        body = match.group(0).strip().rstrip(".").strip()
        if _PLACEHOLDER.search(body):
            return body  # "x=N0/N1" and "N0/N1=x" both compile
    return None


def verify_masked(
    text: str, problem: Problem, constants: Collection[str] = DEFAULT_CONSTANTS
) -> TemplateCheck:
    """Check a teacher's masked equation, naming the first failing check: extract (an equation over
    N0..Nk in the text), format (it compiles), numbers (only N0..Nk of this problem and `constants`),
    evaluate (with the problem's numbers), answer (the gold answer)."""
    expression = _extract_template(text)
    if expression is None:
        return TemplateCheck("extract", "no equation over N0..Nk in the text")
    try:
        template = compile_template(expression)
    except TemplateError as exc:
        return TemplateCheck("format", str(exc), expression=expression)
    count = len(problem.numbers)
    if template.max_index >= count:
        return TemplateCheck(
            "numbers",
            f"N{template.max_index} in {expression!r}: the problem has {count} numbers",
            expression=expression,
        )
    allowed = {parse_number(c) for c in constants}
    stray = [c for c in template.constants if c not in allowed]
    if stray:
        return TemplateCheck(
            "numbers",
            f"{format_number(stray[0])} in {expression!r} is neither N0..N{count - 1} nor an allowed constant",
            expression=expression,
        )
    canonical = canonical_infix(template)
    values = [parse_number(n) for n in problem.numbers]
    verification = verify_template(template, values, problem.answer, constants=constants)
    if verification.ok:
        return TemplateCheck(None, "", canonical, verification.value, expression)
    failed = "evaluate" if verification.value is None and problem.answer is not None else "answer"
    return TemplateCheck(failed, verification.reason, canonical, verification.value, expression)


def _answers(teacher: Teacher) -> bool:
    return bool(getattr(teacher, "answers_new_prompts", True))


_Entry = TypeVar("_Entry")


def _ask(
    teacher: Teacher, asked: dict[TeacherRequest, list[_Entry]], params: SamplingParams, stats: StepStats
) -> Iterator[tuple[_Entry, str]]:
    """Each distinct request once, counted in `stats`; every entry that asked it with the text of the
    first completion (empty when the teacher gave none)."""
    stats.requests += len(asked)
    for response in teacher.generate(list(asked), params):
        stats.completions += len(response.completions)
        text = response.completions[0].text.strip() if response.completions else ""
        for entry in asked[response.request]:
            yield entry, text


def _correct_masked(
    checked: list[tuple[_Attempt, TemplateCheck, str]],
    teacher: Teacher,
    params: SamplingParams,
    prompt_cfg: Any,
    settings: ChainSettings,
    correction: StepStats,
) -> None:
    """Send the masked equations that failed to parse back with their parse error, round by round;
    an entry of `checked` is replaced by its repair's check."""
    broken = [i for i, (_, check, _) in enumerate(checked) if check.failed == "format"]
    for round_index in range(settings.max_corrections):
        if not broken:
            break
        correction.rounds = (correction.rounds or 0) + 1
        asked: dict[TeacherRequest, list[int]] = {}
        for index in broken:
            attempt, check, text = checked[index]
            request = masked_format_correction_request(
                attempt.problem,
                check.expression or text,
                check.message,
                prompt_cfg,
                settings.constants,
                attempt=round_index + 1,
            )
            asked.setdefault(request, []).append(index)
        broken = []
        for index, text in _ask(teacher, asked, params, correction):
            attempt = checked[index][0]
            check = verify_masked(text, attempt.problem, settings.constants)
            correction.record(check.failed)
            checked[index] = (attempt, check, text)
            if check.failed == "format":
                broken.append(index)


def distill_chain(
    problems: Sequence[Problem],
    teacher: Teacher,
    requests: Sequence[TeacherRequest],
    params: SamplingParams,
    out_dir: Path,
    *,
    dataset: str,
    split: str,
    prompt_cfg: Any = None,
    settings: ChainSettings = ChainSettings(),
) -> dict[str, Any]:
    """Run the chain; writes `distilled.jsonl` (kept rows) and `stats.json`, returns the stats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {p.id: p for p in problems}
    covered = [r for r in requests if teacher.covers(r.problem_id)]
    live = _answers(teacher)
    follow_up = replace(params, n=1)
    usage = teacher_usage(teacher)
    steps = {
        "equation": StepStats(
            by="teacher (final expression of its solution)" if settings.final_expression else "teacher"
        ),
        "format_correction": StepStats(by="teacher" if live else NOT_ASKED, rounds=0),
        "masked_equation": StepStats(by="teacher" if live else REPLAYED),
        "masked_format_correction": StepStats(by="teacher" if live else NOT_ASKED, rounds=0),
    }

    # (a) equations
    verified: list[_Attempt] = []
    broken: list[_Attempt] = []
    steps["equation"].requests = len(covered)
    progress = SamplingProgress(total=len(covered) * params.n, desc=f"chain {dataset}/{split}: equations")
    for response in teacher.generate(covered, params):
        problem = by_id[response.request.problem_id]
        steps["equation"].completions += len(response.completions)
        for index, completion in enumerate(response.completions):
            text = completion.text.strip()
            check = check_step_equation(
                text, problem, final_expression=settings.final_expression, constants=settings.constants
            )
            steps["equation"].record(check.failed)
            attempt = _Attempt(problem, index, text, check)
            if check.passed:
                verified.append(attempt)
            elif check.failed == "format" and live:
                broken.append(attempt)
        progress.update(len(response.completions), cost=usage.cost_usd)
    progress.close()

    # (c) format corrections, round by round, each repaired equation checked as in (a)
    correction = steps["format_correction"]
    for round_index in range(settings.max_corrections if live else 0):
        if not broken:
            break
        correction.rounds = (correction.rounds or 0) + 1
        asked: dict[TeacherRequest, list[_Attempt]] = {}
        for attempt in broken:
            equation = attempt.check.equation or attempt.rationale
            request = format_correction_request(
                attempt.problem, equation, attempt.check.message, prompt_cfg, attempt=round_index + 1
            )
            asked.setdefault(request, []).append(attempt)
        broken = []
        for attempt, text in _ask(teacher, asked, follow_up, correction):
            check = check_step_equation(text, attempt.problem, constants=settings.constants)
            correction.record(check.failed)
            repaired = _Attempt(attempt.problem, attempt.sample_index, attempt.rationale, check)
            if check.passed:
                verified.append(repaired)
            elif check.failed == "format":
                broken.append(repaired)

    # (b) masked equations of the verified ones
    masked = steps["masked_equation"]
    checked: list[tuple[_Attempt, TemplateCheck, str]] = []
    if live:
        pending: dict[TeacherRequest, list[_Attempt]] = {}
        for attempt in verified:
            equation = attempt.check.corrected or attempt.check.equation or ""
            request = masked_equation_request(attempt.problem, equation, prompt_cfg, settings.constants)
            pending.setdefault(request, []).append(attempt)
        for attempt, text in _ask(teacher, pending, follow_up, masked):
            checked.append((attempt, verify_masked(text, attempt.problem, settings.constants), text))
    else:
        for attempt in verified:
            template = attempt.check.template or ""
            checked.append((attempt, verify_masked(template, attempt.problem, settings.constants), template))
    for _attempt, template_check, _text in checked:
        masked.record(template_check.failed)

    # (c') format corrections of masked equations, each repaired one checked as in (b)
    if live:
        _correct_masked(checked, teacher, follow_up, prompt_cfg, settings, steps["masked_format_correction"])

    # keep: one row per problem and equivalence class of templates
    partial = out_dir / (ARTIFACT + ".partial")
    partial.unlink(missing_ok=True)
    partial.touch()
    seen: dict[str, list[str]] = {}
    duplicates = kept = 0
    for attempt, template_check, _text in checked:
        if template_check.failed is not None or template_check.template is None:
            continue
        problem = attempt.problem
        classes = seen.setdefault(problem.id, [])
        count = len(problem.numbers)
        if any(
            equivalent(template_check.template, other, count, trials=settings.dedup_trials)
            for other in classes
        ):
            duplicates += 1
            continue
        classes.append(template_check.template)
        kept += 1
        row = DistilledRow(
            problem=problem,
            rationale=attempt.rationale,
            teacher=teacher.name,
            sample_index=attempt.sample_index,
            pred=format_number(template_check.value),
            equation=attempt.check.equation,
            template=template_check.template,
            method="distill",
            round=0,
        )
        append_jsonl(partial, row.to_json())
    partial.replace(out_dir / ARTIFACT)

    problems_with_equation = len({a.problem.id for a in verified})
    problems_seen = len(problems)
    stats: dict[str, Any] = {
        "teacher": teacher.name,
        "dataset": dataset,
        "split": split,
        "route": "equation chain",
        "problems_seen": problems_seen,
        "problems_uncovered": len(requests) - len(covered),
        "samples_seen": steps["equation"].checked,
        "samples_kept": kept,
        "samples_duplicate": duplicates,
        "problems_with_verified_equation": problems_with_equation,
        "problems_kept": len(seen),
        "problem_yield": round(len(seen) / problems_seen, 4) if problems_seen else 0.0,
        "steps": {name: step.to_json() for name, step in steps.items()},
    }
    write_json(out_dir / STATS, stats)
    log.info(
        "%s: %d/%d problems with a verified template (%d rows)",
        teacher.name,
        len(seen),
        problems_seen,
        kept,
    )
    return stats
