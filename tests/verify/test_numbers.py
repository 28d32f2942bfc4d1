"""numbers: parse_number / find_numbers / format_number on dataset spellings."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.verify.numbers import find_numbers, format_number, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9 (apples)", 9),
        ("3.5 (pieces of candy)", Fraction(7, 2)),
        ("7(2/3)", Fraction(23, 3)),  # Math23K mixed number
        ("7((2)/(3))", Fraction(23, 3)),
        ("((4)/(7))", Fraction(4, 7)),
        ("1,234", 1234),
        ("$1,234.50", Fraction(2469, 2)),
        ("50%", Fraction(1, 2)),
        ("-3", -3),
        ("3:4", None),  # a ratio is not one number
        ("17 (years old); 12 (years old)", None),
        ("February 3rd", None),
    ],
)
def test_parse_number(text: str, expected: Fraction | int | None) -> None:
    assert parse_number(text) == expected


def test_every_numeric_asdiv_answer_parses(data_dir: Path) -> None:
    root = ET.parse(data_dir / "asdiv" / "ASDiv.xml").getroot()
    answers = [p.findtext("Answer", "") for p in root.iter("Problem")]
    # "9 (apples)": a number, then its unit in parentheses.
    with_unit = [
        a
        for a in answers
        if a.endswith(")") and a.split(" (")[0].replace(".", "", 1).isdigit() and ";" not in a
    ]
    assert len(with_unit) > 1500
    for answer in with_unit:
        assert parse_number(answer) == Fraction(answer.split(" (")[0]), answer


def test_math23k_answers_parse(data_dir: Path) -> None:
    rows = json.loads((data_dir / "math23k" / "math23k_test_1000.json").read_text())
    assert all(parse_number(row["ans"]) is not None for row in rows)


def test_find_numbers_in_chinese_text() -> None:
    text = "小朋友们每隔2米种一棵树，最后发现一共种了11棵，占全部的(1/4)，即25%"
    assert find_numbers(text) == ["2", "11", "1/4", "25%"]


def test_find_numbers_signs_and_boundaries() -> None:
    assert find_numbers("10-5 and 10 - 5, x2, It is -5 degrees") == ["10", "5", "10", "5", "-5"]
    assert find_numbers("(3/4)-3.5 and 24%-32%") == ["3/4", "3.5", "24%", "32%"]
    assert find_numbers("1,234 apples, 1,2345 pears, .5 kg") == ["1,234", "1", "2345", ".5"]


def test_bare_fractions_are_divisions_in_math23k_text() -> None:
    text = "1300/600的商是2时，占(2/5)"
    assert find_numbers(text) == ["1300/600", "2", "2/5"]
    assert find_numbers(text, bare_fractions=False) == ["1300", "600", "2", "2/5"]


def test_format_number() -> None:
    assert format_number(Fraction(42)) == "42"
    assert format_number(Fraction(3, 8)) == "0.375"
    assert format_number(Fraction(2, 3)) == "2/3"
    assert format_number(None) is None
