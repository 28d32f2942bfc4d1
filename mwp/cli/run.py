"""`mwp` console script: a thin Hydra wrapper around `mwp.pipeline.run`.

Config and input mistakes are printed as one line each (key or file:line, value, what is allowed)
and exit with status 2; `debug_traceback=true` shows the full traceback instead.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mwp.config import ConfigError, register_resolvers
from mwp.data.io import DataError
from mwp.objective import objective
from mwp.paths import REPO_ROOT
from mwp.runtime import adopt_slurm_rank, quiet_third_party, set_env_defaults
from mwp.teachers.base import TeacherError

CONFIG_DIR = str(REPO_ROOT / "conf")
log = logging.getLogger("mwp")

# Errors that are the user's to fix (a config value, an input file, an unreachable teacher): the
# CLI prints their message, not a traceback. ValueError and FileNotFoundError are what the
# library raises for bad values and missing inputs, always with the key or path in the message.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    TeacherError,
    FileNotFoundError,
    ValueError,
)


# What Hydra writes into a run folder before the app starts: a folder holding only these was
# never claimed by a run (see mwp.pipeline.claim_run_dir; the log's name is hydra.job.name) and is removed when the run fails at once.
_HYDRA_ONLY = {".hydra", "mwp.log"}


def discard_unclaimed_run_dir(cfg: DictConfig) -> None:
    """Remove the folder Hydra made for a run that failed before claiming it (a config error):
    no orphan run folders. A folder holding anything else is left alone."""
    try:
        run_dir = Path(cfg.paths.output_dir)
    except Exception:
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _HYDRA_ONLY:
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


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
