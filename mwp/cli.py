"""`mwp` console script: a thin Hydra wrapper around `mwp.pipeline.run`."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
from omegaconf import DictConfig

import mwp.config  # noqa: F401 - registers the config resolvers
from mwp.paths import REPO_ROOT

CONFIG_DIR = str(REPO_ROOT / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from mwp.pipeline import run

    summary = run(cfg)
    # A scalar for sweepers that optimise (hparams_search): best validation accuracy, if trained.
    train = summary.get("train") or {}
    return train.get("best_val_acc")


if __name__ == "__main__":
    main()
