"""Equations with an unknown: real Math23K / MultiArith / ASDiv equations, genuine algebra, N0..Nk templates."""

from __future__ import annotations

import itertools
import json
import re
import time
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.verify.equations import (
    EquationError,
    NumberMappingError,
    equation_to_template,
    solve_equation,
    template_to_equation,
)
from mwp.verify.numbers import find_numbers, parse_number
from mwp.verify.safe_eval import EvaluationError, UnsafeExpressionError, safe_eval


def _math23k(data_dir: Path, split: str) -> list[dict[str, str]]:
    name = {"train": "math23k_train_21162", "valid": "math23k_valid_1000", "test": "math23k_test_1000"}[split]
    return json.loads((data_dir / "math23k" / f"{name}.json").read_text())


def _math23k_failures(rows: list[dict[str, str]]) -> set[str]:
    failures = set()
    for row in rows:
        try:
            if solve_equation(row["equation"]) != parse_number(row["ans"]):
                failures.add(row["id"])
        except EvaluationError:
            failures.add(row["id"])
    return failures


def test_math23k_valid_and_test_equations_give_their_answers(data_dir: Path) -> None:
    rows = _math23k(data_dir, "valid") + _math23k(data_dir, "test")
    # Inspected: 9718 "x=(2*3*5*7*11*13*17*19)/(38*51*30*31)" is 1001/186, not the recorded 1;
    # 10431 "x=80千米/小时" has units inside the equation. Both are faults of the data.
    assert _math23k_failures(rows) == {"9718", "10431"}


@pytest.mark.slow
def test_math23k_train_equations_give_their_answers(data_dir: Path) -> None:
    rows = _math23k(data_dir, "train")
    assert len(rows) == 21162
    # Inspected, all faults of the data: 4303 and 12495 (differences of products near 1e17) were
    # answered in floating point (1010000 for the exact 1009899); 9761 answers 98 for 98.33...;
    # 22085 "(15+25+20+16+11)/10" is 8.7, not 21; 17520 is a garbled equation ("(1/6)0").
    assert _math23k_failures(rows) == {"4303", "12495", "9761", "22085", "17520"}


def test_multiarith_equations_solve_for_capital_x(data_dir: Path) -> None:
    rows = json.loads((data_dir / "multiarith" / "MultiArith.json").read_text())
    for row in rows:
        value = solve_equation(row["lEquations"][0], unknown="X")
        assert abs(value - Fraction(repr(row["lSolutions"][0]))) < Fraction(1, 10**9), row["iIndex"]


def test_asdiv_formulas_are_true_equalities(data_dir: Path) -> None:
    root = ET.parse(data_dir / "asdiv" / "ASDiv.xml").getroot()
    checked, wrong, not_numbers = 0, [], []
    for problem in root.iter("Problem"):
        formula = problem.findtext("Formula", "").strip()
        # Plain "7+2=9" formulas only: remainders ("17/5=3 r2"), ratios, GCD/LCM and
        # multi-step formulas with "; " are a different notation.
        if ";" in formula or formula.count("=") != 1 or re.search(r"[A-Za-z:,]", formula):
            continue
        left, right = formula.split("=")
        checked += 1
        value = safe_eval(left)
        # ASDiv rounds its right-hand sides ("(13+8+13+21+7+23)/6=14.2"): within 1%.
        if abs(value - safe_eval(right)) > abs(value) / 100:
            wrong.append(formula)
        answer = parse_number(problem.findtext("Answer", ""))  # "9 (apples)"
        if answer is None:
            not_numbers.append(problem.findtext("Answer"))
            continue
        assert abs(answer - safe_eval(right)) <= abs(answer) / 100, formula
    assert checked > 1500
    assert wrong == []
    assert not_numbers == ["February 3rd"]  # "(20+14)-31=3" counts days into February


@pytest.mark.parametrize(
    ("equation", "expected"),
    [
        ("x=(11-1)*2", 20),
        ("3*x+5=20", 5),
        ("x/4=2+1", 12),
        ("3x+5=20", 5),
        ("2(x+3)=10", 2),
        ("20=x*4", 5),
        ("0.5x=3", 6),
        ("x-20%*x=40", 50),
        ("x*(1-25%)=30", 40),
        ("1/x=4", Fraction(1, 4)),
        ("(x-1)^2=0", 1),
        ("x/(x+1)=2/3", 2),
        ("（x＋1）×3＝12", 3),
        ("(x) = 7", 7),
    ],
)
def test_genuine_equations(equation: str, expected: int | Fraction) -> None:
    assert solve_equation(equation) == expected


