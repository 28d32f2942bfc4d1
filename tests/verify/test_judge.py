"""answers_match / gold_matches, and the `mwp-judge` console script run as a real subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from mwp.verify.compare import answers_match, decimal_places, gold_matches
from mwp.verify.numbers import format_number, parse_number
from mwp.verify.safe_eval import safe_eval

# --- comparison -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        (Fraction(42), Fraction(42), True),
        (Fraction(3), Fraction(4), False),
        (Fraction("0.375"), Fraction(3, 8), True),
        (Fraction("0.3333333"), Fraction(1, 3), True),
        (Fraction("3.3333333"), Fraction(10, 3), True),
        (Fraction("0.333"), Fraction(1, 3), False),  # three decimals are too coarse for rel_tol=1e-4
        (Fraction("0.33"), Fraction(1, 3), False),
        (Fraction("3.0001"), Fraction(3), False),  # 3 is exact with 4 decimals: not a rounding
        (Fraction("1.42"), Fraction("1.4231"), False),
        (Fraction(10**20 + 1), Fraction(10**20), False),  # integers never get a tolerance
        (Fraction(1, 3), Fraction(1, 3), True),
        (None, Fraction(1), False),
        (Fraction(1), None, False),
        (None, None, False),
    ],
)
def test_answers_match(pred: Fraction | None, gold: Fraction | None, expected: bool) -> None:
    assert answers_match(pred, gold) is expected
    assert answers_match(gold, pred) is expected  # symmetric


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.6666666666666667", 0.6666666666666666),  # float reprs of one value
        ("1.8333333333333333", 1.8333333333333335),
        ("0.30000000000000004", "0.3"),
        ("2.675", 2.6749999999999998),
    ],
)
def test_float_round_off_matches(pred: str, gold: str | float) -> None:
    assert gold_matches(parse_number(pred), gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("12.501", 12.5),  # an exact gold is not a rounding of the prediction
        ("1250.62", 1250.5),
        ("0.34", "1/3"),  # outside the prediction's own two places
        ("3.0000001", 3),
        ("1.0000001", 1),
    ],
)
def test_wrong_decimals_do_not_match(pred: str, gold: str | float) -> None:
    assert not gold_matches(parse_number(pred), gold)


def test_a_prediction_rounded_to_its_places_matches_a_longer_gold() -> None:
    # 12.5 is 12.501 to the one place it states (and within rel_tol): a rounding, not a new value.
    assert gold_matches(Fraction("12.5"), "12.501")
    assert not gold_matches(Fraction("12.5"), "12.56")  # 12.56 rounds to 12.6


def test_a_rounded_prediction_must_round_to_itself() -> None:
    # Within rel_tol=1e-3 of 2/3, but 0.6668 is not 2/3 rounded to four places (0.6667).
    assert not answers_match(Fraction("0.6668"), Fraction(2, 3), rel_tol=1e-3)
    assert answers_match(Fraction("0.6667"), Fraction(2, 3), rel_tol=1e-3)


def test_tolerance_is_configurable() -> None:
    assert answers_match(Fraction("0.333"), Fraction(1, 3), rel_tol=1e-3)
    assert answers_match(Fraction("0.667"), Fraction(2, 3), rel_tol=1e-3)
    assert not answers_match(Fraction("0.33"), Fraction(1, 3), rel_tol=1e-3)
    # 0.00000003 is 1/(3e7) to its own eight places; abs_tol admits its relative error of 0.1.
    assert answers_match(Fraction("0.00000003"), Fraction(1, 3 * 10**7), abs_tol=1e-7)
    # 0.0000001 is not 1/(3e7) rounded to seven places (that is 0.0000000), whatever abs_tol says.
    assert not answers_match(Fraction("0.0000001"), Fraction(1, 3 * 10**7), abs_tol=1e-7)


def test_decimal_places() -> None:
    assert decimal_places(Fraction(3)) == 0
    assert decimal_places(Fraction("0.375")) == 3
    assert decimal_places(Fraction(1, 3)) is None


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [
        (Fraction(9), "9 (apples)", True),
        (Fraction(3, 4), "3/4", True),
        (Fraction("0.75"), "3/4", True),
        (Fraction(1, 2), "50%", True),
        (Fraction(50), "50%", True),  # the percentage figure itself
        (Fraction(5), "50%", False),
        (Fraction(1234), "1,234", True),
        (Fraction(23, 3), "7((2)/(3))", True),
        (Fraction(72), 72, True),
        (Fraction(39), 39.0, True),
        (Fraction(50), "0.5", False),  # the percent rule only applies to a gold written with %
    ],
)
def test_gold_matches(pred: Fraction, answer: str | int | float, expected: bool) -> None:
    assert gold_matches(pred, answer) is expected


# --- the console script -----------------------------------------------------------------------


def _judge_command() -> list[str]:
    script = Path(sys.executable).parent / "mwp-judge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mwp.verify.judge"]


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_judge_command(), *args], input=stdin, capture_output=True, text=True, timeout=60)


_SUMMARY = re.compile(r"n=(\d+), correct=(\d+), accuracy=([\d.]+)%, no-answer=(\d+)")


def _palm_rows(data_dir: Path) -> list[dict[str, str]]:
    folder = data_dir / "teacher" / "svamp_palm"
    completions = json.loads((folder / "train_CoT_0.json").read_text())
    problems = [json.loads(line) for line in (folder / "svamp_train.json").open()][: len(completions)]
    return [
        {"question": p["input"], "completion": c, "answer": format_number(safe_eval(p["label"]))}
        for p, c in zip(problems, completions, strict=True)
    ]


def test_judge_file_argument_on_recorded_teacher(data_dir: Path, tmp_path: Path) -> None:
    rows = _palm_rows(data_dir)
    source = tmp_path / "palm.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _run([str(source), "--mode", "strict"])
    assert result.returncode == 0, result.stderr
    scored = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(scored) == 500
    assert scored[0]["pred"] == "42" and scored[0]["correct"] is True  # "The answer is (84 / 2)."
    assert all(set(row) == {"question", "completion", "answer", "pred", "correct"} for row in scored)
    summary = _SUMMARY.search(result.stderr)
    assert summary, result.stderr
    n, correct, accuracy, no_answer = summary.groups()
    assert int(n) == 500
    assert int(correct) == sum(row["correct"] for row in scored)
    assert int(no_answer) == sum(row["pred"] is None for row in scored)
    assert 70 <= float(accuracy) <= 78  # the data's README: about 74% of the completions are right
    # Without cutting the run-on exercise its own "The answer is" is read instead.
    uncut = _run([str(source), "--mode", "strict", "--no-cut-run-on"])
    uncut_correct = int(_SUMMARY.search(uncut.stderr).group(2))  # type: ignore[union-attr]
    assert uncut_correct < int(correct) - 30


def test_judge_stdin_and_gold_spellings(tmp_path: Path) -> None:
    rows = [
        {"question": "q1", "completion": "So 4 + 5 = 9. The answer is 9 apples.", "answer": "9 (apples)"},
        {"question": "q2", "completion": "The answer is 50%.", "answer": "50%"},
        {"question": "q3", "completion": "The answer is 0.75", "answer": "3/4"},
        {"question": "q4", "completion": "The answer is $1,234.", "answer": "1,234"},
        {"question": "q5", "completion": "I do not know.", "answer": 3},
        {"question": "q6", "completion": "He has 7 left.", "answer": 7.0},
        {"question": "q7", "completion": "The answer is 3/8 or .375", "answer": "0.375"},
        {"question": "q8", "completion": "The answer is 3.", "answer": 4},
    ]
    stdin = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n"  # a trailing blank line
    flexible = _run([], stdin=stdin)
    assert flexible.returncode == 0, flexible.stderr
    scored = [json.loads(line) for line in flexible.stdout.splitlines()]
    assert [r["pred"] for r in scored] == ["9", "50", "0.75", "1234", None, "7", "0.375", "3"]
    assert [r["correct"] for r in scored] == [True, True, True, True, False, True, True, False]
    assert "n=8, correct=6, accuracy=75.00%, no-answer=1" in flexible.stderr
    strict = _run(["--mode", "strict", "--output", str(tmp_path / "out.jsonl")], stdin=stdin)
    assert strict.returncode == 0 and strict.stdout == ""
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert scored[5]["pred"] is None and scored[5]["correct"] is False  # no answer phrase in "He has 7 left."
    assert "n=8, correct=5, accuracy=62.50%, no-answer=2" in strict.stderr


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "q", "completion": "The answer is 1."', "invalid JSON"),
        ('{"question": "q", "answer": 1}', "missing field(s) completion"),
        ('["q", "c", 1]', "expected a JSON object"),
        (
            '{"question": "q", "completion": "The answer is 1.", "answer": "Westford location"}',
            "is not a number",
        ),
        ('{"question": "q", "completion": 5, "answer": 1}', "'completion' must be a string"),
    ],
)
def test_malformed_row_stops_with_its_line_number(tmp_path: Path, bad_line: str, message: str) -> None:
    good = {"question": "q", "completion": "The answer is 2.", "answer": 2}
    source = tmp_path / "input.jsonl"
    source.write_text(
        json.dumps(good) + "\n" + json.dumps(good) + "\n" + bad_line + "\n" + json.dumps(good) + "\n"
    )
    output = tmp_path / "scored.jsonl"
    result = _run([str(source), "--output", str(output)])
    assert result.returncode == 2
    assert f"{source}:3: " in result.stderr and message in result.stderr
    assert "before the error: n=2, correct=2" in result.stderr
    assert [json.loads(line)["correct"] for line in output.read_text().splitlines()] == [True, True]


def test_help_documents_every_rule() -> None:
    result = _run(["--help"])
    assert result.returncode == 0
    for rule in (
        "the answer (arabic numerals) is",
        '"A: 26"',
        "Final answer:",
        "####",
        "\\boxed",
        "答案是",
        "Negation",
        "Hedges",
        "two hundred and eighty",
        "Percent",
        "Flexible mode",
        "Float round-off",
        "stated precision",
        "The last readable phrase wins",
        "twelve point five",
        "agrees to the places it prints",
        "The final statement after a calculation",
        "verbless phrase",
    ):
        assert rule in result.stdout, rule


def test_hedged_and_negated_completions_are_scored_wrong() -> None:
    rows = [
        {"question": "q", "completion": "The answer is 3 or 5.", "answer": 3},
        {"question": "q", "completion": "The answer is not 5. It is 6.", "answer": 5},
        {"question": "q", "completion": "Therefore, the answer (arabic numerals) is 26.", "answer": 26},
        {"question": "q", "completion": "He has 26.\nA: 26\n\nQ: next?\nA: 4", "answer": 26},
    ]
    result = _run([], stdin="".join(json.dumps(r) + "\n" for r in rows))
    assert [json.loads(line)["correct"] for line in result.stdout.splitlines()] == [False, False, True, True]
    assert "no-answer=2" in result.stderr


def test_zero_shot_cot_answers_of_a_large_model_are_scored_right() -> None:
    """Real text-davinci-002 completions (tests/fixtures/judge_zeroshot_cot.jsonl) the judge once misread."""
    stage_two = "\nTherefore, the answer (arabic numerals) is"
    rows = [
        # the answer stated twice, digits first
        (stage_two + " 446. \n\n\nThe answer (roman numerals) is CDXLVI.", 446),
        # a calculation whose result is on the lines below the phrase
        (stage_two + " $7500 + $1500 + $60 * 30 = \n\n$7500 + $1500 + $1800 = \n\n$11,000", 11000),
        (stage_two + " \n\nx + y = 38 \n29 + y = 38 \ny = 9 \n\nThere were 9 bad carrots.", 9),
        # two values that agree to the places printed, and decimals in words
        (stage_two + " 1/3, or 0.333333333333333", "1/3"),
        ("The answer is three hundred forty point twenty-five dollars.", "340.25"),
    ]
    stdin = "".join(json.dumps({"question": "q", "completion": c, "answer": a}) + "\n" for c, a in rows)
    for mode in ("strict", "flexible"):
        result = _run(["--mode", mode], stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["correct"] for line in result.stdout.splitlines()] == [True] * len(rows)


def test_malformed_stdin_row_is_named_stdin() -> None:
    result = _run([], stdin="not json\n")
    assert result.returncode == 2
    assert "<stdin>:1: invalid JSON" in result.stderr


def test_missing_input_file(tmp_path: Path) -> None:
    result = _run([str(tmp_path / "absent.jsonl")])
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "absent.jsonl" in result.stderr


def test_bbh_answers_go_through_the_same_judge(data_dir) -> None:
    """Real BIG-Bench Hard targets, written as a model would, judged with the task's answer type."""
    from mwp.data.bbh import load_bbh_task

    rows = []
    for task, wrong in (("date_understanding", "(Z)"), ("web_of_lies", None), ("object_counting", "9999")):
        example = load_bbh_task(task, data_dir)[0]
        rows.append(
            {
                "question": example.input,
                "completion": f"So the answer is {example.target}.",
                "answer": example.target,
            }
        )
        other = wrong or ("No" if example.target == "Yes" else "Yes")
        rows.append(
            {"question": example.input, "completion": f"So the answer is {other}.", "answer": example.target}
        )
        task_rows = "\n".join(json.dumps(r) for r in rows[-2:]) + "\n"
        proc = _run(["--answer-type", f"bbh:{task}", "--mode", "strict"], stdin=task_rows)
        assert proc.returncode == 0, proc.stderr
        judged = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["correct"] for r in judged] == [True, False], (task, judged)
    bad = _run(["--answer-type", "bbh:no_such_task"], stdin=json.dumps(rows[0]) + "\n")
    assert bad.returncode == 2 and "unknown BBH task" in bad.stderr
