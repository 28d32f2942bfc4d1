"""Experiment loggers: Weights & Biases (offline unless the user says otherwise) plus a local CSV log."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    conf = cfg.logger
    if conf.csv.enabled:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    if conf.wandb.enabled:
        mode = os.environ.get("WANDB_MODE") or conf.wandb.mode
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
        run_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(
            WandbLogger(
                project=conf.wandb.project,
                entity=conf.wandb.entity,
                group=conf.wandb.group,
                name=conf.wandb.name,
                tags=list(conf.wandb.tags),
                save_dir=str(run_dir),
                mode=mode,
                log_model=False,
            )
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(_flatten(config))  # type: ignore[arg-type]
    return loggers


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
        flat[prefix.rstrip("/")] = tree if not isinstance(tree, list) else str(tree)
    return flat


def log_metrics(loggers: list[Logger], metrics: dict[str, float], step: int | None = None) -> None:
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def log_table(loggers: list[Logger], key: str, rows: list[dict[str, Any]]) -> None:
    """A predictions table in W&B (other loggers have no tables; the JSONL file is the record)."""
    if not rows:
        return
    columns = list(rows[0])
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=[[r[c] for c in columns] for r in rows])


def finish(loggers: list[Logger]) -> None:
    for logger in loggers:
        logger.finalize("success")
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
