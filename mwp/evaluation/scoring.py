"""Greedy evaluation on benchmark sets: accuracy with strict and flexible extraction, per model and format.

`score_problems` is the one scoring loop: any `Generator` (student, teacher, HF folder) completes
the sources, and every answer is read with the same extraction (with `paper_metric`, also the way
Fu et al.'s tables read it, `mwp.verify.last_number`, as a column of its own beside the strict headline); in the equation format the
completion is a template, scored by substituting the problem's numbers and evaluating it safely
(extraction mode "equation", `mwp.verify.template_scoring`). `score_baseline` scores one fixed template
on every problem: the trivial baseline of the most frequent training template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mwp.data.formats import EQUATION, Format, build_source_kept, problem_numbers
from mwp.data.io import write_jsonl
from mwp.data.problem import Problem
from mwp.evaluation.exemplars import ExemplarPool
from mwp.evaluation.generators import Generator
from mwp.verify.compare import answers_match
from mwp.verify.extract import extract_answer
from mwp.verify.last_number import completion_as_read, last_number, last_number_correct
from mwp.verify.numbers import format_number
from mwp.verify.template_scoring import EQUATION_EXTRACTION, EquationScore, score_template


class Accuracies:
    """Strict and flexible accuracy of a scored set: its `size` and the hits of each extraction mode."""

    size: int
    strict_correct: int
    flexible_correct: int
    last_number_correct: int

    @property
    def strict_acc(self) -> float:
        return self.strict_correct / self.size if self.size else 0.0

    @property
    def flexible_acc(self) -> float:
        return self.flexible_correct / self.size if self.size else 0.0

    @property
    def last_number_acc(self) -> float:
        """Fu et al.'s metric: the completion's last number equals the gold's (`mwp.verify.last_number`)."""
        return self.last_number_correct / self.size if self.size else 0.0


@dataclass
class EvalResult(Accuracies):
    dataset: str
    split: str
    role: str  # "in-distribution" or "out-of-distribution"
    size: int
    strict_correct: int = 0
    flexible_correct: int = 0
    # problems of the split not scored because their normalised question was seen in training
    dropped: int = 0
    model: str = "student"
    format: str = "zero_shot_cot"
    exemplars_shown: int = 0  # exemplars in all sources together (sources that were too long keep fewer)
    # Fu et al.'s metric scored too (evaluation.paper_metric); never for the equation format
    paper_metric: bool = False
    last_number_correct: int = 0
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def extraction(self) -> str:
        """How answers were read: strict and flexible answer extraction, or the equation format's template."""
        return EQUATION_EXTRACTION if self.format == EQUATION else "strict/flexible"

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "role": self.role,
            "format": self.format,
            "extraction": self.extraction,
            "size": self.size,
            "mean_exemplars": round(self.exemplars_shown / self.size, 2) if self.size else 0.0,
            "strict_acc": round(self.strict_acc, 4),
            "flexible_acc": round(self.flexible_acc, 4),
            **({"last_number_acc": round(self.last_number_acc, 4)} if self.has_paper_metric else {}),
            "dropped": self.dropped,
        }

    @property
    def has_paper_metric(self) -> bool:
        return self.paper_metric and self.format != EQUATION


def score_problems(
    generator: Generator,
    problems: Sequence[Problem],
    *,
    dataset: str,
    split: str,
    role: str,
    fmt: Format = "zero_shot_cot",
    pool: ExemplarPool | None = None,
    num_exemplars: int = 0,
    exemplar_seed: int = 0,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
    dropped: int = 0,
    equation_notation: str = "infix",
    paper_metric: bool = False,
) -> EvalResult:
    """Complete every problem's source in format `fmt` and score it; `exclude_ids` are never scored.

    With `paper_metric`, every completion is also scored as Fu et al. scored theirs (the last number,
    `last_number_acc`), except in the equation format, whose completions are templates.

    `dropped` counts problems the caller already removed by content (`mwp.data.dedup.drop_seen`);
    the id overlap with `exclude_ids` is added to it.

    In-context formats draw `num_exemplars` from `pool` per problem (fixed by `exemplar_seed`); when a
    model has a source length limit, trailing exemplars are dropped until the source fits (the
    question itself is never cut), and each prediction row lists the exemplars actually shown.
    """
    kept = [p for p in problems if p.id not in exclude_ids]
    result = EvalResult(
        dataset,
        split,
        role,
        size=len(kept),
        dropped=dropped + len(problems) - len(kept),
        model=generator.label,
        format=fmt,
        paper_metric=paper_metric,
    )
    in_context = fmt.startswith("in_context")
    if in_context and pool is None:
        raise ValueError(f"format {fmt} needs an exemplar pool")
    sources: list[tuple[Problem, str, tuple[str, ...]]] = []
    for problem in kept:
        shots = pool.draw(problem, num_exemplars, exemplar_seed) if in_context and pool is not None else []
        source, shown = build_source_kept(
            problem,
            fmt,
            shots,
            max_source_tokens=generator.max_source_tokens if shots else None,
            count_tokens=generator.count_tokens if shots else None,
        )
        sources.append((problem, source, shown))
    texts = generator.complete(
        [s for _, s, _ in sources], desc=f"eval {generator.label} {dataset}/{split} {fmt}"
    )
    if fmt == EQUATION:
        for (problem, _, _), text in zip(sources, texts, strict=True):
            score = score_template(text, problem_numbers(problem), problem.answer, notation=equation_notation)
            _add_equation_prediction(result, problem, score, completion=text)
        return result
    for (problem, _, shown), text in zip(sources, texts, strict=True):
        strict = extract_answer(text, mode="strict")
        flexible = extract_answer(text, mode="flexible")
        ok_strict = answers_match(strict, problem.answer)
        ok_flexible = answers_match(flexible, problem.answer)
        result.strict_correct += ok_strict
        result.flexible_correct += ok_flexible
        result.exemplars_shown += len(shown)
        prediction = {
            "id": problem.id,
            "model": generator.label,
            "format": fmt,
            "exemplar_ids": list(shown),
            "question": problem.question,
            "answer": format_number(problem.answer),
            "completion": text,
            "pred_strict": format_number(strict),
            "pred_flexible": format_number(flexible),
            "correct_strict": ok_strict,
            "correct_flexible": ok_flexible,
        }
        if paper_metric:
            ok_last = last_number_correct(text, problem.answer_text, problem.answer)
            result.last_number_correct += ok_last
            prediction["pred_last_number"] = last_number(completion_as_read(text))
            prediction["correct_last_number"] = ok_last
        result.predictions.append(prediction)
    return result


