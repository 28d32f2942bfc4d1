"""BIG-Bench Hard: the 27 tasks' examples and their 3-shot prompts, read strictly from the bundled files.

Files (under the data folder): `bbh/bbh/<task>.json` = `{"examples": [{"input", "target"}]}` and
`bbh/cot-prompts/<task>.txt` (a canary line, `-----`, a task description, then three
`Q: ... A: Let's think step by step. ... So the answer is X.` exemplars). The answer-only prompt is
the same three exemplars with the rationale dropped ("Q: ...\\nA: X"), as in Suzgun et al.'s
answer-only setting, so both prompts show the model the same questions.

A target that is not an answer of its task's kind (`mwp.verify.bbh_answers.TASK_ANSWER_TYPES`)
is a `DataError` naming the file and row, as is a prompt file that does not parse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mwp.data.io import DataError, read_json
from mwp.verify.bbh_answers import TASK_ANSWER_TYPES, BBHAnswerType, normalize_bbh_target

__all__ = [
    "BBH_TASKS",
    "BBHExample",
    "BBHPrompt",
    "PromptStyle",
    "load_bbh_prompt",
    "load_bbh_task",
    "resolve_bbh_tasks",
]

PromptStyle = Literal["cot", "answer_only"]
BBH_TASKS: tuple[str, ...] = tuple(TASK_ANSWER_TYPES)
COT_CUE = "Let's think step by step."

_FINAL = re.compile(r"So the answer is (?P<answer>.+?)\.?\s*\Z", re.DOTALL)


@dataclass(frozen=True)
class BBHExample:
    """One BBH question with its gold target and the answer kind that scores it."""

    id: str  # "bbh/date_understanding/17": task and row index
    task: str
    input: str
    target: str
    answer_type: BBHAnswerType


@dataclass(frozen=True)
class BBHExemplar:
    question: str
    rationale: str  # "... So the answer is (D)."
    answer: str  # "(D)"


@dataclass(frozen=True)
class BBHPrompt:
    """A task's few-shot prompt; `render` puts a question after its exemplars."""

    task: str
    description: str
    exemplars: tuple[BBHExemplar, ...]

    def render(self, question: str, style: PromptStyle = "cot", num_exemplars: int | None = None) -> str:
        """The source text for `question`: description, the last `num_exemplars` exemplars (all by default), the question.

        Dropping exemplars from the front (not the end) keeps the ones nearest the question,
        which is how an over-long prompt is shortened (`mwp.evaluation.bbh`).
        """
        if style not in ("cot", "answer_only"):
            raise ValueError(f"style must be 'cot' or 'answer_only', got {style!r}")
        shots = (
            self.exemplars if num_exemplars is None else self.exemplars[len(self.exemplars) - num_exemplars :]
        )
        blocks = [self.description] if self.description else []
        for shot in shots:
            answer = f"{COT_CUE}\n{shot.rationale}" if style == "cot" else shot.answer
            blocks.append(f"Q: {shot.question}\nA: {answer}")
        blocks.append(f"Q: {question}\nA:" + (f" {COT_CUE}" if style == "cot" else ""))
        return "\n\n".join(blocks)


def resolve_bbh_tasks(tasks: str | Sequence[str] = "all") -> list[str]:
    """`"all"` (every task, in file-name order), one task name, or a list; unknown names raise DataError."""
    names = list(BBH_TASKS) if tasks == "all" else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASK_ANSWER_TYPES]
    if unknown:
        raise DataError(f"unknown BBH task(s) {unknown}; available: {', '.join(BBH_TASKS)}")
    if not names:
        raise DataError("no BBH tasks selected")
    return names


def _data_root(data_dir: str | Path | None) -> Path:
    from mwp.data.loaders import resolve_data_dir  # loaders imports the registry; keep this module light

    return resolve_data_dir(data_dir) / "bbh"


def load_bbh_task(
    task: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[BBHExample]:
    """The examples of one task in file order (the first `limit` if given), targets checked."""
    (task,) = resolve_bbh_tasks([task])
    path = _data_root(data_dir) / "bbh" / f"{task}.json"
    if not path.is_file():
        raise DataError("missing BBH task file; point `paths.data_dir` at the bundled data", path=path)
    document = read_json(path)
    rows = document.get("examples") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise DataError('expected {"examples": [...]}', path=path, field="examples")
    answer_type = TASK_ANSWER_TYPES[task]
    examples = []
    for index, row in enumerate(rows[:limit] if limit is not None else rows):
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", path=path, index=index)
        for name in ("input", "target"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DataError("missing or not a non-empty string", path=path, index=index, field=name)
        try:
            normalize_bbh_target(row["target"], answer_type)
        except ValueError as err:
            raise DataError(str(err), path=path, index=index, field="target") from None
        examples.append(BBHExample(f"bbh/{task}/{index}", task, row["input"], row["target"], answer_type))
    return examples


def load_bbh_prompt(task: str, data_dir: str | Path | None = None) -> BBHPrompt:
    """A task's 3-shot CoT prompt, split into description and exemplars (question, rationale, answer)."""
    (task,) = resolve_bbh_tasks([task])
    path = _data_root(data_dir) / "cot-prompts" / f"{task}.txt"
    if not path.is_file():
        raise DataError("missing BBH prompt file; point `paths.data_dir` at the bundled data", path=path)
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    _, sep, body = text.partition("\n-----\n")
    if not sep:
        raise DataError("no '-----' line after the canary", path=path, line=1)
    blocks = re.split(r"\n\s*\n(?=Q: )", body.strip())
    description = "" if blocks[0].startswith("Q: ") else blocks.pop(0).strip()
    line_of = {block: text.count("\n", 0, text.find(block)) + 1 for block in blocks}
    exemplars = []
    for block in blocks:
        question, sep, answer = block.removeprefix("Q: ").partition("\nA: ")
        rationale = answer.removeprefix(COT_CUE).strip()
        final = _FINAL.search(rationale)
        if not sep or final is None:
            raise DataError("exemplar without 'A: ... So the answer is X.'", path=path, line=line_of[block])
        exemplars.append(BBHExemplar(question.strip(), rationale, final.group("answer").strip()))
    if not exemplars:
        raise DataError("no 'Q: ... A: ...' exemplars", path=path)
    return BBHPrompt(task, description, tuple(exemplars))
