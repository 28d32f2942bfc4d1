"""experiments/kd_effect: its data loader, its configs, and one shrunk job of each kind end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.paths import REPO_ROOT
from mwp.pipeline import run
from mwp.stages import load_config
from tests.helpers import compose_config

RUN_SH = REPO_ROOT / "experiments" / "kd_effect" / "run.sh"
# Small enough for a test: a few problems, two optimizer steps, five scored problems.
SHRUNK = [
    "dataset.limit=40",
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "evaluation.limit=5",
    "student.size.d_model=32",
    "student.size.d_ff=64",
    "student.size.num_heads=2",
    "student.size.d_kv=16",
    "student.size.num_layers=1",
    "student.size.num_decoder_layers=1",
]


def test_mawps_svamp_fills_the_number_slots_and_its_gold_equations_verify() -> None:
    train = load_problems("mawps_svamp", "train")
    dev = load_problems("mawps_svamp", "dev")
    assert (len(train), len(dev)) == (3138, 1000)
    first = train[0]
    assert "number0" not in first.question and first.numbers == ("56", "9")
    assert first.equation == "56*9" and gold_template(first) == "N0*N1"
    # Every SVAMP problem's equation gives its answer over its own numbers; of MAWPS + ASDiv-A, those
    # with constants outside the verifier's list (0.01 for a percent, 25 cents) or rounded answers do not.
    assert sum(gold_template(p) is not None for p in dev) == 1000
    assert 3000 < sum(gold_template(p) is not None for p in train) < 3138


def test_mawps_train_parts_partition_the_train_split() -> None:
    train = load_problems("mawps_svamp", "train")
    fit = load_problems("mawps_svamp", "train_fit")
    held_out = load_problems("mawps_svamp", "train_held_out")
    assert (len(fit), len(held_out)) == (2511, 627)
    assert {p.id for p in fit}.isdisjoint(p.id for p in held_out)
    assert sorted(p.id for p in fit + held_out) == sorted(p.id for p in train)
    assert held_out[0].id == "mawps_svamp/train/4"  # every fifth problem, by file order
    assert {p.meta["split"] for p in held_out} == {"train_held_out"}


def _arms(teacher: Path) -> dict[str, list[str]]:
    """The student arms exactly as run.sh starts them (its `run_arm NAME OVERRIDES...` lines)."""
    text = RUN_SH.read_text()
    dense = re.search(r"^dense=\((.*)\)$", text, re.M)
    assert dense is not None
    arms = {}
    for name, rest in re.findall(r"^\s*run_arm (\w+) (.*)$", text, re.M):
        words = rest.replace('"${dense[@]}"', dense.group(1)).split()
        arms[name] = [w.replace('"$TEACHER"', str(teacher)) for w in words]
    return arms


def test_the_experiments_configs_compose_and_validate(tmp_path: Path) -> None:
    rows, teacher = tmp_path / "rows", tmp_path / "teacher"
    rows.mkdir()
    (rows / "distilled.jsonl").write_text("")
    teacher.mkdir()
    arms = _arms(teacher)
    assert set(arms) == {"ce", "kl_dense", "kl_top5", "kl_top20", "on_policy"}
    for name, overrides in arms.items():
        cfg = compose_config(
            ["experiment=kd_effect", "stage.steps=[train,evaluate]", f"stage.data={rows}", *overrides],
            run_dir=tmp_path,
        )
        load_config(cfg)
        assert cfg.dataset.name == "mawps_svamp" and list(cfg.data.formats) == ["equation"], name
        # in distribution: trained on four fifths of MAWPS + ASDiv-A train, scored on the fifth held out
        assert cfg.dataset.train_split == "train_fit", name
        assert [(s.name, s.split) for s in cfg.dataset.eval_sets] == [("mawps_svamp", "train_held_out")], name
    assert compose_config(["experiment=kd_effect", *arms["kl_top5"]]).loss.signal.dense_top_k == 5
    assert compose_config(["experiment=kd_effect", *arms["on_policy"]]).loss.on_policy.fraction == 0.5
    student = compose_config(["experiment=kd_effect"]).student.size
    teacher = compose_config(["experiment=kd_effect_teacher"]).student.size
    assert teacher.d_model > student.d_model and teacher.d_ff > student.d_ff
    errors = compose_config(["experiment=kd_effect"]).teacher.errors
    assert all(rate == 0 for step in errors.values() for rate in step.values())  # gold equations


@pytest.mark.slow
def test_one_shrunk_run_of_each_kind(tmp_path: Path) -> None:
    data, teacher, student = tmp_path / "data", tmp_path / "teacher", tmp_path / "student"
    run(compose_config(["experiment=kd_effect", "stage=distill", *SHRUNK], run_dir=data))
    rows = (data / "distill" / "distilled.jsonl").read_text().splitlines()
    assert len(rows) >= 35 and json.loads(rows[0])["teacher"] == "simulated(mawps_svamp-gold, p_err=0.00)"
    train = ["stage.steps=[train,evaluate]", f"stage.data={data / 'distill'}", *SHRUNK]
    run(compose_config(["experiment=kd_effect_teacher", *train], run_dir=teacher))
    arm = [
        "loss=ce_kl",
        "loss.signal.source=dense",
        f"loss.signal.teacher_model={teacher / 'student'}",
        "loss.signal.dense_top_k=5",
    ]
    run(compose_config(["experiment=kd_effect", *train, *arm], run_dir=student))
    summary = json.loads((student / "summary.json").read_text())
    assert summary["status"] == "success" and summary["train"]["steps"] == 2
    (scored, _baseline) = summary["evaluate"]
    assert scored["dataset"] == "mawps_svamp" and scored["split"] == "train_held_out" and scored["size"] == 5
    # The dense teacher's ids are the student's: both vocabularies come from the same rows.
    assert (student / "student" / "tokenizer.json").read_bytes() == (
        teacher / "student" / "tokenizer.json"
    ).read_bytes()
    metrics = next((student / "csv").glob("version_*/metrics.csv")).read_text()
    assert "train/kl" in metrics
