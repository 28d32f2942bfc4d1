from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mwp.config import ConfigError
from mwp.data.artifact import DistilledRow, read_distilled
from mwp.data.dedup import normalize_question
from mwp.data.formats import FORMATS, Example, gold_exemplar_pool, gold_rationale
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.data.text import to_student_text
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.student.datamodule import DistilledDataModule, build_train_items, split_problem_ids
from mwp.verify.equation_checks import check_teacher_equation
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dm")
    cfg = compose_config(["stage=distill", "dataset.limit=80"], run_dir=out)
    run_distill(load_config(cfg), out / "distill")
    # The equation format's templates, as the equation route writes them: the completions' final expressions.
    rows = []
    for row in read_distilled(out / "distill"):
        check = check_teacher_equation(row.rationale, row.problem)
        rows.append(dataclasses.replace(row, template=check.template) if check.passed else row)
    return rows


@pytest.fixture(scope="module")
def tokenizer(flan_t5_dir: Path):
    return AutoTokenizer.from_pretrained(flan_t5_dir)


def test_split_is_by_problem_and_deterministic() -> None:
    ids = [f"p{i}" for i in range(50)]
    train, val = split_problem_ids(ids + ids[:10], 0.2, seed=1)
    assert len(val) == 10 and not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert split_problem_ids(ids, 0.2, seed=1) == (train, val)


def test_val_size_holds_out_a_count_that_overrides_the_fraction() -> None:
    ids = [f"p{i}" for i in range(50)]
    train, val = split_problem_ids(ids, 0.5, seed=1, val_size=7)
    assert len(val) == 7 and len(train) == 43 and not set(train) & set(val)
    # One seeded shuffle: a smaller hold-out is a subset of a larger one.
    assert set(split_problem_ids(ids, 0.0, seed=1, val_size=3)[1]) < set(val)
    with pytest.raises(ConfigError, match=r"data\.val_size=50 would hold out all 50"):
        split_problem_ids(ids, 0.1, seed=1, val_size=50)


def test_val_size_counts_problems_in_the_datamodule(rows: list[dict], tokenizer) -> None:
    dm = DistilledDataModule(rows, tokenizer, val_fraction=0.5, val_size=5)
    dm.setup("fit")
    assert len(dm.val_items) == dm.stats["val_problems"] == 5
    assert not {item.problem.id for item in dm.val_items} & dm.train_ids


def test_batch_size_by_format_picks_the_smallest_over_the_trained_formats(
    rows: list[dict], tokenizer
) -> None:
    sizes = {"zero_shot_cot": 6, "in_context_cot": 2, "zero_shot_answer": 16}
    dm = DistilledDataModule(
        rows, tokenizer, formats=["zero_shot_cot"], batch_size=4, batch_size_by_format=sizes
    )
    dm.setup("fit")
    assert dm.stats["batch_size"] == 6
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 6
    mixed = DistilledDataModule(
        rows, tokenizer, formats=["zero_shot_answer", "in_context_cot"], batch_size_by_format=sizes
    )
    assert mixed.batch_size == 2
    with pytest.raises(ConfigError, match=r"no size for \['in_context_answer'\]"):
        DistilledDataModule(rows, tokenizer, formats=["in_context_answer"], batch_size_by_format=sizes)