@pytest.mark.parametrize(
    ("equation", "message"),
    [
        ("x+1=x", "no value"),
        ("x=x", "every value"),
        ("(x-1)/(x-1)=1", "every value"),
        ("1/(x-1)=0", "no value"),
        ("x*x=16", "2 solutions"),
        ("x^2=2", "no rational"),
        ("(x-1)*(x-2)*(x-3)*(x-4)*(x-5)=0", "degree 5"),
        ("2^x=8", "exponent"),
        ("x^40=1", "power 40"),
        ("x//2=3", "FloorDiv"),
        ("3*x+5", "no '='"),
        ("x=3=4", "2 '=' signs"),
        ("=3", "empty side"),
        ("7+2=9", "no unknown"),
        ("x=1/0", "division by zero"),
        ("x/0=1", "division by zero"),
    ],
)
def test_equations_without_one_rational_solution_fail_clearly(equation: str, message: str) -> None:
    with pytest.raises(EquationError if message != "division by zero" else EvaluationError, match=message):
        solve_equation(equation)


@pytest.mark.parametrize(
    "equation",
    ["x=__import__('os').system('true')", "x+y=3", "x=().__class__", "x.real=1", "x=3; import os"],
)
def test_untrusted_equations_never_reach_sympy(equation: str) -> None:
    with pytest.raises(UnsafeExpressionError):
        solve_equation(equation)


def test_solving_is_bounded_in_time() -> None:
    started = time.perf_counter()
    with pytest.raises(EquationError):
        solve_equation("(x+1)*(x+2)*(x+3)*(x+4)=0")  # four rational roots
    assert solve_equation("(x+1)^4=(x+1)^4+4*x") == 0
    # Degree 40 with large coefficients takes sympy about 0.2 s; the limit cuts it off at 0.02 s.
    hard = "(12345*x+6789)^40=(54321*x-9876)^40+x^3"
    with pytest.raises(EquationError, match=r"longer than 0\.02 s"):
        solve_equation(hard, max_degree=40, timeout_s=0.02)
    with pytest.raises(EquationError, match="power 40"):
        solve_equation(hard)  # the default degree limit rejects it before any sympy work
    assert time.perf_counter() - started < 2


def test_template_of_a_math23k_equation() -> None:
    assert equation_to_template("x=(11-1)*2", ["2", "11"]) == "x=(N1-1)*N0"
    assert template_to_equation("x=(N1-1)*N0", ["2", "11"]) == "x=(11-1)*2"


@pytest.mark.parametrize(
    ("equation", "numbers", "template"),
    [
        ("x=100*(1+20%)", ["100", "20%"], "x=N0*(1+N1)"),  # a percent maps as one number
        ("x=500*(1-0.2)", ["500", "20%"], "x=N0*(1-N1)"),  # by value: 0.2 is 20%
        ("x=(1/2)*10", ["1/2", "10"], "x=N0*N1"),  # a fraction group maps to a fraction number
        ("x=10/(1/2)", ["10", "1/2"], "x=N0/N1"),
        ("X=((32.0+42.0)-35.0)", ["32", "42", "35"], "X=((N0+N1)-N2)"),
        ("x=-5+3", ["-5", "3"], "x=N0+N1"),
        ("x=8-(-5)", ["8", "-5"], "x=N0-(N1)"),
        ("x=10-0.56", ["10", "-0.56"], "x=N0+N1"),  # the problem's "-0.56": the sign moves into N1
        ("x=3*3", ["3"], "x=N0*N0"),
        ("x=4*3.14*2", ["4"], "x=N0*3.14*2"),  # constants stay literal
        ("x=1,200/2", ["1,200"], "x=N0/2"),
    ],
)
def test_templates_round_trip_to_the_same_value(equation: str, numbers: list[str], template: str) -> None:
    unknown = "X" if equation.startswith("X") else "x"
    assert equation_to_template(equation, numbers, unknown=unknown) == template
    assert solve_equation(template_to_equation(template, numbers), unknown) == solve_equation(
        equation, unknown
    )


