"""Number masking on real rows of every dataset: what one number is, in order, each occurrence its own N<k>."""

from __future__ import annotations

import re
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest

from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.verify.masking import mask_question, number_spans
from mwp.verify.numbers import parse_number

F = Fraction


@cache
def _problems(data_dir: Path, name: str, split: str) -> dict[str, Problem]:
    return {p.id: p for p in load_problems(name, split, data_dir)}


@pytest.mark.parametrize(
    ("name", "split", "problem_id", "numbers", "values"),
    [
        # grouped thousands and percents
        (
            "gsm8k",
            "train",
            "gsm8k/train/177",
            ("20,000", "80%", "30,000", "90%"),
            (20000, F(4, 5), 30000, F(9, 10)),
        ),
        # a prose mixed number "1 1/2" and a bare fraction "1/2"
        ("gsm8k", "train", "gsm8k/train/197", ("16", "40", "1 1/2", "1/2"), (16, 40, F(3, 2), F(1, 2))),
        ("gsm8k", "train", "gsm8k/train/256", ("1/4", "8", "3 3/8"), (F(1, 4), 8, F(27, 8))),
        # decimal percents; "$18.00" keeps its decimals
        ("gsm8k", "train", "gsm8k/train/1706", ("400", "52%", "12.5%"), (400, F(13, 25), F(1, 8))),
        ("gsm8k", "train", "gsm8k/train/9", ("18.00", "8", "1/2", "10", "5"), (18, 8, F(1, 2), 10, 5)),
        ("asdiv_a", "test", "asdiv_a/nluds-0168", ("0.25", "2.25"), (F(1, 4), F(9, 4))),
        ("svamp", "train", "svamp/chal-994", ("84", "2"), (84, 2)),
        # repeated numbers: each occurrence is its own placeholder
        ("multiarith", "test", "multiarith/79", ("4", "50", "4"), (4, 50, 4)),
        # Math23K: a mixed number "1(5/6)" and fractions "(1/3)" are one number each
        ("math23k", "train", "math23k/7653", ("1(5/6)", "(1/3)", "(2/5)"), (F(11, 6), F(1, 3), F(2, 5))),
        ("math23k", "train", "math23k/23100", ("3", "(3/7)", "30", "5(1/4)"), (3, F(3, 7), 30, F(21, 4))),
        ("math23k", "train", "math23k/210", ("480", "60%", "(1/8)"), (480, F(3, 5), F(1, 8))),
        ("math23k", "train", "math23k/29", ("1800", "3", "3.33%"), (1800, 3, F(333, 10000))),
        # repeated "3" around fractions; "第3天" is a number in Math23K's convention
        (
            "math23k",
            "train",
            "math23k/2227",
            ("3", "(1/3)", "(2/5)", "3", "160"),
            (3, F(1, 3), F(2, 5), 3, 160),
        ),
        # "1个数": digits count even as an article; Weak12K's own num_list agrees
        ("weak12k", "valid", "weak12k/44186", ("1", "4", "0.125"), (1, 4, F(1, 8))),
        # a scale written in scientific notation by the dataset ("4e-07") is one number
        ("weak12k", "valid", "weak12k/34014", ("4e-07", "8", "1.25e-07"), (F(4, 10**7), 8, F(125, 10**9))),
    ],
)
def test_real_rows_mask_their_numbers(
    data_dir: Path,
    name: str,
    split: str,
    problem_id: str,
    numbers: tuple[str, ...],
    values: tuple[Fraction | int, ...],
) -> None:
    problem = _problems(data_dir, name, split)[problem_id]
    assert problem.numbers == numbers  # the loader's numbers are masking's
    masked = mask_question(problem.question, problem.language)
    assert masked.numbers == numbers
    assert masked.values == tuple(F(v) for v in values)
    assert [masked.text.count(f"N{k}") for k in range(len(numbers))] == [1] * len(numbers)
    for (start, end), number in zip(masked.spans, numbers, strict=True):
        assert problem.question[start:end] == number


def test_masked_text_keeps_everything_but_the_numbers(data_dir: Path) -> None:
    problem = _problems(data_dir, "math23k", "train")["math23k/7653"]
    masked = mask_question(problem.question, "zh")
    assert masked.text == "振兴粮店运来N0吨面粉，第一天卖了总数的N1，第二天卖了总数的N2，还剩总数的几分之几？"
    svamp = _problems(data_dir, "svamp", "train")["svamp/chal-994"]
    assert mask_question(svamp.question).text.startswith("Luke scored N0 points after playing N1 rounds")


def test_chinese_numerals_are_words_not_numbers(data_dir: Path) -> None:
    # math23k/2: "一个工程队", "第二天", "一周" are no numbers; 316, 230 and 6 are.
    problem = _problems(data_dir, "math23k", "train")["math23k/2"]
    assert "一个工程队" in problem.question
    assert problem.numbers == ("316", "230", "6")
    assert number_spans("小明有一些苹果，和小红的一样多，吃了一半") == []


def test_full_width_digits_are_read_as_ascii(data_dir: Path) -> None:
    # No dataset row has full-width digits; teacher text and user data do. A real row, rewritten.
    problem = _problems(data_dir, "math23k", "train")["math23k/210"]
    wide = problem.question.translate({ord(str(d)): chr(0xFF10 + d) for d in range(10)}).replace("%", "％")
    assert wide != problem.question
    masked = mask_question(wide, "zh")
    assert masked.numbers == ("480", "60%", "(1/8)")
    assert [wide[start:end] for start, end in masked.spans] == ["４８０", "６０％", "(１/８)"]
    assert mask_question("共１２．５千克，用去３．", "zh").numbers == ("12.5", "3")  # "．" ends the sentence


def test_weak12k_numbers_agree_with_its_num_list(data_dir: Path) -> None:
    problems = list(_problems(data_dir, "weak12k", "valid").values())
    disagree = [
        p.id
        for p in problems
        if [parse_number(n) for n in p.numbers] != [parse_number(n) for n in p.meta["num_list"]]
    ]
    assert disagree == []


def test_every_dataset_masks_every_number_once(data_dir: Path) -> None:
    for name, split in (
        ("svamp", "train"),
        ("multiarith", "test"),
        ("asdiv_a", "test"),
        ("math23k", "valid"),
    ):
        for problem in _problems(data_dir, name, split).values():
            masked = mask_question(problem.question, problem.language)
            assert masked.numbers == problem.numbers, problem.id
            assert None not in masked.values, problem.id
            # digits left are parts of names ("mp3"), never numbers
            assert not re.search(r"(?<![A-Za-z])\d", re.sub(r"N\d+", "", masked.text)), problem.id
