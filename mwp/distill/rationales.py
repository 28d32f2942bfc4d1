"""Distillation by filtering: teacher completions → answer extraction → verification against gold → kept rationales.

Equation prompts of style `equation_chain` (conf/prompt/fltt_*.yaml), and chain-of-thought prompts
with `stage.extraction=equation`, run From Large to Tiny's chain instead (`mwp.distill.equation_chain`).

Output (in `out_dir`): `distilled.jsonl`, one kept sample per row, and `stats.json`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from mwp.config.schema import EXTRACTIONS, PromptConfig
from mwp.data.artifact import ARTIFACT, DistilledRow, TokenLogprobs
from mwp.data.io import append_jsonl, write_json
from mwp.data.problem import Problem
from mwp.progress import SamplingProgress
from mwp.teachers.base import Teacher, TeacherRequest
from mwp.teachers.usage import teacher_usage
from mwp.verify.compare import answers_match
from mwp.verify.equation_checks import check_teacher_equation
from mwp.verify.extract import extract_answer
from mwp.verify.numbers import format_number

log = logging.getLogger(__name__)

__all__ = [
    "STATS",
    "DistillStats",
    "chain_route",
    "distill",
    "logprobs_cover",
    "predict",
    "resolve_extraction",
]

STATS = "stats.json"


@dataclass
class DistillStats:
    teacher: str
    dataset: str
    split: str
    problems_seen: int = 0
    problems_uncovered: int = 0
    # n per covered problem; samples_seen is what the teacher gave back
    samples_requested: int = 0
    samples_seen: int = 0
    samples_no_answer: int = 0
    samples_wrong: int = 0
    samples_duplicate: int = 0
    samples_kept: int = 0
    problems_kept: int = 0
    # kept samples whose logprobs covered only part of their text: kept without them (see distill)
    samples_partial_logprobs: int = 0
    # The equation chain's own figures (route, per-step blocks); None for the one-call routes.
    chain: dict[str, Any] | None = None

    @property
    def problem_yield(self) -> float:
        return self.problems_kept / self.problems_seen if self.problems_seen else 0.0

    def to_json(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "chain"}
        return {**row, "problem_yield": round(self.problem_yield, 4), **(self.chain or {})}

    @classmethod
    def from_chain(cls, stats: dict[str, Any]) -> DistillStats:
        """The chain's stats.json as DistillStats: every step-(a) sample not kept is counted."""
        equation = stats["steps"]["equation"]
        no_answer = equation["failed"].get("extract", 0)
        common = {
            "teacher": stats["teacher"],
            "dataset": stats["dataset"],
            "split": stats["split"],
            "problems_seen": stats["problems_seen"],
            "problems_uncovered": stats["problems_uncovered"],
            "samples_seen": stats["samples_seen"],
            "samples_no_answer": no_answer,
            "samples_duplicate": stats["samples_duplicate"],
            "samples_kept": stats["samples_kept"],
            "problems_kept": stats["problems_kept"],
        }
        wrong = common["samples_seen"] - no_answer - common["samples_duplicate"] - common["samples_kept"]
        extra = {k: v for k, v in stats.items() if k not in common and k != "problem_yield"}
        return cls(**common, samples_wrong=max(wrong, 0), chain=extra)


def logprobs_cover(logprobs: TokenLogprobs, text: str) -> bool:
    """Whether a completion's per-token logprobs spell (about) all of its text.

    Counted in non-space characters: a SentencePiece teacher's tokens decoded one by one lose their
    leading spaces, byte-level ones may read longer; a server that cut the list short reads shorter.
    """
    covered = sum(len("".join(token.split())) for token in logprobs.tokens)
    return covered >= 0.95 * len("".join(text.split()))


def _dedup_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def predict(text: str, problem: Problem, extraction: str) -> Fraction | None:
    """The teacher's final answer: from an answer phrase (strict), the last number (flexible), or,
    for From-Large-to-Tiny equation prompts, the value of its verified equation (equation)."""
    if extraction == "equation":
        check = check_teacher_equation(text, problem)
        return check.value if check.passed else None
    return extract_answer(text, mode=extraction)


def resolve_extraction(stage_extraction: str, prompt: PromptConfig | None) -> str:
    """`auto` takes the prompt's own hint (equation prompts are checked as equations), else strict."""
    if stage_extraction not in EXTRACTIONS:
        raise ValueError(f"stage.extraction must be one of {list(EXTRACTIONS)}, got {stage_extraction!r}")
    if stage_extraction != "auto":
        return stage_extraction
    hint = prompt.extraction if prompt is not None else None
    return hint if hint in EXTRACTIONS[1:] else "strict"