def test_schema_checks_val_size_and_per_format_batch_sizes() -> None:
    load_config(compose_config(["data.val_size=500", "data.batch_size_by_format={zero_shot_cot: 4}"]))
    for override, message in [
        ("data.val_size=-1", r"data\.val_size: Input should be greater than or equal to 0"),
        ("data.batch_size_by_format={zero_shot_cot: 0}", r"data\.batch_size_by_format: .*\[1, 65536\]"),
        ("data.batch_size_by_format={zero_shot_answer: 4}", r"no size for \['zero_shot_cot'\]"),
        ("data.batch_size_by_format={zero_shot: 4}", r"data\.batch_size_by_format\.zero_shot"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(compose_config([override]))


def test_validation_problems_never_train(rows: list[dict], tokenizer) -> None:
    dm = DistilledDataModule(rows, tokenizer, formats=list(FORMATS), val_fraction=0.25, num_exemplars=2)
    dm.setup("fit")
    val_ids = {item.problem.id for item in dm.val_items}
    assert val_ids and not val_ids & dm.train_ids
    assert {e.problem_id for e in dm.train_examples} == dm.train_ids
    assert {e.format for e in dm.train_examples} == set(FORMATS)


def test_batches_mask_padding_and_keep_no_unk(rows: list[dict], tokenizer) -> None:
    dm = DistilledDataModule(rows, tokenizer, formats=["zero_shot_cot", "in_context_answer"], batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    assert (batch["labels"] == -100).any() or batch["labels"].shape[1] > 0
    labels = batch["labels"][batch["labels"] != -100]
    assert tokenizer.unk_token_id not in labels.tolist()
    assert tokenizer.unk_token_id not in batch["input_ids"].tolist()
    val = next(iter(dm.val_dataloader()))
    assert len(val["ids"]) == val["input_ids"].shape[0] == len(val["answers"])


def test_empty_distilled_data_is_a_clear_error(tokenizer) -> None:
    with pytest.raises(ValueError, match="no distilled rows"):
        DistilledDataModule([], tokenizer)


@pytest.fixture(scope="module")
def gsm8k_rows(data_dir: Path) -> list[DistilledRow]:
    """Two made-up teacher samples for each of 40 real GSM8K training problems, plus the first problem's
    question again under another id, spelt differently (MultiArith-style repeats)."""
    problems = load_problems("gsm8k", "train", data_dir, limit=40)
    first = problems[0]
    repeat = dataclasses.replace(first, id="gsm8k/train/repeat", question=f"  {first.question.upper()}  ")
    return [
        DistilledRow(problem, f"Teacher sample {k} for {problem.id}.", "teacher", k)
        for problem in [*problems, repeat]
        for k in range(2)
    ]


def _exemplar_problems(items, rows) -> list[tuple[Example, list[Problem]]]:
    by_id = {row.problem.id: row.problem for row in rows}
    return [(i.example, [by_id[e] for e in i.example.exemplar_ids]) for i in items]


def test_gold_exemplars_show_the_datasets_own_solutions_redrawn_per_example(gsm8k_rows) -> None:
    items = build_train_items(gsm8k_rows, ["in_context_cot"], 4, seed=3, exemplar_source="gold")
    shown = _exemplar_problems(items, gsm8k_rows)
    assert len(shown) == len(gsm8k_rows)
    for example, exemplars in shown:
        assert len(exemplars) == 4
        # the shots are gold solutions without calculator notes, never a teacher rationale ...
        assert "Teacher sample" not in example.source and "<<" not in example.source
        for problem in exemplars:
            gold = gold_rationale(problem)
            assert gold is not None and to_student_text(gold) in example.source
        # ... while the target stays the example's own teacher sample
        assert example.target.startswith("Teacher sample")
    # each example draws its own four
    draws = [tuple(e.exemplar_ids) for e, _ in shown]
    assert len(set(draws)) > 0.9 * len(draws)
    # the teacher's rationales are still one setting away
    rationales = build_train_items(gsm8k_rows, ["in_context_cot"], 4, seed=3)
    assert all(item.example.source.count("Teacher sample") == 4 for item in rationales)


def test_a_gold_exemplar_is_never_the_examples_own_question_under_any_id(gsm8k_rows) -> None:
    items = build_train_items(
        gsm8k_rows, ["in_context_cot", "in_context_answer"], 4, seed=0, exemplar_source="gold"
    )
    own = {row.problem.id: normalize_question(row.problem.question) for row in gsm8k_rows}
    repeated = {"gsm8k/train/0", "gsm8k/train/repeat"}
    for example, exemplars in _exemplar_problems(items, gsm8k_rows):
        assert all(normalize_question(p.question) != own[example.problem_id] for p in exemplars)
        if example.problem_id in repeated:
            assert not repeated & set(example.exemplar_ids)
    # one gold entry per question: the repeat is drawn as often as any other problem, not twice as often
    assert len(gold_exemplar_pool([row.problem for row in gsm8k_rows])) == 40


def test_gold_exemplars_come_from_the_training_side_of_the_hold_out(gsm8k_rows, tokenizer) -> None:
    dm = DistilledDataModule(
        gsm8k_rows, tokenizer, formats=["in_context_cot"], num_exemplars=4, exemplars="gold", val_size=8
    )
    dm.setup("fit")
    used = {e for example in dm.train_examples for e in example.exemplar_ids}
    assert used and used <= dm.train_ids
    assert dm.stats["exemplars"]["source"] == "gold" and dm.stats["exemplars"]["kept_min"] == 4


def test_gold_exemplars_need_worked_solutions(gsm8k_rows, tokenizer) -> None:
    bare = [
        dataclasses.replace(row, problem=dataclasses.replace(row.problem, solution=None, equation=None))
        for row in gsm8k_rows
    ]
    with pytest.raises(ConfigError, match=r"data\.exemplars=gold: 0 training problems"):
        build_train_items(bare, ["in_context_cot"], 4, seed=0, exemplar_source="gold")
    with pytest.raises(ConfigError, match=r"data\.exemplars='teacher'"):
        DistilledDataModule(gsm8k_rows, tokenizer, exemplars="teacher")
    with pytest.raises(ConfigError, match=r"data\.exemplars: Input should be 'rationales' or 'gold'"):
        load_config(compose_config(["data.exemplars=teacher"]))
