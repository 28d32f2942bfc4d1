"""Teacher feedback: show the teacher its failed attempt and the correct answer, ask for a corrected equation.

Each retry is one round: the problems still unrecovered are asked again with their latest attempt.
Replies are untrusted text and go through the distill stage's equation checks; only equations that
solve the problem to its gold answer are kept. Every call goes through `Teacher.generate`, so a
live teacher's cache and its usage ledger (`refine/usage.json`) count these calls too.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import replace

from mwp.data.artifact import DistilledRow
from mwp.data.problem import Problem
from mwp.refinement.candidates import RoundStats, problem_numbers, recovered_row, template_key
from mwp.teachers.base import SamplingParams, Teacher, TeacherRequest
from mwp.teachers.usage import teacher_usage
from mwp.verify.equation_checks import check_teacher_equation
from mwp.verify.numbers import format_number

log = logging.getLogger(__name__)

METHOD = "teacher_feedback"
# `TeacherRequest.task` of a feedback prompt: caches keep it apart from distillation's prompts, and a
# teacher that cannot read prompts (the simulated one) answers it as an equation step.
TASK = "feedback"
# An attempt quoted back to the teacher is cut to this many characters (it is untrusted text too).
MAX_ATTEMPT_CHARS = 600

PROMPTS: Mapping[str, str] = {
    "en": (
        "Problem: {question}\n"
        "{attempt_line}"
        "The correct answer is {answer}.\n"
        "Write one corrected equation that gives this answer, in the form x=..., using the numbers "
        "of the problem.\n"
        "Equation:"
    ),
    "zh": (
        "题目：{question}\n"
        "{attempt_line}"
        "正确答案是{answer}。\n"
        "请用题目中的数字写出一个得到这个答案的正确算式，形如 x=...。\n"
        "算式："
    ),
}
ATTEMPT_LINES: Mapping[str, str] = {
    "en": "A previous attempt wrote: {attempt}\nThat attempt is wrong.\n",
    "zh": "之前的解答是：{attempt}\n这个解答是错的。\n",
}


def feedback_prompt(problem: Problem, attempt: str | None) -> str:
    """The re-prompt for one failed problem, in the problem's language (English or Chinese)."""
    language = problem.language if problem.language in PROMPTS else "en"
    attempt_line = ""
    if attempt:
        quoted = " ".join(attempt.split())[:MAX_ATTEMPT_CHARS]
        attempt_line = ATTEMPT_LINES[language].format(attempt=quoted)
    return PROMPTS[language].format(
        question=problem.question, attempt_line=attempt_line, answer=format_number(problem.answer)
    )


class TeacherFeedback:
    """Re-prompt `teacher` with each failed attempt and the gold answer, up to `max_retries` rounds."""

    method = METHOD

    def __init__(
        self,
        teacher: Teacher,
        params: SamplingParams,
        *,
        max_retries: int,
        constants: Collection[str],
        max_per_problem: int = 1,
    ) -> None:
        self.teacher = teacher
        self.source = teacher.name
        self.params = params
        self.max_retries = max_retries
        self.constants = tuple(constants)
        self.max_per_problem = max_per_problem

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow] = ()
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]:
        """One (stats, recovered rows) per retry; stops early once nothing is left to recover."""
        del kept  # the teacher sees only its own attempt, not the other problems' pairs
        remaining = {p.id: p for p in failed if p.answer is not None}
        latest = dict(attempts)
        usage = teacher_usage(self.teacher)
        for round_index in range(1, self.max_retries + 1):
            if not remaining:
                return
            stats = RoundStats(method=METHOD, round=round_index, attempted=len(remaining))
            calls_before = usage.calls
            requests = [
                TeacherRequest(pid, feedback_prompt(p, latest.get(pid)), task=TASK)
                for pid, p in remaining.items()
            ]
            recovered: list[DistilledRow] = []
            answered = 0
            for response in self.teacher.generate(requests, self.params):
                answered += 1
                problem = remaining.get(response.request.problem_id)
                if problem is None:
                    continue
                numbered = replace(problem, numbers=problem_numbers(problem))
                templates: list[str] = []
                for completion in response.completions:
                    stats.candidates += 1
                    check = check_teacher_equation(completion.text, numbered, constants=self.constants)
                    if not check.passed or check.template is None:
                        latest[problem.id] = completion.text
                        continue
                    stats.verified_candidates += 1
                    if template_key(check.template) not in {template_key(t) for t in templates}:
                        templates.append(check.template)
                for template in templates[: self.max_per_problem]:
                    recovered.append(
                        recovered_row(
                            problem,
                            template,
                            method=METHOD,
                            round_index=round_index,
                            teacher=self.teacher.name,
                        )
                    )
                if templates:
                    del remaining[problem.id]
            # API backends count their calls in the ledger; others make one call per request answered.
            stats.teacher_calls = (usage.calls - calls_before) or answered
            stats.search_s = 0.0
            stats.recovered = len({row.id for row in recovered})
            yield stats.finish(len(remaining)), recovered
