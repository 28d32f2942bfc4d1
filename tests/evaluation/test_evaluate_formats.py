"""The evaluate stage in Fu et al.'s four formats: exemplars from the train split only, fixed by seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mwp.config import ConfigError
from mwp.data.dedup import normalize_question
from mwp.data.loaders import load_problems
from mwp.evaluation.exemplars import ExemplarPool, gold_rationale
from mwp.pipeline import run
from mwp.stages import load_config
from tests.helpers import compose_config

FOUR = "[zero_shot_cot,zero_shot_answer,in_context_cot,in_context_answer]"


@pytest.fixture(scope="module")
def data_dir() -> str:
    return str(compose_config().paths.data_dir)


def test_normalize_question_folds_case_punctuation_and_spacing() -> None:
    assert normalize_question("Tom has 5 apples.  How many?") == normalize_question(
        "tom has 5 apples how many"
    )
    assert normalize_question("Tom has 5 apples") != normalize_question("Tom has 6 apples")


def test_gold_rationales_drop_gsm8k_calculator_marks_and_use_svamp_equations(data_dir: str) -> None:
    (gsm,) = load_problems("gsm8k", "train", data_dir, limit=1)
    text = gold_rationale(gsm)
    assert text is not None and "<<" not in text and "####" not in text and "48+24 = 72" in text
    (svamp,) = load_problems("svamp", "train", data_dir, limit=1)
    assert gold_rationale(svamp) == "( 84.0 / 2.0 ) = 42."


def test_the_pool_drops_every_question_of_the_evaluated_set(data_dir: str) -> None:
    # MultiArith repeats questions under new ids: some test questions are also training questions.
    train = load_problems("multiarith", "train", data_dir)
    evaluated = load_problems("multiarith", "test", data_dir)
    pool = ExemplarPool.build(train, evaluated)
    banned = {normalize_question(p.question) for p in evaluated}
    assert pool.removed_overlap > 0
    assert not banned & set(pool.keys)
    assert all(p.meta.get("split") == "train" for p, _ in pool.entries)


def test_draws_are_fixed_by_seed_and_never_the_problem(data_dir: str) -> None:
    train = load_problems("svamp", "train", data_dir)
    # Evaluate on training problems themselves: the pool keeps them, the draw must still skip each one.
    probe = train[:30]
    pool = ExemplarPool.build(train, [])
    for problem in probe:
        first = [p.id for p, _ in pool.draw(problem, 4, seed=7)]
        assert first == [p.id for p, _ in pool.draw(problem, 4, seed=7)]
        assert len(set(first)) == 4 and problem.id not in first
        assert all(
            normalize_question(p.question) != normalize_question(problem.question)
            for p, _ in pool.draw(problem, 4, seed=7)
        )
    other = [[p.id for p, _ in pool.draw(q, 4, seed=8)] for q in probe]
    assert other != [[p.id for p, _ in pool.draw(q, 4, seed=7)] for q in probe]
    with pytest.raises(ValueError, match=r"evaluation\.num_exemplars"):
        ExemplarPool.build(train[:3], []).draw(train[0], 3, seed=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evaluation.formats=[in_context]"], r"evaluation\.formats\.0"),
        (["evaluation.formats=[zero_shot_cot,zero_shot_cot]"], r"evaluation\.formats.*repeat"),
        (["evaluation.models=[studnet]"], r"evaluation\.models\.0='studnet'"),
        (["evaluation.models=[hf:/nonexistent/model]"], r"evaluation\.models\.0='hf:/nonexistent/model'"),
        (
            ["evaluation.models=[student,teacher]"],
            r"evaluation\.models\.1=teacher: 'palm-540b' replays .* cannot answer new ones",
        ),
    ],
)
def test_evaluation_mistakes_fail_before_work(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_config(overrides, run_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_evaluating_only_a_live_teacher_needs_no_student(tmp_path: Path) -> None:
    cfg = compose_config(
        ["stage=evaluate", "teacher=smollm2", "evaluation.models=[teacher]"], run_dir=tmp_path
    )
    assert load_config(cfg).evaluation.models == ["teacher"]
    with pytest.raises(ConfigError, match=r"stage\.student"):
        load_config(compose_config(["stage=evaluate"], run_dir=tmp_path))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_debug_run_reports_the_four_formats_and_an_hf_folder_matches_the_student(
    tmp_path: Path, data_dir: str
) -> None:
    sets = (
        "[{name:svamp,split:test,role:in-distribution},{name:multiarith,split:test,role:out-of-distribution}]"
    )
    common = ["experiment=demo", "debug=default", "data.max_source_len=320", f"dataset.eval_sets={sets}"]
    cfg = compose_config(
        [*common, f"evaluation.formats={FOUR}", "evaluation.exemplar_seed=3"], run_dir=tmp_path
    )
    run(cfg)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [(r["model"], r["dataset"], r["format"]) for r in results] == [
        ("student", name, fmt)
        for name in ("svamp", "multiarith")
        for fmt in ("zero_shot_cot", "zero_shot_answer", "in_context_cot", "in_context_answer")
    ]
    train = {p.id: p for p in load_problems("svamp", "train", data_dir)}
    for r in results:
        slug = f"{r['dataset']}_test" + ("" if r["format"] == "zero_shot_cot" else f"_{r['format']}")
        rows = _rows(tmp_path / "eval" / f"predictions_{slug}.jsonl")
        assert len(rows) == r["size"] == cfg.evaluation.limit
        for row in rows:
            assert row["format"] == r["format"] and row["model"] == "student"
            if r["format"].startswith("in_context"):
                # two exemplars fit in 320 tokens; they are SVAMP training problems, never the question
                assert len(row["exemplar_ids"]) == cfg.evaluation.num_exemplars
                for eid in row["exemplar_ids"]:
                    assert normalize_question(train[eid].question) != normalize_question(row["question"])
            else:
                assert row["exemplar_ids"] == []
        assert r["mean_exemplars"] == (2.0 if r["format"].startswith("in_context") else 0.0)
    in_context = _rows(tmp_path / "eval" / "predictions_svamp_test_in_context_cot.jsonl")
    # Answer-only and CoT sources of one problem share its draw (same seed, same problem id).
    answer_only = _rows(tmp_path / "eval" / "predictions_svamp_test_in_context_answer.jsonl")
    assert [r["exemplar_ids"] for r in in_context] == [r["exemplar_ids"] for r in answer_only]

    # The trained student folder evaluated as a plain HF seq2seq folder gives the same completions.
    again = compose_config(
        [
            *common,
            "stage=evaluate",
            f"evaluation.models=[hf:{tmp_path / 'student'}]",
            "evaluation.formats=[in_context_cot]",
            "evaluation.exemplar_seed=3",
        ],
        run_dir=tmp_path / "hf",
    )
    run(again)
    (first, _) = json.loads((tmp_path / "hf" / "eval" / "results.json").read_text())
    assert first["model"] == "hf:student" and first["format"] == "in_context_cot"
    hf_rows = _rows(tmp_path / "hf" / "eval" / "predictions_svamp_test_in_context_cot_hf-student.jsonl")
    assert [(r["exemplar_ids"], r["completion"]) for r in hf_rows] == [
        (r["exemplar_ids"], r["completion"]) for r in in_context
    ]
