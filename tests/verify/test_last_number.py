"""Fu et al.'s metric (`mwp.verify.last_number`) on real completions: PaLM-540B's recorded SVAMP answers."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.evaluation.generators import Generator
from mwp.evaluation.scoring import PAPER_COLUMN, format_table, score_problems
from mwp.verify.last_number import completion_as_read, last_number, last_number_correct


@pytest.fixture(scope="module")
def palm_test(data_dir: Path) -> list[tuple[Problem, str]]:
    """SVAMP test problems with PaLM's recorded completion, run-on continuation ("\\n\\nQ: ...") included."""
    completions = json.loads((data_dir / "teacher/svamp_palm/test_CoT_0.json").read_text())
    return [(p, completions[p.meta["teacher_index"]]) for p in load_problems("svamp", "test", data_dir)]


def _by_start(palm_test: list[tuple[Problem, str]], start: str) -> tuple[Problem, str]:
    return next((p, c) for p, c in palm_test if c.startswith(start))


def test_the_last_number_is_read_before_the_run_on_record(palm_test) -> None:
    problem, completion = _by_start(palm_test, "They put 10 seeds in each flower bed.")
    # "... 10 * 45 is 450. The answer is (10 * 45).\n\nQ: There are 15 trees in the grove. ..."
    assert problem.answer == 450
    assert last_number(completion_as_read(completion)) == "45"
    # without their file's record boundary the last number would come from the run-on exercises
    assert last_number(completion) != "45"
    # the paper's metric misses what the strict answer phrase reads right, an expression
    assert not last_number_correct(completion, problem.answer_text, problem.answer)


def test_the_paper_metric_credits_a_wrong_answer_whose_last_number_happens_to_match(palm_test) -> None:
    problem, completion = _by_start(palm_test, "Debby started with 301 bottles.")
    # "... The answer is (301 - (144 * 1))." for gold (301 - 157) / 144 = 1
    assert problem.answer == 1
    assert last_number_correct(completion, problem.answer_text, problem.answer)


def test_their_number_pattern_has_no_sign_and_no_thousands_separator(data_dir: Path) -> None:
    train = load_problems("gsm8k", "train", data_dir)
    gold = next(p for p in train if p.answer_text == "1,080")
    # "1,080" reads as 080 on both sides: the grouped spelling matches, the plain number does not
    assert last_number_correct("She pays $1,080 in all. The answer is 1,080", gold.answer_text, gold.answer)
    assert not last_number_correct("The answer is 1080.", gold.answer_text, gold.answer)
    negative = next(p for p in train if p.answer_text.startswith("-"))
    magnitude = negative.answer_text.lstrip("-")
    assert last_number_correct(f"The answer is {magnitude}.", negative.answer_text, negative.answer)
    # floats: "3.0" equals "3"; no number at all is wrong
    assert last_number_correct("so 3.0 in total", "3", None)
    assert not last_number_correct("I cannot tell.", "3", None)
    # a gold spelling without digits falls back to the parsed answer
    assert last_number_correct("The answer is 2.", "two", Fraction(2))


class _Replay(Generator):
    """Gives back recorded completions, in the order the sources come."""

    label = "teacher:palm-540b"

    def __init__(self, completions: list[str]) -> None:
        self.completions = completions

    def complete(self, sources, desc: str = "") -> list[str]:
        assert len(sources) == len(self.completions)
        return list(self.completions)


def test_results_and_table_carry_the_paper_metric_beside_the_strict_headline(palm_test) -> None:
    problems = [p for p, _ in palm_test]
    completions = [c for _, c in palm_test]
    result = score_problems(
        _Replay(completions),
        problems,
        dataset="svamp",
        split="test",
        role="in-distribution",
        paper_metric=True,
    )
    expected = sum(last_number_correct(c, p.answer_text, p.answer) for p, c in palm_test)
    assert result.last_number_correct == expected
    # PaLM ends with "The answer is (expression)." and runs on: strict reads the expression, the
    # last number mostly reads one of its operands
    assert result.strict_acc > 0.7 > 0.1 > result.last_number_acc
    summary = result.summary()
    assert summary["last_number_acc"] == round(expected / len(problems), 4)
    assert {"pred_last_number", "correct_last_number"} <= set(result.predictions[0])
    table = format_table([result])
    assert PAPER_COLUMN in table and f"{100 * result.last_number_acc:.1f}%" in table
    # off by default: no column, no key
    plain = score_problems(
        _Replay(completions), problems, dataset="svamp", split="test", role="in-distribution"
    )
    assert "last_number_acc" not in plain.summary() and PAPER_COLUMN not in format_table([plain])
