from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mwp.config import validate
from tests.helpers import CONF_DIR, compose_config


def test_default_config_composes_and_resolves(tmp_path: Path) -> None:
    cfg = compose_config(run_dir=tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.stage.steps == ["distill", "train", "evaluate"]
    assert Path(cfg.paths.data_dir, "svamp", "SVAMP.json").exists()
    assert Path(cfg.student.fallback_config, "tokenizer.json").exists()
    assert cfg.teacher._target_ == "mwp.teachers.recorded.RecordedTeacher"
    validate(cfg)


def test_demo_experiment_overrides_only_what_differs(tmp_path: Path) -> None:
    base = compose_config(run_dir=tmp_path)
    demo = compose_config(["experiment=demo"], run_dir=tmp_path)
    assert demo.task_name == "demo"
    assert demo.evaluation.limit != base.evaluation.limit
    assert demo.student.fallback_config == base.student.fallback_config
    assert demo.dataset.name == "svamp"


@pytest.mark.parametrize("override", ["trainer.max_stepz=3", "data.batchsize=2", "student.size.d_mdl=8"])
def test_mistyped_key_fails_clearly(override: str) -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose_config([override])


def test_unknown_group_option_lists_choices() -> None:
    with pytest.raises(ConfigCompositionException, match="flan_t5_small"):
        compose_config(["student=flan_t5_smal"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=0", "data.batch_size"),
        ("stage.steps=[distil]", "stage.steps"),
        ("evaluation.limit=0", "evaluation.limit"),
    ],
)
def test_validate_names_the_bad_key(override: str, key: str) -> None:
    cfg = compose_config([override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_every_experiment_and_debug_config_composes(tmp_path: Path) -> None:
    for group in ("experiment", "debug", "hparams_search"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            cfg = compose_config([f"{group}={path.stem}"], run_dir=tmp_path)
            assert cfg.stage.steps, path


def test_cli_rejects_a_mistyped_key(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", "trainer.max_stepz=3", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode != 0
    assert "trainer.max_stepz" in proc.stderr


def test_every_dataset_config_names_loadable_splits() -> None:
    from mwp.data.loaders import load_problems

    for path in sorted((CONF_DIR / "dataset").glob("*.yaml")):
        cfg = compose_config([f"dataset={path.stem}"])
        train = load_problems(cfg.dataset.name, cfg.dataset.train_split, cfg.paths.data_dir, limit=2)
        assert len(train) == 2, path
        train_ids = {
            p.id for p in load_problems(cfg.dataset.name, cfg.dataset.train_split, cfg.paths.data_dir)
        }
        for spec in cfg.dataset.eval_sets:
            test = load_problems(spec.name, spec.split, cfg.paths.data_dir)
            assert test, (path, spec)
            if spec.role == "in-distribution":
                assert not train_ids & {p.id for p in test}, f"{path.stem}: {spec.split} overlaps training"
