"""The simulated teacher: named as a simulation, seeded, per-step error kinds, task-aware answers."""

from __future__ import annotations

import pytest

from mwp.config.schema import SimulatedTeacherConfig
from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.distill.equation_chain import check_step_equation, verify_masked
from mwp.teachers.base import SamplingParams, TeacherRequest
from mwp.teachers.completion_cache import request_key
from mwp.teachers.factory import build_teacher
from mwp.teachers.simulated import REFUSALS, SimulatedTeacher, error_profile, repair_equation
from tests.helpers import compose_config

PROBLEMS = load_problems("math23k", "train", limit=120)


def _answers(teacher: SimulatedTeacher, task: str, n: int = 1, problems=PROBLEMS) -> dict[str, list[str]]:
    requests = [TeacherRequest(p.id, f"prompt for {p.id}", task=task) for p in problems]
    return {
        r.request.problem_id: [c.text for c in r.completions]
        for r in teacher.generate(requests, SamplingParams(n=n))
    }


def test_the_configured_teacher_is_named_as_a_simulation_everywhere() -> None:
    teacher = build_teacher(compose_config(["teacher=simulated", "dataset=math23k"]).teacher)
    assert teacher.name == "simulated(math23k-gold, p_err=0.30)"
    assert teacher.covers(PROBLEMS[0].id) and not teacher.covers("svamp/chal-994")
    with pytest.raises(ValueError, match=r"teacher\.name"):
        SimulatedTeacherConfig.model_validate(
            {"_target_": "mwp.teachers.simulated.SimulatedTeacher", "name": "gpt-4", "dataset": "math23k"}
        )


def test_answers_are_deterministic_and_independent_of_request_order() -> None:
    teacher = SimulatedTeacher(
        "math23k", errors={"equation": {"wrong_operator": 0.3, "malformed": 0.2}}, seed=3
    )
    forward = _answers(teacher, "equation", n=3)
    backward = _answers(teacher, "equation", n=3, problems=PROBLEMS[::-1])
    assert forward == backward
    other_seed = SimulatedTeacher(
        "math23k", errors={"equation": {"wrong_operator": 0.3, "malformed": 0.2}}, seed=4
    )
    assert _answers(other_seed, "equation", n=3) != forward


def test_error_free_answers_are_the_gold_equation_in_each_steps_format() -> None:
    teacher = SimulatedTeacher("math23k", errors={})
    equations, masked, solved = (_answers(teacher, task) for task in ("equation", "masked_equation", "solve"))
    for problem in PROBLEMS:
        (equation,), (template,), (solution,) = equations[problem.id], masked[problem.id], solved[problem.id]
        assert equation.startswith("x=") and "N0" not in equation
        if gold_template(problem) is not None:
            assert verify_masked(template, problem).passed
            assert check_step_equation(equation, problem).value == problem.answer
        assert "答案是" in solution


@pytest.mark.parametrize(
    ("kind", "failed"),
    [
        ("refusal", {"extract"}),
        ("malformed", {"format"}),
        # a fraction "(1/2)" is one problem number: spoiling inside it leaves numbers the problem lacks
        ("wrong_operator", {"answer", "evaluate", "numbers", None}),
        ("swapped_numbers", {"answer", "evaluate", "numbers", None}),
        # a wrong number that is an allowed constant (7, 10, 12, ...) fails on the answer
        ("wrong_number", {"numbers", "answer", None}),
        ("plausible_wrong", {"answer", None}),
    ],
)
def test_each_error_kind_fails_the_check_it_should(kind: str, failed: set[str | None]) -> None:
    teacher = SimulatedTeacher("math23k", errors={"equation": {kind: 1.0}})
    answers = _answers(teacher, "equation")
    usable = [p for p in PROBLEMS if gold_template(p) is not None]
    outcomes = [check_step_equation(answers[p.id][0], p).failed for p in usable]
    assert set(outcomes) <= failed, kind
    # an error that keeps the value (a swapped sum, "x*1" for "x/1") is rare
    assert outcomes.count(None) <= 0.1 * len(outcomes), kind
    if kind == "refusal":
        assert {answers[p.id][0] for p in usable} == {REFUSALS["zh"]}


def test_rates_are_drawn_at_the_configured_frequency() -> None:
    teacher = SimulatedTeacher("math23k", errors={"equation": {"refusal": 0.25}})
    answers = _answers(teacher, "equation", n=10)
    refused = sum(text == REFUSALS["zh"] for texts in answers.values() for text in texts)
    assert 0.20 <= refused / 1200 <= 0.30


def test_format_correction_repairs_at_the_repair_rate() -> None:
    problems = [p for p in PROBLEMS if gold_template(p) is not None]
    broken = SimulatedTeacher("math23k", errors={"equation": {"malformed": 1.0}})
    answers = _answers(broken, "equation", problems=problems)
    for rate in (1.0, 0.5):
        fixer = SimulatedTeacher("math23k", repair_rate=rate)
        requests = [
            TeacherRequest(
                p.id, f"repair {answers[p.id][0]}", task="format_correction", subject=answers[p.id][0]
            )
            for p in problems
        ]
        repaired = {
            r.request.problem_id: r.completions[0].text for r in fixer.generate(requests, SamplingParams())
        }
        passed = sum(check_step_equation(repaired[p.id], p).passed for p in problems)
        assert (passed == len(problems)) if rate == 1.0 else (0.3 <= passed / len(problems) <= 0.7)


def test_repair_closes_or_deletes_the_slip() -> None:
    assert repair_equation("x=((11-1)*2") == "x=((11-1)*2)"
    assert repair_equation("x=11+*1-2") == "x=11+1-2"
    assert repair_equation("no equation here") is None


def test_the_cache_keys_on_the_task() -> None:
    params = SamplingParams()
    plain = TeacherRequest("p", "Problem: ...")
    assert request_key("m", plain, params) == request_key(
        "m", TeacherRequest("p", "Problem: ...", task="solve"), params
    )
    assert request_key("m", plain, params) != request_key(
        "m", TeacherRequest("p", "Problem: ...", task="equation"), params
    )


def test_bad_error_profiles_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"teacher\.errors\.equation\.typo"):
        error_profile({"equation": {"typo": 0.1}})
    with pytest.raises(ValueError, match=r"teacher\.errors\.equation: the rates add up to 1\.2"):
        error_profile({"equation": {"refusal": 0.6, "malformed": 0.6}})
