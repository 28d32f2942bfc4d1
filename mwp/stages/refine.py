"""Refine stage (From Large to Tiny): recover the training problems distillation left without a verified equation.

Input: the distill folder (its `distilled.jsonl`, and `failed.jsonl` when distill wrote one: the
training problems that got no verified pair, with the teacher's failed attempts). Without it, the
failed problems are the training split (as distill sampled it) minus the problems with a kept template.

Output (in `out_dir`): `refined.jsonl` (the distilled rows, then every recovered row with its `method`
and `round`), `failed.jsonl` (the failed problems the stage started from), `stats.json` (per method
and round: problems attempted, recovered, remaining, candidates tried and per second, wall time,
teacher calls, and the semantic precision of the kept templates against the dataset's gold
equations, for distill too) and, for teacher feedback, the teacher's usage ledger `usage.json`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from mwp.data.artifact import DistilledRow, read_distilled, write_distilled
from mwp.data.io import read_jsonl_lines, write_json, write_jsonl
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.refine.common import RoundStats, semantic_precision
from mwp.teachers.scale import shard

log = logging.getLogger(__name__)

__all__ = ["FAILED", "REFINED", "STATS", "USAGE", "RefineResult", "failed_problems", "refine", "run_refine"]

REFINED = "refined.jsonl"
FAILED = "failed.jsonl"
STATS = "stats.json"
USAGE = "usage.json"


class RefineMethod(Protocol):
    method: str

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow]
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]: ...


@dataclass
class RefineResult:
    method: str
    distilled_rows: int
    failed: int
    recovered: int
    remaining: int
    rounds: list[RoundStats] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "distilled_rows": self.distilled_rows,
            "failed": self.failed,
            "recovered": self.recovered,
            "remaining": self.remaining,
            "rounds": len(self.rounds),
        }


def _kept_ids(rows: Sequence[DistilledRow]) -> set[str]:
    return {row.id for row in rows if row.template is not None}


def failed_problems(
    cfg: DictConfig, distill_dir: Path, rows: Sequence[DistilledRow]
) -> tuple[list[Problem], dict[str, str]]:
    """The failed problems and each one's latest failed attempt (where distill recorded it)."""
    recorded = distill_dir / FAILED
    kept = _kept_ids(rows)
    if recorded.is_file():
        problems: list[Problem] = []
        attempts: dict[str, str] = {}
        for line, obj in read_jsonl_lines(recorded):
            where = f"{recorded}:{line}"
            raw = obj.get("problem") if isinstance(obj, Mapping) else None
            if not isinstance(raw, Mapping):
                raise ValueError(f"{where}: expected an object with a 'problem' field")
            problem = Problem.from_json(dict(raw))
            if problem.id in kept:
                continue
            problems.append(problem)
            attempt = obj.get("attempt") or next(iter(reversed(obj.get("attempts") or [])), None)
            if isinstance(attempt, Mapping):
                attempt = attempt.get("text")
            if isinstance(attempt, str) and attempt.strip():
                attempts[problem.id] = attempt
        return problems, attempts
    if rows and not kept:
        log.warning(
            "refine: none of the %d distilled rows in %s has a template (a chain-of-thought distill?): every "
            "training problem counts as failed",
            len(rows),
            distill_dir,
        )
    split = cfg.dataset.train_split
    problems = load_problems(cfg.dataset.name, split, cfg.paths.data_dir, limit=cfg.dataset.get("limit"))
    problems = shard(problems, cfg.stage.shard, cfg.stage.num_shards)
    return [p for p in problems if p.id not in kept], {}


def refine(
    method: RefineMethod,
    rows: Sequence[DistilledRow],
    failed: Sequence[Problem],
    attempts: Mapping[str, str],
    out_dir: Path,
    *,
    precision: bool = True,
) -> RefineResult:
    """Run `method` round by round; write the refined artifact and the statistics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out_dir / FAILED,
        ({"id": p.id, "problem": p.to_json(), "attempt": attempts.get(p.id)} for p in failed),
    )
    started = time.perf_counter()
    recovered: list[DistilledRow] = []
    rounds: list[RoundStats] = []
    remaining = len(failed)
    for stats, new_rows in method.rounds(failed, attempts, [*rows]):
        if precision:
            stats.precision = semantic_precision(new_rows)
        recovered.extend(new_rows)
        rounds.append(stats)
        remaining = stats.remaining
        log.info(
            "refine %s round %d: %d of %d attempted recovered (%d remaining), %d candidates (%.1f/s) in %.1fs",
            method.method,
            stats.round,
            stats.recovered,
            stats.attempted,
            stats.remaining,
            stats.candidates,
            stats.candidates_per_s,
            stats.wall_s,
        )
    write_distilled(out_dir / REFINED, [*rows, *recovered])
    recovered_ids = {row.id for row in recovered}
    report: dict[str, Any] = {
        "distill": {
            "rows": len(rows),
            "problems_kept": len(_kept_ids(rows)),
            "problems_failed": len(failed),
            "precision": semantic_precision(rows) if precision else {},
        },
        "methods": {
            method.method: {
                "rounds": [r.to_json() for r in rounds],
                "recovered": len(recovered_ids),
                "remaining": remaining,
                "recovered_share": round(len(recovered_ids) / len(failed), 4) if failed else None,
                "precision": semantic_precision(recovered) if precision else {},
                "wall_s": round(time.perf_counter() - started, 3),
            }
        },
    }
    write_json(out_dir / STATS, report)
    return RefineResult(
        method=method.method,
        distilled_rows=len(rows),
        failed=len(failed),
        recovered=len(recovered_ids),
        remaining=remaining,
        rounds=rounds,
        stats=report,
    )


class _NoRefinement:
    """refine.method=none: the distilled rows pass through; the failed problems are still counted."""

    method = "none"

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow]
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]:
        return iter(())


def feedback_teacher_config(cfg: DictConfig) -> DictConfig:
    """The teacher re-prompted by teacher feedback: `refine.teacher_feedback.teacher`, else the run's."""
    chosen = cfg.refine.teacher_feedback.get("teacher")
    return chosen if chosen is not None else cfg.teacher


