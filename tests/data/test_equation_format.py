"""The equation format (From Large to Tiny) on real SVAMP and Math23K problems: examples, scoring, data."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mwp.data import EQUATION, DistilledRow, Problem, build_source, load_problems, problem_numbers
from mwp.data.formats import build_equation_example, equation_source, equation_target
from mwp.evaluation.scoring import score_baseline
from mwp.student.datamodule import DistilledDataModule, build_train_items, vocabulary_texts
from mwp.verify.equations import NumberMappingError, equation_to_template
from mwp.verify.template_scoring import MAX_TEMPLATE_CHARS, most_frequent_template, score_template
from mwp.verify.templates import TemplateError, from_prefix

PLACEHOLDER = re.compile(r"N(\d+)")


def gold_template(problem: Problem) -> str | None:
    """The dataset's own equation as a template over the problem's numbers (None: it uses others)."""
    equation = problem.equation or ""
    try:
        return equation_to_template(equation if "=" in equation else f"x={equation}", problem.numbers)
    except NumberMappingError:
        return None


@pytest.fixture(scope="module")
def svamp_train(data_dir: Path) -> list[Problem]:
    return load_problems("svamp", "train", data_dir)


@pytest.fixture(scope="module")
def math23k_train(data_dir: Path) -> list[Problem]:
    return load_problems("math23k", "train", data_dir)[:300]


def templated_rows(problems: list[Problem]) -> list[DistilledRow]:
    """Rows as the distill stage writes them for equations: gold equations stand in for the teacher's."""
    rows = []
    for index, problem in enumerate(problems):
        template = gold_template(problem) if index % 5 else None  # every fifth row has no equation
        rows.append(
            DistilledRow(problem, "rationale. The answer is 1.", "gold", 0, template=template, equation=None)
        )
    return rows


@pytest.mark.parametrize("dataset", ["svamp", "math23k"])
def test_equation_examples_from_real_rows_substitute_back_to_the_gold_answer(
    dataset: str, svamp_train, math23k_train
) -> None:
    problems = (svamp_train if dataset == "svamp" else math23k_train)[:200]
    scored = []
    for problem in problems:
        template = gold_template(problem)
        if template is None:
            continue  # a gold equation over numbers the question does not show
        example = build_equation_example(problem, template)
        assert example.format == EQUATION and example.source.startswith("equation: ")
        # The source shows placeholders where the question had numbers, the target only placeholders.
        assert not set(problem_numbers(problem)) & set(
            re.findall(r"\d+(?:\.\d+)?%?", PLACEHOLDER.sub("", example.source))
        )
        assert max(int(k) for k in PLACEHOLDER.findall(example.target)) < len(problem_numbers(problem))
        assert "x" not in example.target and "=" not in example.target
        scored.append(score_template(example.target, problem_numbers(problem), problem.answer).correct)
    # Gold equations give the gold answer; the few exceptions are the datasets' own rounding.
    assert len(scored) > 150 and sum(scored) / len(scored) > 0.97


def test_the_chinese_source_masks_math23k_numbers_including_fractions_and_percents(math23k_train) -> None:
    problem = next(p for p in math23k_train if any("%" in n for n in p.numbers))
    source = equation_source(problem)
    assert "%" not in source and source.count("N") >= len(problem.numbers)
    assert problem_numbers(problem) == problem.numbers


def test_templates_the_format_cannot_train_on_are_refused(svamp_train) -> None:
    problem = svamp_train[0]
    with pytest.raises(TemplateError, match="="):
        build_equation_example(problem, "N0*x=N1")
    with pytest.raises(TemplateError, match="uses N9"):
        build_equation_example(problem, "x=N9-N0")
    with pytest.raises(ValueError, match=r"data\.equation_notation"):
        equation_target("x=N0-N1", "postfix")


@pytest.mark.parametrize(
    "template", ["N0-N1", "(N0-N1)*N2", "N0/(N1*N2)", "N0-N1-N2", "N0^N1^N2", "N0+N1*N2/100", "(N0+N1)/2"]
)
def test_prefix_targets_keep_the_value_and_round_trip(template: str) -> None:
    numbers = ["7", "3", "2"]
    prefix = equation_target(f"x={template}", "prefix")
    assert "(" not in prefix and prefix.split()[0] in "+-*/^"
    assert from_prefix(prefix).text == equation_target(template)
    value = score_template(template, numbers, None).value
    assert value is not None and score_template(prefix, numbers, None, notation="prefix").value == value


