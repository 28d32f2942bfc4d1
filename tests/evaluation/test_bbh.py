"""BIG-Bench Hard: answer matching on every real target, prompt parsing, strict loading, a tiny-student run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mwp.data.bbh import BBH_TASKS, load_bbh_prompt, load_bbh_task, resolve_bbh_tasks
from mwp.data.io import DataError
from mwp.paths import default_data_dir
from mwp.verify.bbh_answers import TASK_ANSWER_TYPES, bbh_matches, extract_bbh_answer

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "bbh" / "bbh").is_dir(), reason="bundled BBH data not found")


def _wrong(target: str, answer_type: str, others: list[str]) -> str:
    """An answer that differs from `target`: another option of the task, or a perturbed value."""
    if answer_type == "number":
        return str(int(target) + 1)
    if answer_type == "dyck":
        return target + " )" if not target.endswith(")") else target + " ]"
    if answer_type == "words":
        words = target.split()
        return " ".join(reversed(words)) if len(words) > 1 else target + " zzz"
    return next(o for o in others if o != target)


@pytest.mark.parametrize("task", BBH_TASKS)
def test_every_real_target_matches_itself_and_not_another_option(task: str) -> None:
    examples = load_bbh_task(task, DATA)
    answer_type = TASK_ANSWER_TYPES[task]
    others = sorted(Counter(e.target for e in examples))
    for example in examples:
        target = example.target
        cot = f"Let's think step by step. First, ... So the answer is {target}."
        wrong = _wrong(target, answer_type, others)
        for mode in ("strict", "flexible"):
            for text in (cot, target):  # a CoT completion, an answer-only completion
                pred = extract_bbh_answer(text, answer_type, mode)
                assert bbh_matches(pred, target, answer_type), (example.id, mode, text, pred)
            pred = extract_bbh_answer(f"... So the answer is {wrong}.", answer_type, mode)
            assert not bbh_matches(pred, target, answer_type), (example.id, mode, wrong, pred)


def test_the_answer_types_cover_all_27_tasks_and_the_bundled_counts() -> None:
    assert len(BBH_TASKS) == 27
    assert sum(len(load_bbh_task(t, DATA)) for t in BBH_TASKS) == 6511
    assert sorted(p.stem for p in (DATA / "bbh" / "bbh").glob("*.json")) == sorted(BBH_TASKS)


@pytest.mark.parametrize(
    ("text", "answer_type", "strict", "flexible"),
    [
        ("So the answer is (B).", "multiple_choice", "(B)", "(B)"),
        ("the answer is B.", "multiple_choice", "(B)", "(B)"),
        ("(C)", "multiple_choice", "(C)", "(C)"),
        ("Pick (C) over (A), clearly", "multiple_choice", "pick (c) over (a), clearly", "(A)"),
        ("I pick (C)", "multiple_choice", None, "(C)"),
        (
            "So the answer is (A).\n\nQ: next question ... So the answer is (D).",
            "multiple_choice",
            "(A)",
            "(A)",
        ),
        ("So the answer is True.", "boolean", "true", "true"),
        ("the expression is false", "boolean", None, "false"),
        ("So the answer is invalid.", "valid_invalid", "invalid", "invalid"),
        ("it is valid or not", "valid_invalid", None, "valid"),
        ("So the answer is Yes.", "yes_no", "yes", "yes"),
        ("So the answer is -219.", "number", "-219", "-219"),
        ("24", "number", "24", "24"),
        ("we get 5 then 7", "number", None, "7"),
        ("So the answer is ]]>.", "dyck", "] ] >", "] ] >"),
        ("] )", "dyck", "] )", "] )"),
        ("So the answer is Arson, aspect census.", "words", "arson aspect census", "arson aspect census"),
    ],
)
def test_extraction_rules(text: str, answer_type: str, strict: str | None, flexible: str | None) -> None:
    assert extract_bbh_answer(text, answer_type, "strict") == strict  # type: ignore[arg-type]
    assert extract_bbh_answer(text, answer_type, "flexible") == flexible  # type: ignore[arg-type]


# Completions of code-davinci-002 published with BBH (suzgunmirac/BIG-Bench-Hard,
# code-davinci-002-outputs/, MIT), cut to their last sentence; "cot"/"direct" and the 0-based
# index name the file and row. Hedges and non-answers do not occur in those outputs, so those
# rows write them into a real final sentence (date_understanding cot #1, target "(A)").
DATE_1 = "The date a month ago is January 1, 1987, that is 01/01/1987. So the answer is"


@pytest.mark.parametrize(
    ("text", "answer_type", "strict", "flexible"),
    [
        (f"{DATE_1} (B).", "multiple_choice", "(B)", "(B)"),  # date_understanding cot #1, as written
        # sports_understanding cot #0
        ("Beating the buzzer is part of ice hockey. So the answer is yes.", "yes_no", "yes", "yes"),
        ("{ { } ( ( ) ) }", "dyck", "{ { } ( ( ) ) }", "{ { } ( ( ) ) }"),  # dyck_languages direct #29
        ("", "dyck", None, None),  # dyck_languages direct #54: an empty completion
        # A hedge between options is no answer, as the number judge refuses "3 or 5".
        (f"{DATE_1} (A) or (B).", "multiple_choice", None, None),
        (f"{DATE_1} either (A) or (C).", "multiple_choice", None, None),
        (f"{DATE_1} (A), (B) and (D).", "multiple_choice", None, None),
        ("(A) or (B)", "multiple_choice", None, None),  # an answer-only completion
        ("So the answer is yes or no.", "yes_no", None, None),
        ("So the answer is 3 or 5.", "number", None, None),
        # The same option twice is one answer.
        (f"{DATE_1} (A), that is (A).", "multiple_choice", "(A)", "(A)"),
        # An explicit non-answer gets no credit in either mode.
        (f"{DATE_1} none of the options.", "multiple_choice", None, None),
        (f"{DATE_1} that it cannot be determined from (A)-(F).", "multiple_choice", None, None),
        (f"{DATE_1} not (B).", "multiple_choice", None, None),
        ("Option (A) is close.\nNone of the options fit.", "multiple_choice", None, None),
        ("(A) is close, but the answer cannot be determined.", "multiple_choice", None, None),
        ("So the answer is empty.", "dyck", None, None),
        ("We get 5.\nThe answer cannot be determined.", "number", None, None),
        # A phrase with nothing readable after it: flexible reads neither on past it nor back.
        (f"{DATE_1} .\nLooking at the options again, (A) fits.", "multiple_choice", None, None),
        # (the line after the phrase is read as an option's text, which matches no letter)
        (
            f"{DATE_1}:\nLet me check. (A) fits.",
            "multiple_choice",
            "let me check. (a) fits",
            "let me check. (a) fits",
        ),
        ("Today is 02/01/1987, so (A) is 12/02/1986. So the answer is", "multiple_choice", None, None),
        # ... but an answer on the line after the phrase is the phrase's answer.
        (f"{DATE_1}:\n(A)", "multiple_choice", "(A)", "(A)"),
        # Flexible takes the one option the answer sentence names; strict wants it first.
        (f"{DATE_1} the first option, (A).", "multiple_choice", "the first option, (a)", "(A)"),
    ],
)
def test_hedges_non_answers_and_empty_phrases(
    text: str, answer_type: str, strict: str | None, flexible: str | None
) -> None:
    assert extract_bbh_answer(text, answer_type, "strict") == strict  # type: ignore[arg-type]
    assert extract_bbh_answer(text, answer_type, "flexible") == flexible  # type: ignore[arg-type]


def test_matching_is_by_kind() -> None:
    assert bbh_matches("24.0", "24", "number")
    assert not bbh_matches("240", "24", "number")
    assert bbh_matches("]]>", "] ] >", "dyck")
    assert not bbh_matches("] >", "] ] >", "dyck")
    assert bbh_matches("monsters,  inc", "Monsters, Inc", "multiple_choice")
    assert not bbh_matches("(A)", "Monsters, Inc", "multiple_choice")
    assert not bbh_matches(None, "(A)", "multiple_choice")
    with pytest.raises(ValueError, match="answer_type"):
        extract_bbh_answer("x", "letters", "strict")  # type: ignore[arg-type]


@pytest.mark.parametrize("task", BBH_TASKS)
def test_prompts_have_three_exemplars_whose_answers_are_of_the_task_kind(task: str) -> None:
    prompt = load_bbh_prompt(task, DATA)
    assert len(prompt.exemplars) == 3 and prompt.description
    for shot in prompt.exemplars:
        assert bbh_matches(shot.answer, shot.answer, TASK_ANSWER_TYPES[task])
    cot = prompt.render("QUESTION")
    assert cot.endswith("Q: QUESTION\nA: Let's think step by step.") and cot.count("So the answer is") == 3
    short = prompt.render("QUESTION", "answer_only", num_exemplars=1)
    assert short.endswith("Q: QUESTION\nA:") and "step by step" not in short
    assert short.count("\nA: ") == 1 and prompt.exemplars[-1].question in short


def test_malformed_task_file_names_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "bbh" / "bbh").mkdir(parents=True)
    path = tmp_path / "bbh" / "bbh" / "navigate.json"
    path.write_text(
        json.dumps({"examples": [{"input": "q", "target": "Yes"}, {"input": "q", "target": "(A)"}]})
    )
    with pytest.raises(DataError, match=r"navigate\.json \[row 1\] field 'target'"):
        load_bbh_task("navigate", tmp_path)
    path.write_text('{"examples": [\n{"input": "q",, }]}')
    with pytest.raises(DataError, match=r"navigate\.json:2"):
        load_bbh_task("navigate", tmp_path)
    with pytest.raises(DataError, match="unknown BBH task"):
        resolve_bbh_tasks(["navigation"])


@pytest.fixture(scope="module")
def tiny_student():
    from mwp.student.model import build_student

    size = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}
    models = Path(__file__).resolve().parents[3] / "shared" / "models" / "flan-t5-small"
    models = models if models.is_dir() else Path("/work/shared/models/flan-t5-small")
    if not models.is_dir():
        pytest.skip("flan-t5-small config not found")
    return build_student("x", pretrained="never", fallback_config=models, size=size, seed=0)


@pytest.mark.slow
def test_evaluate_bbh_with_a_tiny_student_on_every_task(tiny_student) -> None:
    from mwp.evaluation.bbh import evaluate_bbh, format_bbh_table

    result = evaluate_bbh(
        tiny_student.model,
        tiny_student.tokenizer,
        "all",
        prompt="cot",
        limit_per_task=2,
        batch_size=8,
        max_source_len=256,
        max_new_tokens=4,
        data_dir=DATA,
        model_name="tiny-t5",
    )
    assert [t.task for t in result.tasks] == list(BBH_TASKS) and result.size == 54
    # Most 3-shot CoT prompts are longer than 256 tokens: those sources dropped exemplars.
    assert sum(t.shortened for t in result.tasks) > 40
    for t in result.tasks:
        assert len(t.predictions) == 2
        assert t.shortened == sum(p["exemplars"] < 3 for p in t.predictions)
    mean = sum(t.strict_acc for t in result.tasks) / 27
    assert result.macro_strict_acc == pytest.approx(mean)
    table = format_bbh_table(result)
    assert "tiny-t5" in table and "cot prompt" in table and "macro average (27 tasks)" in table
    assert "split all" in table and "strict acc" in table and "word_sorting" in table


def test_evaluate_stage_writes_bbh_results(tiny_student, tmp_path: Path, capsys) -> None:
    from mwp.evaluation.suite import run_bbh

    bbh = OmegaConf.create(
        {
            "tasks": ["navigate", "dyck_languages"],
            "prompt": "answer_only",
            "limit_per_task": 3,
            "max_source_len": 2048,
            "max_new_tokens": 3,
            "batch_size": 4,
        }
    )
    run_bbh(tiny_student.model, tiny_student.tokenizer, bbh, str(DATA), tmp_path, [], model_name="tiny")
    summary = json.loads((tmp_path / "bbh_results.json").read_text())
    assert summary["prompt"] == "answer_only" and summary["size"] == 6 and summary["num_tasks"] == 2
    assert [t["task"] for t in summary["tasks"]] == ["navigate", "dyck_languages"]
    assert all(t["shortened"] == 0 and t["truncated"] == 0 for t in summary["tasks"])
    rows = (tmp_path / "predictions_bbh_answer_only.jsonl").read_text().splitlines()
    assert len(rows) == 6 and json.loads(rows[0])["id"] == "bbh/navigate/0"
    assert "macro average (2 tasks)" in capsys.readouterr().out
