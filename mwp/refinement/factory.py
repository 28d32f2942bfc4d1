"""The configured refinement method (`refine.method`), built from the validated `refine` section."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mwp.config.schema import RunConfig, TeacherConfig
from mwp.config.schema.teacher import RecordedTeacherConfig, teacher_config
from mwp.data.problem import Problem
from mwp.refinement.rounds import NoRefinement, RefineMethod
from mwp.teachers.base import Teacher
from mwp.teachers.factory import build_teacher, sampling_params
from mwp.teachers.prompts import build_requests


def feedback_teacher(config: RunConfig) -> TeacherConfig:
    """The teacher re-prompted by teacher feedback: `refine.teacher_feedback.teacher`, else the run's."""
    settings = config.refine.teacher_feedback
    chosen = settings.teacher if settings is not None else None
    return teacher_config(chosen) if chosen is not None else config.teacher


def build_method(config: RunConfig, out_dir: Path) -> tuple[RefineMethod, Teacher | None]:
    """The configured method, and the teacher it holds (closed by the caller), if any."""
    settings = config.refine
    constants = tuple(settings.constants)
    if settings.method == "none":
        return NoRefinement(), None
    if settings.method == "middle_model":
        from mwp.refinement.middle_model import MiddleModelSearch

        assert settings.middle_model is not None
        search = MiddleModelSearch(
            config,
            settings.middle_model,
            out_dir,
            max_rounds=settings.max_rounds,
            constants=constants,
            max_per_problem=settings.max_per_problem,
        )
        return search, None
    if settings.method == "teacher_feedback":
        from mwp.refinement.teacher_feedback import TeacherFeedback

        feedback = settings.teacher_feedback
        assert feedback is not None
        chosen = feedback_teacher(config)
        teacher = build_teacher(chosen)
        params = replace(
            sampling_params(chosen),
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
        from mwp.refinement.enumeration import EnumerationMethod

        enumeration = settings.enumeration
        assert enumeration is not None
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


def replayed_attempts(config: RunConfig, failed: Sequence[Problem]) -> dict[str, str]:
    """The failed attempts of a recorded distill teacher, replayed for the prompts it was recorded on.

    Distill keeps only what verified; a recording answers its own prompts again at no cost, so teacher
    feedback can quote the attempt that failed. Live teachers are not asked again (that would cost calls).
    """
    if not isinstance(config.teacher, RecordedTeacherConfig) or not failed:
        return {}
    teacher = build_teacher(config.teacher)
    try:
        requests = [
            r
            for r in build_requests(failed, config.prompt, data_dir=config.paths.data_dir)
            if teacher.covers(r.problem_id)
        ]
        attempts: dict[str, str] = {}
        for response in teacher.generate(requests, sampling_params(config.teacher)):
            if response.completions and response.completions[0].text.strip():
                attempts[response.request.problem_id] = response.completions[0].text.strip()
        return attempts
    finally:
        teacher.close()
