"""Loaders for the bundled datasets: one entry point, `load_problems(name, split)`, strict row parsing.

Datasets and splits (ids are stable and unique within a dataset):

| name         | splits                                   | id                      |
|--------------|------------------------------------------|-------------------------|
| `gsm8k`      | train 7,473 / test 1,319                 | `gsm8k/train/17`        |
| `svamp`      | train 800 / test 200 (the recorded PaLM teacher's split), all 1,000 | `svamp/chal-1` |
| `asdiv_a`    | test 1,218 (all of ASDiv-A), train (fold0..3), fold0..fold4 | `asdiv_a/nluds-0153`   |
| `asdiv`      | test: all of ASDiv with a single numeric answer | `asdiv/nluds-0001` |
| `multiarith` | train 420 / test 180                     | `multiarith/17`         |
| `math23k`    | train 21,162 / valid 1,000 / test 1,000  | `math23k/35`            |
| `weak12k`    | valid 1,000 / test 1,000 (no public train split) | `weak12k/1562`  |
| `mawps_svamp`| train 3,138 (MAWPS + ASDiv-A) / dev 1,000 (SVAMP), the SVAMP paper's protocol; train_fit 2,511 / train_held_out 627 (every fifth of train) | `mawps_svamp/train/17` |

Any other dataset is a `dataset.source` mapping in one YAML file (`register_dataset`,
`conf/dataset/example_custom.yaml`): JSON, JSON-lines or CSV files with a field mapping.

ASDiv rule: a problem whose answer is not one number ("3 (red); 4 (blue)", "2:3", "3:30 p.m.",
"Yes") is skipped with one counted warning per load. ASDiv-A has no such problem; the full ASDiv
has 213. Every other unparseable row raises `DataError` naming the file, row and field.
"""

from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import replace
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

from mwp.data.io import DataError, read_json, read_jsonl_lines, text_lines
from mwp.data.problem import MAX_QUESTION_CHARS, Problem
from mwp.paths import default_data_dir
from mwp.verify.masking import number_spans
from mwp.verify.numbers import format_number, parse_number

log = logging.getLogger(__name__)

_GSM8K_FINAL = re.compile(r"\n####[ \t]*([^\n]*?)[ \t]*\Z")
_ASDIV_ANSWER = re.compile(r"^\s*(?P<value>[^()]*?)\s*(?:\((?P<unit>[^()]*)\))?\s*$")
_LITERAL_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def question_numbers(text: str, language: str = "en") -> tuple[str, ...]:
    """The number strings of a question in order, as `mwp.verify.masking` defines them (N0..Nk)."""
    return tuple(number for _, _, number in number_spans(text, language))


def find_chinese_numbers(text: str) -> list[str]:
    """The number strings of a Chinese question in order: "20", "39.76", "(1/2)", "7(2/3)", "15%"."""
    return list(question_numbers(text, "zh"))


def join_body_question(body: str, question: str) -> str:
    """Body + question as one passage, closing the body's sentence when it lacks punctuation."""
    body, question = body.strip(), question.strip()
    if not body:
        return question
    if not question:
        return body
    joiner = " " if body[-1] in ".!?,;:" else ". "
    return body + joiner + question


# ---------------------------------------------------------------------------------------------- gsm8k


