"""A user's own dataset files, wrong in the ways users get them wrong: each one a DataError naming file:line.

Rows that share an id, text that is not UTF-8, an empty file, a question of 210,000 characters and a
single line of 50 MB. None of them may be accepted, cached and then fail (or vanish) stages later.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from mwp.data.artifact import read_distilled
from mwp.data.io import DataError
from mwp.data.loaders import load_problems, register_dataset

HEADER = "qid,text,ask,result,formula,part\n"
ROWS = [
    "p1,Tom has 3 apples and buys 4 more,How many apples does he have?,7,3 + 4,train\n",
    "p2,A box holds 12 pens. 5 are taken out.,How many pens are left?,7,12 - 5,train\n",
    "p3,Each of 4 bags has 6 marbles,How many marbles are there?,24,4 * 6,train\n",
    "p4,Sara reads 10 pages a day for 3 days,How many pages does she read?,30,10 * 3,test\n",
]
FIELDS = {"id": "qid", "body": "text", "question": "ask", "answer": "result", "equation": "formula"}


def _custom(path: Path, fmt: str = "csv", fields: dict[str, str] | None = None) -> str:
    """Register `path` the way conf/dataset/example_custom.yaml does; returns the dataset name."""
    source = {
        "format": fmt,
        "files": {"all": str(path)},
        "split_field": "part",
        "splits": ["train", "test"],
        "fields": fields or FIELDS,
    }
    return register_dataset("faulty_custom", source)


def test_rows_that_share_an_id_are_refused_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(HEADER + "".join(row.replace("p2,", "p1,").replace("p3,", "p1,") for row in ROWS))
    with pytest.raises(DataError) as err:
        load_problems(_custom(path), "train")
    message = str(err.value)
    assert message.startswith(f"{path}:3 field 'qid': id 'p1' already used by {path}:2"), message


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (HEADER + ROWS[0]).encode() + "p2,Zoë has 5 crêpes,How many?,5,5,train\n".encode("latin-1")
    )
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8 text"):
        load_problems(_custom(path), "train")


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "".join(ROWS)).encode())
    assert [p.id for p in load_problems(_custom(path), "train")] == [f"faulty_custom/p{i}" for i in (1, 2, 3)]


@pytest.mark.parametrize("content", ["", HEADER, HEADER + ROWS[3]])
def test_a_file_without_problems_of_the_split_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"no problems in split 'train' \(read {path}\)"):
        load_problems(_custom(path), "train")


def test_a_question_of_210000_characters_is_refused_where_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    rows = [
        {"qid": "p1", "q": "Tom has 3 apples and buys 4 more. How many?", "a": 7, "part": "train"},
        {
            "qid": "p2",
            "q": "A box holds 12 pens. " + "Really. " * 26_250 + "How many?",
            "a": 7,
            "part": "train",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = _custom(path, "jsonl", {"id": "qid", "question": "q", "answer": "a"})
    size = len(rows[1]["q"])
    assert size > 210_000
    with pytest.raises(DataError, match=rf"^{path}:2 field 'q': question of {size:,} characters, more than"):
        load_problems(name, "train")


def test_a_50_mb_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "line50.jsonl"
    with path.open("w") as handle:
        handle.write(json.dumps({"qid": "p1", "q": "What is 2 plus 3?", "a": 5, "part": "train"}) + "\n")
        handle.write(json.dumps({"qid": "p2", "q": "x" * 50_000_000, "a": 5, "part": "train"}) + "\n")
    name = _custom(path, "jsonl", {"id": "qid", "question": "q", "answer": "a"})
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"^{path}:2: line longer than 1,048,576 bytes"):
            load_problems(name, "train")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_a_csv_field_past_the_row_bound_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(HEADER + ROWS[0] + f"p2,{'y' * 2_000_000},How many?,5,5,train\n")
    with pytest.raises(DataError, match=rf"^{path}:3: line longer than"):
        load_problems(_custom(path), "train")


def test_a_distilled_row_with_a_huge_question_names_its_line(tmp_path: Path) -> None:
    problem = {"id": "p1", "question": "Q " * 15_000, "answer": "7", "answer_text": "7"}
    row = {
        "id": "p1",
        "sample_index": 0,
        "rationale": "The answer is 7.",
        "pred": "7",
        "teacher": "t",
        "problem": problem,
    }
    path = tmp_path / "distilled.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:1: field 'problem.question' has 30,000 characters"):
        read_distilled(path)