def test_a_number_from_nowhere_is_named_in_the_error() -> None:
    with pytest.raises(NumberMappingError, match=r"8 in 'x=8\*3' is neither a number of the problem \(3\)"):
        equation_to_template("x=8*3", ["3"])
    with pytest.raises(NumberMappingError, match="1 in"):
        equation_to_template("x=(11-1)*2", ["2", "11"], constants=())
    assert equation_to_template("x=60*24", ["24"], constants=("60",)) == "x=60*N0"


def test_template_placeholders_must_exist() -> None:
    with pytest.raises(NumberMappingError, match=r"N2 .* refers to number 2, but the problem has 2"):
        template_to_equation("x=N0+N2", ["1", "2"])
    assert template_to_equation("number0 * number1", ["3", "1/2"]) == "3 * (1/2)"
    assert template_to_equation("x=N10+N1", [str(i) for i in range(11)]) == "x=10+1"


def test_math23k_templates_round_trip(data_dir: Path) -> None:
    rows = _math23k(data_dir, "valid") + _math23k(data_dir, "test")
    mapped, unmapped = 0, []
    for row in rows:
        numbers = find_numbers(row["original_text"], bare_fractions=False)
        try:
            template = equation_to_template(row["equation"], numbers)
        except NumberMappingError:
            unmapped.append(row["id"])
            continue
        except EvaluationError:
            continue  # 10431 "x=80千米/小时", see above
        assert not re.search(r"\d", re.sub(r"N\d+|3\.14|100|\b[12]\b", "", template)), template
        assert safe_eval(template_to_equation(template, numbers)[2:]) == safe_eval(row["equation"][2:])
        mapped += 1
    # Unmapped rows use numbers the text spells in Chinese or as a range ("0--3千米").
    assert mapped >= 1990, unmapped


def test_an_exponent_that_is_a_constant_stays_a_constant() -> None:
    # Numbers [3, 2]: the radius 3 and the width 2; the squares are constants, not "the 2 of the problem".
    template = equation_to_template("x=3.14*[(3+2)^2-3^2]", ["3", "2"])
    assert template == "x=3.14*((N0+N1)**2-N0**2)"
    assert safe_eval(template_to_equation(template, ["3", "2"])[2:]) == safe_eval("3.14*((3+2)^2-3^2)")
    # An exponent that is not an allowed constant is a problem number.
    assert equation_to_template("x=5^3", ["5", "3"], constants=("1",)) == "x=N0**N1"


def test_repeated_values_map_in_order() -> None:
    assert equation_to_template("X=((4.0+50.0)-4.0)", ["4", "50", "4"], unknown="X") == "X=((N0+N1)-N2)"
    assert equation_to_template("x=3*3", ["3"]) == "x=N0*N0"
    assert equation_to_template("x=3*3*3", ["3", "3"]) == "x=N0*N1*N0"  # beyond their count: the first


def _alternatives(template: str, numbers: list[str]) -> list[str]:
    """Every template that swaps placeholders among problem numbers of equal value."""
    values = [parse_number(n) for n in numbers]
    used = sorted({int(k) for k in re.findall(r"N(\d+)", template)})
    choices = [[j for j, v in enumerate(values) if v == values[k]] for k in used]
    out = []
    for picked in itertools.islice(itertools.product(*choices), 64):
        mapping = dict(zip(used, picked, strict=True))
        out.append(re.sub(r"N(\d+)", lambda m, mapping=mapping: f"N{mapping[int(m.group(1))]}", template))
    return out


def test_every_mapping_among_equal_values_verifies_alike(data_dir: Path) -> None:
    from mwp.data.loaders import load_problems
    from mwp.verify.templates import compile_template

    problems = (
        load_problems("math23k", "valid", data_dir)
        + load_problems("math23k", "test", data_dir)
        + load_problems("multiarith", "test", data_dir)
    )
    checked = 0
    for problem in problems:
        values = [parse_number(n) for n in problem.numbers]
        if len(set(values)) == len(values):
            continue
        unknown = "X" if problem.source == "multiarith" else "x"
        try:
            template = equation_to_template(problem.equation, problem.numbers, unknown=unknown)
            expected = compile_template(template).evaluate(values)
        except EvaluationError:
            continue
        alternatives = _alternatives(template, list(problem.numbers))
        assert len(alternatives) >= 1
        for alternative in alternatives:
            assert compile_template(alternative).evaluate(values) == expected, (problem.id, alternative)
        checked += len(alternatives) > 1
    assert checked >= 30  # 40 rows of these splits repeat a value that their equation uses
