"""Trained student vocabularies (word-level English, char-level Chinese) and equation-format runs of `mwp`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from mwp.config import ConfigError
from mwp.data import EQUATION, load_problems, write_distilled
from mwp.data.artifact import read_distilled
from mwp.data.formats import build_equation_example, equation_source
from mwp.pipeline import run
from mwp.stages import load_config
from mwp.student.model import build_student
from mwp.student.tokenizer import train_tokenizer
from mwp.verify.equation_checks import check_teacher_equation
from mwp.verify.equations import equation_to_template
from tests.helpers import compose_config


def _texts(problems, language: str) -> list[str]:
    texts = []
    for problem in problems:
        equation = problem.equation or ""
        try:
            template = equation_to_template(equation if "=" in equation else f"x={equation}", problem.numbers)
            example = build_equation_example(problem, template)
        except ValueError:
            continue
        texts += [example.source, example.target]
    assert texts and all(p.language == language for p in problems)
    return texts


@pytest.mark.parametrize(
    ("dataset", "kind", "language"), [("svamp", "word", "en"), ("math23k", "char", "zh")]
)
def test_a_trained_vocabulary_is_saved_with_the_student_and_reloads(
    tmp_path: Path, data_dir: Path, flan_t5_dir: Path, dataset: str, kind: str, language: str
) -> None:
    problems = load_problems(dataset, "train", data_dir)[:400]
    texts = _texts(problems, language)
    bundle = build_student(
        "unused",
        pretrained="never",
        fallback_config=flan_t5_dir,
        size={
            "d_model": 64,
            "d_ff": 128,
            "d_kv": 16,
            "num_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 4,
        },
        seed=0,
        tokenizer=kind,
        vocab_min_frequency=2,
        training_texts=texts,
    )
    tokenizer, model = bundle.tokenizer, bundle.model
    # A small vocabulary at T5's special ids, and the model sized to it.
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert 50 < len(tokenizer) < (5000 if kind == "word" else 3000) and model.config.vocab_size == len(
        tokenizer
    )
    held_out = equation_source(load_problems(dataset, "test", data_dir)[0])
    ids = tokenizer(held_out)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert "N0" in pieces and (
        kind == "word" or all(len(p) == 1 or p.startswith(("N", "<", "</")) or p.isdigit() for p in pieces)
    )
    target = tokenizer("(N0-N1)*N2")
    assert tokenizer.convert_ids_to_tokens(target["input_ids"]) == [
        "(",
        "N0",
        "-",
        "N1",
        ")",
        "*",
        "N2",
        "</s>",
    ]

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    reloaded = T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded_tokenizer(held_out)["input_ids"] == ids and len(reloaded_tokenizer) == len(tokenizer)
    assert (
        reloaded_tokenizer.decode(target["input_ids"], skip_special_tokens=True).replace(" ", "")
        == "(N0-N1)*N2"
    )
    batch = reloaded_tokenizer([held_out], return_tensors="pt")
    with torch.no_grad():
        args = {"decoder_input_ids": torch.zeros((1, 1), dtype=torch.long), **batch}
        assert torch.allclose(model.eval()(**args).logits, reloaded.eval()(**args).logits, atol=1e-5)


def test_trained_tokenizers_need_a_random_init_and_their_training_texts(flan_t5_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"student\.pretrained=never"):
        build_student(
            "unused", pretrained="auto", fallback_config=flan_t5_dir, tokenizer="word", training_texts=["a"]
        )
    with pytest.raises(ValueError, match="training_texts"):
        build_student("unused", pretrained="never", fallback_config=flan_t5_dir, tokenizer="char")
    with pytest.raises(ValueError, match="trained tokenizer"):
        train_tokenizer(["a"], "pretrained")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["student.tokenizer=word"], "student"),
        (["data.eval_format=equation"], "data"),
        (["data.formats=[equation]"], "data"),
        (["data.equation_notation=postfix"], "data.equation_notation"),
    ],
)
def test_the_schema_refuses_inconsistent_equation_settings_before_any_work(
    tmp_path: Path, overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(compose_config(overrides, run_dir=tmp_path))


@pytest.fixture(scope="module")
def templated_distill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded PaLM teacher's SVAMP rows (debug size) with the templates of their final expressions."""
    folder = tmp_path_factory.mktemp("distill")
    run(compose_config(["stage=distill", "debug=default", "dataset.limit=120"], run_dir=folder))
    rows = []
    for row in read_distilled(folder / "distill"):
        check = check_teacher_equation(row.rationale, row.problem)
        if check.passed:  # a template whose value is not the gold answer is not kept
            row = dataclasses.replace(row, template=check.template, equation=check.corrected)
        rows.append(row)
    assert 0 < sum(r.template is not None for r in rows) < len(rows)
    path = folder / "templated.jsonl"
    write_distilled(path, rows)
    return path


