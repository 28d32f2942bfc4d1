"""Replay recorded teacher completions: the offline teacher behind the embedded default.

The bundled recording is PaLM-540B few-shot CoT on SVAMP (from "Distilling step-by-step"):
`svamp_{train,test}.json` hold the inputs, `{train,test}_CoT_*.json` one completion each, aligned by
index. Each completion runs on into the next few-shot question, which we cut off.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mwp.data.io import DataError, read_json, read_jsonl_lines
from mwp.data.loaders import load_problems
from mwp.teachers.base import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
)
from mwp.verify.extract import cut_run_on

_NON_WORD = re.compile(r"[^0-9a-z]+")


def _text_key(text: str) -> str:
    return _NON_WORD.sub("", text.lower())


class RecordedTeacher(Teacher):
    """Serves one recorded completion per covered problem; asking for more samples still yields one."""

    answers_new_prompts = False

    def __init__(
        self,
        path: str | Path,
        dataset: str,
        inputs: Mapping[str, str],
        completions: Mapping[str, Sequence[str]],
        name: str = "recorded",
        data_dir: str | Path | None = None,
    ) -> None:
        self.name = name
        self.path = Path(path)
        if not self.path.is_dir():
            raise TeacherError(f"recorded teacher folder not found: {self.path} (set teacher.path)")
        by_text: dict[str, str] = {}
        for split, input_file in inputs.items():
            rows = self._read_inputs(self.path / input_file)
            texts = self._read_completions([self.path / f for f in completions.get(split, ())])
            if len(texts) != len(rows):
                raise TeacherError(
                    f"{self.path}: {split} has {len(rows)} inputs but {len(texts)} completions "
                    f"({', '.join(completions.get(split, ()))})"
                )
            for row, text in zip(rows, texts, strict=True):
                by_text[_text_key(row["input"])] = text
        self._by_id: dict[str, str] = {}
        for split in inputs:
            for problem in load_problems(dataset, split, data_dir):
                text = by_text.get(_text_key(problem.question))
                if text is not None:
                    self._by_id[problem.id] = text

    @staticmethod
    def _read_inputs(path: Path) -> list[dict[str, Any]]:
        rows = []
        try:
            for lineno, row in read_jsonl_lines(path):
                if "input" not in row:
                    raise TeacherError(f"{path}:{lineno}: malformed recorded input row (no 'input' field)")
                rows.append(row)
        except DataError as err:
            raise TeacherError(f"malformed recorded input rows: {err}") from None
        return rows

    @staticmethod
    def _read_completions(paths: Sequence[Path]) -> list[str]:
        texts: list[str] = []
        for path in paths:
            try:
                chunk = read_json(path)
            except DataError as err:
                raise TeacherError(f"not a JSON list of completions: {err}") from None
            if not isinstance(chunk, list) or not all(isinstance(t, str) for t in chunk):
                raise TeacherError(f"{path}: expected a JSON list of completion strings")
            texts.extend(chunk)
        return texts

    def covers(self, problem_id: str) -> bool:
        return problem_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        for request in requests:
            text = self._by_id.get(request.problem_id)
            if text is None:
                raise TeacherError(
                    f"recorded teacher {self.name!r} has no completion for {request.problem_id!r}"
                )
            yield TeacherResponse(
                request, [Completion(text=cut_run_on(text).strip(), finish_reason="recorded")]
            )
