"""End to end: distill → train → evaluate, through the composed Hydra config and the real CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mwp.config import ConfigError
from mwp.pipeline import run
from tests.helpers import CONF_DIR, compose_config

pytestmark = pytest.mark.slow


def test_demo_experiment_in_debug_mode_end_to_end(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=demo", "debug=default"], run_dir=tmp_path)
    summary = run(cfg)
    assert summary["distill"]["problems_seen"] == cfg.dataset.limit
    assert summary["train"]["steps"] == cfg.trainer.max_steps
    assert (tmp_path / "student" / "config.json").exists()
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [(r["dataset"], r["split"]) for r in results] == [(s.name, s.split) for s in cfg.dataset.eval_sets]
    for r in results:
        preds = (
            (tmp_path / "eval" / f"predictions_{r['dataset']}_{r['split']}.jsonl").read_text().splitlines()
        )
        assert len(preds) == r["size"] == cfg.evaluation.limit
        # flexible extraction falls back to the last number, so it scores every strict hit too
        assert 0.0 <= r["strict_acc"] <= r["flexible_acc"] <= 1.0
    (metrics_file,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    metrics = list(csv.DictReader(metrics_file.open()))
    assert any(row.get("train/loss") for row in metrics)
    assert any(row.get("val/acc") for row in metrics)
    assert (tmp_path / "config.yaml").exists()


def test_a_run_resumes_in_its_own_folder_and_never_overwrites_another(tmp_path: Path) -> None:
    first = compose_config(["experiment=demo", "debug=default", "stage=pipeline"], run_dir=tmp_path)
    run(first)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    # last.ckpt holds the final step (4), though the save interval (50) never came round.
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    distilled = (tmp_path / "distill" / "distilled.jsonl").read_bytes()

    # A new run pointed at the same folder is refused before it touches anything.
    again = compose_config(["experiment=demo", "debug=default"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a run.*stage\.resume="):
        run(again)

    more = compose_config(
        ["experiment=demo", "debug=default", f"stage.resume={tmp_path}", "trainer.max_steps=6"],
        run_dir=tmp_path / "elsewhere",
    )
    summary = run(more)
    # 4 steps done before, 2 more after resuming: not 6 from scratch (global step continues).
    assert summary["train"]["steps"] == 6
    # The resumed run wrote its checkpoints into its own folder, not into Hydra's new one.
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 6
    assert not (tmp_path / "elsewhere" / "checkpoints").exists()
    # Distillation is reused from the stage cache (same settings); training is a new key (max_steps).
    assert summary["stages"]["distill"]["status"] == "reused"
    assert summary["stages"]["train"]["status"] == "computed"
    assert (tmp_path / "distill").resolve() == Path(summary["stages"]["distill"]["path"])
    assert (tmp_path / "distill" / "distilled.jsonl").read_bytes() == distilled
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "success"
    assert list(tmp_path.glob("config.resume-*.yaml"))

    # The checkpoint carries its hyperparameters: it rebuilds the student on its own.
    from mwp.student.module import StudentModule

    # The saved student is the best checkpoint's weights (save_top_k=1: one best file).
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    module = StudentModule.load_from_checkpoint(best, map_location="cpu", weights_only=False)
    assert module.hparams["student"]["size"]["d_model"] == first.student.size.d_model
    saved = load_file(tmp_path / "student" / "model.safetensors")
    state = module.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_runs_a_few_steps(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config(
        # the middle model of the refinement experiments trains its own steps: shrink those too
        [
            f"experiment={experiment}",
            "debug=default",
            "trainer.max_steps=2",
            "++refine.middle_model.max_steps=2",
        ],
        run_dir=tmp_path,
    )
    summary = run(cfg)
    assert summary["train"]["steps"] == 2


def test_cli_runs_and_prints_the_results_table(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", "experiment=demo", "debug=default", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "strict acc" in proc.stdout and "multiarith" in proc.stdout
    # Nothing that is not the user's business on the console.
    for noise in ("anonymous setting", "litlogger", "LitLogger", "pytree", "is deprecated", "weights_only"):
        assert noise not in proc.stderr + proc.stdout, noise
    runs = list((tmp_path / "demo" / "runs").iterdir())
    assert len(runs) == 1
    assert list((runs[0] / "wandb").glob("offline-run-*")), "W&B offline run expected"
