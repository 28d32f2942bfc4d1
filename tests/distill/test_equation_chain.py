"""From Large to Tiny's equation chain: each step's check on real teacher output, full chain runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mwp.data.artifact import ARTIFACT, read_distilled
from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.distill.equation_chain import (
    NOT_ASKED,
    REPLAYED,
    ChainSettings,
    check_step_equation,
    distill_chain,
    verify_masked,
)
from mwp.distill.rationales import STATS
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.teachers.base import SamplingParams, TeacherRequest
from mwp.teachers.factory import build_teacher
from mwp.teachers.prompts import build_requests, format_correction_request, masked_equation_request
from mwp.teachers.simulated import SimulatedTeacher
from mwp.verify.numbers import parse_number
from mwp.verify.templates import canonical_infix, equivalent, verify_template
from tests.helpers import compose_config

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def svamp() -> dict[str, object]:
    return {p.id: p for p in load_problems("svamp", "train")}


@pytest.fixture(scope="module")
def palm_texts(svamp: dict) -> dict[str, str]:
    teacher = build_teacher(compose_config(["stage=distill"]).teacher)
    requests = [TeacherRequest(pid, "") for pid in svamp]
    return {r.request.problem_id: r.completions[0].text for r in teacher.generate(requests, SamplingParams())}


def _values(problem) -> list:
    return [parse_number(n) for n in problem.numbers]


# -- step (a): the equation, on real PaLM chain-of-thought completions ---------------------------------
@pytest.mark.parametrize(
    ("problem_id", "failed"),
    [
        ("svamp/chal-994", None),  # "The answer is (84 / 2)."
        ("svamp/chal-554", "numbers"),  # "(30 - 28)": 30 is an intermediate result, not a problem number
        ("svamp/chal-860", "answer"),  # "(7 * 36)": the pencils, but the question asks for crayons
        ("svamp/chal-28", "extract"),  # "((28 - 13) and (28 - 15))": two answers
        ("svamp/chal-383", "extract"),  # "(249)": a number, no equation
    ],
)
def test_final_expression_check_on_recorded_palm_completions(
    palm_texts: dict, svamp: dict, problem_id: str, failed: str | None
) -> None:
    problem = svamp[problem_id]
    check = check_step_equation(palm_texts[problem_id], problem, final_expression=True)
    assert check.failed == failed, check.message
    if failed is None:
        assert check.value == problem.answer
        assert verify_template(check.template, _values(problem), problem.answer).ok


def test_a_parse_failure_is_a_format_failure_whatever_check_trips_first(svamp: dict) -> None:
    problem = svamp["svamp/chal-994"]
    assert check_step_equation("x=(84/2", problem).failed == "format"
    assert check_step_equation("x=84/*2", problem).failed == "format"
    assert check_step_equation("x = 84 / 2", problem).passed


# -- step (b): the masked equation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "failed"),
    [
        ("x=N0/N1", None),
        ("Equation with names: x = N0 ÷ N1.", None),
        ("N0 / N1 = x", None),
        ("x = N1 / N0", "answer"),
        ("x=N0/N5", "numbers"),  # the problem has two numbers
        ("x=N0/9", "numbers"),  # a literal that is no allowed constant
        ("x=(N0/N1", "format"),
        ("I'm sorry, I cannot write an equation for this problem.", "extract"),
    ],
)
def test_masked_equation_check(svamp: dict, text: str, failed: str | None) -> None:
    check = verify_masked(text, svamp["svamp/chal-994"])
    assert check.failed == failed, check.message
    if failed is None:
        assert check.template == "N0/N1" == canonical_infix(check.template)


def test_checks_on_recorded_smollm2_outputs(svamp: dict) -> None:
    """Real SmolLM2-135M answers to the chain's prompts (tests/fixtures/chain_smollm2.jsonl)."""
    rows = [json.loads(line) for line in (FIXTURES / "chain_smollm2.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"equation", "masked_equation", "format_correction"}
    for row in rows:
        problem = svamp[row["problem_id"]]
        if row["task"] == "masked_equation":
            check = verify_masked(row["text"], problem)
            assert check.failed == row["expected_failed"], (row["text"], check.message)
        else:
            check = check_step_equation(row["text"], problem)
            assert check.failed == row["expected_failed"], (row["text"], check.message)
        if check.failed is None:
            assert check.value == problem.answer


# -- prompts ------------------------------------------------------------------------------------------
def test_chinese_chain_prompts_render() -> None:
    cfg = compose_config(["prompt=fltt_zh", "dataset=math23k"])
    problem = load_problems("math23k", "train", limit=1)[0]
    (request,) = build_requests([problem], cfg.prompt)
    assert request.task == "equation"
    assert request.prompt.startswith("请为下面的数学应用题列出一个求解的方程")
    assert request.prompt.endswith(f"题目：{problem.question.strip()}\n方程：")
    masked = masked_equation_request(problem, "x=(11-1)*2", cfg.prompt, ("1", "2"))
    assert masked.task == "masked_equation" and masked.subject == "x=(11-1)*2"
    assert "N0=2, N1=11" in masked.prompt and "每隔N0米" in masked.prompt and "共种了N1棵" in masked.prompt
    assert masked.prompt.endswith("方程：x=(11-1)*2\n用名字写的方程：")
    repair = format_correction_request(problem, "x=((11-1)*2", "'(' was never closed", cfg.prompt, attempt=2)
    assert repair.task == "format_correction"
    assert repair.prompt.startswith("（第 2 次改正") and "无法解析：'(' was never closed" in repair.prompt
    assert (
        repair.prompt
        != format_correction_request(problem, "x=((11-1)*2", "'(' was never closed", cfg.prompt).prompt
    )


def test_equation_prompts_still_ask_plainly() -> None:
    cfg = compose_config(["prompt=equation_en", "dataset=multiarith"])
    problem = load_problems("multiarith", "test", limit=1)[0]
    (request,) = build_requests([problem], cfg.prompt)
    assert request.task == "solve" and request.prompt.endswith("Equation:")


# -- whole chains -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("chain")
    cfg = compose_config(
        ["stage=distill", "dataset=math23k", "dataset.limit=400", "prompt=fltt_zh", "teacher=simulated"],
        run_dir=out,
    )
    load_config(cfg)
    stats = run_distill(load_config(cfg), out / "distill")
    return out / "distill", stats.to_json()


def test_simulated_chain_yields_follow_the_error_profile(simulated_run: tuple[Path, dict]) -> None:
    out, stats = simulated_run
    assert json.loads((out / STATS).read_text()) == stats
    assert stats["teacher"] == "simulated(math23k-gold, p_err=0.30)"
    steps = stats["steps"]
    equation, correction, masked = steps["equation"], steps["format_correction"], steps["masked_equation"]
    # conf/teacher/simulated.yaml: n=2, equation errors 0.30 in all (refusal 0.02, malformed 0.06)
    assert equation["requests"] == 400 and equation["checked"] == equation["completions"] == 800
    assert equation["passed"] + sum(equation["failed"].values()) == 800
    assert 0.005 <= equation["failed"]["extract"] / 800 <= 0.04  # refusals are the only texts without digits
    assert 0.03 <= equation["failed"]["format"] / 800 <= 0.10  # malformed
    # errors that keep the value (a swapped sum) pass; gold equations the checks reject fail
    assert 0.62 <= equation["yield"] <= 0.80
    # (c) is asked exactly for the format failures, then for its own failures, at most 2 rounds
    assert correction["by"] == "teacher" and 1 <= correction["rounds"] <= 2
    first_round = equation["failed"]["format"]
    assert first_round <= correction["requests"] <= first_round + correction["failed"].get("format", 0)
    assert 0.6 <= correction["yield"] <= 0.95  # repair_rate 0.8
    # (b) is asked once per distinct verified equation; masked errors 0.10 in all
    verified = equation["passed"] + correction["passed"]
    assert masked["checked"] == verified and masked["requests"] <= verified
    assert 0.82 <= masked["yield"] <= 0.97
    # the default profile writes no malformed masked equation: nothing for (b)'s correction to do
    masked_correction = steps["masked_format_correction"]
    assert masked_correction["by"] == "teacher" and masked_correction["requests"] == 0
    assert stats["samples_kept"] + stats["samples_duplicate"] == masked["passed"]
    assert stats["problems_kept"] <= stats["problems_with_verified_equation"] <= 400
    assert stats["problem_yield"] == round(stats["problems_kept"] / 400, 4)


def test_every_kept_row_verifies_and_no_two_of_a_problem_are_equivalent(
    simulated_run: tuple[Path, dict],
) -> None:
    out, stats = simulated_run
    rows = read_distilled(out / ARTIFACT)
    assert len(rows) == stats["samples_kept"] > 0
    by_problem: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for row in rows:
        problem = row.problem
        assert row.method == "distill" and row.round == 0 and row.teacher.startswith("simulated(")
        assert row.template == canonical_infix(row.template)
        assert verify_template(row.template, _values(problem), problem.answer).ok, row.template
        assert row.equation and row.rationale.startswith("x=")
        by_problem.setdefault(row.id, []).append(row.template)
        counts[row.id] = len(problem.numbers)
    for pid, templates in by_problem.items():
        for i, a in enumerate(templates):
            assert not any(equivalent(a, b, counts[pid]) for b in templates[i + 1 :]), (pid, templates)


def test_an_error_free_simulation_keeps_every_problem_with_a_gold_template(tmp_path: Path) -> None:
    problems = load_problems("math23k", "train", limit=150)
    teacher = SimulatedTeacher("math23k", errors={})
    requests = build_requests(problems, compose_config(["prompt=fltt_zh"]).prompt)
    stats = distill_chain(
        problems, teacher, requests, SamplingParams(n=2), tmp_path, dataset="math23k", split="train"
    )
    gold = {p.id: gold_template(p) for p in problems}
    with_gold = {pid for pid, template in gold.items() if template is not None}
    rows = read_distilled(tmp_path / ARTIFACT)
    assert {r.id for r in rows} == with_gold
    assert stats["samples_duplicate"] == len(with_gold)  # the second sample is the same equation
    for row in rows:
        assert equivalent(row.template, gold[row.id], len(row.problem.numbers))
    assert stats["steps"]["format_correction"]["requests"] == 0


@pytest.mark.parametrize(("repair_rate", "expect_kept"), [(1.0, True), (0.0, False)])
def test_format_correction_recovers_malformed_equations(
    tmp_path: Path, repair_rate: float, expect_kept: bool
) -> None:
    problems = load_problems("math23k", "train", limit=40)
    teacher = SimulatedTeacher("math23k", errors={"equation": {"malformed": 1.0}}, repair_rate=repair_rate)
    requests = build_requests(problems, compose_config(["prompt=fltt_zh"]).prompt)
    stats = distill_chain(
        problems,
        teacher,
        requests,
        SamplingParams(n=1),
        tmp_path,
        dataset="math23k",
        split="train",
        settings=ChainSettings(max_corrections=3),
    )
    equation, correction = stats["steps"]["equation"], stats["steps"]["format_correction"]
    assert equation["passed"] == 0 and equation["failed"] == {"format": 40}
    if expect_kept:
        assert (
            correction["rounds"] == 1
            and correction["requests"] == 40
            and correction["failed"].get("format", 0) == 0
        )
        assert stats["problems_kept"] >= 35  # the rest are gold equations the checks reject
    else:
        assert correction["rounds"] == 3 and correction["requests"] == 120 and correction["passed"] == 0
        assert stats["problems_kept"] == 0 and (tmp_path / ARTIFACT).read_text() == ""


@pytest.mark.parametrize(("repair_rate", "expect_kept"), [(1.0, True), (0.0, False)])
def test_format_correction_recovers_malformed_masked_equations(
    tmp_path: Path, repair_rate: float, expect_kept: bool
) -> None:
    problems = load_problems("math23k", "train", limit=40)
    teacher = SimulatedTeacher(
        "math23k", errors={"masked_equation": {"malformed": 1.0}}, repair_rate=repair_rate
    )
    requests = build_requests(problems, compose_config(["prompt=fltt_zh"]).prompt)
    stats = distill_chain(
        problems,
        teacher,
        requests,
        SamplingParams(n=1),
        tmp_path,
        dataset="math23k",
        split="train",
        prompt_cfg=compose_config(["prompt=fltt_zh"]).prompt,
        settings=ChainSettings(max_corrections=3),
    )
    steps = stats["steps"]
    masked, correction = steps["masked_equation"], steps["masked_format_correction"]
    # (a) is error-free, so (a)'s correction is never asked; every masked equation is malformed
    assert steps["format_correction"]["requests"] == 0
    broken = masked["failed"].get("format", 0)
    assert masked["passed"] == 0 and broken >= 35 and correction["by"] == "teacher"
    rows = read_distilled(tmp_path / ARTIFACT)
    if expect_kept:
        assert correction["rounds"] == 1 and correction["requests"] == correction["checked"] == broken
        assert correction["passed"] == broken and correction["failed"] == {}
        assert len(rows) == stats["problems_kept"] == broken
        for row in rows:
            assert verify_template(row.template, _values(row.problem), row.problem.answer).ok
    else:
        assert correction["rounds"] == 3 and correction["requests"] == 3 * broken
        assert correction["failed"] == {"format": 3 * broken} and correction["passed"] == 0
        assert rows == [] and stats["problems_kept"] == 0


def test_masked_correction_prompts_show_the_names_and_the_error() -> None:
    from mwp.teachers.prompts import masked_format_correction_request

    problem = load_problems("math23k", "train", limit=1)[0]
    for language, marker in (("zh", "改正后用名字写的方程："), ("en", "Corrected equation with names:")):
        cfg = compose_config([f"prompt=fltt_{language}"]).prompt
        request = masked_format_correction_request(
            problem, "x=(N1-1*N0", "'(' was never closed", cfg, ("1", "2"), attempt=1
        )
        assert request.task == "masked_format_correction" and request.subject == "x=(N1-1*N0"
        assert "N0=2, N1=11" in request.prompt and "'(' was never closed" in request.prompt
        assert "x=(N1-1*N0" in request.prompt and request.prompt.endswith(marker)
        retry = masked_format_correction_request(problem, "x=(N1-1*N0", "e", cfg, ("1", "2"), attempt=2)
        assert retry.prompt != request.prompt and "2" in retry.prompt.splitlines()[0]


def test_masked_corrections_are_counted_in_stats_at_the_configured_rate(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "stage=distill",
            "dataset=math23k",
            "dataset.limit=200",
            "prompt=fltt_zh",
            "teacher=simulated",
            "teacher.errors.masked_equation.malformed=0.25",
        ],
        run_dir=tmp_path,
    )
    stats = run_distill(load_config(cfg), tmp_path / "distill").to_json()
    assert json.loads((tmp_path / "distill" / STATS).read_text()) == stats
    steps = stats["steps"]
    masked, correction = steps["masked_equation"], steps["masked_format_correction"]
    broken = masked["failed"]["format"]
    # 0.25 of (b)'s answers are malformed; repair_rate 0.8 fixes most in the first round
    assert 0.15 <= broken / masked["checked"] <= 0.35
    # every broken one is asked (an answer shared by identical requests is one request, checked per
    # asker), the ones still broken again in round 2
    assert correction["rounds"] >= 1 and correction["requests"] <= correction["checked"]
    assert broken <= correction["checked"] <= 2 * broken
    assert 0.6 <= correction["passed"] / broken <= 1.0
    kept = stats["samples_kept"] + stats["samples_duplicate"]
    assert kept == masked["passed"] + correction["passed"]


def test_palm_svamp_equation_route_on_real_recorded_rows(tmp_path: Path) -> None:
    cfg = compose_config(["stage=distill", "stage.extraction=equation"], run_dir=tmp_path)
    stats = run_distill(load_config(cfg), tmp_path / "distill").to_json()
    steps = stats["steps"]
    assert (
        steps["masked_equation"]["by"]
        == REPLAYED
        == "deterministic (recorded teacher cannot answer new prompts)"
    )
    for correction in ("format_correction", "masked_format_correction"):
        assert steps[correction]["by"] == NOT_ASKED and steps[correction]["requests"] == 0
    assert steps["equation"]["checked"] == 800 and stats["problems_uncovered"] == 0
    # about 74% of the recordings reach the gold answer; fewer state it as an expression of the problem's numbers
    assert 0.60 <= stats["problem_yield"] <= 0.74
    rows = read_distilled(tmp_path / "distill")
    assert len(rows) == stats["problems_kept"] == steps["masked_equation"]["passed"]
    for row in rows:
        assert verify_template(row.template, _values(row.problem), row.problem.answer).ok
        assert "The answer is" in row.rationale and row.teacher == "palm-540b"


def test_chain_config_keys_are_validated_before_any_work(tmp_path: Path) -> None:
    load_config(
        compose_config(["stage=distill", "prompt=fltt_en", "dataset=multiarith", "teacher=simulated"])
    )
    with pytest.raises(ValueError, match=r"max_corrections"):
        load_config(compose_config(["stage=distill", "prompt=fltt_en", "stage.chain.max_corrections=-1"]))
    with pytest.raises(ValueError, match=r"teacher\.dataset"):
        load_config(compose_config(["stage=distill", "teacher=simulated", "teacher.dataset=math23k"]))
    with pytest.raises(ValueError, match=r"refusal"):
        load_config(
            compose_config(["stage=distill", "teacher=simulated", "teacher.errors.equation.refusal=2"])
        )
