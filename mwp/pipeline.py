"""Run the configured stages in order inside one run directory: distill → train → evaluate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mwp.config import validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job as a plain function (the CLI is a thin Hydra wrapper around it)."""
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    steps = list(cfg.stage.steps)
    summary: dict[str, Any] = {"run_dir": str(run_dir)}

    distill_dir = run_dir / "distill"
    if "distill" in steps:
        from mwp.stages.distill import run_distill

        summary["distill"] = run_distill(cfg, distill_dir).to_json()

    loggers: list[Any] = []
    if "train" in steps or "evaluate" in steps:
        from mwp.loggers import build_loggers

        loggers = build_loggers(cfg, run_dir)
    try:
        student_dir = Path(cfg.stage.student) if cfg.stage.student else run_dir / "student"
        if "train" in steps:
            from mwp.stages.train import run_train

            data_path = Path(cfg.stage.data) if cfg.stage.data else distill_dir
            trained = run_train(cfg, run_dir, loggers, data_path)
            student_dir = trained.student_dir
            summary["train"] = {
                "steps": trained.steps,
                "best_val_acc": trained.best_val_acc,
                "student_dir": str(student_dir),
            }
        if "evaluate" in steps:
            from mwp.stages.evaluate import run_evaluate

            results = run_evaluate(cfg, run_dir, loggers, student_dir)
            summary["evaluate"] = [r.summary() for r in results]
    finally:
        if loggers:
            from mwp.loggers import finish

            finish(loggers)
    return summary
