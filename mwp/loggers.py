"""Experiment loggers, built from the `logger` group with `hydra.utils.instantiate`."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Every non-null `logger.*` entry, each given the resolved config as hyperparameters."""
    loggers: list[Logger] = []
    for conf in (cfg.get("logger") or {}).values():
        if conf is None:
            continue
        logger = instantiate(conf, _convert_="all")
        if isinstance(logger, WandbLogger):
            # Lightning always passes `anonymous` (None by default), which W&B warns about on every run.
            logger._wandb_init.pop("anonymous", None)
        loggers.append(logger)
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


def finish(loggers: list[Logger], status: str = "success") -> None:
    """Close the loggers; a W&B run of a crashed job is marked failed (exit code 1), not successful."""
    for logger in loggers:
        logger.finalize(status)
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish(exit_code=0 if status == "success" else 1)
