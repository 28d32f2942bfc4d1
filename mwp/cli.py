"""`mwp` console script: a thin Hydra wrapper around `mwp.pipeline.run`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mwp.paths import REPO_ROOT

CONFIG_DIR = str(REPO_ROOT / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from mwp.pipeline import run

    summary = run(cfg)
    # A scalar for sweepers that optimise (hparams_search): best validation accuracy, if trained.
    train = summary.get("train") or {}
    return train.get("best_val_acc")


def main() -> None:
    """Set the environment defaults and register the config resolvers, then let Hydra compose and run."""
    from mwp.config import register_resolvers
    from mwp.env import set_env_defaults

    set_env_defaults()
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