def distill(
    problems: Sequence[Problem],
    teacher: Teacher,
    requests: Sequence[TeacherRequest],
    cfg_sampling: Any,
    out_dir: Path,
    *,
    dataset: str,
    split: str,
    extraction: str = "strict",
    dedup: bool = True,
) -> DistillStats:
    if extraction not in EXTRACTIONS[1:]:
        raise ValueError(f"extraction must be one of {list(EXTRACTIONS[1:])}, got {extraction!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {p.id: p for p in problems}
    stats = DistillStats(teacher=teacher.name, dataset=dataset, split=split, problems_seen=len(problems))
    covered = [r for r in requests if teacher.covers(r.problem_id)]
    stats.problems_uncovered = len(requests) - len(covered)
    if stats.problems_uncovered:
        log.warning(
            "teacher %s covers %d of %d problems; the rest are skipped",
            teacher.name,
            len(covered),
            len(requests),
        )
    partial = out_dir / (ARTIFACT + ".partial")
    partial.unlink(missing_ok=True)
    seen: dict[str, set[str]] = {}
    usage = teacher_usage(teacher)
    stats.samples_requested = len(covered) * cfg_sampling.n
    progress = SamplingProgress(total=stats.samples_requested, desc=f"distill {dataset}/{split}")
    for response in teacher.generate(covered, cfg_sampling):
        problem = by_id[response.request.problem_id]
        kept_here = seen.setdefault(problem.id, set())
        kept_before = stats.samples_kept
        for index, completion in enumerate(response.completions):
            stats.samples_seen += 1
            rationale = completion.text.strip()
            pred = predict(rationale, problem, extraction)
            if pred is None:
                stats.samples_no_answer += 1
                continue
            if not answers_match(pred, problem.answer):
                stats.samples_wrong += 1
                continue
            key = _dedup_key(rationale)
            if dedup and key in kept_here:
                stats.samples_duplicate += 1
                continue
            kept_here.add(key)
            stats.samples_kept += 1
            logprobs = completion.logprobs
            if logprobs is not None and not logprobs_cover(logprobs, rationale):
                # Aligned to the student, they would teach only the start of the text as if it were
                # all of it: the row trains as a row without logprobs (loss.signal.missing).
                if not stats.samples_partial_logprobs:
                    log.warning(
                        "teacher %s: the logprobs of problem %s sample %d spell %d tokens that do not "
                        "cover its text (%d characters); such samples are kept without logprobs",
                        teacher.name,
                        problem.id,
                        index,
                        len(logprobs.tokens),
                        len(rationale),
                    )
                stats.samples_partial_logprobs += 1
                logprobs = None
            row = DistilledRow(
                problem=problem,
                rationale=rationale,
                teacher=teacher.name,
                sample_index=index,
                pred=format_number(pred),
                logprobs=logprobs,
            )
            append_jsonl(partial, row.to_json())
        progress.update(
            len(response.completions),
            kept=stats.samples_kept - kept_before,
            cost=usage.cost_usd,
            short=max(cfg_sampling.n - len(response.completions), 0),
        )
    progress.close()
    stats.problems_kept = sum(1 for ids in seen.values() if ids)
    if not partial.exists():
        partial.touch()
    partial.replace(out_dir / ARTIFACT)
    write_json(out_dir / STATS, stats.to_json())
    if stats.samples_seen < stats.samples_requested:
        log.warning(
            "teacher %s gave %d of the %d samples requested (%d problems x n=%d)",
            teacher.name,
            stats.samples_seen,
            stats.samples_requested,
            len(covered),
            cfg_sampling.n,
        )
    if covered and not stats.samples_kept:
        log.error(
            "distill %s/%s: teacher %s kept 0 of %d samples received (%d requested: %d without an answer "
            "(%s extraction), %d wrong); the artifact is empty (figures: %s)",
            dataset,
            split,
            teacher.name,
            stats.samples_seen,
            stats.samples_requested,
            stats.samples_no_answer,
            extraction,
            stats.samples_wrong,
            out_dir / STATS,
        )
    return stats


def chain_route(prompt: PromptConfig | None, extraction: str) -> str | None:
    """Which equation-chain route a run takes: "chain" (prompt style equation_chain), "final_expression"
    (equations read from chain-of-thought completions, `stage.extraction=equation`), or None."""
    style = prompt.style if prompt is not None else None
    if style == "equation_chain":
        return "chain"
    if extraction == "equation" and style in (None, "cot"):
        return "final_expression"
    return None
