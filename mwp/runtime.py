"""Process-wide settings the entry points apply (never as an import side effect)."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

from omegaconf import DictConfig

from mwp.config import ConfigError
from mwp.data.io import DataError
from mwp.teachers.base import TeacherError

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
# never claimed by a run (see mwp.pipeline.claim_run_dir) and is removed when the run fails at once.
_HYDRA_ONLY = {".hydra", "cli.log"}


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


ENV_DEFAULTS = {
    # The fast tokenizers' thread pool deadlocks (and warns) once a DataLoader forks workers.
    "TOKENIZERS_PARALLELISM": "false",
}


def set_env_defaults() -> None:
    """Set each of `ENV_DEFAULTS` unless the user has set it already (entry points only, never at import)."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def adopt_slurm_rank() -> None:
    """Under SLURM with several tasks (hydra/launcher=slurm, srun), name this task's rank in `RANK` as
    torchrun does: SLURM starts every rank of a job at once, and only rank 0 may claim the run folder.
    Runs inside the Hydra job (the submitit launcher calls the task function, never `main`)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS") or 1) > 1:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]


def quiet_third_party() -> None:
    """Silence messages that are not the user's business (tips, deprecations inside libraries)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for pattern in (
        ".*litlogger.*",
        ".*LitLogger.*",
        ".*torch.utils._pytree.*",
        ".*is deprecated.*",
        ".*anonymous.*",
        ".*does not have many workers.*",
        ".*The `srun` command is available.*",
        ".*GPU available but not used.*",
        ".*Checkpoint directory .* exists and is not empty.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("litlogger" in message or "LitLogger" in message or message.startswith("💡 Tip"))