def _train_and_evaluate(tmp_path: Path, data: Path, overrides: list[str]) -> tuple[list[dict], dict]:
    cfg = compose_config(
        [
            "stage=train",
            "stage.steps=[train,evaluate]",
            f"stage.data={data}",
            "debug=default",
            "student=t5_equation",
            "student.size.d_model=64",
            "student.size.d_ff=128",
            "student.size.num_layers=1",
            "student.size.num_decoder_layers=1",
            "dataset.eval_sets=[{name: svamp, split: test, role: in-distribution}]",
            *overrides,
        ],
        run_dir=tmp_path,
    )
    run(cfg)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    stats = json.loads((tmp_path / "student" / "train_stats.json").read_text())
    return results, stats


@pytest.mark.slow
def test_an_equation_student_trains_validates_and_is_scored_beside_the_baseline(
    tmp_path: Path, templated_distill: Path
) -> None:
    results, stats = _train_and_evaluate(
        tmp_path,
        templated_distill,
        ["data.formats=[equation]", "data.eval_format=equation", "evaluation.formats=[equation]"],
    )
    rows = read_distilled(templated_distill)
    assert stats["equation"]["skipped_no_template"] > 0
    assert stats["equation"]["examples"] + stats["equation"]["skipped_no_template"] <= len(rows)
    student, baseline = results
    assert student["model"] == "student" and student["extraction"] == "equation" and student["size"] == 6
    assert (
        baseline["model"]
        == f"baseline: most frequent template ({stats['equation']['most_frequent_template']})"
    )
    predictions = (tmp_path / "eval" / "predictions_svamp_test_equation.jsonl").read_text().splitlines()
    first = json.loads(predictions[0])
    assert len(predictions) == 6 and {"template", "equation", "value", "error"} <= set(first)
    metrics = (next((tmp_path / "csv").glob("version_*/metrics.csv"))).read_text()
    assert "val/acc" in metrics
    # The student folder reloads on its own, vocabulary included.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert (
        len(tokenizer) == T5ForConditionalGeneration.from_pretrained(tmp_path / "student").config.vocab_size
    )


@pytest.mark.slow
def test_a_multi_task_student_learns_rationales_and_equations(
    tmp_path: Path, templated_distill: Path
) -> None:
    results, stats = _train_and_evaluate(
        tmp_path,
        templated_distill,
        [
            f"data.formats=[zero_shot_cot,{EQUATION}]",
            "data.equation_notation=prefix",
            f"evaluation.formats=[zero_shot_cot,{EQUATION}]",
            "data.max_target_len=96",
        ],
    )
    assert [(r["model"].split(":")[0], r["format"]) for r in results] == [
        ("student", "zero_shot_cot"),
        ("student", EQUATION),
        ("baseline", EQUATION),
    ]
    assert (
        stats["equation"]["notation"] == "prefix" and stats["train_examples"] > stats["equation"]["examples"]
    )
