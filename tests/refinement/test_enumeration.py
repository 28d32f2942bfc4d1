"""Enumeration search on real SVAMP and Math23K rows, checked against exact evaluation and a brute force."""

from __future__ import annotations

import random
import re
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest

from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.refinement.template_search import EnumerationSearch, enumerate_equations, search_problem
from mwp.verify.compare import answers_match
from mwp.verify.equations import template_to_equation
from mwp.verify.masking import mask_question
from mwp.verify.safe_eval import EvaluationError, safe_eval

_PLACEHOLDER = re.compile(r"N(\d+)")


@pytest.fixture(scope="module")
def math23k(data_dir: Path) -> list[Problem]:
    return load_problems("math23k", "train", data_dir)


@pytest.fixture(scope="module")
def svamp(data_dir: Path) -> list[Problem]:
    return load_problems("svamp", "test", data_dir)


def _numbers(problem: Problem) -> tuple[str, ...]:
    return mask_question(problem.question, problem.language).numbers


def _values(problem: Problem) -> tuple[Fraction | None, ...]:
    return mask_question(problem.question, problem.language).values


def _operators(template: str) -> int:
    return sum(template.count(op) for op in "+-*/")


def _literals(template: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", _PLACEHOLDER.sub("", template))


def _used(template: str) -> frozenset[int]:
    return frozenset(int(k) for k in _PLACEHOLDER.findall(template))


def test_every_template_substituted_back_evaluates_to_the_answer(math23k, svamp):
    problems = math23k[:120] + svamp[:80]
    solved = 0
    for problem in problems:
        templates, _stats = search_problem(problem)
        solved += bool(templates)
        for template in templates:
            assert " " not in template
            value = safe_eval(template_to_equation(template, _numbers(problem)))
            assert answers_match(value, problem.answer), (problem.id, template, value, problem.answer)
    # Most of these rows have a gold equation of at most three operators and one constant.
    assert solved >= 0.85 * len(problems)


def test_no_template_exceeds_max_ops(math23k):
    for problem in math23k[:80]:
        for max_ops in (1, 2):
            templates, _ = search_problem(problem, max_ops=max_ops, max_results=50)
            assert all(_operators(t) <= max_ops for t in templates), (problem.id, max_ops, templates)


def test_a_problem_needing_three_operators_is_not_solved_with_two(math23k):
    problem = next(p for p in math23k if p.id == "math23k/2")  # x=316+230*(6-1)
    assert problem.answer == 1466
    assert search_problem(problem, max_ops=2)[0] == []
    assert search_problem(problem, max_ops=3)[0][0] == "N0+N1*(N2-1)"


@cache
def _brute_values(values: tuple[Fraction, ...], indices: frozenset[int]) -> frozenset[Fraction]:
    """Every value of every expression using each number of `indices` exactly once (no dedup)."""
    if len(indices) == 1:
        return frozenset({values[next(iter(indices))]})
    out = set()
    members = sorted(indices)
    for bits in range(1, 2 ** len(members) - 1):
        left = frozenset(m for i, m in enumerate(members) if bits >> i & 1)
        for a in _brute_values(values, left):
            for b in _brute_values(values, indices - left):
                out.update((a + b, a - b, a * b))
                if b:
                    out.add(a / b)
    return frozenset(out)


def _brute_solving_subsets(
    values: tuple[Fraction, ...], target: Fraction, max_ops: int
) -> set[frozenset[int]]:
    subsets = set()
    for bits in range(1, 2 ** len(values)):
        indices = frozenset(k for k in range(len(values)) if bits >> k & 1)
        if len(indices) - 1 <= max_ops and any(
            answers_match(v, target) for v in _brute_values(values, indices)
        ):
            subsets.add(indices)
    return subsets


def test_dedup_by_value_finds_every_number_subset_a_brute_force_finds(math23k, svamp):
    """Keeping one expression per value per subset loses no subset that can reach the answer."""
    rows = [p for p in math23k[:200] + svamp[:100] if 2 <= len(_values(p)) <= 4 and None not in _values(p)]
    checked = solvable = 0
    for problem in rows[:60]:
        values = tuple(_values(problem))
        expected = _brute_solving_subsets(values, problem.answer, max_ops=3)
        templates = enumerate_equations(
            values, problem.answer, allow_constants=False, max_results=10**6, time_limit_s=None
        )
        found = {_used(t) for t in templates}
        assert found == expected, (problem.id, templates, expected)
        assert len(found) == len(templates)  # one template per subset reaching an integer answer
        checked += 1
        solvable += bool(expected)
    assert checked == 60 and solvable >= 30


def test_order_is_deterministic_and_simplest_first(math23k):
    for problem in math23k[:60]:
        first, _ = search_problem(problem, max_results=20)
        again, _ = search_problem(problem, max_results=20)
        assert first == again
        keys = [(_operators(t), len(_literals(t))) for t in first]
        assert keys == sorted(keys), (problem.id, first)


def test_parentheses_are_minimal_and_needed(math23k):
    rng = random.Random(1)
    seen = 0
    for problem in math23k[:60]:
        count = len(_numbers(problem))
        for template in search_problem(problem, max_results=20)[0]:
            for start in (i for i, c in enumerate(template) if c == "("):
                depth = 0
                for end in range(start, len(template)):
                    depth += {"(": 1, ")": -1}.get(template[end], 0)
                    if depth == 0:
                        break
                stripped = template[:start] + template[start + 1 : end] + template[end + 1 :]
                assert _differs(template, stripped, count, rng), (template, stripped)
                seen += 1
    assert seen >= 20


def _differs(first: str, second: str, count: int, rng: random.Random) -> bool:
    for _ in range(10):
        numbers = [str(rng.randint(2, 500)) for _ in range(count)]
        try:
            if safe_eval(template_to_equation(first, numbers)) != safe_eval(
                template_to_equation(second, numbers)
            ):
                return True
        except EvaluationError:
            continue
    return False


def test_constants_only_when_allowed(math23k, svamp):
    problems = math23k[:60] + svamp[:40]
    used_constants = 0
    for problem in problems:
        assert all(
            not _literals(t) for t in search_problem(problem, allow_constants=False, max_results=20)[0]
        )
        for template in search_problem(problem, constants=("7",), max_constants=2, max_results=20)[0]:
            assert set(_literals(template)) <= {"7"} and len(_literals(template)) <= 2
        with_default = search_problem(problem, max_results=20)[0]
        assert all(len(_literals(t)) <= 1 for t in with_default)
        used_constants += any(_literals(t) for t in with_default)
    assert used_constants >= 10  # Math23K's "(6-1)", "/100" and the like do need them


def test_reuse_of_a_number_only_when_asked(math23k):
    problem = next(p for p in math23k if p.equation == "x=40*40")
    assert search_problem(problem, allow_constants=False)[0] == []
    assert search_problem(problem, allow_constants=False, use_each_number_once=False)[0] == ["N0*N0"]


def test_nothing_to_search_returns_nothing_without_work():
    no_numbers = Problem("none", "How many apples does Tom have now?", Fraction(5), "5")
    templates, stats = search_problem(no_numbers)
    assert templates == [] and stats.candidates == 0
    no_answer = Problem("none", "Tom has 3 apples and 4 pears.", None, "")
    templates, stats = search_problem(no_answer)
    assert templates == [] and stats.candidates == 0


def test_time_limit_stops_a_large_search():
    values = [Fraction(n) for n in (3, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43)]
    templates, stats = search_problem(
        Problem("big", " ".join(str(v) for v in values), Fraction(999983), "999983"),
        max_ops=4,
        time_limit_s=0.2,
    )
    assert stats.timed_out and stats.seconds < 5
    assert all(_operators(t) <= 4 for t in templates)


def test_invalid_settings_name_the_setting():
    with pytest.raises(ValueError, match="max_ops"):
        EnumerationSearch(max_ops=9)
    with pytest.raises(ValueError, match="processes"):
        EnumerationSearch(processes=0)
    with pytest.raises(ValueError, match="constant 'pi'"):
        EnumerationSearch(constants=("pi",))


def test_process_pool_gives_the_same_results_in_order(svamp):
    problems = svamp[:40]
    single = list(EnumerationSearch(processes=1).search(problems))
    pooled = list(EnumerationSearch(processes=2).search(problems))
    assert [p.id for p, _, _ in pooled] == [p.id for p in problems]
    assert [t for _, t, _ in pooled] == [t for _, t, _ in single]
    assert sum(bool(t) for _, t, _ in single) >= 30
    assert all(s.candidates > 0 and s.distinct_values > 0 for _, _, s in single)
