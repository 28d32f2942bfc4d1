"""Experiment loggers, built from the `logger` group with `hydra.utils.instantiate`.

W&B conventions: one run per job, `group` = experiment, `job_type` = stage, `name` = the job's
overrides that differ (`logger.wandb.name: null` derives it; a name set in the config wins), and a
run folder remembers its W&B run id in `wandb_run.json`, so `stage.resume=<run folder>` continues
the same W&B run. Stage outputs become W&B Artifacts through `mwp.lineage`.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import OmegaConf

from mwp.config.schema import RunConfig
from mwp.runtime import is_worker_rank

log = logging.getLogger(__name__)

# The W&B run of a run folder: {"id": ..., "name": ...}, written when the run starts.
WANDB_RUN = "wandb_run.json"
# Task overrides that say where or how a job logs, not what it computes: never part of a run name.
_NAME_NOISE = ("hydra", "paths", "logger", "stage.resume", "debug_traceback")


def build_loggers(config: RunConfig) -> list[Logger]:
    """Every non-null `logger.*` entry, each given the validated config as hyperparameters."""
    loggers: list[Logger] = []
    for entry in config.logger.values():
        if entry is None:
            continue
        arguments = entry.arguments()
        extra = wandb_identity(config, arguments) if _is_wandb(arguments) else {}
        logger = instantiate({**arguments, **extra}, _convert_="all")
        if isinstance(logger, WandbLogger):
            # Lightning always passes `anonymous` (None by default), which W&B warns about on every run.
            logger._wandb_init.pop("anonymous", None)
        loggers.append(logger)
    hyperparameters = _flatten(config.model_dump(mode="json", by_alias=True))
    for logger in loggers:
        logger.log_hyperparams(hyperparameters)
    return loggers


def _is_wandb(conf: Mapping[str, Any]) -> bool:
    target = conf.get("_target_")
    try:
        return bool(target) and issubclass(get_class(str(target)), WandbLogger)
    except (ImportError, ValueError):
        return False


def wandb_identity(config: RunConfig, conf: Mapping[str, Any]) -> dict[str, Any]:
    """The `id`, `name` and `resume` of this job's W&B run.

    A new run gets a fresh id (or `logger.wandb.id`), stored in `<run folder>/wandb_run.json`; a run
    continued with `stage.resume` reuses the stored id and name, so W&B appends to the same run.
    """
    run_dir = Path(config.paths.output_dir)
    stored = run_dir / WANDB_RUN
    disabled = conf.get("mode") == "disabled"
    if config.stage.resume and not disabled:
        if stored.is_file():
            saved = json.loads(stored.read_text(encoding="utf-8"))
            return {"id": saved["id"], "name": conf.get("name") or saved.get("name"), "resume": "allow"}
        log.warning("stage.resume=%s: the folder has no %s, so W&B starts a new run", run_dir, WANDB_RUN)
    name = conf.get("name") or run_name(config)
    if disabled:
        return {"name": name}
    identity = {"id": conf.get("id") or new_run_id(), "name": name}
    if not is_worker_rank():  # the other ranks of a multi-process launch log nothing
        run_dir.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(identity) + "\n", encoding="utf-8")
    return identity


def new_run_id() -> str:
    """Eight lowercase letters and digits, the form of the ids W&B makes itself."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def run_name(config: RunConfig) -> str:
    """The job's Hydra task overrides that differ, e.g. "loss=ce_kl,seed=2".

    In a multirun only the swept keys count (the overrides every job shares are the experiment's,
    which `group` already says); infrastructure keys (hydra.*, paths.*, logger.*, stage.resume)
    never do. Outside a Hydra job, or with nothing left, the run folder's name.
    """
    overrides = _job_overrides(config)
    if overrides:
        overrides = [o for o in overrides if not _is_noise(_override_key(o))]
        swept = _swept_keys()
        if swept:
            overrides = [o for o in overrides if _override_key(o) in swept] or overrides
    return ",".join(o.lstrip("+~") for o in overrides) or Path(config.paths.output_dir).name


def _job_overrides(config: RunConfig) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    # HydraConfig outlives its job in this process: only trust the one that made this run folder.
    output_dir = hydra_cfg.runtime.get("output_dir")
    if not output_dir or Path(output_dir).resolve() != Path(config.paths.output_dir).resolve():
        return []
    return [str(o) for o in hydra_cfg.overrides.task]


def _swept_keys() -> set[str]:
    """The keys a multirun sweeps: the sweeper's `params` and the command line's sweep overrides
    (kept in the sweep folder's multirun.yaml; a job only sees its own values)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return set()
    keys = {str(k) for k in (hydra_cfg.sweeper.get("params") or {})}
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        try:
            parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
        except Exception as err:  # an override only the sweeper's plugin understands
            log.debug("multirun.yaml overrides not parsed (%s): the run name keeps every override", err)
            return keys
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_noise(key: str) -> bool:
    return any(key == n or key.startswith((f"{n}.", f"{n}/")) for n in _NAME_NOISE)


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
