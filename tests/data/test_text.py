"""`to_student_text` against the real Flan-T5 tokenizer and the real GSM8K / PaLM-SVAMP text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mwp.data import load_problems, to_student_text
from mwp.verify.extract import cut_run_on, extract_answer
from mwp.verify.numbers import find_numbers

CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*>>")
FINAL_ANSWER = re.compile(r"The answer is ([^ ]+?)\.?$")
DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
# Characters whose rewrite adds a number that was not spelled with digits before ("¾" -> "3/4").
ADDS_NUMBERS = re.compile(r"[¼½¾⅐-⅞⁰¹²³⁴-⁹]")


@pytest.fixture(scope="module")
def tokenizer(flan_t5_dir: Path):
    return AutoTokenizer.from_pretrained(str(flan_t5_dir))


@pytest.fixture(scope="module")
def gsm8k_train(data_dir: Path):
    return load_problems("gsm8k", "train", data_dir)


@pytest.fixture(scope="module")
def palm_completions(data_dir: Path) -> list[str]:
    folder = data_dir / "teacher/svamp_palm"
    texts: list[str] = []
    for name in ("train_CoT_0.json", "train_CoT_1.json", "test_CoT_0.json"):
        texts += json.loads((folder / name).read_text(encoding="utf-8"))
    assert len(texts) == 1000
    return texts


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def test_the_vocabulary_really_loses_these_characters(tokenizer) -> None:
    unk = tokenizer.unk_token_id
    assert tokenizer.decode(tokenizer("a\nb", add_special_tokens=False).input_ids) == "a b"
    for char in "<{}^~\\×÷−≤≥≠≈π√¢":
        assert unk in tokenizer(f"a {char} b", add_special_tokens=False).input_ids, char
    # Its NFKC normaliser silently turns a superscript into a plain digit: "cm³" would read "cm3".
    assert tokenizer.decode(tokenizer("500cm³", add_special_tokens=False).input_ids) == "500cm3"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
            "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips. The answer is 72.",
        ),
        (
            "He earned $<<3*5=15>>15\nShe earned $10\n#### 1,250",
            "He earned $15. She earned $10. The answer is 1,250.",
        ),
        ("Since 20<30, apples are cheaper", "Since 20 is less than 30, apples are cheaper"),
        ("x <= 5 and y ≤ 3 but z ≥ 2", "x is at most 5 and y is at most 3 but z >= 2"),
        ("4 W^2 = 100 and 1800cm³", "4 W**2 = 100 and 1800cm**3"),
        ("X - {2/5*[X - 10] + 8}", "X - (2/5*[X - 10] + 8)"),
        ("~5 kids, x ≈ 6", "about 5 kids, x about 6"),
        ("10 × $4 ÷ 2 − 1", "10 * $4 / 2 - 1"),
        ("mows ¾ of it, 2½ hours, (½)*6", "mows 3/4 of it, 2 1/2 hours, (1/2)*6"),
        (
            "Candy bars cost ¢25, each ¢<<25*3=75>>75. A gum is 5¢",
            "Candy bars cost 25 cents, each 75 cents. A gum is 5 cents",
        ),
        ("√(144) = 12 and √25 = 5", "sqrt(144) = 12 and sqrt 25 = 5"),
        ("a unicorn piñata, А Senior Center", "a unicorn pinata, A Senior Center"),
        (r"So x = \frac{3}{4} and \boxed{42} = 6 \times 7, \$5", "So x = 3/4 and 42 = 6 * 7, $5"),
        ("Step one:\n\n  add them\nStep two.\n", "Step one: add them. Step two."),
        ("a\r\nb\u2028c\u200bd\xa0e", "a. b. cd e"),
    ],
)
def test_rewrites(raw: str, expected: str) -> None:
    assert to_student_text(raw) == expected


def test_refuses_unbounded_text() -> None:
    with pytest.raises(ValueError, match="limit"):
        to_student_text("1 + " * 100_000)


@pytest.mark.slow
def test_gsm8k_and_palm_text_survive_the_tokenizer(tokenizer, gsm8k_train, palm_completions) -> None:
    raw = [p.solution for p in gsm8k_train] + [p.question for p in gsm8k_train] + palm_completions
    before = tokenizer(raw, add_special_tokens=False).input_ids
    assert sum(tokenizer.unk_token_id in ids for ids in before) > 7000  # the raw text does lose characters

    rewritten = [to_student_text(text) for text in raw]
    encoded = tokenizer(rewritten, add_special_tokens=False).input_ids
    with_unk = [text for text, ids in zip(rewritten, encoded, strict=True) if tokenizer.unk_token_id in ids]
    assert with_unk == []
    decoded = tokenizer.batch_decode(encoded)
    changed = [
        (a, b) for a, b in zip(rewritten, decoded, strict=True) if _normalise_space(a) != _normalise_space(b)
    ]
    assert changed == []
    assert all(to_student_text(text) == text for text in rewritten)  # idempotent


def test_numbers_stay_byte_identical(gsm8k_train, palm_completions) -> None:
    added = regrouped = 0
    for text in [p.solution for p in gsm8k_train] + [p.question for p in gsm8k_train] + palm_completions:
        original = CALCULATOR_NOTE.sub("", text)
        rewritten = to_student_text(text)
        before, after = DIGITS.findall(original), DIGITS.findall(rewritten)
        if ADDS_NUMBERS.search(text):
            remaining = iter(after)  # the original numbers, in order, with the spelled-out ones in between
            assert all(number in remaining for number in before), text
            added += 1
            continue
        assert after == before, text
        if "÷" in text:  # "130 ÷ 2" becomes "130 / 2", which find_numbers reads as one fraction
            regrouped += 1
        else:
            assert find_numbers(rewritten) == find_numbers(original), text
    assert added > 0 and regrouped > 0


def test_gsm8k_final_answer_still_extracts_after_rewriting(gsm8k_train) -> None:
    for problem in gsm8k_train:
        text = to_student_text(problem.solution)
        match = FINAL_ANSWER.search(text)
        assert match is not None, problem.id
        assert match.group(1) == problem.answer_text  # byte-identical, commas included
        assert (
            extract_answer(text, mode="strict")
            == problem.answer
            == extract_answer(problem.solution, mode="strict")
        )
        assert "####" not in text and "<<" not in text


def test_palm_completions_extract_the_same_answer_after_rewriting(palm_completions) -> None:
    evaluated = 0
    for completion in palm_completions:
        rationale = cut_run_on(completion)
        before = extract_answer(rationale, mode="strict")
        assert extract_answer(to_student_text(rationale), mode="strict") == before
        evaluated += before is not None
    assert evaluated > 900  # "The answer is (84 / 2)." is read as 42
