"""Fu et al.'s four formats on real SVAMP (PaLM rationales) and GSM8K (human solutions) problems."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mwp.data import (
    COT_TRIGGER,
    FORMATS,
    Example,
    Problem,
    build_equation_example,
    build_example,
    build_source,
    load_problems,
    sample_exemplars,
    to_student_text,
    token_counter,
)
from mwp.verify.equations import equation_to_template
from mwp.verify.extract import cut_run_on, extract_answer

FINAL_ANSWER = re.compile(r"The answer is ([^ ]+?)\.?$")


@pytest.fixture(scope="module")
def tokenizer(flan_t5_dir: Path):
    return AutoTokenizer.from_pretrained(str(flan_t5_dir))


@pytest.fixture(scope="module")
def svamp_pool(data_dir: Path) -> list[tuple[Problem, str]]:
    """SVAMP train problems with the recorded PaLM rationale, run-on continuation cut."""
    folder = data_dir / "teacher/svamp_palm"
    completions = json.loads((folder / "train_CoT_0.json").read_text()) + json.loads(
        (folder / "train_CoT_1.json").read_text()
    )
    problems = load_problems("svamp", "train", data_dir)
    return [(p, cut_run_on(completions[p.meta["teacher_index"]])) for p in problems]


@pytest.fixture(scope="module")
def gsm8k_pool(data_dir: Path) -> list[tuple[Problem, str]]:
    return [(p, p.solution) for p in load_problems("gsm8k", "train", data_dir, limit=500)]


@pytest.fixture(scope="module")
def svamp_test(data_dir: Path) -> list[Problem]:
    return load_problems("svamp", "test", data_dir)


def test_zero_shot_shapes(svamp_pool, gsm8k_pool) -> None:
    for problem, rationale in svamp_pool[:50] + gsm8k_pool[:50]:
        question = to_student_text(problem.question)
        cot = build_example(problem, rationale, "zero_shot_cot")
        assert cot.source == f"Q: {question} A: {COT_TRIGGER}"
        assert cot.target.startswith(to_student_text(rationale)[:20])
        assert "The answer is" in cot.target and cot.exemplar_ids == ()
        answer = build_example(problem, None, "zero_shot_answer")
        assert answer.source == f"Q: {question} A:"
        assert FINAL_ANSWER.fullmatch(answer.target)
        assert extract_answer(answer.target, mode="strict") == problem.answer
        assert (cot.problem_id, cot.format, answer.format) == (
            problem.id,
            "zero_shot_cot",
            "zero_shot_answer",
        )


def test_gsm8k_cot_target_ends_with_the_gold_answer(gsm8k_pool) -> None:
    for problem, solution in gsm8k_pool:
        target = build_example(problem, solution, "zero_shot_cot").target
        assert target.count("The answer is") == solution.count("The answer is") + 1
        assert extract_answer(target, mode="strict") == problem.answer


def test_a_rationale_without_answer_sentence_gets_the_gold_one(svamp_pool) -> None:
    problem, rationale = svamp_pool[0]
    bare = rationale.split("The answer is")[0].strip()
    target = build_example(problem, bare, "zero_shot_cot").target
    assert target == f"{to_student_text(bare)} The answer is {problem.answer}."
    # A rationale with its own answer sentence keeps it: judging it is the filter's job.
    assert build_example(problem, rationale, "zero_shot_cot").target == to_student_text(rationale)


@pytest.mark.parametrize("fmt", ["in_context_cot", "in_context_answer"])
def test_in_context_sources_hold_k_exemplars_never_the_problem(fmt: str, svamp_pool, svamp_test) -> None:
    rng = random.Random(0)
    k = 3
    for problem in svamp_test[:60] + [p for p, _ in svamp_pool[:60]]:
        exemplars = sample_exemplars(svamp_pool, k, rng, problem.id, exclude_question=problem.question)
        example = build_example(problem, "We add them. The answer is 1.", fmt, exemplars)
        assert len(example.exemplar_ids) == k and problem.id not in example.exemplar_ids
        assert example.source.count("Q: ") == k + 1
        tail = build_source(problem, fmt.replace("in_context", "zero_shot"))
        assert example.source.endswith(tail)
        for exemplar, rationale in exemplars:
            assert to_student_text(exemplar.question) in example.source
            if fmt == "in_context_cot":
                assert to_student_text(rationale) in example.source
            else:
                assert f"The answer is {exemplar.answer}." in example.source


def test_sample_exemplars_excludes_the_problem_and_is_reproducible(gsm8k_pool) -> None:
    tiny = gsm8k_pool[:5]
    excluded = tiny[2][0]
    counts: Counter[str] = Counter()
    rng = random.Random(1)
    for _ in range(400):
        drawn = sample_exemplars(tiny, 4, rng, excluded.id)
        assert len({p.id for p, _ in drawn}) == 4
        counts.update(p.id for p, _ in drawn)
    assert excluded.id not in counts and len(counts) == 4
    first = [p.id for p, _ in sample_exemplars(gsm8k_pool, 5, random.Random(7), "x")]
    assert first == [p.id for p, _ in sample_exemplars(gsm8k_pool, 5, random.Random(7), "x")]
    with pytest.raises(ValueError, match="fewer than k=5"):
        sample_exemplars(tiny, 5, rng, excluded.id)


def test_sample_exemplars_skips_a_duplicate_question_under_another_id(data_dir: Path) -> None:
    problems = load_problems("multiarith", "train", data_dir) + load_problems("multiarith", "test", data_dir)
    by_question: dict[str, list[Problem]] = {}
    for problem in problems:
        by_question.setdefault(problem.question, []).append(problem)
    first, twin = next(group for group in by_question.values() if len(group) > 1)[:2]
    pool = [(twin, ""), *[(p, "") for p in problems[:3] if p.question != first.question]]
    for seed in range(20):
        drawn = sample_exemplars(
            pool, 3, random.Random(seed), first.id, exclude_question=first.question, require_split=None
        )
        assert twin.id not in {p.id for p, _ in drawn}


def test_sample_exemplars_refuses_a_test_problem(svamp_pool, svamp_test) -> None:
    mixed = svamp_pool[:3] + [(p, "") for p in svamp_test[:30]]
    with pytest.raises(ValueError, match="split 'test'"):
        for seed in range(50):
            sample_exemplars(mixed, 3, random.Random(seed), "none")


def test_source_budget_drops_exemplars_but_never_the_question(svamp_pool, svamp_test, tokenizer) -> None:
    count = token_counter(tokenizer)
    problem = svamp_test[0]
    exemplars = sample_exemplars(svamp_pool, 4, random.Random(3), problem.id)
    full = build_example(problem, None, "in_context_answer", exemplars)
    zero_shot = build_source(problem, "zero_shot_answer")
    budget = (count(full.source) + count(zero_shot)) // 2
    trimmed = build_example(
        problem, None, "in_context_answer", exemplars, max_source_tokens=budget, count_tokens=count
    )
    assert 0 < len(trimmed.exemplar_ids) < 4
    assert trimmed.exemplar_ids == full.exemplar_ids[: len(trimmed.exemplar_ids)]
    assert count(trimmed.source) <= budget and trimmed.source.endswith(zero_shot)
    starved = build_example(
        problem, None, "in_context_answer", exemplars, max_source_tokens=5, count_tokens=count
    )
    assert starved.exemplar_ids == () and starved.source == zero_shot


def test_all_formats_pass_the_tokenizer_without_unknowns(
    svamp_pool, gsm8k_pool, svamp_test, tokenizer
) -> None:
    rng = random.Random(5)
    texts = []
    for pool, problems in ((svamp_pool, svamp_test[:40]), (gsm8k_pool, [p for p, _ in gsm8k_pool[-40:]])):
        rationale_of = dict((p.id, r) for p, r in pool)
        for problem in problems:
            rationale = rationale_of.get(problem.id, pool[0][1])
            for fmt in FORMATS:
                if fmt == "equation":
                    if problem.equation is None:  # GSM8K has solutions, not equations
                        continue
                    template = equation_to_template(f"x={problem.equation}", problem.numbers)
                    example = build_equation_example(problem, template)
                else:
                    exemplars = (
                        sample_exemplars(pool, 2, rng, problem.id) if fmt.startswith("in_context") else ()
                    )
                    example = build_example(problem, rationale, fmt, exemplars)
                texts += [example.source, example.target]
    ids = tokenizer(texts, add_special_tokens=False).input_ids
    assert not [t for t, i in zip(texts, ids, strict=True) if tokenizer.unk_token_id in i]
    assert all("\n" not in text for text in texts)


def test_bad_requests_are_refused(svamp_pool) -> None:
    (problem, rationale), (other, other_rationale) = svamp_pool[:2]
    with pytest.raises(ValueError, match="needs a rationale"):
        build_example(problem, None, "zero_shot_cot")
    with pytest.raises(ValueError, match="at least one exemplar"):
        build_example(problem, rationale, "in_context_cot")
    with pytest.raises(ValueError, match="takes no exemplars"):
        build_example(problem, rationale, "zero_shot_cot", [(other, other_rationale)])
    with pytest.raises(ValueError, match="the problem itself"):
        build_example(problem, rationale, "in_context_cot", [(problem, rationale)])
    with pytest.raises(ValueError, match="unknown format"):
        build_example(problem, rationale, "few_shot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no numeric answer"):
        build_example(Problem("x/1", "What?", None, "red"), None, "zero_shot_answer")


def test_example_json_round_trip(svamp_pool) -> None:
    (problem, _), *rest = svamp_pool[:3]
    example = build_example(problem, None, "in_context_answer", rest)
    assert Example.from_json(json.loads(json.dumps(example.to_json()))) == example


def test_answer_only_targets_extract_to_exact_non_integer_answers(data_dir: Path) -> None:
    problems = load_problems("math23k", "test", data_dir)
    non_integer = [p for p in problems if p.answer.denominator != 1]
    assert any(p.answer_text.endswith("%") for p in non_integer) and any(
        "/" in p.answer_text for p in non_integer
    )
    for problem in non_integer:
        target = build_example(problem, None, "zero_shot_answer").target
        assert extract_answer(target, mode="strict") == problem.answer, (problem.answer_text, target)