def test_scoring_generated_templates_valid_malformed_and_out_of_range(svamp_train) -> None:
    problem = next(
        p for p in svamp_train if (gold_template(p) or "").replace("(", "").replace(")", "") == "x=N0-N1"
    )
    numbers = problem_numbers(problem)
    # A word-level student decodes with spaces between tokens.
    good = score_template("N0 - N1", numbers, problem.answer)
    assert good.correct and good.template == "N0-N1" and good.value == problem.answer
    assert good.equation == f"{numbers[0]}-{numbers[1]}"
    wrong = score_template("N1 - N0", numbers, problem.answer)
    assert not wrong.correct and wrong.value == -problem.answer and wrong.error is None
    malformed = score_template("N0 - ) N1 (", numbers, problem.answer)
    assert not malformed.correct and malformed.value is None and malformed.error
    out_of_range = score_template(f"N{len(numbers)} + N0", numbers, problem.answer)
    assert out_of_range.equation is None and f"has {len(numbers)}" in (out_of_range.error or "")
    by_zero = score_template("N0 / ( N1 - N1 )", numbers, problem.answer)
    assert not by_zero.correct and "zero" in (by_zero.error or "").lower()
    words = score_template("the answer is N0", numbers, problem.answer)
    assert not words.correct and words.error
    huge = score_template("N0 ^ N0 ^ N0 ^ N0", ["99"], Fraction(1))
    assert not huge.correct and huge.error
    long = score_template("N0+" * MAX_TEMPLATE_CHARS, numbers, problem.answer)
    assert long.error and "longer than" in long.error
    bad_prefix = score_template("- N0", numbers, problem.answer, notation="prefix")
    assert not bad_prefix.correct and "lacks an operand" in (bad_prefix.error or "")


def test_the_baseline_is_the_most_frequent_template_scored_like_a_student(
    data_dir: Path, svamp_train
) -> None:
    templates = [equation_target(t) for t in map(gold_template, svamp_train) if t is not None]
    template, count = most_frequent_template(templates) or ("", 0)
    assert count == Counter(templates)[template] == max(Counter(templates).values())
    test = load_problems("svamp", "test", data_dir)
    result = score_baseline(template, test, dataset="svamp", split="test", role="in-distribution")
    assert result.model == f"baseline: most frequent template ({template})" and result.size == len(test)
    by_hand = 0
    for problem in test:
        values = [Fraction(n) for n in problem_numbers(problem)]
        if template == "N0-N1" and len(values) >= 2:
            by_hand += values[0] - values[1] == problem.answer
    assert template == "N0-N1" and result.strict_correct == by_hand > 0
    row = result.predictions[0]
    assert {"template", "equation", "value", "correct", "error"} <= set(row) and row["template"] == template


def test_datamodule_skips_rows_without_templates_and_counts_them(flan_t5_dir: Path, svamp_train) -> None:
    rows = templated_rows(svamp_train[:100])
    tokenizer = AutoTokenizer.from_pretrained(str(flan_t5_dir))
    dm = DistilledDataModule(rows, tokenizer, formats=[EQUATION], eval_format=EQUATION, val_fraction=0.1)
    dm.setup("fit")
    stats = dm.stats["equation"]
    train_rows = [r for r in rows if r.id in dm.train_ids]
    assert stats["skipped_no_template"] == sum(r.template is None for r in train_rows) > 0
    assert stats["examples"] == len(dm.train_examples) == sum(r.template is not None for r in train_rows)
    assert (
        stats["most_frequent_template"]
        == most_frequent_template(equation_target(t.template) for t in train_rows if t.template)[0]
    )
    batch = dm.val_dataloader().collate_fn(dm.val_items[:3])
    assert batch["numbers"] == [problem_numbers(i.problem) for i in dm.val_items[:3]]
    assert batch["notation"] == "infix"


def test_a_multi_task_student_tells_its_formats_apart_by_their_sources(svamp_train) -> None:
    rows = templated_rows(svamp_train[:40])
    items = build_train_items(rows, ["zero_shot_cot", EQUATION], 0, 0)
    by_format = Counter(i.example.format for i in items)
    assert by_format == {"zero_shot_cot": 40, EQUATION: sum(r.template is not None for r in rows)}
    problem = rows[1].problem
    cot, equation = build_source(problem, "zero_shot_cot"), build_source(problem, EQUATION)
    assert cot.startswith("Q: ") and equation.startswith("equation: ") and cot != equation
    # The equation items carry no teacher signal row: distributions cover rationales only.
    assert all(i.signal_row is None for i in items if i.example.format == EQUATION)
    texts = vocabulary_texts(rows, ["in_context_cot", EQUATION])
    assert equation in texts and any(t.startswith("Q: ") for t in texts)


def test_repeated_templates_of_one_problem_train_once(svamp_train) -> None:
    row = DistilledRow(svamp_train[1], "r", "gold", 0, template=gold_template(svamp_train[1]))
    again = dataclasses.replace(row, sample_index=1)
    other = dataclasses.replace(
        row, sample_index=2, template="x=N1+N0" if row.template != "x=N1+N0" else "x=N0+N1"
    )
    skipped: Counter[str] = Counter()
    items = build_train_items([row, again, other], [EQUATION], 0, 0, skipped=skipped)
    assert len(items) == 2 and skipped == {"repeated_template": 1}
