"""The distill stage's artifact, `distilled.jsonl`: one typed `DistilledRow` per kept teacher sample.

Rows used to travel as plain dicts and were re-parsed at every use (`Problem.from_json(r["problem"])`,
`r["rationale"]`, ...), so a hand-edited or truncated artifact failed deep inside training with a bare
KeyError. Parsing once, here, turns every such defect into one error naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mwp.data.io import DataError, read_jsonl_lines, write_jsonl
from mwp.data.problem import MAX_QUESTION_CHARS, Problem

ARTIFACT = "distilled.jsonl"


@dataclass
class TokenLogprobs:
    """Per generated token: its string, its logprob, and the teacher's top-k alternatives."""

    tokens: list[str]
    logprobs: list[float]
    top_tokens: list[list[str]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.logprobs):
            raise ValueError("tokens and logprobs differ in length")
        if len(self.top_tokens) != len(self.top_logprobs):
            raise ValueError("top_tokens and top_logprobs differ in length")


@dataclass(frozen=True)
class DistilledRow:
    """One kept teacher sample and the problem it solves.

    `rationale` is the kept completion text (for equation prompts: the teacher's equation), `pred`
    the answer read from it, `sample_index` which of the teacher's n samples it was, and `logprobs`
    the teacher's per-token logprobs when the backend reported them (None for recorded teachers).
    """

    problem: Problem
    rationale: str
    teacher: str
    sample_index: int
    pred: str | None = None
    logprobs: TokenLogprobs | None = None
    # The equation format (From Large to Tiny): the verified equation as written ("x=84/2"), its
    # template over the problem's N0..Nk ("N0/N1"), and which stage/method and round found it.
    equation: str | None = None
    template: str | None = None
    method: str = "distill"
    round: int = 0

    @property
    def id(self) -> str:
        """The problem id: rows of one problem share it (the train/validation split is by problem)."""
        return self.problem.id

    def to_json(self) -> dict[str, Any]:
        """The row as distill has always written it; key order is kept so artifacts stay byte-identical."""
        row: dict[str, Any] = {
            "id": self.problem.id,
            "sample_index": self.sample_index,
            "rationale": self.rationale,
            "pred": self.pred,
            "teacher": self.teacher,
            "problem": self.problem.to_json(),
        }
        if self.logprobs is not None:
            row["logprobs"] = asdict(self.logprobs)
        if self.template is not None:
            row.update(equation=self.equation, template=self.template, method=self.method, round=self.round)
        return row

    @classmethod
    def from_json(cls, obj: Any, where: str = "distilled row") -> DistilledRow:
        """Parse one row; `where` ("path:line") starts every error message."""
        if not isinstance(obj, Mapping):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        raw_problem = _field(obj, "problem", Mapping, where)
        question = raw_problem.get("question")
        if "question" not in raw_problem:
            raise DataError(f"{where}: field 'problem.question' is missing")
        if not isinstance(question, str):
            raise DataError(f"{where}: field 'problem.question' is {_describe(question)}, expected a string")
        if len(question) > MAX_QUESTION_CHARS:
            raise DataError(
                f"{where}: field 'problem.question' has {len(question):,} characters, more than the "
                f"{MAX_QUESTION_CHARS:,} allowed"
            )
        try:
            problem = Problem.from_json(dict(raw_problem))
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: field 'problem' is not a problem ({err})") from None
        row_id = obj.get("id", problem.id)
        if row_id != problem.id:
            raise DataError(f"{where}: field 'id' is {row_id!r} but problem.id is {problem.id!r}")
        sample_index = obj.get("sample_index", 0)
        if isinstance(sample_index, bool) or not isinstance(sample_index, int):
            raise DataError(
                f"{where}: field 'sample_index' is {_describe(sample_index)}, expected an integer"
            )
        pred = obj.get("pred")
        if pred is not None and not isinstance(pred, str):
            raise DataError(f"{where}: field 'pred' is {_describe(pred)}, expected a string or null")
        teacher = obj.get("teacher", "")
        if not isinstance(teacher, str):
            raise DataError(f"{where}: field 'teacher' is {_describe(teacher)}, expected a string")
        return cls(
            problem=problem,
            rationale=_field(obj, "rationale", str, where),
            teacher=teacher,
            sample_index=sample_index,
            pred=pred,
            logprobs=_logprobs(obj.get("logprobs"), where),
            equation=_optional_str(obj, "equation", where),
            template=_optional_str(obj, "template", where),
            method=_optional_str(obj, "method", where) or "distill",
            round=_round(obj.get("round", 0), where),
        )


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {_describe(value)}, expected a string or null")
    return value


def _round(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: field 'round' is {value!r}, expected an integer >= 0")
    return value


def _describe(value: Any) -> str:
    return "null" if value is None else f"of type {type(value).__name__}"


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {key!r} is {_describe(value)}, expected {name}")
    return value


def _logprobs(raw: Any, where: str) -> TokenLogprobs | None:
    if not raw:  # absent, null or {}: no logprobs, as before
        return None
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: field 'logprobs' is {_describe(raw)}, expected an object")
    try:
        return TokenLogprobs(**raw)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: malformed logprobs ({err})") from None


def read_distilled(path: str | Path, *, skip_partial_tail: bool = False) -> list[DistilledRow]:
    """The rows of a distilled artifact (a file, or the distill stage's output folder).

    `skip_partial_tail=True` drops a last line torn by a killed writer (shard merging needs that).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ARTIFACT
    if not path.exists():
        raise FileNotFoundError(
            f"no distilled data at {path}: run `mwp stage=distill` first or set stage.data"
        )
    return [
        DistilledRow.from_json(obj, where=f"{path}:{line}")
        for line, obj in read_jsonl_lines(path, skip_partial_tail=skip_partial_tail)
    ]


def distilled_problem(path: str | Path, key: str) -> str | None:
    """What makes a distilled artifact given by path (`key`, e.g. stage.data) unusable, found
    cheaply: missing, no rows, or a first row that is not a distilled row. None when it looks fine."""
    path = Path(path)
    file = path / ARTIFACT if path.is_dir() else path
    if not file.is_file():
        return f"{key}={str(path)!r}: no {ARTIFACT} there (a distill folder or its {ARTIFACT})"
    try:
        for line, obj in read_jsonl_lines(file):
            DistilledRow.from_json(obj, where=f"{file}:{line}")
            return None
    except DataError as err:
        return f"{key}: {err}"
    return f"{key}={str(path)!r}: {file} holds no rows"


def write_distilled(path: str | Path, rows: Iterable[DistilledRow]) -> int:
    """Publish `rows` at `path` atomically; returns the number written."""
    return write_jsonl(path, (row.to_json() for row in rows))
