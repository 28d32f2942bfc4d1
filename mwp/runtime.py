"""Process-wide settings the entry points apply (never as an import side effect)."""

from __future__ import annotations

import logging
import os
import warnings

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


def is_worker_rank() -> bool:
    """True in the extra processes of a multi-process launch (DDP ranks > 0): they train, nothing else."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return int(rank) > 0 or int(os.environ.get("NODE_RANK") or 0) > 0
