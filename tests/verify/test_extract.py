"""Answer extraction on real gold solutions and real recorded teacher completions, plus hand-written hard cases."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from mwp.verify.compare import answers_match
from mwp.verify.extract import cut_run_on, extract_answer, extract_answer_span
from mwp.verify.numbers import find_numbers, parse_number
from mwp.verify.safe_eval import safe_eval


def _gsm8k_rows(data_dir: Path) -> list[dict[str, str]]:
    return [
        json.loads(line)
        for split in ("train", "test")
        for line in (data_dir / "gsm8k" / f"{split}.jsonl").open()
    ]


def test_every_gsm8k_solution_extracts_to_its_gold_answer(data_dir: Path) -> None:
    rows = _gsm8k_rows(data_dir)
    assert len(rows) == 7473 + 1319
    wrong = []
    for row in rows:
        last_line = row["answer"].rsplit("\n", 1)[-1]
        assert last_line.startswith("#### ")
        gold = Fraction(last_line[5:].replace(",", ""))  # the dataset's own convention: "#### 1,080"
        strict = extract_answer(row["answer"], mode="strict")
        flexible = extract_answer(row["answer"], mode="flexible")
        if strict != gold or flexible != gold:
            wrong.append((last_line, strict, flexible))
    assert wrong == []


def test_gsm8k_calculator_notes_alone_are_not_an_answer(data_dir: Path) -> None:
    solution = _gsm8k_rows(data_dir)[0]["answer"]  # Natalia's clips: "... <<48+24=72>>72 clips ... #### 72"
    body = solution.rsplit("\n", 1)[0]
    assert extract_answer(body, mode="strict") is None
    assert extract_answer(body, mode="flexible") == 72  # the last number of the worked solution


def _palm(data_dir: Path, split: str) -> tuple[list[str], list[Fraction]]:
    folder = data_dir / "teacher" / "svamp_palm"
    files = ["train_CoT_0.json", "train_CoT_1.json"] if split == "train" else ["test_CoT_0.json"]
    completions = [c for name in files for c in json.loads((folder / name).read_text())]
    labels = [json.loads(line)["label"] for line in (folder / f"svamp_{split}.json").open()]
    assert len(completions) == len(labels)
    return completions, [safe_eval(label) for label in labels]


def test_cut_run_on_keeps_the_answer_sentence_of_real_completions(data_dir: Path) -> None:
    completions = _palm(data_dir, "train")[0] + _palm(data_dir, "test")[0]
    first = completions[0]
    assert cut_run_on(first) == (
        "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42. The answer is (84 / 2)."
    )
    for completion in completions:
        cut = cut_run_on(completion)
        assert completion.startswith(cut)
        assert "\nQ:" not in cut
        head = completion.split("\n\nQ:", 1)[0].rstrip()
        if "The answer is" in head:
            assert cut.endswith(head[head.rindex("The answer is") :])


def test_cut_run_on_markers() -> None:
    assert cut_run_on("x = 3. The answer is 3.\nQ: next") == "x = 3. The answer is 3."
    assert cut_run_on("答：20米。\n\n问题：下一题") == "答：20米。"
    assert cut_run_on("Q: keep a leading question? A: 5") == "Q: keep a leading question? A: 5"
    assert cut_run_on("no run-on here.  ") == "no run-on here."
    assert (
        cut_run_on("The answer is 4.\n\nQuestion: more", markers=("Q",))
        == "The answer is 4.\n\nQuestion: more"
    )


def test_recorded_palm_completions_are_judged_like_the_paper_reports(data_dir: Path) -> None:
    completions, golds = _palm(data_dir, "train")
    assert len(completions) == 800
    strict = [extract_answer(cut_run_on(c), mode="strict") for c in completions]
    flexible = [extract_answer(cut_run_on(c), mode="flexible") for c in completions]
    uncut = [extract_answer(c, mode="strict") for c in completions]
    correct_strict = sum(answers_match(p, g) for p, g in zip(strict, golds, strict=True))
    correct_flexible = sum(answers_match(p, g) for p, g in zip(flexible, golds, strict=True))
    correct_uncut = sum(answers_match(p, g) for p, g in zip(uncut, golds, strict=True))
    # The data's README: "About 74% evaluate to the gold answer".
    assert 0.70 * 800 <= correct_strict <= 0.78 * 800
    assert correct_flexible >= correct_strict
    # Flexible only differs where strict finds no answer phrase with a number.
    assert all(s == f for s, f in zip(strict, flexible, strict=True) if s is not None)
    # The run-on exercises have answer phrases of their own: extract_answer cuts them itself, so
    # a caller that forgets `cut_run_on` gets the same answers (it used to lose ~150 of them).
    assert correct_uncut == correct_strict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (84 / 2).", 42),
        ("The answer is 3/8 or .375", Fraction(3, 8)),
        ("The answer is .375", Fraction(3, 8)),
        ("The answer is 42.", 42),
        ("The answer is 1,234.", 1234),
        ("The answer is $1,000.", 1000),
        ("The answer is $1,234.50", Fraction(246900, 200)),
        ("The answer is -5 degrees.", -5),
        ("The answer is 9 apples.", 9),
        ("The answer is 12 pieces of candy.", 12),
        ("The answer is 4 (apples)", 4),
        ("The answer is 7 2/3.", Fraction(23, 3)),
        ("The answer is 50%.", 50),
        ("The answer is 5 x 3.", 15),
        ("The answer is ((5 action figures + 3 cabinets) * 2 shelves).", 16),
        ("The answer is 30 - 28 = 2.", 2),
        ("The answer is (5x = 30).", 6),
        ("So the answer is: 17", 17),
        ("The final answer is 7.", 7),
        ("Answer: 1,080", 1080),
        ("Natalia sold 72 clips.\n#### 72", 72),
        ("so $\\boxed{\\frac{3}{8}}$.", Fraction(3, 8)),
        ("\\boxed{1{,}000}", 1000),
        ("The answer is \\(\\dfrac{1}{2}\\)", Fraction(1, 2)),
        ("答案是：这条小路长20米。", 20),
        ("答：这条小路长２０米．", 20),
        ("The answer is 5. Checking again, the answer is 7.", 7),  # the last phrase wins
        ("The answer is −3.", -3),
    ],
)
def test_hard_cases_strict(text: str, expected: int | Fraction) -> None:
    assert extract_answer(text, mode="strict") == expected
    assert extract_answer(text, mode="flexible") == expected


@pytest.mark.parametrize(
    ("text", "flexible"),
    [
        ("It is -5 degrees outside.", -5),
        ("So he has 30 - 28 = 2 bottle caps left.", 2),
        ("She has 7 apples and 3 pears", 3),
        ("no numbers at all", None),
    ],
)
def test_flexible_falls_back_to_the_last_number(text: str, flexible: int | None) -> None:
    assert extract_answer(text, mode="strict") is None
    assert extract_answer(text, mode="flexible") == flexible


def test_long_decimals_are_read_exactly() -> None:
    # A real PaLM completion ends "So 11 / 3 = 3.3333...": 100 threes, longer than parse_number takes.
    text = "So 11 / 3 = 3." + "3" * 100
    value = extract_answer(text, mode="flexible")
    assert value == Fraction("3." + "3" * 100)
    assert answers_match(value, Fraction(10, 3))


def test_percent_modes() -> None:
    assert extract_answer("The answer is 50%.", percent="strip") == 50
    assert extract_answer("The answer is 50%.", percent="fraction") == Fraction(1, 2)
    assert extract_answer("The answer is 100*(1+20%)") == 120  # inside an expression % is always /100


def test_span_is_the_answer_as_written() -> None:
    assert extract_answer_span("Luke scored 42. The answer is (84 / 2).\n", "strict") == "(84 / 2)"
    assert extract_answer_span("The answer is $1,000.", "strict") == "$1,000"
    assert extract_answer_span("The answer is -5 degrees.", "strict") == "-5"
    assert extract_answer_span("It is 3/8 of 24.", "strict") is None
    assert extract_answer_span("It is 3/8 of 24.", "flexible") == "24"
    assert extract_answer_span("The answer is (some - 5).", "flexible") is None


def test_large_text_is_handled_quickly() -> None:
    text = "1 " * 5_000_000 + "The answer is 7."
    started = time.perf_counter()
    assert extract_answer(text, mode="strict") == 7
    assert extract_answer(text.replace("The answer is", "so"), mode="flexible") == 7
    assert time.perf_counter() - started < 1


def test_hostile_answer_text_is_not_evaluated() -> None:
    assert extract_answer("The answer is __import__('os').system('true')", mode="strict") is None
    assert extract_answer("The answer is 9**9**9.", mode="strict") is None
    assert extract_answer("The answer is 1/0.", mode="strict") is None


def test_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="mode"):
        extract_answer("42", mode="loose")  # type: ignore[arg-type]


# --- fixtures of real completions, each with the answer read by hand -----------------------------

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _fixture(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).open(encoding="utf-8") if line.strip()]


def _completion(row: dict[str, Any], data_dir: Path) -> str:
    """The text a fixture row stands for: stored in the row, its excerpt, or looked up in the bundled data."""
    if "completion" in row:
        return row["completion"]
    if "excerpt" in row:
        return row["excerpt"]
    if row["source"] == "svamp_palm":
        texts = json.loads((data_dir / "teacher" / "svamp_palm" / row["file"]).read_text())
        return texts[row["index"]]
    lines = (data_dir / "gsm8k" / row["file"]).read_text().splitlines()
    return json.loads(lines[row["index"]])["answer"]


def _read(expected: str | None) -> Fraction | None:
    return None if expected is None else parse_number(expected)


def _agrees(pred: Fraction | None, expected: str | None) -> bool:
    reading = _read(expected)
    return (pred is None and reading is None) or answers_match(pred, reading)


@pytest.mark.parametrize("row", _fixture("judge_hard.jsonl"), ids=lambda row: row["class"])
def test_hard_case_fixture(row: dict[str, Any]) -> None:
    assert extract_answer(row["completion"], mode="strict") == _read(row["strict"])
    assert extract_answer(row["completion"], mode="flexible") == _read(row["flexible"])


def test_fixture_rows_still_point_at_the_text_that_was_read(data_dir: Path) -> None:
    for name in ("judge_palm.jsonl", "judge_gsm8k.jsonl"):
        for row in _fixture(name):
            assert row["tail"] in _completion(row, data_dir), row


def test_palm_completions_agree_with_the_hand_reading(data_dir: Path) -> None:
    rows = _fixture("judge_palm.jsonl")
    assert len(rows) >= 300
    texts = [_completion(row, data_dir) for row in rows]
    strict = [
        _agrees(extract_answer(t, mode="strict"), r["expected"]) for t, r in zip(texts, rows, strict=True)
    ]
    last = [
        _agrees(parse_number(find_numbers(cut_run_on(t))[-1], percent="strip"), r["expected"])
        for t, r in zip(texts, rows, strict=True)
    ]
    # PaLM states the answer as an expression; only "(a) and (b)" double answers are read differently.
    assert sum(strict) >= len(rows) - 10
    assert sum(last) < sum(strict) - 50  # the last number is an operand of the answer expression


def test_gsm8k_gold_solutions_agree_with_their_final_line(data_dir: Path) -> None:
    for row in _fixture("judge_gsm8k.jsonl"):
        text = _completion(row, data_dir)
        assert extract_answer(text, mode="strict") == _read(row["expected"])
        assert extract_answer(text, mode="flexible") == _read(row["expected"])


# --- the failure classes of real model output ---------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 3 or 5.",
        "either 3 or 4. The answer is either 3 or 4.",
        "The answer is between 3 and 5.",
        "The answer is 7 hours, or maybe 8 hours.",
        "The answer is (30 - 28) and (5 + 2).",  # two answers; this used to give the first, 2
        "The answer is (53 + 17) and (14 - 10).",
        "The answer is not 5. It is 6.",
        "The answer isn't 5.",
    ],
)
def test_hedges_and_negations_give_no_answer(text: str) -> None:
    assert extract_answer(text, mode="strict") is None
    assert extract_answer(text, mode="flexible") is None  # a phrase was found: no last-number guess


def test_restating_one_value_is_not_a_hedge() -> None:
    assert extract_answer("The answer is 0.5 or 1/2.", mode="strict") == Fraction(1, 2)
    assert extract_answer("The answer is 7 apples or 7.", mode="strict") == 7
    assert extract_answer("The answer is 3 apples and 3 pears.", mode="strict") == 3
    assert extract_answer("The answer is 12, and she has 3 left.", mode="strict") == 12


def test_answer_phrases_of_published_prompting_methods() -> None:
    assert extract_answer("Therefore, the answer (arabic numerals) is 26.", mode="strict") == 26
    assert extract_answer("He has 5 + 6 = 11 balls.\nA: 11", mode="strict") == 11
    assert extract_answer("Final answer: $1,375", mode="strict") == 1375
    # The zero-shot prompt's own "A: Let's think step by step." is not an answer line.
    assert extract_answer("A: Let's think step by step. 5 + 6 = 11.", mode="strict") is None
    assert extract_answer("The data: 5 + 6 = 11.", mode="strict") is None


def test_run_on_after_the_answer_is_ignored_without_cut_run_on() -> None:
    text = "The answer is 188.\n\n\nQ: The first book is 31 mm thick.\nA: The answer is 31."
    assert extract_answer(text, mode="strict") == 188
    assert extract_answer(text, mode="flexible") == 188
    assert extract_answer(text, mode="strict", cut=False) == 31


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is two hundred and eighty.", 280),
        ("The answer is fifty-six dollars.", 56),
        ("The answer is a hundred.", 100),
        ("The answer is one thousand two hundred and five.", 1205),
        ("The answer is zero.", 0),
        ("The answer is that each one gets 5 apples.", 5),  # digits win over words
    ],
)
def test_integers_in_words(text: str, expected: int) -> None:
    assert extract_answer(text, mode="strict") == expected


def test_hostile_phrase_markers_are_bounded() -> None:
    started = time.perf_counter()
    assert extract_answer("a:" * 1_000_000, mode="flexible") is None
    assert extract_answer("answers " * 500_000 + "The answer is 5.", mode="strict") == 5
    assert extract_answer("The answer is 5. " + "answers " * 900, mode="strict") == 5
    # Past 1000 look-alikes of one marker the search gives up (a documented bound), quickly.
    assert extract_answer("The answer is 5. " + "answers " * 500_000, mode="strict") is None
    assert time.perf_counter() - started < 3


def test_smollm2_samples_agree_with_the_hand_reading() -> None:
    # SmolLM2-135M zero-shot CoT samples (temperature 0.7; 32 at 128 tokens, 80 at 192): many are
    # cut off before committing to a number, and a careful reader then finds no answer.
    rows = _fixture("judge_smollm2.jsonl")
    assert len(rows) >= 100
    strict = [_agrees(extract_answer(r["completion"], mode="strict"), r["expected"]) for r in rows]
    flexible = [_agrees(extract_answer(r["completion"], mode="flexible"), r["expected"]) for r in rows]
    assert sum(strict) >= len(rows) - 6
    assert sum(flexible) < sum(strict)  # the last-number fallback guesses where the text gave up
    answered = [r for r in rows if r["expected"] is not None and "answer is" in r["completion"]]
    assert answered and all(
        extract_answer(r["completion"], mode="strict") == _read(r["expected"]) for r in answered
    )


# --- rules read off large models' zero-shot CoT logs (judge_zeroshot_cot, judge_plan_solve) -----
# Kojima et al.'s text-davinci-002 runs end every completion with the prompt's second stage,
# "\nTherefore, the answer (arabic numerals) is", and the model's continuation of it.
STAGE_TWO = "\nTherefore, the answer (arabic numerals) is"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (STAGE_TWO + " 12.5. The answer (in words) is twelve point five.", Fraction(25, 2)),
        (STAGE_TWO + " 12.5.\n\nThe answer in words is twelve.", Fraction(25, 2)),
        (STAGE_TWO + " 0.5. The answer as a fraction is 1/3.", Fraction(1, 2)),
        (STAGE_TWO + " 26 + 36 - 48 = 14. The answer (words) is fourteen.", 14),
        (STAGE_TWO + " 446. \n\n\nThe answer (roman numerals) is CDXLVI.", 446),
        ("The answer in words is fifty-six.", 56),  # with nothing before it, the restatement counts
    ],
)
def test_a_restatement_in_a_weaker_form_gives_way_to_the_digits(text: str, expected: int | Fraction) -> None:
    assert extract_answer(text, mode="strict") == expected
    assert extract_answer(text, mode="flexible") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is twelve point five.", Fraction(25, 2)),
        ("The answer is three hundred forty point twenty-five dollars.", Fraction("340.25")),
        ("The answer is point five.", Fraction(1, 2)),
        ("The answer is three point one four.", Fraction("3.14")),
        ("The answer is zero point zero five.", Fraction("0.05")),
        ("The answer is twelve.", 12),
        ("The answer is, at this point, unclear.", None),
    ],
)
def test_decimals_in_words(text: str, expected: Fraction | int | None) -> None:
    assert extract_answer(text, mode="strict") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (STAGE_TWO + " 1/3, or 0.333333333333333", Fraction(1, 3)),
        (STAGE_TWO + " .67 or .6666666666666666", Fraction("0.6666666666666666")),  # the finer one
        ("The answer is 0.33 or 1/3.", Fraction(1, 3)),
        ("The answer is 12 or 12.4.", None),  # an integer states no rounding: a hedge
        ("The answer is .67 or .6.", None),
    ],
)
def test_a_restatement_that_agrees_to_its_printed_places_is_not_a_hedge(
    text: str, expected: Fraction | None
) -> None:
    assert extract_answer(text, mode="strict") == expected
    value = extract_answer(text, mode="strict")
    assert value is None or answers_match(value, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # real: a calculation after the phrase, its result on the lines below
        (STAGE_TWO + " $7500 + $1500 + $60 * 30 = \n\n$7500 + $1500 + $1800 = \n\n$11,000", 11000),
        ("Now we can add up how many marbles.\n\n224 " + STAGE_TWO + ": \n\n+ 28 \n= 252", 252),
        (STAGE_TWO + " \n\nx + y = 38 \n29 + y = 38 \ny = 9 \n\nThere were 9 bad carrots.", 9),
        (STAGE_TWO + "  . \n\n15 + 30 + 60 = 105 pounds", 105),
        (STAGE_TWO + " \n\n$$x=36$$", 36),
        (
            "Answer:\nToulouse has 160 sheep, Charleston has 80 sheep.\n\nTotal: 160 + 80 + 20 = 260 sheep.",
            260,
        ),
        ("2y = 80\ny = 40\n\nAnswer:\nx = y + 30\nx = 40 + 30\nx = 70\n\nGretchen has 70 gold coins.", 70),
        (
            "Answer:\n\nStep 1: 200 grams of mushrooms contains 6 grams of protein.\n\n"
            "Step 2: John gets 42 grams of protein per week (6 grams of protein x 7 days = 42 grams).",
            42,
        ),
        # a statement complete on its line is not overruled by what follows it
        (STAGE_TWO + " 6. \n\nJosh can eat twice as much as Abby. \nIn 1 day, he eats 4", 6),
        (STAGE_TWO + ": 66 \n\nThe farmer picked 66 green tomatoes and 71 - 66 = 5 red tomatoes.", 66),
        # a block that ends in unknowns or cut off commits to nothing
        (
            STAGE_TWO + ": \n\n$2000 + 2/5 * $50 * Number of Chickens = Total Amount\n$2000 + 2/5 * $50 *",
            None,
        ),
        ("Answer: \ny = 180 - 10x \ny = 180 - 10(x) \ny = 180 - 20x \n\nTherefore", None),
    ],
)
def test_the_final_statement_after_a_calculation(text: str, expected: int | None) -> None:
    assert extract_answer(text, mode="strict") == expected
    assert extract_answer(text, mode="flexible") == expected


def test_the_last_readable_phrase_wins() -> None:
    assert extract_answer("The answer is 5.\nThe answer is _____.", mode="strict") == 5
    assert extract_answer("The answer is 5. In short, the answer is as above.", mode="strict") == 5
    # A text cut off right after its last phrase was about to give an answer we cannot see.
    assert extract_answer("The answer is 5. Let me check. So the answer is", mode="strict") is None
    assert (
        extract_answer("So the answer is 26 + 36 = 62.\n\nLet me redo it.\n\nAnswer:", mode="strict") is None
    )
    # A later negation or hedge still stands: the text takes the earlier answer back.
    assert extract_answer("The answer is 5. No, the answer is not 5.", mode="flexible") is None
    assert extract_answer("The answer is 5. Then again, the answer is 3 or 4.", mode="flexible") is None
    assert extract_answer("The answer is 3 or 5. The answer (in words) is four.", mode="strict") is None
    # With no phrase that has a value there is still no answer, not a last-number guess.
    assert extract_answer("He has 4 apples. So the answer is", mode="flexible") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: Allen's age 10 years from now is 242.", 242),
        ("Answer: The total amount of water in the 24 liters is 14.67 liters.", Fraction("14.67")),
        ("Answer: After 60 days, Cynthia will spend $16.00 on ice cream.", 16),
        ("Answer: John is 135 miles from home at the end of the 4 hours.", 135),
        ("Answer: 20 + 6 is 26.", 26),
        ("Answer: 3 apples is what she has.", 3),
        ("The answer is 12 apples, which is 3 more than Tom.", 12),  # "answer is" has its verb
    ],
)
def test_a_verbless_answer_is_what_its_verb_states(text: str, expected: int | Fraction) -> None:
    assert extract_answer(text, mode="strict") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: Kylar needs to pay $64 for 16 glasses.", 64),  # "for 16" is not "f or 16"
        ("Answer:\nJake has 7 peaches and Jill has -65 peaches.", 7),  # "and" is not a unit word
        ("Answer: \nEmily ended up with 9 towels (35 - 26 = 9).", 9),  # a side calculation
        ("Answer: it dropped to -5 degrees.", -5),  # a sign after a word, not "to - 5"
        ("The answer is 5 - the rest were eaten.", 5),  # a dash
        (STAGE_TWO + " 3:45.", None),  # a time of day
        (STAGE_TWO + " 15, 9, 8.", None),  # a bare list of values
        ("The answer is 5, 3 of which are red.", 5),
        (STAGE_TWO + " 75 and 100.", None),
        ("The answer is 180 - 20x.", None),  # an unknown
        ("So, the answer is: 2.5 + 2. = 5.", 5),  # "2." is a number inside a calculation
        ("(Assuming the answer is 0.6)", Fraction(3, 5)),  # the bracket is not the answer's
        ("Now we check if the answer is correct. We have 20 good oranges left.", None),  # another sentence
        ("The answer is (5x = 30).", 6),
    ],
)
def test_what_a_statement_holds(text: str, expected: int | None) -> None:
    assert extract_answer(text, mode="strict") == expected


def test_answer_blocks_are_bounded() -> None:
    started = time.perf_counter()
    assert extract_answer("The answer is:\n" * 200_000, mode="flexible") is None
    looks_back = "Answer: as above.\n"
    assert extract_answer("The answer is 7.\n" + looks_back * 200_000, mode="strict") is None  # 16 phrases
    assert extract_answer("The answer is 7.\n" + looks_back * 10, mode="strict") == 7
    assert extract_answer("Answer:\n" + "so\n" * 30 + "7 apples", mode="strict") is None  # 24 lines
    assert extract_answer(("The answer is:\n" + "(" * 1400 + "\n") * 50_000, mode="strict") is None
    assert time.perf_counter() - started < 3


# --- agreement with the careful reading, per source of real model text ---------------------------

REAL_SOURCES = (
    "judge_palm.jsonl",
    "judge_smollm2.jsonl",
    "judge_zeroshot_cot.jsonl",
    "judge_plan_solve.jsonl",
)


def _last_number(text: str) -> Fraction | None:
    numbers = find_numbers(text)
    return parse_number(numbers[-1], percent="strip") if numbers else None


def _subsets(name: str) -> list[tuple[str, list[dict[str, Any]]]]:
    rows = _fixture(name)
    datasets = sorted({row.get("dataset", "") for row in rows})
    return [(f"{name}:{d}" if d else name, [r for r in rows if r.get("dataset", "") == d]) for d in datasets]


@pytest.mark.parametrize(
    "rows", [pytest.param(rows, id=label) for name in REAL_SOURCES for label, rows in _subsets(name)]
)
def test_flexible_agrees_at_least_as_often_as_the_last_number(
    rows: list[dict[str, Any]], data_dir: Path
) -> None:
    texts = [_completion(row, data_dir) for row in rows]
    expected = [row["expected"] for row in rows]
    flexible = sum(
        _agrees(extract_answer(t, mode="flexible"), e) for t, e in zip(texts, expected, strict=True)
    )
    last = sum(_agrees(_last_number(t), e) for t, e in zip(texts, expected, strict=True))
    assert flexible >= last


def test_zero_shot_logs_of_large_models_agree_with_the_hand_reading() -> None:
    for name, strict_misses, flexible_misses in (
        ("judge_zeroshot_cot.jsonl", 3, 3),
        ("judge_plan_solve.jsonl", 26, 6),
    ):
        rows = _fixture(name)
        assert len(rows) >= 90
        strict = sum(_agrees(extract_answer(r["excerpt"], mode="strict"), r["expected"]) for r in rows)
        flexible = sum(_agrees(extract_answer(r["excerpt"], mode="flexible"), r["expected"]) for r in rows)
        assert strict >= len(rows) - strict_misses, name
        assert flexible >= len(rows) - flexible_misses, name


def test_unlicensed_logs_are_kept_as_pointers_and_short_excerpts() -> None:
    for name in ("judge_zeroshot_cot.jsonl", "judge_plan_solve.jsonl"):
        for row in _fixture(name):
            assert "completion" not in row
            assert len(row["excerpt"]) <= 600, row["pointer"]
            repo, _, rest = row["pointer"].partition("@")
            commit, _, where = rest.partition(":")
            assert "/" in repo and len(commit) == 40 and "#" in where, row["pointer"]