def _add_equation_prediction(
    result: EvalResult, problem: Problem, score: EquationScore, *, completion: str
) -> None:
    result.strict_correct += score.correct
    result.flexible_correct += score.correct
    result.predictions.append(
        {
            "id": problem.id,
            "model": result.model,
            "format": EQUATION,
            "question": problem.question,
            "numbers": list(problem_numbers(problem)),
            "answer": format_number(problem.answer),
            "completion": completion,
            "template": score.template,
            "equation": score.equation,
            "value": format_number(score.value),
            "correct": score.correct,
            "error": score.error,
        }
    )


def baseline_label(template: str) -> str:
    return f"baseline: most frequent template ({template})"


def score_baseline(
    template: str,
    problems: Sequence[Problem],
    *,
    dataset: str,
    split: str,
    role: str,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
    dropped: int = 0,
) -> EvalResult:
    """The trivial baseline: `template` (infix, over N0..Nk) applied to every problem, scored like a student's."""
    kept = [p for p in problems if p.id not in exclude_ids]
    result = EvalResult(
        dataset,
        split,
        role,
        size=len(kept),
        dropped=dropped + len(problems) - len(kept),
        model=baseline_label(template),
        format=EQUATION,
    )
    for problem in kept:
        score = score_template(template, problem_numbers(problem), problem.answer)
        _add_equation_prediction(result, problem, score, completion=template)
    return result


def result_slug(result: EvalResult) -> str:
    """`{dataset}_{split}`, plus the format and the model where they differ from the defaults.

    The student's zero-shot CoT files keep their historical names; every other row names itself.
    """
    parts = [result.dataset, result.split]
    if result.format != "zero_shot_cot":
        parts.append(result.format)
    if result.model != "student":
        parts.append(model_slug(result.model))
    return "_".join(parts)


def model_slug(label: str) -> str:
    """A file-name-safe form of a model label ("teacher:gpt-4o-mini" -> "teacher-gpt-4o-mini")."""
    return "".join(c if c.isalnum() or c in "-." else "-" for c in label).strip("-") or "model"


def save_predictions(result: EvalResult, out_dir: Path) -> Path:
    path = out_dir / f"predictions_{result_slug(result)}.jsonl"
    write_jsonl(path, result.predictions)
    return path


PAPER_COLUMN = "last number (paper)"


def format_table(results: Sequence[EvalResult], title: str = "Evaluation") -> str:
    """One row per result; a `last number (paper)` column when any result scored Fu et al.'s metric."""
    paper = any(r.has_paper_metric for r in results)
    header = (
        "model",
        "dataset",
        "split",
        "role",
        "format",
        "extraction",
        "size",
        "dropped",
        "strict acc",
        "flexible acc",
        *((PAPER_COLUMN,) if paper else ()),
    )
    # An equation row has one accuracy (its template's value), shown in the first accuracy column.
    rows = [
        (
            r.model,
            r.dataset,
            r.split,
            r.role,
            r.format,
            r.extraction,
            str(r.size),
            str(r.dropped),
            f"{100 * r.strict_acc:.1f}%",
            "-" if r.format == EQUATION else f"{100 * r.flexible_acc:.1f}%",
            *(((f"{100 * r.last_number_acc:.1f}%" if r.has_paper_metric else "-"),) if paper else ()),
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt_row(cells: Sequence[str]) -> str:
        return "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))

    return "\n".join([title, line, fmt_row(header), line, *(fmt_row(r) for r in rows), line])
