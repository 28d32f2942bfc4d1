"""`mwp` console script: a thin Hydra wrapper around `mwp.pipeline.run`.

Config and input mistakes are printed as one line each (key or file:line, value, what is allowed)
and exit with status 2; `debug_traceback=true` shows the full traceback instead.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from mwp.config import register_resolvers
from mwp.objective import objective
from mwp.paths import REPO_ROOT
from mwp.runtime import (
    USER_ERRORS,
    adopt_slurm_rank,
    discard_unclaimed_run_dir,
    quiet_third_party,
    set_env_defaults,
)

CONFIG_DIR = str(REPO_ROOT / "conf")
log = logging.getLogger("mwp")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> float:
    from mwp.pipeline import run

    # Launchers that run jobs in other processes (joblib, submitit) call this function, never `main`.
    set_env_defaults()
    register_resolvers()
    quiet_third_party()
    adopt_slurm_rank()
    try:
        summary = run(cfg)
    except USER_ERRORS as err:
        if cfg.get("debug_traceback"):
            raise
        for line in str(err).strip().splitlines() or [type(err).__name__]:
            print(f"mwp: error: {line}", file=sys.stderr, flush=True)
        discard_unclaimed_run_dir(cfg)
        sys.exit(2)
    # The scalar an optimising sweeper (hparams_search=optuna_*) reads; NaN if the run has none.
    return objective(summary, cfg.optimized_metric)


def main() -> None:
    set_env_defaults()
    register_resolvers()
    quiet_third_party()
    _app()


if __name__ == "__main__":
    main()
