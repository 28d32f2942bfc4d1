"""`mwp` console script: a thin Hydra wrapper around `mwp.pipeline.run`.

Config and input mistakes are printed as one line each (key or file:line, value, what is allowed)
and exit with status 2; `debug_traceback=true` shows the full traceback instead.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mwp.config import ConfigError, register_resolvers
from mwp.config.hydra_errors import explain, is_composition_error
from mwp.data.io import DataError
from mwp.objective import objective
from mwp.paths import REPO_ROOT
from mwp.runtime import adopt_slurm_rank, quiet_third_party, set_env_defaults
from mwp.stages.base import StageError
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
    StageError,
    FileNotFoundError,
    ValueError,
)
# A full disk or quota: the path and the reason are the whole story.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# What Hydra writes into a run folder before the app starts: a folder holding only these was
# never claimed by a run (see mwp.pipeline.claim_run_dir; the log's name is hydra.job.name) and is removed when the run fails at once.
_HYDRA_ONLY = {".hydra", "mwp.log"}


def discard_unclaimed_run_dir(cfg: DictConfig) -> None:
    """Remove the folder Hydra made for a run that failed before claiming it (a config error), and
    the parents it leaves empty up to `paths.log_dir`: no orphan run folders, no empty `runs/`. A
    folder holding anything else is left alone."""
    try:
        run_dir = Path(cfg.paths.output_dir).absolute()
        log_dir = Path(cfg.paths.log_dir).absolute()
    except Exception:
        return
    if not (run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _HYDRA_ONLY):
        return
    logging.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)
    keep = Path.cwd().absolute()
    for parent in run_dir.parents:
        if parent == keep or keep.is_relative_to(parent) or not parent.is_relative_to(log_dir):
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> float:
    from mwp.pipeline import RunInterrupted, run

    # Launchers that run jobs in other processes (joblib, submitit) call this function, never `main`.
    set_env_defaults()
    register_resolvers()
    quiet_third_party()
    adopt_slurm_rank()
    try:
        summary = run(cfg)
    except RunInterrupted as err:
        print(f"mwp: {err}", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as err:
        if cfg.get("debug_traceback"):
            raise
        if isinstance(err, USER_ERRORS):
            lines = str(err).strip().splitlines() or [type(err).__name__]
        elif is_composition_error(err):
            lines = explain(err)
        elif isinstance(err, OSError) and err.errno in _NO_SPACE:
            lines = [
                f"{err.filename or 'a file'}: {err.strerror} (free some space, or point cache.dir / paths.log_dir elsewhere)"
            ]
        else:
            raise
        for line in lines:
            print(f"mwp: error: {line}", file=sys.stderr, flush=True)
        discard_unclaimed_run_dir(cfg)
        sys.exit(2)
    # The scalar an optimising sweeper (hparams_search=optuna_*) reads; NaN if the run has none.
    return objective(summary, cfg.optimized_metric)


def main() -> None:
    set_env_defaults()
    register_resolvers()
    quiet_third_party()
    overrides = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    raw = os.environ.get("HYDRA_FULL_ERROR") == "1" or "debug_traceback=true" in overrides
    # Hydra raises its composition errors (a mistyped key or option) here instead of printing a
    # block of text, so that they get one line like every other config error.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _app()
    except Exception as err:
        if raw or not is_composition_error(err):
            raise
        for line in explain(err, overrides):
            print(f"mwp: error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
