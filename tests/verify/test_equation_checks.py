"""From-Large-to-Tiny equation checks on real Math23K / Weak12K problems with teacher-like outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mwp.data import Problem, load_problems
from mwp.verify.equation_checks import (
    CHECKS,
    EquationFormatError,
    check_teacher_equation,
    correct_equation_format,
    extract_equation,
)
from mwp.verify.numbers import format_number

_FULL_WIDTH = str.maketrans({"*": "×", "/": "÷", "(": "（", ")": "）", "+": "＋", "-": "－", "=": "＝"})


def test_math23k_equations_written_as_a_chinese_teacher_would_pass(data_dir: Path) -> None:
    problems = load_problems("math23k", "valid", data_dir) + load_problems("math23k", "test", data_dir)
    failures = {}
    for problem in problems:
        assert problem.equation is not None
        text = (
            f"解：设所求的数为x，根据题意列式：{problem.equation.translate(_FULL_WIDTH)}，"
            f"解得x＝{format_number(problem.answer)}。答：所求的数是{format_number(problem.answer)}。"
        )
        result = check_teacher_equation(text, problem)
        if not result.passed:
            failures[problem.id] = result.failed
        else:
            spelled = problem.equation.replace("[", "(").replace("]", ")").replace("^", "**")
            # 10431's "x=80千米/小时" carries its units; extraction stops at them and keeps "x=80".
            assert result.corrected == (spelled if problem.id != "math23k/10431" else "x=80")
            assert result.value == problem.answer
    # 9718's recorded answer (1) is not what its equation gives (1001/186): a fault of the data.
    assert failures == {"math23k/9718": "answer"}


def _weak12k(data_dir: Path, problem_id: str) -> Problem:
    problems = {p.id: p for p in load_problems("weak12k", "valid", data_dir)}
    return problems[problem_id]


@pytest.mark.parametrize(
    ("problem_id", "teacher", "corrected", "template"),
    [
        # "1个数的倒数是4个0.125，这个数是多少" (answer 2): a genuine equation in x.
        (
            "weak12k/44186",
            "设这个数为x。它的倒数是4个0.125，即1÷x＝4×0.125，所以x＝2。",
            "1/x=4*0.125",
            "N0/x=N1*N2",
        ),
        # "原价280元，售价252元，打几折" (0.9): no "x=", the result after "=" is dropped.
        ("weak12k/46774", "售价除以原价：252÷280＝0.9，所以打九折。", "x=252/280", "x=N2/N1"),
        # "共打20发，每中一发记10分，脱靶倒扣6分，得了168分" (18).
        (
            "weak12k/49154",
            "设打中x发，则10x－6(20－x)＝168，解得x＝18。",
            "10*x-6*(20-x)=168",
            "N1*x-N2*(N0-x)=N3",
        ),
        # "A、B两种电视机共280台，A占0.2，运进A后占0.3" (40).
        (
            "weak12k/9836",
            "设又运进x台：(280×0.2＋x)＝0.3×(280＋x)，x＝40",
            "(280*0.2+x)=0.3*(280+x)",
            "(N0*N1+x)=N2*(N0+x)",
        ),
        # "平均分成4组，每组20人，植树320棵，平均每人植树多少棵" (4), in English prose.
        ("weak12k/14394", "So x = 320 / (4 x 20) = 4 trees per student.", "x=320/(4*20)", "x=N2/(N0*N1)"),
    ],
)
def test_weak12k_teacher_outputs_that_pass(
    data_dir: Path, problem_id: str, teacher: str, corrected: str, template: str
) -> None:
    problem = _weak12k(data_dir, problem_id)
    result = check_teacher_equation(teacher, problem)
    assert result.passed, result
    assert (result.corrected, result.template) == (corrected, template)
    assert result.value == problem.answer


@pytest.mark.parametrize(
    ("problem_id", "teacher", "failed", "message"),
    [
        ("weak12k/14394", "平均每人植树4棵。", "extract", "no equation"),
        ("weak12k/14394", "x = __import__('os').system('true')", "extract", "no equation"),
        ("weak12k/14394", "列式：x＝320÷（4×20", "format", "unbalanced"),
        ("weak12k/14394", "x + 1 = 320 ÷ 4 = 2x", "format", "chains"),
        ("weak12k/14394", "x = 320 ÷ (4 × 25)", "numbers", "25 in"),  # 25 is not in the problem
        ("weak12k/44186", "x×x＝4×1", "evaluate", "2 solutions"),
        ("weak12k/44186", "1÷x＝4×0.125－0.3", "numbers", "0.3 in"),
        ("weak12k/44186", "4×0.125÷(1－1)", "evaluate", "division by zero"),
        ("weak12k/14394", "x = 320 ÷ 4", "answer", "gives 80, the gold answer is 4"),
    ],
)
def test_weak12k_teacher_outputs_that_fail_name_the_check(
    data_dir: Path, problem_id: str, teacher: str, failed: str, message: str
) -> None:
    result = check_teacher_equation(teacher, _weak12k(data_dir, problem_id))
    assert result.failed == failed
    assert message in result.message
    assert failed in CHECKS


def test_extraction_prefers_the_derivation() -> None:
    assert extract_equation("So x = 5 * (3 + 2) = 25 apples.") == "x = 5 * (3 + 2) = 25"
    assert extract_equation("x = 20. Because x = (11 - 1) * 2.") == "x = (11 - 1) * 2"
    assert extract_equation("列式：36÷6+3=9（元）") == "36÷6+3=9"
    assert extract_equation("Let x be the number. 3x + 5 = 20, so x = 5.") == "3x + 5 = 20"
    assert extract_equation("It costs 2.5 * 4 = 10. Then 7 more.") == "2.5 * 4 = 10"
    assert extract_equation("The box holds 5 toys.") is None


@pytest.mark.parametrize(
    ("equation", "corrected"),
    [
        ("x＝（11－1）×2", "x=(11-1)*2"),
        ("x = 5 * (3 + 2) = 25", "x=5*(3+2)"),
        ("5*(3+2)=x", "x=5*(3+2)"),
        ("36÷6+3=9", "x=36/6+3"),
        ("36÷6+3=？", "x=36/6+3"),
        ("36÷6+3", "x=36/6+3"),
        ("5 x 3 = 15", "x=5*3"),  # "x" between numbers is a product
        ("3x+5=20", "3*x+5=20"),
        ("x=1,200×2", "x=1200*2"),
    ],
)
def test_format_correction(equation: str, corrected: str) -> None:
    assert correct_equation_format(equation) == corrected


def test_format_correction_refuses_what_it_cannot_fix() -> None:
    with pytest.raises(EquationFormatError, match="no '='"):
        correct_equation_format("3*x+5")
    with pytest.raises(EquationFormatError, match="no '='"):
        correct_equation_format("x=")  # "x = ?" with the question mark gone
    with pytest.raises(EquationFormatError, match="empty side"):
        correct_equation_format("=5=x")


def test_extract_equation_is_bounded_on_hostile_text() -> None:
    started = time.perf_counter()
    assert extract_equation("(" * 100_000) is None
    assert extract_equation("x = 3 + 4. " + "(" * 100_000) == "x = 3 + 4"
    assert time.perf_counter() - started < 2