def build_method(cfg: DictConfig, out_dir: Path) -> tuple[RefineMethod, Any]:
    """The configured method, and the teacher it holds (closed by the caller), if any."""
    settings = cfg.refine
    constants = tuple(settings.constants)
    if settings.method == "none":
        return _NoRefinement(), None
    if settings.method == "middle_model":
        from mwp.refine.middle_model import MiddleModelSearch

        search = MiddleModelSearch(
            cfg,
            settings.middle_model,
            out_dir,
            max_rounds=settings.max_rounds,
            constants=constants,
            max_per_problem=settings.max_per_problem,
        )
        return search, None
    if settings.method == "teacher_feedback":
        from mwp.refine.feedback import TeacherFeedback
        from mwp.teachers.factory import build_teacher, sampling_params

        feedback = settings.teacher_feedback
        teacher_cfg = feedback_teacher_config(cfg)
        teacher = build_teacher(teacher_cfg)
        params = replace(
            sampling_params(teacher_cfg),
            n=feedback.n,
            temperature=feedback.temperature,
            max_tokens=feedback.max_tokens,
            stop=tuple(feedback.stop),
            top_logprobs=0,
        )
        method = TeacherFeedback(
            teacher,
            params,
            max_retries=feedback.max_retries,
            constants=constants,
            max_per_problem=settings.max_per_problem,
        )
        return method, teacher
    if settings.method == "enumeration":
        from mwp.refine.enumerated import EnumerationMethod

        enumeration = settings.enumeration
        return (
            EnumerationMethod(
                constants=constants,
                max_ops=enumeration.max_ops,
                max_results=enumeration.max_results,
                processes=enumeration.processes,
                time_limit_s=enumeration.time_limit_s,
                max_per_problem=settings.max_per_problem,
            ),
            None,
        )
    raise ValueError(f"refine.method={settings.method!r}: not a refinement method")


def replayed_attempts(cfg: DictConfig, failed: Sequence[Problem]) -> dict[str, str]:
    """The failed attempts of a recorded distill teacher, replayed for the prompts it was recorded on.

    Distill keeps only what verified; a recording answers its own prompts again at no cost, so teacher
    feedback can quote the attempt that failed. Live teachers are not asked again (that would cost calls).
    """
    from mwp.teachers.factory import build_teacher, sampling_params
    from mwp.teachers.prompts import build_requests

    if not str(cfg.teacher.get("_target_", "")).endswith("RecordedTeacher") or not failed:
        return {}
    teacher = build_teacher(cfg.teacher)
    try:
        requests = [
            r
            for r in build_requests(failed, cfg.get("prompt"), data_dir=cfg.paths.data_dir)
            if teacher.covers(r.problem_id)
        ]
        attempts: dict[str, str] = {}
        for response in teacher.generate(requests, sampling_params(cfg.teacher)):
            if response.completions and response.completions[0].text.strip():
                attempts[response.request.problem_id] = response.completions[0].text.strip()
        return attempts
    finally:
        teacher.close()


def run_refine(cfg: DictConfig, distill_dir: Path, out_dir: Path) -> RefineResult:
    rows = read_distilled(distill_dir)
    source_dir = distill_dir if distill_dir.is_dir() else distill_dir.parent
    failed, attempts = failed_problems(cfg, source_dir, rows)
    if cfg.refine.get("limit"):
        failed = failed[: cfg.refine.limit]
    if cfg.refine.method == "teacher_feedback" and not attempts:
        attempts = replayed_attempts(cfg, failed)
    method, teacher = build_method(cfg, out_dir)
    try:
        result = refine(method, rows, failed, attempts, out_dir, precision=cfg.refine.precision)
    finally:
        if teacher is not None:
            from mwp.teachers.scale import teacher_usage

            teacher_usage(teacher).write(out_dir / USAGE)
            teacher.close()
    log.info(
        "refine %s: recovered %d of %d failed problems (%d remaining) -> %s",
        result.method,
        result.recovered,
        result.failed,
        result.remaining,
        out_dir / REFINED,
    )
    return result


def refined_artifact(refine_dir: Path) -> Path:
    return refine_dir / REFINED


def distill_source(cfg: DictConfig, distill_dir: Path) -> Path:
    """What refine reads: the run's distill folder, or `stage.data` of an earlier run."""
    if cfg.stage.data:
        return Path(cfg.stage.data)
    return distill_dir
