"""Any dataset by config: `dataset.source` files + field mapping, loaded by name, malformed rows located."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.config import ConfigError
from mwp.data.io import DataError
from mwp.data.loaders import load_problems, register_dataset
from mwp.paths import default_data_dir
from mwp.stages import load_config
from tests.helpers import compose_config


def test_example_custom_config_registers_and_loads_by_name() -> None:
    load_config(compose_config(["dataset=example_custom", "teacher=smollm2"]))
    train = load_problems("example_custom", "train")
    test = load_problems("example_custom", "test")
    assert [p.id for p in train] == ["example_custom/p1", "example_custom/p2", "example_custom/p3"]
    assert train[0].question == "Tom has 3 apples and buys 4 more. How many apples does he have?"
    assert train[2].answer == 24 and train[2].equation == "4 * 6" and train[2].numbers == ("4", "6")
    assert test[1].question.startswith("A rope, 9 metres long, is cut") and test[1].answer == 3


def test_split_by_file_jsonl_and_a_malformed_line(tmp_path: Path) -> None:
    good = tmp_path / "train.jsonl"
    good.write_text(
        '{"q": "What is 2 plus 3?", "a": "5", "sol": "2 + 3 = 5"}\n{"q": "Half of 9?", "a": 4.5}\n'
    )
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"q": "What is 1 plus 1?", "a": 2}\n{"q": "No answer here"}\n')
    source = {
        "format": "jsonl",
        "files": {"train": str(good), "test": "test.jsonl"},
        "fields": {"question": "q", "answer": "a", "solution": "sol"},
    }
    register_dataset("my_jsonl", source)
    problems = load_problems("my_jsonl", "train", tmp_path)
    assert [p.id for p in problems] == ["my_jsonl/train/0", "my_jsonl/train/1"]
    assert problems[1].answer == Fraction(9, 2) and problems[0].solution == "2 + 3 = 5"
    with pytest.raises(DataError, match=r"test\.jsonl:2 field 'a': missing field"):
        load_problems("my_jsonl", "test", tmp_path)  # relative path: under the data folder


def test_csv_row_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nWhat is 6 times 7?,42\nHow many?,lots\n")
    register_dataset(
        "my_csv",
        {
            "format": "csv",
            "files": {"test": str(path)},
            "fields": {"question": "question", "answer": "answer"},
        },
    )
    with pytest.raises(DataError, match=r"d\.csv:3 field 'answer': unparseable answer 'lots'"):
        load_problems("my_csv", "test")
    path.write_text("question,answer\nWhat is 6 times 7?,42,extra\n")
    with pytest.raises(DataError, match=r"d\.csv:2: expected 2 columns"):
        load_problems("my_csv", "test")


@pytest.mark.skipif(not (default_data_dir() / "svamp").is_dir(), reason="bundled SVAMP not found")
def test_bundled_svamp_json_remapped_matches_the_builtin_loader() -> None:
    source = {
        "format": "json",
        "files": {"all": "svamp/SVAMP.json"},
        "fields": {
            "id": "ID",
            "body": "Body",
            "question": "Question",
            "answer": "Answer",
            "equation": "Equation",
        },
    }
    register_dataset("svamp_remapped", source)
    remapped = load_problems("svamp_remapped", "all")
    builtin = load_problems("svamp", "all")
    assert len(remapped) == len(builtin) == 1000
    for mine, theirs in zip(remapped, builtin, strict=True):
        assert mine.id.split("/")[1] == theirs.id.split("/")[1]
        assert (mine.question, mine.answer, mine.equation) == (
            theirs.question,
            theirs.answer,
            theirs.equation,
        )


@pytest.mark.skipif(not (default_data_dir() / "svamp").is_dir(), reason="bundled SVAMP not found")
def test_split_by_an_index_list_file(tmp_path: Path) -> None:
    """The bundled SVAMP file split by the reasoning-teacher index lists (700 train / 300 test)."""
    import json

    index_file = default_data_dir() / "splits" / "svamp__default.json"
    source = {
        "format": "json",
        "files": {"all": "svamp/SVAMP.json"},
        "fields": {"id": "ID", "body": "Body", "question": "Question", "answer": "Answer"},
        "split_indices": str(index_file),
    }
    register_dataset("svamp_indexed", source)
    lists = json.loads(index_file.read_text())
    everything = load_problems("svamp", "all")
    for split in ("train", "test"):
        problems = load_problems("svamp_indexed", split)
        assert len(problems) == len(lists[split])
        assert [p.question for p in problems] == [everything[i].question for i in lists[split]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [0, 5000]}))
    register_dataset("svamp_bad_index", {**source, "split_indices": str(bad)})
    with pytest.raises(DataError, match=r"bad\.json.*index 5000 is outside the 1000 rows"):
        load_problems("svamp_bad_index", "train")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset.source.fields.question=null", "dataset.source.fields.body=null"], "dataset.source.fields"),
        (["dataset.source.format=xml"], "dataset.source.format"),
        (["dataset.source.splits=[]"], "dataset.source.splits"),
        (["dataset.name=svamp"], "dataset.name"),
        (["dataset.train_split=valid"], "dataset.train_split"),
    ],
)
def test_source_config_mistakes_name_the_key(overrides: list[str], key: str) -> None:
    cfg = compose_config(["dataset=example_custom", "teacher=smollm2", *overrides])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(cfg)


def test_json_source_must_be_an_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"rows": []}))
    register_dataset(
        "my_json",
        {"format": "json", "files": {"test": str(path)}, "fields": {"question": "q", "answer": "a"}},
    )
    with pytest.raises(DataError, match=r"d\.json: expected a JSON array"):
        load_problems("my_json", "test")