def _load_gsm8k(data_dir: Path, split: str) -> list[Problem]:
    path = _require_file(data_dir, f"gsm8k/{split}.jsonl")
    problems = []
    for index, (line, row) in enumerate(read_jsonl_lines(path)):
        question = _text_field(row, "question", path, line=line)
        solution = _text_field(row, "answer", path, line=line)
        final = _GSM8K_FINAL.search(solution)
        if final is None:
            raise DataError("no final '#### N' line", path=path, line=line, field="answer")
        answer_text = final.group(1)
        answer = _parse_answer(answer_text, path, field="answer", line=line)
        problems.append(
            Problem(
                id=f"gsm8k/{split}/{index}",
                question=question.strip(),
                answer=answer,
                answer_text=answer_text,
                numbers=question_numbers(question),
                solution=solution,
                source="gsm8k",
                meta={"split": split, "index": index},
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------- svamp

SVAMP_TEACHER_DIR = "teacher/svamp_palm"


def _load_svamp(data_dir: Path, split: str) -> list[Problem]:
    path = _require_file(data_dir, "svamp/SVAMP.json")
    rows = _json_list(path)
    by_id: dict[str, Problem] = {}
    for index, row in enumerate(rows):
        problem = _svamp_problem(row, path, index, split)
        if problem.id in by_id:
            raise DataError(f"duplicate ID {row['ID']!r}", path=path, index=index, field="ID")
        by_id[problem.id] = problem
    if split == "all":
        return list(by_id.values())
    matches = match_svamp_teacher_rows(data_dir, by_id.values())
    problems = []
    for teacher_index, problem_id in enumerate(matches[split]):
        problem = by_id[problem_id]
        meta = {**problem.meta, "split": split, "teacher_split": split, "teacher_index": teacher_index}
        problems.append(_replace_meta(problem, meta))
    return problems


def _svamp_problem(row: Any, path: Path, index: int, split: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}", path=path, index=index)
    body = _text_field(row, "Body", path, index=index)
    question_part = _text_field(row, "Question", path, index=index)
    question = join_body_question(body, question_part)
    raw_answer = _field(row, "Answer", path, index=index)
    return Problem(
        id=f"svamp/{_text_field(row, 'ID', path, index=index)}",
        question=question,
        answer=_parse_answer(raw_answer, path, field="Answer", index=index),
        answer_text=str(raw_answer),
        numbers=question_numbers(question),
        equation=_text_field(row, "Equation", path, index=index).strip(),
        source="svamp",
        meta={
            "split": split,
            "index": index,
            "type": row.get("Type"),
            "body": body,
            "question_part": question_part,
        },
    )


def match_svamp_teacher_rows(data_dir: str | Path, problems: Iterable[Problem]) -> dict[str, list[str]]:
    """Map the recorded teacher's SVAMP rows back to SVAMP.json ids: {"train": [id per row], "test": [...]}.

    A teacher row's `input` is Body + "\\n" + Question; it is matched on whitespace-normalised text
    and must match exactly one problem, whose Equation must equal the row's `label`. Every SVAMP
    problem must be used at most once across both files.
    """
    data_dir = Path(data_dir)
    by_text: dict[str, list[Problem]] = {}
    for problem in problems:
        key = _normalise_space(problem.meta["body"] + " " + problem.meta["question_part"])
        by_text.setdefault(key, []).append(problem)
    matches: dict[str, list[str]] = {}
    used: dict[str, tuple[str, int]] = {}
    for split in ("train", "test"):
        path = _require_file(data_dir, f"{SVAMP_TEACHER_DIR}/svamp_{split}.json")
        ids = []
        for index, (line, row) in enumerate(read_jsonl_lines(path)):
            text = _text_field(row, "input", path, line=line)
            label = _text_field(row, "label", path, line=line)
            candidates = by_text.get(_normalise_space(text), [])
            if len(candidates) > 1:
                candidates = [
                    p for p in candidates if _normalise_space(p.equation or "") == _normalise_space(label)
                ]
            if len(candidates) != 1:
                found = ", ".join(p.id for p in candidates) or "none"
                raise DataError(
                    f"matches {len(candidates)} SVAMP problems ({found})", path=path, line=line, field="input"
                )
            problem = candidates[0]
            if _normalise_space(problem.equation or "") != _normalise_space(label):
                raise DataError(
                    f"label {label!r} differs from {problem.id}'s Equation {problem.equation!r}",
                    path=path,
                    line=line,
                    field="label",
                )
            if problem.id in used:
                other_split, other_index = used[problem.id]
                raise DataError(
                    f"{problem.id} already matched by svamp_{other_split}.json row {other_index}",
                    path=path,
                    line=line,
                )
            used[problem.id] = (split, index)
            ids.append(problem.id)
        matches[split] = ids
    return matches


# ---------------------------------------------------------------------------------------------- asdiv


def _asdiv_a_ids(data_dir: Path) -> dict[str, list[str]]:
    folds = {}
    for fold in range(5):
        path = _require_file(data_dir, f"asdiv/nfolds/asdiv-a/fold{fold}.txt")
        folds[f"fold{fold}"] = [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return folds


def _load_asdiv_a(data_dir: Path, split: str) -> list[Problem]:
    folds = _asdiv_a_ids(data_dir)
    fold_of = {problem_id: fold for fold, ids in folds.items() for problem_id in ids}
    if split == "test":
        wanted = list(fold_of)
    elif split == "train":  # folds 0-3, leaving fold4 as a held-out test set
        wanted = [problem_id for k in range(4) for problem_id in folds[f"fold{k}"]]
    else:
        wanted = folds[split]
    return _load_asdiv_xml(data_dir, "asdiv_a", split, wanted, fold_of)


def _load_asdiv(data_dir: Path, split: str) -> list[Problem]:
    return _load_asdiv_xml(data_dir, "asdiv", split, None, {})


def _load_asdiv_xml(
    data_dir: Path, name: str, split: str, wanted: list[str] | None, fold_of: dict[str, str]
) -> list[Problem]:
    path = _require_file(data_dir, "asdiv/ASDiv.xml")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"malformed XML ({err})", path=path, line=err.position[0]) from None
    elements: dict[str, tuple[int, ET.Element]] = {}
    for index, element in enumerate(root.iter("Problem")):
        problem_id = element.get("ID")
        if not problem_id:
            raise DataError("Problem without an ID attribute", path=path, index=index, field="ID")
        if problem_id in elements:
            raise DataError(f"duplicate Problem ID {problem_id!r}", path=path, index=index, field="ID")
        elements[problem_id] = (index, element)
    if wanted is None:
        wanted = list(elements)
    missing = [problem_id for problem_id in wanted if problem_id not in elements]
    if missing:
        raise DataError(
            f"{len(missing)} ASDiv-A fold ids are not in ASDiv.xml, e.g. {missing[:3]}", path=path
        )
    problems, skipped = [], []
    for problem_id in wanted:
        index, element = elements[problem_id]
        problem = _asdiv_problem(element, path, index, name, split, fold_of.get(problem_id))
        if problem is None:
            skipped.append(problem_id)
        else:
            problems.append(problem)
    if skipped:
        log.warning(
            "%s/%s: skipped %d problems whose answer is not a single number (e.g. %s)",
            name,
            split,
            len(skipped),
            ", ".join(skipped[:5]),
        )
    return problems


def _asdiv_problem(
    element: ET.Element, path: Path, index: int, name: str, split: str, fold: str | None
) -> Problem | None:
    problem_id = element.get("ID", "")
    where = f"Problem ID={problem_id}"

    def text(tag: str) -> str:
        value = element.findtext(tag)
        if value is None:
            raise DataError(f"{where} has no <{tag}>", path=path, index=index, field=tag)
        return value.strip()

    question = join_body_question(text("Body"), text("Question"))
    answer_text = text("Answer")
    match = _ASDIV_ANSWER.match(answer_text)
    answer = parse_number(match.group("value")) if match else None
    if answer is None:
        return None
    return Problem(
        id=f"{name}/{problem_id}",
        question=question,
        answer=answer,
        answer_text=answer_text,
        numbers=question_numbers(question),
        equation=text("Formula"),
        source=name,
        meta={
            "split": split,
            "index": index,
            "fold": fold,
            "unit": (match.group("unit") or "").strip() or None,
            "solution_type": text("Solution-Type"),
            "grade": element.get("Grade"),
            "origin": element.get("Source"),
        },
    )


# ---------------------------------------------------------------------------------------------- multiarith


def _load_multiarith(data_dir: Path, split: str) -> list[Problem]:
    path = _require_file(data_dir, "multiarith/MultiArith.json")
    split_path = _require_file(data_dir, "splits/multiarith__default.json")
    rows = _json_list(path)
    splits = read_json(split_path)
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        raise DataError(f"no index list for split {split!r}", path=split_path, field=split)
    problems = []
    for position, index in enumerate(splits[split]):
        if not isinstance(index, int) or not 0 <= index < len(rows):
            raise DataError(
                f"index {index!r} is outside MultiArith's {len(rows)} rows", path=split_path, index=position
            )
        row = rows[index]
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", path=path, index=index)
        question = _text_field(row, "sQuestion", path, index=index).strip()
        equations = _field(row, "lEquations", path, index=index)
        solutions = _field(row, "lSolutions", path, index=index)
        if not isinstance(equations, list) or not equations or not isinstance(equations[0], str):
            raise DataError(
                "expected a non-empty list of equation strings", path=path, index=index, field="lEquations"
            )
        if not isinstance(solutions, list) or not solutions:
            raise DataError(
                "expected a non-empty list of answers", path=path, index=index, field="lSolutions"
            )
        problems.append(
            Problem(
                id=f"multiarith/{_field(row, 'iIndex', path, index=index)}",
                question=question,
                answer=_parse_answer(solutions[0], path, field="lSolutions", index=index),
                answer_text=str(solutions[0]),
                numbers=question_numbers(question),
                equation=equations[0],
                source="multiarith",
                meta={"split": split, "index": index, "alignments": row.get("lAlignments")},
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------- chinese

_MATH23K_FILES = {
    "train": "math23k_train_21162.json",
    "valid": "math23k_valid_1000.json",
    "test": "math23k_test_1000.json",
}


def _load_math23k(data_dir: Path, split: str) -> list[Problem]:
    path = _require_file(data_dir, f"math23k/{_MATH23K_FILES[split]}")
    problems = []
    for index, row in enumerate(_json_list(path)):
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", path=path, index=index)
        question = _text_field(row, "original_text", path, index=index).strip()
        answer_text = str(_field(row, "ans", path, index=index))
        problems.append(
            Problem(
                id=f"math23k/{_field(row, 'id', path, index=index)}",
                question=question,
                answer=_parse_answer(answer_text, path, field="ans", index=index),
                answer_text=answer_text,
                numbers=question_numbers(question, "zh"),
                equation=_text_field(row, "equation", path, index=index).strip(),
                language="zh",
                source="math23k",
                meta={"split": split, "index": index, "segmented_text": row.get("segmented_text")},
            )
        )
    return problems


def _load_weak12k(data_dir: Path, split: str) -> list[Problem]:
    path = _require_file(data_dir, f"weak12k/weekly12k_{split}_clean.json")
    problems = []
    for index, row in enumerate(_json_list(path)):
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", path=path, index=index)
        # A few rows carry JSON escapes written out literally ("（\\u3000\\u3000）").
        question = _LITERAL_ESCAPE.sub(
            lambda m: chr(int(m.group(1), 16)), _text_field(row, "original_text", path, index=index)
        ).strip()
        answer_text = str(_field(row, "ans", path, index=index))
        num_list = _field(row, "num_list", path, index=index)
        if not isinstance(num_list, list) or not all(_is_plain_number(x) for x in num_list):
            raise DataError("expected a list of numbers", path=path, index=index, field="num_list")
        problems.append(
            Problem(
                id=f"weak12k/{_field(row, 'id', path, index=index)}",
                question=question,
                answer=_parse_answer(answer_text, path, field="ans", index=index),
                answer_text=answer_text,
                numbers=question_numbers(question, "zh"),
                language="zh",
                source="weak12k",
                meta={
                    "split": split,
                    "index": index,
                    "segmented_text": row.get("new_split"),
                    # The dataset's own number list; `numbers` (masking's) agrees on most rows.
                    "num_list": [str(x) if isinstance(x, int) else repr(x) for x in num_list],
                },
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------- generic

GENERIC_FORMATS = ("json", "jsonl", "csv")
GENERIC_FIELDS = ("id", "question", "body", "answer", "equation", "solution")
# A line of a dataset file holds one problem (at most MAX_QUESTION_CHARS): a longer one is a
# mistake, named before anything is spent on it and never read whole.
MAX_ROW_BYTES = 1 << 20


def _generic_rows(path: Path, fmt: str) -> Iterable[tuple[int | None, int, dict[str, Any]]]:
    """(line, row index, row) for every row; JSON arrays have no line per row, so their errors name the index."""
    if fmt == "jsonl":
        for index, (line, row) in enumerate(read_jsonl_lines(path, max_line_bytes=MAX_ROW_BYTES)):
            yield line, index, row
    elif fmt == "json":
        for index, row in enumerate(_json_list(path)):
            if not isinstance(row, dict):
                raise DataError(f"expected an object, got {type(row).__name__}", path=path, index=index)
            yield None, index, row
    else:
        reader = csv.DictReader(text_lines(path, max_line_bytes=MAX_ROW_BYTES))
        try:
            for index, row in enumerate(reader):
                if None in row or any(v is None for v in row.values()):
                    raise DataError(
                        f"expected {len(reader.fieldnames or [])} columns", path=path, line=reader.line_num
                    )
                yield reader.line_num, index, {k: (v if v != "" else None) for k, v in row.items()}
        except csv.Error as err:
            raise DataError(f"malformed CSV ({err})", path=path, line=reader.line_num) from None


def _load_generic(spec: dict[str, Any], name: str, data_dir: Path, split: str) -> list[Problem]:
    """Problems of a dataset described by a `dataset.source` mapping (see `register_dataset`)."""
    fields: dict[str, str | None] = {k: spec["fields"].get(k) for k in GENERIC_FIELDS}
    split_field = spec.get("split_field")
    files = spec["files"]
    indexed = spec.get("split_indices")
    paths = list(files.values()) if split_field or indexed else [files[split]]
    wanted = _split_index_list(Path(indexed).expanduser(), split) if indexed else None
    language = spec.get("language", "en")
    problems = []
    # id -> where the first problem with it is (file:line or [row i])
    first_seen: dict[str, str] = {}
    for relative in paths:
        path = Path(relative).expanduser()
        path = path if path.is_absolute() else data_dir / path
        if not path.is_file():
            raise DataError(f"missing data file of dataset {name!r}", path=path)
        rows = _generic_rows(path, spec["format"])
        if wanted is not None:
            rows = _pick_rows(list(rows), wanted, Path(indexed), path)
        for line, index, row in rows:
            where = {"line": line} if line is not None else {"index": index}
            if split_field and str(_field(row, split_field, path, **where)) != split:
                continue

            def text(key: str, row: dict[str, Any] = row, path: Path = path, where=where) -> str | None:
                column = fields[key]
                if column is None:
                    return None
                if key in ("equation", "solution") and row.get(column) is None:
                    return None  # optional per row
                value = _field(row, column, path, **where)
                return value if isinstance(value, str) else str(value)

            question = text("question") or ""
            body = text("body")
            question = join_body_question(body, question) if body is not None else question.strip()
            if not question:
                raise DataError(
                    "empty question", path=path, field=fields["question"] or fields["body"], **where
                )
            if len(question) > MAX_QUESTION_CHARS:
                raise DataError(
                    f"question of {len(question):,} characters, more than the {MAX_QUESTION_CHARS:,} allowed",
                    path=path,
                    field=fields["question"] or fields["body"],
                    **where,
                )
            raw_answer = _field(row, fields["answer"] or "answer", path, **where)
            numbers = question_numbers(question, language)
            row_id = text("id") if fields["id"] else f"{split}/{index}"
            here = f"{path}:{line}" if line is not None else f"{path} [row {index}]"
            if row_id in first_seen:
                raise DataError(
                    f"id {row_id!r} already used by {first_seen[row_id]}; every problem needs its own id",
                    path=path,
                    field=fields["id"],
                    **where,
                )
            first_seen[row_id] = here
            problems.append(
                Problem(
                    id=f"{name}/{row_id}",
                    question=question,
                    answer=_parse_answer(raw_answer, path, field=fields["answer"] or "answer", **where),
                    answer_text=str(raw_answer),
                    numbers=tuple(numbers),
                    equation=(text("equation") or "").strip() or None,
                    solution=text("solution"),
                    language=language,
                    source=name,
                    meta={"split": split, "index": index, "file": str(path)},
                )
            )
    if not problems:
        files = ", ".join(str(p if Path(p).is_absolute() else data_dir / p) for p in paths)
        raise DataError(f"dataset {name!r} has no problems in split {split!r} (read {files})")
    return problems


def _split_index_list(path: Path, split: str) -> list[int]:
    """The row indices of `split` in a `{split: [index, ...]}` JSON file."""
    splits = read_json(path)
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        raise DataError(f"no index list for split {split!r}", path=path, field=split)
    return splits[split]


def _pick_rows(
    rows: list[tuple[int | None, int, dict[str, Any]]], wanted: list[int], index_file: Path, path: Path
):
    """The rows at the listed positions, in list order; a bad index names the index file and its place."""
    picked = []
    for position, index in enumerate(wanted):
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(rows):
            raise DataError(
                f"index {index!r} is outside the {len(rows)} rows of {path}", path=index_file, index=position
            )
        picked.append(rows[index])
    return picked


def register_dataset(name: str, source: dict[str, Any]) -> str:
    """Make `load_problems(name, split)` read the files a `dataset.source` mapping describes; returns the key.

    `source`: `format` (json, jsonl or csv), `files` ({split: path}; a path relative to the data
    folder is under `paths.data_dir`), `fields` ({id, question or body + question, answer,
    equation, solution}: the column or key of each, id optional), `language`, and optionally
    `split_field` (a column naming each row's split; then `files` are read whole and `splits` lists
    the split names) or `split_indices` (a JSON file `{split: [row index, ...]}` into the one file
    of `files`, in list order). Validating a config with a `dataset.source` registers it, so every stage of
    the run can load it by name. Re-registering the same name replaces its mapping.
    """
    key = name.strip().lower().replace("-", "_")
    if key in _BUILTIN:
        raise DataError(f"dataset {name!r} is built in; give the custom dataset another name")
    spec = dict(source)
    if spec.get("split_indices"):
        index_file = Path(spec["split_indices"]).expanduser()
        table = read_json(index_file)
        if not isinstance(table, dict) or not table:
            raise DataError("expected a JSON object {split: [row index, ...]}", path=index_file)
        splits = list(table)
    elif spec.get("split_field"):
        splits = list(spec.get("splits") or [])
    else:
        splits = list(spec["files"])
    if not splits:
        raise DataError(f"dataset {name!r}: split_field needs a list of `splits`")
    _DATASETS[key] = {split: partial(_load_generic, spec, key) for split in splits}
    return key


# ---------------------------------------------------------------------------------------------- mawps_svamp

MAWPS_SVAMP_DIR = "svamp/mawps-asdiv-a_svamp"
_NUMBER_SLOT = re.compile(r"\bnumber(\d+)\b")
_TEMPLATE_SLOT = re.compile(r"\bN(\d+)\b")


def _load_mawps_svamp(data_dir: Path, split: str) -> list[Problem]:
    """The SVAMP paper's equation data: questions with `number0..` slots, a `Numbers` column, and a
    prefix equation over the slots ("* number0 number1"). The slots are filled back in (so masking
    finds the same N0..Nk) and the equation is written infix over the numbers ("56 * 9")."""
    from mwp.verify.templates import TemplateError, canonical_infix, from_prefix

    path = _require_file(data_dir, f"{MAWPS_SVAMP_DIR}/{split}.csv")
    problems = []
    with path.open(newline="", encoding="utf-8") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            line = index + 2  # the header is line 1
            raw_numbers = _text_field(row, "Numbers", path, line=line).split()
            numbers = []
            for raw in raw_numbers:
                value = parse_number(raw)
                if value is None:
                    raise DataError(f"unparseable number {raw!r}", path=path, line=line, field="Numbers")
                numbers.append(format_number(value))

            def fill(match: re.Match[str], numbers: list[str] = numbers, line: int = line) -> str:
                slot = int(match.group(1))
                if slot >= len(numbers):
                    raise DataError(
                        f"slot {match.group(0)} but only {len(numbers)} numbers", path=path, line=line
                    )
                return numbers[slot]

            question = _normalise_space(_NUMBER_SLOT.sub(fill, _text_field(row, "Question", path, line=line)))
            prefix = _NUMBER_SLOT.sub(r"N\1", _text_field(row, "Equation", path, line=line))
            try:
                infix = canonical_infix(from_prefix(prefix))
            except TemplateError as err:
                raise DataError(
                    f"unreadable equation ({err})", path=path, line=line, field="Equation"
                ) from err
            raw_answer = _field(row, "Answer", path, line=line)
            problems.append(
                Problem(
                    id=f"mawps_svamp/{split}/{index}",
                    question=question,
                    answer=_parse_answer(raw_answer, path, field="Answer", line=line),
                    answer_text=str(raw_answer),
                    numbers=question_numbers(question),
                    equation=_TEMPLATE_SLOT.sub(lambda m, n=numbers: n[int(m.group(1))], infix),
                    source="mawps_svamp",
                    meta={"split": split, "index": index},
                )
            )
    return problems


# Every fifth MAWPS + ASDiv-A training problem (file index % 5 == 4), for scoring in distribution.
_MAWPS_HELD_OUT_EVERY = 5


def _load_mawps_svamp_part(data_dir: Path, split: str) -> list[Problem]:
    """`train_fit` / `train_held_out`: a fixed 4:1 partition of the train split (ids stay the train ids;
    `meta["split"]` names the part, `meta["index"]` the row of the train file)."""
    held_out = split == "train_held_out"
    return [
        _replace_meta(p, {**p.meta, "split": split})
        for p in _load_mawps_svamp(data_dir, "train")
        if (p.meta["index"] % _MAWPS_HELD_OUT_EVERY == _MAWPS_HELD_OUT_EVERY - 1) == held_out
    ]


# ---------------------------------------------------------------------------------------------- registry

Loader = Callable[[Path, str], list[Problem]]

_DATASETS: dict[str, dict[str, Loader]] = {
    "gsm8k": {"train": _load_gsm8k, "test": _load_gsm8k},
    "svamp": {"train": _load_svamp, "test": _load_svamp, "all": _load_svamp},
    "asdiv_a": {
        "test": _load_asdiv_a,
        "train": _load_asdiv_a,
        **{f"fold{k}": _load_asdiv_a for k in range(5)},
    },
    "asdiv": {"test": _load_asdiv},
    "multiarith": {"train": _load_multiarith, "test": _load_multiarith},
    "math23k": {"train": _load_math23k, "valid": _load_math23k, "test": _load_math23k},
    "weak12k": {"valid": _load_weak12k, "test": _load_weak12k},
    "mawps_svamp": {
        "train": _load_mawps_svamp,
        "dev": _load_mawps_svamp,
        "train_fit": _load_mawps_svamp_part,
        "train_held_out": _load_mawps_svamp_part,
    },
}
_BUILTIN = frozenset(_DATASETS)
_NOT_PUBLIC = {
    ("weak12k", "train"): "Weak12K's train split is not public (only valid and test were released); "
    "use split 'valid' or 'test', or train on another dataset",
}


def available_datasets() -> list[str]:
    return list(_DATASETS)


def canonical_name(name: str) -> str:
    """ "ASDiv-A", "asdiv-a" and "asdiv_a" all name `asdiv_a`; unknown names raise DataError."""
    key = name.strip().lower().replace("-", "_")
    if key not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(_DATASETS)}")
    return key


def available_splits(name: str) -> list[str]:
    return list(_DATASETS[canonical_name(name)])


def load_problems(
    name: str, split: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[Problem]:
    """The problems of one dataset split, in file order (the first `limit` of them if given)."""
    key = canonical_name(name)
    loaders = _DATASETS[key]
    if split not in loaders:
        if (key, split) in _NOT_PUBLIC:
            raise DataError(_NOT_PUBLIC[key, split])
        raise DataError(f"unknown split {split!r} for dataset {key!r}; available: {', '.join(loaders)}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0 or None, got {limit}")
    root = resolve_data_dir(data_dir)
    problems = loaders[split](root, split)  # a generic loader is partial(_load_generic, spec, key)
    if not problems:
        raise DataError(f"dataset {key!r} has no problems in split {split!r} under {root}")
    return problems if limit is None else problems[:limit]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """`data_dir`, else `$MWP_DATA_DIR`, else `../shared/data`; it must exist."""
    path = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not path.is_dir():
        raise DataError(
            f"data directory {path} does not exist; set the `paths.data_dir` setting "
            "(e.g. `paths.data_dir=/path/to/data` on the command line) or the MWP_DATA_DIR environment variable"
        )
    return path


# ---------------------------------------------------------------------------------------------- helpers


def _require_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise DataError(
            f"missing data file {relative!r} under {data_dir}; point `paths.data_dir` or MWP_DATA_DIR "
            "at the folder holding the bundled datasets",
            path=path,
        )
    return path


def _json_list(path: Path) -> list[Any]:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"expected a JSON array, got {type(rows).__name__}", path=path)
    return rows


def _field(
    row: dict[str, Any], name: str, path: Path, *, line: int | None = None, index: int | None = None
) -> Any:
    if name not in row or row[name] is None:
        raise DataError("missing field", path=path, line=line, index=index, field=name)
    return row[name]


def _text_field(
    row: dict[str, Any], name: str, path: Path, *, line: int | None = None, index: int | None = None
) -> str:
    value = _field(row, name, path, line=line, index=index)
    if not isinstance(value, str):
        raise DataError(
            f"expected a string, got {type(value).__name__}", path=path, line=line, index=index, field=name
        )
    return value


def _parse_answer(
    raw: Any, path: Path, *, field: str, line: int | None = None, index: int | None = None
) -> Fraction:
    value = None if isinstance(raw, bool) else parse_number(raw, percent="fraction")
    if value is None:
        raise DataError(f"unparseable answer {raw!r}", path=path, line=line, index=index, field=field)
    return value


def _is_plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def _replace_meta(problem: Problem, meta: dict[str, Any]) -> Problem:
    return replace(problem, meta=meta)
