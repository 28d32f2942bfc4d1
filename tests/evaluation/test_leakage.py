"""Training and evaluation are kept apart by normalised question content, on the bundled data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mwp.config import ConfigError
from mwp.data.artifact import DistilledRow
from mwp.data.dedup import drop_seen, normalize_question, question_keys
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.evaluation.scoring import EvalResult, format_table
from mwp.evaluation.suite import seen_questions, select_eval_problems
from mwp.paths import REPO_ROOT
from mwp.stages import load_config
from mwp.student.datamodule import DistilledDataModule, split_problems_by_question
from tests.helpers import compose_config

DATASET_CONFIGS = sorted(p.stem for p in (REPO_ROOT / "conf" / "dataset").glob("*.yaml"))

# (dataset config, evaluation set) -> test problems dropped as copies of training problems, measured
# on the bundled data; every other pair drops none.
EXPECTED_DROPPED = {
    ("multiarith", "multiarith/test"): 5,
    ("multiarith", "asdiv_a/test"): 35,
    ("asdiv_a", "multiarith/test"): 9,
    ("math23k", "math23k/test"): 3,
}


@pytest.fixture(scope="module")
def tokenizer(flan_t5_dir: Path):
    return AutoTokenizer.from_pretrained(flan_t5_dir)


def test_normalisation_ignores_formatting_but_not_content() -> None:
    a = normalize_question("Sam has 5.0 apples ,  and  1,000 pears.")
    assert a == normalize_question("sam has 5 apples, and 1000 pears")
    assert a != normalize_question("Sam has 6 apples, and 1000 pears.")
    assert normalize_question("It costs $2.50.") != normalize_question("It costs $25.")
    assert normalize_question("小明有３个苹果。") == normalize_question("小明有3个苹果")


@pytest.mark.parametrize("dataset", DATASET_CONFIGS)
def test_no_evaluated_question_is_in_the_training_data(dataset: str, data_dir: Path, tmp_path: Path) -> None:
    # Validated as a run is (a live teacher covers any dataset): that also registers a custom dataset.
    cfg = compose_config([f"dataset={dataset}", "teacher=smollm2"], run_dir=tmp_path)
    load_config(cfg)
    train = question_keys(load_problems(cfg.dataset.name, cfg.dataset.train_split, data_dir))
    seen = seen_questions(cfg, tmp_path / "no-student")  # what run_evaluate drops without a student file
    for spec in cfg.dataset.eval_sets:
        kept, dropped = select_eval_problems(spec.name, spec.split, data_dir, seen)
        assert kept, f"{dataset}: {spec.name}/{spec.split} is empty"
        assert not question_keys(kept) & train
        assert dropped == EXPECTED_DROPPED.get((dataset, f"{spec.name}/{spec.split}"), 0)


def test_the_student_file_of_seen_questions_is_dropped_too(data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(["dataset=svamp"], run_dir=tmp_path)
    test = load_problems("svamp", "test", data_dir)
    (tmp_path / "seen_questions.txt").write_text(normalize_question(test[0].question) + "\n")
    kept, dropped = select_eval_problems("svamp", "test", data_dir, seen_questions(cfg, tmp_path), limit=10)
    assert dropped == 1 and len(kept) == 10 and test[0].id not in {p.id for p in kept}


def test_multiarith_twins_fall_on_one_side_of_the_hold_out(data_dir: Path) -> None:
    problems = load_problems("multiarith", "train", data_dir)
    counts = Counter(normalize_question(p.question) for p in problems)
    assert sum(n > 1 for n in counts.values()) == 12  # the duplicate pairs under different ids
    for seed in range(5):
        train, val = split_problems_by_question(problems, 0.2, seed)
        by_id = {p.id: normalize_question(p.question) for p in problems}
        assert not {by_id[i] for i in train} & {by_id[i] for i in val}
        assert len(train) + len(val) == len(problems)


def _rows(problems: list[Problem]) -> list[DistilledRow]:
    return [
        DistilledRow(
            problem=p,
            rationale=f"We work it out from {', '.join(p.numbers) or 'the question'}.",
            teacher="gold",
            sample_index=s,
        )
        for p in problems
        for s in range(2)
    ]


@pytest.mark.parametrize(
    ("dataset", "split"), [("multiarith", "train"), ("weak12k", "valid"), ("svamp", "train")]
)
def test_in_context_training_works_and_keeps_every_exemplar(
    dataset: str, split: str, data_dir: Path, tokenizer
) -> None:
    problems = load_problems(dataset, split, data_dir, limit=150)
    dm = DistilledDataModule(
        _rows(problems),
        tokenizer,
        formats=["in_context_cot", "in_context_answer"],
        num_exemplars=2,
        val_fraction=0.1,
        train_split=split,
    )
    dm.setup("fit")
    questions = {p.id: normalize_question(p.question) for p in problems}
    val_keys = {normalize_question(i.problem.question) for i in dm.val_items}
    for example in dm.train_examples:
        exemplar_keys = [questions[i] for i in example.exemplar_ids]
        assert len(set(exemplar_keys)) == 2 and questions[example.problem_id] not in exemplar_keys
        assert not set(exemplar_keys) & val_keys
    assert not {questions[i] for i in dm.train_ids} & val_keys
    lengths = [len(ids) for ids in tokenizer([e.source for e in dm.train_examples])["input_ids"]]
    assert max(lengths) <= dm.max_source_len  # auto: nothing is cut
    stats = dm.stats["exemplars"]
    assert stats["kept_min"] == 2 and stats["kept_mean"] == 2 and stats["all_kept_share"] == 1


def test_a_source_budget_too_short_for_the_exemplars_fails_naming_the_key(data_dir: Path, tokenizer) -> None:
    rows = _rows(load_problems("svamp", "train", data_dir, limit=60))
    dm = DistilledDataModule(
        rows, tokenizer, formats=["in_context_cot"], max_source_len=96, train_split="train"
    )
    with pytest.raises(
        ConfigError, match=r"data.max_source_len=96 keeps all 2 exemplars in only \d+%.* need \d+ tokens"
    ):
        dm.setup("fit")


def test_generation_must_cover_the_training_targets(data_dir: Path, tokenizer) -> None:
    rows = _rows(load_problems("svamp", "train", data_dir, limit=60))
    with pytest.raises(
        ConfigError, match=r"data\.max_new_tokens=4 is shorter than 95% of the training targets"
    ):
        DistilledDataModule(rows, tokenizer, max_new_tokens=4).setup("fit")
    auto = DistilledDataModule(rows, tokenizer)
    auto.setup("fit")
    targets = [len(ids) for ids in tokenizer([e.target for e in auto.train_examples])["input_ids"]]
    assert auto.max_new_tokens == max(targets) == auto.stats["target_tokens"]["max"]


def test_the_table_and_summary_report_what_was_dropped() -> None:
    result = EvalResult("multiarith", "test", "in-distribution", size=175, dropped=5)
    assert result.summary()["dropped"] == 5
    table = format_table([result])
    assert "dropped" in table.splitlines()[2] and "| 5 " in table.splitlines()[4]


def test_drop_seen_keeps_order_and_never_touches_unseen(data_dir: Path) -> None:
    test = load_problems("multiarith", "test", data_dir)
    filtered = drop_seen(test, question_keys(test[3:5]))
    assert [p.id for p in filtered.dropped] == [p.id for p in test[3:5]]
    assert [p.id for p in filtered.kept] == [p.id for p in test[:3] + test[5:]]


@pytest.mark.parametrize(("mode", "expected"), [("strict", 1), ("flexible", 2)])
def test_checkpoint_selection_reads_answers_like_the_headline(
    mode: str, expected: int, flan_t5_dir: Path
) -> None:
    from mwp.student.model import build_student
    from mwp.student.module import StudentModule

    tiny = {"d_model": 16, "d_ff": 32, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=tiny, seed=0)
    module = StudentModule(bundle.model, bundle.tokenizer, val_extraction=mode)
    completions = ["So 3 + 4 = 7. The answer is 7.", "So 3 + 4 = 7"]  # the second lost its answer sentence
    module.generate = lambda input_ids, attention_mask: completions  # type: ignore[method-assign]
    module.validation_step({"input_ids": None, "attention_mask": None, "answers": ["7", "7"]}, 0)
    assert module._val_correct == expected and module.hparams["val_extraction"] == mode
