"""The "scored by a local causal LM" signal: teacher-forced top-k logprobs of given rationales.

A recorded teacher (PaLM) reports no logprobs. At build time (`mwp.signals.build.prepare_signals`,
`loss.signal.missing=score`) each rationale is read by a local `HFTeacher` as its answer to the
problem's zero-shot CoT prompt, and the resulting `TokenLogprobs` align like sampled ones. The
scoring itself is `HFTeacher.score`; this class only turns problems into requests and carries the
`loss.signal.scorer` settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mwp.data.artifact import TokenLogprobs
from mwp.data.formats import COT_TRIGGER
from mwp.data.problem import Problem
from mwp.teachers.base import TeacherRequest

# Teacher text is untrusted: a rationale longer than this is cut before scoring.
MAX_SCORED_TOKENS = 1024


class TeacherForcedScorer:
    """Top-k logprobs of given rationales under a local causal LM (an `HFTeacher`), by teacher forcing.

    Each rationale is scored as the answer to the zero-shot CoT prompt of its problem, rendered the
    way the teacher renders requests (its chat template when it has one).
    """

    def __init__(self, teacher: Any, *, top_logprobs: int = 5, batch_size: int = 4) -> None:
        if not 1 <= top_logprobs <= 20:
            raise ValueError(f"loss.signal.scorer.top_logprobs must be in [1, 20], got {top_logprobs}")
        if batch_size < 1:
            raise ValueError(f"loss.signal.scorer.batch_size must be >= 1, got {batch_size}")
        self.teacher = teacher
        self.top_logprobs = top_logprobs
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, conf: Mapping[str, Any]) -> TeacherForcedScorer:
        from mwp.teachers.hf import HFTeacher

        conf = dict(conf)
        top = int(conf.pop("top_logprobs", 5))
        batch_size = int(conf.get("batch_size") or 4)
        allowed = {"model", "gguf", "gguf_package", "gguf_file", "name", "device", "dtype", "batch_size"}
        allowed |= {"chat_template", "convert_dir", "threads"}
        unknown = set(conf) - allowed
        if unknown:
            raise ValueError(
                f"loss.signal.scorer: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        kwargs = {k: v for k, v in conf.items() if v is not None}
        teacher = HFTeacher(**kwargs)
        return cls(teacher, top_logprobs=top, batch_size=batch_size)

    @property
    def identity(self) -> str:
        return f"{getattr(self.teacher, 'identity', type(self.teacher).__name__)}:top{self.top_logprobs}"

    @staticmethod
    def request(problem: Problem) -> TeacherRequest:
        """The zero-shot CoT request a rationale of `problem` answers."""
        return TeacherRequest(problem.id, f"Q: {problem.question.strip()}\nA: {COT_TRIGGER}")

    def score(self, problems: Sequence[Problem], rationales: Sequence[str]) -> list[TokenLogprobs]:
        """One `TokenLogprobs` per rationale: each token, its logprob and the model's top-k there."""
        return self.teacher.score(
            [self.request(p) for p in problems],
            rationales,
            top_logprobs=self.top_logprobs,
            batch_size=self.batch_size,
            max_completion_tokens=MAX_SCORED_TOKENS,
        )

    def score_texts(self, sources: Sequence[str], completions: Sequence[str]) -> list[TokenLogprobs]:
        """Like `score`, for texts without a `Problem`: each completion as the answer to its source
        (on-policy: a student's sample of the source it was given), rendered as `Q: {source}\nA:`."""
        requests = [
            TeacherRequest(f"on-policy/{i}", f"Q: {source.strip()}\nA:") for i, source in enumerate(sources)
        ]
        return self.teacher.score(
            requests,
            list(completions),
            top_logprobs=self.top_logprobs,
            batch_size=self.batch_size,
            max_completion_tokens=MAX_SCORED_TOKENS,
        )

    def close(self) -> None:
        self.teacher.close()
