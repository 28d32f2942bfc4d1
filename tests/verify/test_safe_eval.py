"""safe_eval: exact arithmetic on the real equation labels, teacher spellings, and clean rejection of anything else."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.verify.safe_eval import (
    EvaluationError,
    UnsafeExpressionError,
    normalize_expression,
    safe_eval,
    tokenize,
)


def _float_answer(value: float) -> Fraction:
    return Fraction(repr(value))


def test_every_svamp_equation_evaluates_to_its_answer(data_dir: Path) -> None:
    rows = json.loads((data_dir / "svamp" / "SVAMP.json").read_text())
    assert len(rows) == 1000
    mismatches = [row["ID"] for row in rows if safe_eval(row["Equation"]) != _float_answer(row["Answer"])]
    # chal-680 is a labelling error in SVAMP itself: "4 apples, picked 2, 3 grew" has the equation
    # ((4 - 2) + 3) = 5 but the answer 1.0. Every other equation must evaluate exactly to its answer.
    assert mismatches == ["chal-680"]


def test_recorded_teacher_labels_evaluate(data_dir: Path) -> None:
    folder = data_dir / "teacher" / "svamp_palm"
    labels = [
        json.loads(line)["label"]
        for name in ("svamp_train.json", "svamp_test.json")
        for line in (folder / name).open()
    ]
    assert len(labels) == 1000
    values = [safe_eval(label) for label in labels]
    assert values[0] == 42  # "( 84.0 / 2.0 )", the example in the data README
    assert all(isinstance(v, Fraction) for v in values)


def test_multiarith_right_hand_sides_evaluate_to_the_solutions(data_dir: Path) -> None:
    rows = json.loads((data_dir / "multiarith" / "MultiArith.json").read_text())
    for row in rows:
        (equation,) = row["lEquations"]
        unknown, expression = equation.split("=")
        assert unknown == "X"
        value = safe_eval(expression)
        # lSolutions are floats; repeating decimals such as 5.333333333333333 are rounded.
        assert abs(value - _float_answer(row["lSolutions"][0])) < Fraction(1, 10**9), row["iIndex"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("(84 / 2)", 42),
        ("( ( 17.0 + 15.0 ) + 2.0 )", 34),
        ("0.1 + 0.2", Fraction(3, 10)),  # exact, where floats give 0.30000000000000004
        ("1/3*3", 1),
        ("3×4÷2", 6),
        ("3 x 4", 12),
        ("3X4", 12),
        ("2^3", 8),
        ("2**3**2", 512),  # right-associative, as in Python
        ("100*(1+20%)", 120),
        ("12/25%", 48),  # a percent binds to its number: 12 / 0.25
        ("(1+20)%*3", Fraction(63, 100)),
        ("30/[1-37.5%-(1-37.5%)*40%]", 80),  # Math23K, square brackets
        ("{2+3}*2", 10),
        ("（1＋2）×３", 9),  # full-width
        ("1−2", -1),  # U+2212 minus
        ("1,234 + 1", 1235),
        ("$ 1,234.50 * 2", 2469),
        ("(1/2)*10", 5),
        ("7 % 3", 1),  # a number after % makes it modulo
        ("7 // 2", 3),
        ("-(-3)", 3),
        ("2(3+4)", 14),
        ("(2+3)(4)", 20),
        (".375", Fraction(3, 8)),
        ("8^(2/3)", 4),
        ("1.05^2", Fraction(441, 400)),
        ("2.", 2),
        ("-" * 300 + "1", 1),  # a long unary chain evaluates without recursion trouble
    ],
)
def test_teacher_spellings(expression: str, expected: int | Fraction) -> None:
    assert safe_eval(expression) == expected


def test_normalized_spelling_is_plain_ascii() -> None:
    assert normalize_expression("3×4÷2") == "3*4/2"
    assert normalize_expression("x=[3+2]^2", unknowns=("x",)) == "x=(3+2)**2"
    assert normalize_expression("（１＋２）×3") == "(1+2)*3"


UNSAFE = [
    "__import__('os')",
    "__import__('os').system('true')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd')",
    "lambda: 1",
    "[x for x in (1, 2)]",
    "(1, 2)[0]",
    "'a' * 3",
    "1 if 1 else 0",
    "x + 1",
    "1; 2",
    "a := 3",
    "1 < 2",
    "True",
]


@pytest.mark.parametrize("expression", UNSAFE)
def test_anything_beyond_arithmetic_is_rejected(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(UnsafeExpressionError):
        safe_eval(expression)
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "exponent"),
        ("2**100000", "exponent"),
        ("10**999 * 10**999", "digits"),
        ("1" * 1001, "digits"),
        ("1/0", "division by zero"),
        ("5 // (2 - 2)", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ** 0.5", "not rational"),
        ("(-4) ** (1/2)", "negative"),
        ("(" * 100 + "1" + ")" * 100, "nested"),
        ("1 +", "malformed"),
        ("(1 + 2", "unbalanced"),
        ("1 + 2)", "unbalanced"),
        ("2 3", "two numbers"),
        ("7(2/3)", "ambiguous"),  # Math23K's mixed number or a product: refuse to guess
        ("x=3", "not allowed"),
        ("", "empty"),
    ],
)
def test_malformed_or_oversized_input_fails_cleanly(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(EvaluationError, match=message):
        safe_eval(expression, max_len=2000)
    assert time.perf_counter() - started < 0.1


def test_huge_input_is_rejected_before_any_work() -> None:
    huge = "1+" * 5_000_000 + "1"  # 10 MB
    started = time.perf_counter()
    with pytest.raises(EvaluationError, match="characters long"):
        safe_eval(huge)
    assert time.perf_counter() - started < 0.05


def test_deep_nesting_is_rejected_even_with_a_generous_length_limit() -> None:
    nested = "(" * 100_000 + "1" + ")" * 100_000
    started = time.perf_counter()
    with pytest.raises(EvaluationError, match="nested deeper than 64"):
        safe_eval(nested, max_len=10**6)
    assert time.perf_counter() - started < 0.1


def test_limits_are_configurable() -> None:
    assert safe_eval("2**2000", max_exponent=5000, max_digits=1000) == 2**2000
    with pytest.raises(EvaluationError, match="exponent"):
        safe_eval("2**20", max_exponent=10)
    with pytest.raises(EvaluationError, match="characters long"):
        safe_eval("1+1", max_len=2)


def test_wall_time_limit_applies() -> None:
    with pytest.raises(EvaluationError, match="longer than"):
        safe_eval("1+1", timeout_s=0.0)


def test_errors_are_value_errors_with_the_offending_name() -> None:
    assert issubclass(UnsafeExpressionError, EvaluationError)
    assert issubclass(EvaluationError, ValueError)
    with pytest.raises(UnsafeExpressionError, match="'os'"):
        safe_eval("2 * os")


def test_unknowns_stay_names_and_x_between_numbers_is_a_product() -> None:
    kinds = [t.kind for t in tokenize("3x+5=20", unknowns=("x",))]
    assert kinds == ["num", "op", "name", "op", "num", "=", "num"]  # "3x" gets an explicit "*"
    assert [t.text for t in tokenize("3 x 5")] == ["3", "*", "5"]
