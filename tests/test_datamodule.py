from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mwp.data.datamodule import DistilledDataModule, split_problem_ids
from mwp.data.formats import FORMATS
from mwp.stages.distill import read_distilled, run_distill
from mwp.verify.equation_checks import check_teacher_equation
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dm")
    cfg = compose_config(["stage=distill", "dataset.limit=80"], run_dir=out)
    run_distill(cfg, out / "distill")
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
