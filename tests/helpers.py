"""Compose the real Hydra config for tests, shrunk and pointed at a temporary run folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from mwp.config import register_resolvers
from mwp.config.schema import RunConfig
from mwp.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"
register_resolvers()


def compose_config(overrides: Sequence[str] = (), run_dir: Path | None = None) -> DictConfig:
    register_resolvers()  # idempotent; the conftest does it too
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    # Outside a Hydra run there is no runtime output dir to interpolate: name one (not created here).
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir if run_dir is not None else REPO_ROOT / "outputs" / "composed")
    return cfg


def bare_trainer(max_steps: int, *, accumulate: int = 1, callbacks: Sequence[Any] = (), **kwargs: Any) -> Any:
    """A CPU Lightning Trainer that only trains: no checkpoints, progress bar, summary or validation, and
    no logger unless one is passed (`logger=...`); other Trainer arguments pass through."""
    import lightning.pytorch as pl

    kwargs.setdefault("logger", False)
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
        **kwargs,
    )


def typed_config(overrides: Sequence[str] = (), run_dir: Path | None = None) -> RunConfig:
    """`compose_config`, validated: the typed sections the stages receive."""
    from mwp.stages import load_config

    return load_config(compose_config(overrides, run_dir))
