"""One interface for every teacher: n completions per prompt, optionally with per-token top-k logprobs.

Callers (the distill stage) only see `Teacher.generate`; backends (recorded, OpenAI-compatible,
local Hugging Face) differ in how they fill `Completion`s, never in how they are called.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mwp.data.artifact import TokenLogprobs


class TeacherError(RuntimeError):
    """A teacher could not produce completions (unreachable server, retries exhausted, unknown problem)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `n` completions per request, their temperature, nucleus mass, length cap, stop
    sequences, the top-k logprobs to record per token and the seed (the teacher config's sampling keys)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    # How many alternatives to record per generated token; 0 records none. APIs allow at most 20.
    top_logprobs: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"teacher.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"teacher.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"teacher.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"teacher.max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"teacher.top_logprobs must be in [0, 20], got {self.top_logprobs}")


@dataclass
class Completion:
    """One sampled completion: its text, why it ended, and its per-token top-k logprobs when recorded."""

    text: str
    finish_reason: str | None = None
    logprobs: TokenLogprobs | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Completion:
        lp = row.get("logprobs")
        return cls(
            text=row["text"],
            finish_reason=row.get("finish_reason"),
            logprobs=TokenLogprobs(**lp) if lp else None,
        )


@dataclass(frozen=True)
class TeacherRequest:
    """What to ask about one problem. `prompt` is plain text; chat backends wrap it in a user turn.

    `task` names what the prompt asks for ("solve", or a step of the equation chain: "equation",
    "masked_equation", "format_correction", "masked_format_correction"), so that a teacher that cannot read prompts (the
    simulated one) knows the step, and caches keep the steps apart. `subject` is the text a follow-up
    step works on (the equation to mask or to repair); it is also spelled out inside `prompt`.
    """

    problem_id: str
    prompt: str
    system: str | None = None
    task: str = "solve"
    subject: str | None = None


@dataclass
class TeacherResponse:
    """The completions a teacher gave for one request (up to `n`)."""

    request: TeacherRequest
    completions: list[Completion]


class Teacher(ABC):
    """A source of completions. Subclasses set `name` (recorded in artifacts) and implement `generate`."""

    name: str = "teacher"
    # False for replays (recorded completions, batch results): they cannot answer a prompt built now.
    answers_new_prompts: bool = True

    @abstractmethod
    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        """Yield one response per request (in any order), each with up to `params.n` completions."""

    def covers(self, problem_id: str) -> bool:
        """Whether this teacher can answer for the problem (live teachers answer anything)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients, processes or model memory."""

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """Truncate at the first stop sequence (what an API does server-side)."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]
