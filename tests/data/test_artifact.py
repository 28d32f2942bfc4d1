"""The distilled artifact: typed rows, byte-identical round trips, and errors that name file:line."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.data.artifact import DistilledRow, TokenLogprobs, read_distilled, write_distilled
from mwp.data.io import DataError
from mwp.data.problem import Problem

PROBLEM = Problem(
    id="p/1", question="What is 2 + 3?", answer=Fraction(5), answer_text="5", numbers=("2", "3")
)


def _row(**changes) -> DistilledRow:
    fields = {"problem": PROBLEM, "rationale": "2 + 3 = 5.", "teacher": "t", "sample_index": 1, "pred": "5"}
    return DistilledRow(**{**fields, **changes})


def test_round_trip_keeps_the_written_layout(tmp_path: Path) -> None:
    logprobs = TokenLogprobs(
        tokens=["2", " +"], logprobs=[-0.1, -0.2], top_tokens=[["2"], [" +"]], top_logprobs=[[-0.1], [-0.2]]
    )
    rows = [_row(), _row(sample_index=2, logprobs=logprobs)]
    path = tmp_path / "distilled.jsonl"
    assert write_distilled(path, rows) == 2
    assert read_distilled(tmp_path) == rows  # a folder means its distilled.jsonl
    first = json.loads(path.read_text().splitlines()[0])
    assert list(first) == ["id", "sample_index", "rationale", "pred", "teacher", "problem"]
    assert first["id"] == "p/1" and rows[0].id == "p/1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("rationale"), r"field 'rationale' is missing"),
        (lambda r: r.update(rationale=3), r"field 'rationale' is of type int, expected str"),
        (lambda r: r["problem"].pop("question"), r"field 'problem.question' is missing"),
        (
            lambda r: r["problem"].update(question=None),
            r"field 'problem.question' is null, expected a string",
        ),
        (lambda r: r.update(problem="p/1"), r"field 'problem' is of type str, expected Mapping"),
        (lambda r: r.update(sample_index="1"), r"field 'sample_index'"),
        (lambda r: r.update(logprobs={"tokens": ["a"], "logprobs": []}), r"malformed logprobs"),
        (lambda r: r["problem"].update(colour="red"), r"field 'problem' is not a problem"),
    ],
)
def test_a_bad_row_names_the_file_and_line(tmp_path: Path, change, message: str) -> None:
    good = _row().to_json()
    bad = _row().to_json()
    change(bad)
    path = tmp_path / "distilled.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"distilled\.jsonl:3: {message}"):
        read_distilled(path)


def test_a_binary_artifact_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "distilled.jsonl"
    path.write_bytes(json.dumps(_row().to_json()).encode() + b"\n\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match=r"distilled\.jsonl:2: not UTF-8"):
        read_distilled(path)


def test_a_missing_artifact_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stage=distill"):
        read_distilled(tmp_path)


def test_a_torn_last_row_is_skipped_only_on_request(tmp_path: Path) -> None:
    path = tmp_path / "distilled.jsonl"
    path.write_text(json.dumps(_row().to_json()) + '\n{"id": "p/1", "rat')
    assert read_distilled(path, skip_partial_tail=True) == [_row()]
    with pytest.raises(DataError, match=r"distilled\.jsonl:2: malformed JSON"):
        read_distilled(path)
