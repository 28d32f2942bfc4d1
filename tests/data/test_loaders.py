"""Dataset loaders on the real bundled data, and the JSON / JSON-lines helpers they stand on."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.data import (
    DataError,
    append_jsonl,
    available_datasets,
    available_splits,
    load_problems,
    read_json,
    read_jsonl,
    read_jsonl_lines,
    write_json,
    write_jsonl,
)
from mwp.verify.numbers import parse_number

# Row counts as documented by the datasets' own releases (see the data README).
EXPECTED_COUNTS = {
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
    ("svamp", "train"): 800,
    ("svamp", "test"): 200,
    ("svamp", "all"): 1000,
    ("asdiv_a", "test"): 1218,
    ("asdiv_a", "fold0"): 238,
    ("asdiv_a", "fold4"): 266,
    ("asdiv_a", "train"): 952,
    ("multiarith", "train"): 420,
    ("multiarith", "test"): 180,
    ("math23k", "train"): 21162,
    ("math23k", "valid"): 1000,
    ("math23k", "test"): 1000,
    ("weak12k", "valid"): 1000,
    ("weak12k", "test"): 1000,
}


# ------------------------------------------------------------------------------------------ io


def test_read_jsonl_names_file_and_line_of_a_malformed_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n', encoding="utf-8")
    rows = read_jsonl(path)
    assert next(rows) == {"a": 1}
    assert next(rows) == {"a": 2}
    with pytest.raises(DataError, match=re.escape(f"{path}:4")) as info:
        next(rows)
    assert info.value.line == 4


def test_read_jsonl_rejects_a_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(path))


def test_read_jsonl_lines_reports_real_line_numbers_across_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('\n{"a": 1}\n\n\n{"a": 2}\n', encoding="utf-8")
    assert [line for line, _ in read_jsonl_lines(path)] == [2, 5]


def test_read_json_names_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text('[\n  {"a": 1},\n  {"a": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:3")):
        read_json(path)


def test_write_jsonl_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl(path, [{"i": i, "text": "é"} for i in range(3)]) == 3
    assert path.stat().st_mode & 0o777 == 0o644  # not the temporary file's private mode
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [{"i": 0}, {"bad": object()}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]  # no temporary file left
    assert list(read_jsonl(path)) == [{"i": i, "text": "é"} for i in range(3)]


def test_write_json_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    write_json(path, {"splits": {"train": [1, 2]}})
    assert read_json(path) == {"splits": {"train": [1, 2]}}


def test_append_jsonl_survives_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "partial.jsonl"
    script = (
        "import os, signal, sys\n"
        "from mwp.data.io import append_jsonl\n"
        "for i in range(50):\n"
        "    append_jsonl(sys.argv[1], {'i': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False)
    assert done.returncode == -9
    assert [row["i"] for row in read_jsonl(path)] == list(range(50))


def test_append_jsonl_repairs_a_cut_off_last_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "partial.jsonl"
    for i in range(3):
        append_jsonl(path, {"i": i})
    with path.open("ab") as handle:  # what a crash in the middle of a write leaves behind
        handle.write(b'{"i": 3, "text": "hal')
    with pytest.raises(DataError, match=":4"):
        list(read_jsonl(path))
    assert [row["i"] for row in read_jsonl(path, skip_partial_tail=True)] == [0, 1, 2]
    with caplog.at_level(logging.WARNING):
        append_jsonl(path, {"i": 3})
    assert "incomplete last row" in caplog.text
    assert [row["i"] for row in read_jsonl(path)] == [0, 1, 2, 3]


def test_append_jsonl_keeps_a_complete_last_row_that_lacks_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}', encoding="utf-8")
    append_jsonl(path, {"i": 1})
    assert [row["i"] for row in read_jsonl(path)] == [0, 1]


# ------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED_COUNTS))
def test_row_counts_and_unique_ids(name: str, split: str, data_dir: Path) -> None:
    problems = load_problems(name, split, data_dir)
    assert len(problems) == EXPECTED_COUNTS[name, split]
    ids = [p.id for p in problems]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"{name}/") for i in ids)
    assert all(isinstance(p.answer, Fraction) for p in problems)
    assert all(p.question and p.question == p.question.strip() for p in problems)
    assert all(p.meta["split"] == split for p in problems)


def test_ids_are_unique_across_splits_and_stable(data_dir: Path) -> None:
    for name in ("gsm8k", "multiarith", "math23k", "weak12k"):
        ids = [p.id for split in available_splits(name) for p in load_problems(name, split, data_dir)]
        assert len(set(ids)) == len(ids), name
    again = load_problems("gsm8k", "test", data_dir, limit=5)
    assert [p.id for p in again] == [f"gsm8k/test/{i}" for i in range(5)]


def test_limit_and_name_spellings(data_dir: Path) -> None:
    assert len(load_problems("gsm8k", "train", data_dir, limit=7)) == 7
    assert load_problems("gsm8k", "train", data_dir, limit=0) == []
    assert [p.id for p in load_problems("ASDiv-A", "fold0", data_dir, limit=3)] == [
        p.id for p in load_problems("asdiv_a", "fold0", data_dir, limit=3)
    ]
    with pytest.raises(DataError, match="limit"):
        load_problems("gsm8k", "train", data_dir, limit=-1)


def test_unknown_dataset_and_split_list_the_valid_ones(data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'gsm9k'.*gsm8k, svamp"):
        load_problems("gsm9k", "train", data_dir)
    with pytest.raises(DataError, match=r"unknown split 'dev'.*train, valid, test"):
        load_problems("math23k", "dev", data_dir)
    assert set(available_datasets()) >= {"gsm8k", "svamp", "asdiv_a", "multiarith", "math23k", "weak12k"}


def test_weak12k_train_is_refused_as_not_public(data_dir: Path) -> None:
    with pytest.raises(DataError, match="not public"):
        load_problems("weak12k", "train", data_dir)
    assert "train" not in available_splits("weak12k")


def test_missing_data_dir_says_how_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"paths\.data_dir.*MWP_DATA_DIR"):
        load_problems("gsm8k", "train", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"missing data file 'gsm8k/train\.jsonl'"):
        load_problems("gsm8k", "train", tmp_path)


# ------------------------------------------------------------------------------------------ gsm8k


def test_gsm8k_answers_come_from_the_final_line_with_commas(data_dir: Path) -> None:
    problems = load_problems("gsm8k", "train", data_dir)
    lines = (data_dir / "gsm8k/train.jsonl").read_text(encoding="utf-8").splitlines()
    for problem, line in zip(problems, lines, strict=True):
        row = json.loads(line)
        final = row["answer"].split("####")[-1].strip()
        assert problem.answer == Fraction(final.replace(",", ""))
        assert problem.solution == row["answer"]
        assert problem.question == row["question"].strip()
    grouped = [p for p in problems if "," in p.answer_text]
    assert grouped, "GSM8K train has answers written with thousands separators"
    assert all(p.answer.denominator == 1 and p.answer >= 1000 for p in grouped)
    first = problems[0]
    assert first.numbers == ("48",) and first.equation is None


def test_gsm8k_row_without_final_line_names_line_and_field(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    broken = json.loads(lines[1])
    broken["answer"] = broken["answer"].replace("####", "==")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k/test.jsonl").write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2 field 'answer': no final '#### N' line"):
        load_problems("gsm8k", "test", tmp_path)
    del broken["answer"]
    (tmp_path / "gsm8k/test.jsonl").write_text("\n".join([lines[0], json.dumps(broken)]) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2 field 'answer': missing field"):
        load_problems("gsm8k", "test", tmp_path)


def test_gsm8k_unparseable_final_answer_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    line = (data_dir / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()[0]
    row = json.loads(line)
    row["answer"] = row["answer"].rsplit("####", 1)[0] + "#### eighteen"
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k/test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r":1 field 'answer': unparseable answer 'eighteen'"):
        load_problems("gsm8k", "test", tmp_path)


# ------------------------------------------------------------------------------------------ svamp


def _svamp_rows(data_dir: Path) -> dict[str, dict]:
    return {row["ID"]: row for row in json.loads((data_dir / "svamp/SVAMP.json").read_text(encoding="utf-8"))}


def test_svamp_teacher_split_matches_every_row_to_one_problem(data_dir: Path) -> None:
    rows = _svamp_rows(data_dir)
    seen: set[str] = set()
    for split, expected in (("train", 800), ("test", 200)):
        teacher = [
            json.loads(line)
            for line in (data_dir / f"teacher/svamp_palm/svamp_{split}.json")
            .read_text(encoding="utf-8")
            .splitlines()
        ]
        problems = load_problems("svamp", split, data_dir)
        assert len(problems) == len(teacher) == expected
        for index, (problem, row) in enumerate(zip(problems, teacher, strict=True)):
            source = rows[problem.id.removeprefix("svamp/")]
            assert problem.meta["teacher_split"] == split
            assert problem.meta["teacher_index"] == index
            assert source["Body"] + "\n" + source["Question"] == row["input"]
            assert problem.equation == row["label"] == source["Equation"]
            assert problem.answer == Fraction(source["Answer"])
        ids = {p.id for p in problems}
        assert not ids & seen
        seen |= ids
    assert seen == {f"svamp/{i}" for i in rows}


def test_svamp_all_keeps_file_order_and_joins_body_and_question(data_dir: Path) -> None:
    rows = list(_svamp_rows(data_dir).values())
    problems = load_problems("svamp", "all", data_dir)
    assert [p.id for p in problems] == [f"svamp/{row['ID']}" for row in rows]
    for problem, row in zip(problems, rows, strict=True):
        body, question = row["Body"].strip(), row["Question"].strip()
        assert problem.question.startswith(body) and problem.question.endswith(question)
        middle = problem.question[len(body) : len(problem.question) - len(question)]
        assert middle == (" " if body.endswith(".") else ". ")
    unpunctuated = problems[0]  # chal-1's body ends "... on each pack" without a period
    assert unpunctuated.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. "
        "How much do you have to pay to buy each pack?"
    )
    assert unpunctuated.numbers == ("76", "25")


def test_svamp_ambiguous_teacher_row_is_reported(tmp_path: Path, data_dir: Path) -> None:
    shutil.copytree(data_dir / "teacher", tmp_path / "teacher")
    rows = json.loads((data_dir / "svamp/SVAMP.json").read_text(encoding="utf-8"))
    first_teacher = json.loads((data_dir / "teacher/svamp_palm/svamp_train.json").read_text().splitlines()[0])
    original = next(r for r in rows if r["Body"] + "\n" + r["Question"] == first_teacher["input"])
    rows.append({**original, "ID": "chal-copy"})
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp/SVAMP.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"svamp_train\.json:1 field 'input': matches 2 SVAMP problems"):
        load_problems("svamp", "train", tmp_path)
    assert len(load_problems("svamp", "all", tmp_path)) == 1001


# ------------------------------------------------------------------------------------------ asdiv


def test_asdiv_a_is_the_union_of_the_folds(data_dir: Path) -> None:
    fold_ids = []
    for fold in range(5):
        ids = (data_dir / f"asdiv/nfolds/asdiv-a/fold{fold}.txt").read_text().split()
        assert [p.id for p in load_problems("asdiv_a", f"fold{fold}", data_dir)] == [
            f"asdiv_a/{i}" for i in ids
        ]
        fold_ids += ids
    problems = load_problems("asdiv_a", "test", data_dir)
    assert [p.id for p in problems] == [f"asdiv_a/{i}" for i in fold_ids]
    assert all(p.meta["fold"] for p in problems)


def test_asdiv_answers_drop_the_unit_and_non_numeric_answers_are_skipped(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = ET.parse(data_dir / "asdiv/ASDiv.xml").getroot()
    answers = {p.get("ID"): p.findtext("Answer") for p in root.iter("Problem")}
    single = re.compile(r"\s*(\d+(?:\.\d+)?(?:/\d+)?)\s*(?:\([^()]*\))?\s*")  # "9 (apples)", "3/4"
    numeric = {i: Fraction(m.group(1)) for i, a in answers.items() if (m := single.fullmatch(a))}

    with caplog.at_level(logging.WARNING):
        asdiv_a = load_problems("asdiv_a", "test", data_dir)
    assert "skipped" not in caplog.text  # every ASDiv-A answer is one number
    assert all(p.answer == numeric[p.id.removeprefix("asdiv_a/")] for p in asdiv_a)
    apples = next(p for p in asdiv_a if p.answer_text.endswith("(apples)"))
    assert apples.meta["unit"] == "apples"

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        full = load_problems("asdiv", "test", data_dir)
    skipped = len(answers) - len(numeric)
    assert skipped > 0
    assert len(full) == len(numeric)
    assert f"skipped {skipped} problems" in caplog.text
    assert all(p.answer == numeric[p.id.removeprefix("asdiv/")] for p in full)


def test_asdiv_missing_tag_names_the_problem(tmp_path: Path, data_dir: Path) -> None:
    text = (data_dir / "asdiv/ASDiv.xml").read_text(encoding="utf-8")
    broken = text.replace("<Formula>7+2=9</Formula>", "", 1)
    assert broken != text
    (tmp_path / "asdiv").mkdir()
    (tmp_path / "asdiv/ASDiv.xml").write_text(broken, encoding="utf-8")
    with pytest.raises(
        DataError, match=r"ASDiv\.xml \[row 0\] field 'Formula': Problem ID=nluds-0001 has no <Formula>"
    ):
        load_problems("asdiv", "test", tmp_path)


# ------------------------------------------------------------------------------------------ multiarith


def test_multiarith_uses_the_index_split(data_dir: Path) -> None:
    rows = json.loads((data_dir / "multiarith/MultiArith.json").read_text(encoding="utf-8"))
    split = json.loads((data_dir / "splits/multiarith__default.json").read_text(encoding="utf-8"))
    for name in ("train", "test"):
        problems = load_problems("multiarith", name, data_dir)
        assert [p.id for p in problems] == [f"multiarith/{rows[i]['iIndex']}" for i in split[name]]
        for problem, index in zip(problems, split[name], strict=True):
            assert problem.answer == Fraction(str(rows[index]["lSolutions"][0]))
            assert problem.equation == rows[index]["lEquations"][0]
            assert problem.question == rows[index]["sQuestion"].strip()
    assert not {p.id for p in load_problems("multiarith", "train", data_dir)} & {
        p.id for p in load_problems("multiarith", "test", data_dir)
    }


def test_multiarith_and_svamp_numbers_cover_their_equations(data_dir: Path) -> None:
    for name, split in (("multiarith", "train"), ("multiarith", "test"), ("svamp", "all")):
        missing = 0
        for problem in load_problems(name, split, data_dir):
            in_text = {parse_number(n) for n in problem.numbers}
            used = {Fraction(n) for n in re.findall(r"\d+(?:\.\d+)?", problem.equation.removeprefix("X="))}
            missing += not used <= in_text
        # SVAMP's chal-50 uses a number (149) its text never states; nothing else may miss.
        assert missing == (1 if name == "svamp" else 0), name


# ------------------------------------------------------------------------------------------ chinese


def test_math23k_answers_are_exact(data_dir: Path) -> None:
    rows = json.loads((data_dir / "math23k/math23k_train_21162.json").read_text(encoding="utf-8"))
    problems = load_problems("math23k", "train", data_dir)
    mixed = re.compile(r"(\d+)\(\((\d+)\)/\((\d+)\)\)")
    fraction = re.compile(r"\(\((\d+)\)/\((\d+)\)\)")
    kinds = set()
    for problem, row in zip(problems, rows, strict=True):
        ans = row["ans"]
        assert problem.answer_text == ans and problem.language == "zh"
        assert problem.equation == row["equation"]
        if m := mixed.fullmatch(ans):
            expected, kind = int(m[1]) + Fraction(int(m[2]), int(m[3])), "mixed"
        elif m := fraction.fullmatch(ans):
            expected, kind = Fraction(int(m[1]), int(m[2])), "fraction"
        elif ans.endswith("%"):
            expected, kind = Fraction(ans[:-1]) / 100, "percent"
        else:
            expected, kind = Fraction(ans), "decimal"
        assert problem.answer == expected, row["id"]
        kinds.add(kind)
    assert kinds == {"mixed", "fraction", "percent", "decimal"}


def test_math23k_numbers_keep_fractions_and_percents_as_written(data_dir: Path) -> None:
    problems = load_problems("math23k", "test", data_dir)
    assert problems[0].numbers == ("4", "44", "20")  # "在一正方形花池的4周栽了44棵柳树，...间隔是20米"
    for problem in problems:
        position = 0
        for number in problem.numbers:
            position = problem.question.index(number, position) + len(number)
    written = {n for p in problems for n in p.numbers}
    assert any(re.fullmatch(r"\(\d+/\d+\)", n) for n in written)
    assert any(n.endswith("%") for n in written)


def test_math23k_row_without_answer_names_index_and_field(tmp_path: Path, data_dir: Path) -> None:
    rows = json.loads((data_dir / "math23k/math23k_valid_1000.json").read_text(encoding="utf-8"))[:4]
    del rows[2]["ans"]
    (tmp_path / "math23k").mkdir()
    (tmp_path / "math23k/math23k_valid_1000.json").write_text(json.dumps(rows, ensure_ascii=False))
    with pytest.raises(DataError, match=r"math23k_valid_1000\.json \[row 2\] field 'ans': missing field"):
        load_problems("math23k", "valid", tmp_path)


def test_weak12k_has_answers_and_number_lists_but_no_equation(data_dir: Path) -> None:
    rows = json.loads((data_dir / "weak12k/weekly12k_test_clean.json").read_text(encoding="utf-8"))
    problems = load_problems("weak12k", "test", data_dir)
    for problem, row in zip(problems, rows, strict=True):
        assert problem.id == f"weak12k/{row['id']}"
        assert problem.equation is None and problem.language == "zh"
        assert problem.answer == Fraction(str(row["answer"]))
        assert [Fraction(n) for n in problem.numbers] == [Fraction(str(x)) for x in row["num_list"]]
        assert all(n in problem.question for n in problem.numbers)
        assert "\\u" not in problem.question
