"""Run the configured stages in order inside one run folder: a loop over `stage.steps` (`mwp.stages.STAGES`).

The whole config is validated first, before any teacher call, model load or W&B run, and the
validated sections are what every stage receives. A run folder belongs to one run: a new run never
writes into a folder that already holds one, and `stage.resume=<run folder>` continues that run in
place (training resumes from `checkpoints/last.ckpt`). Every stage's output lives in the stage cache
(`mwp.stage_cache`, under `cache.dir`), keyed by the settings that determine it (the stage object's
`key_settings`) and the keys of what it read, and is linked into the run folder under the stage's
link name (`distill/`, `refine/`, `student/`, `eval/`): a sweep over student or loss settings distils once.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mwp.config import ConfigError
from mwp.config.schema import RunConfig
from mwp.lineage import ArtifactFiles, log_stage_artifact
from mwp.loggers import build_loggers, finish
from mwp.runtime import is_worker_rank
from mwp.stage_cache import StageCache, forced_stages, link_into_run, stage_key
from mwp.stages import STAGES, Stage, StageContext, StageInput, load_config

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
SUMMARY = "summary.json"


def claim_run_dir(cfg: DictConfig, config: RunConfig) -> Path:
    """This run's folder: a new one (claimed atomically by writing its config), or the one resumed."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if config.stage.resume:
        run_dir = Path(config.stage.resume)
        if not (run_dir / RUN_CONFIG).is_file():
            raise ConfigError(
                f"stage.resume={str(run_dir)!r}: not an mwp run folder (it has no {RUN_CONFIG})"
            )
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        (run_dir / f"config.resume-{stamp}.yaml").write_text(text, encoding="utf-8")
        log.info("resuming the run in %s", run_dir)
        return run_dir
    run_dir = Path(config.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (run_dir / RUN_CONFIG).open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ConfigError(
            f"hydra.run.dir: {run_dir} already holds a run; mwp never writes over another run "
            f"(continue it with stage.resume={run_dir}, or pick a new folder)"
        ) from None
    return run_dir


def _artifact_files(kind: str) -> tuple[str, ...]:
    """The files that make an artifact of `kind`: those its producing stage names (all for outside inputs)."""
    return next((s.artifact_files for s in STAGES.values() if s.artifact == kind), ("*",))


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job as a plain function (the CLI is a thin Hydra wrapper around it).

    Each stage's output comes from the stage cache: reused when a run with the same settings computed
    it before, computed (once, even by parallel jobs) otherwise, and linked into the run folder.
    `summary.json` says which, with each stage's key.
    """
    if cfg.stage.resume:
        # Everything of a resumed run (checkpoints, logs) goes to its own folder, not Hydra's new one.
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(cfg.stage.resume))
    config = load_config(cfg)
    worker = is_worker_rank()
    # Ranks > 0 of a multi-process launch re-run the command in the folder rank 0 claimed.
    run_dir = Path(config.paths.output_dir) if worker else claim_run_dir(cfg, config)
    steps = list(config.stage.steps)
    cache = StageCache(config.cache.dir, force=forced_stages(config.cache.force, steps))
    summary: dict[str, Any] = {"run_dir": str(run_dir), "status": "running", "stages": {}}
    started = time.monotonic()
    # Every stage is a W&B run (job_type = stage) that logs its output as an artifact.
    loggers = build_loggers(config)
    context = StageContext(
        run_dir=run_dir,
        cache_root=cache.root,
        loggers=loggers,
        resume=bool(config.stage.resume),
        worker=worker,
    )
    status = "failed"
    try:
        outputs: dict[str, StageInput] = {}
        for name in steps:
            stage = STAGES[name]
            source = next((outputs[u] for u in stage.upstream if u in outputs), None)
            if source is None:
                source = stage.given_input(config, context)
            if worker and stage.on_worker != "read":
                if stage.on_worker == "run":
                    # Ranks > 0 train beside rank 0 (which holds the cache entry) and save nothing.
                    stage.run(config, source, run_dir / stage.link_name, context)
                continue
            outputs[name] = _run_stage(stage, config, source, cache, context, summary)
        status = "success"
    except BaseException as err:
        summary["error"] = f"{type(err).__name__}: {str(err)[:500]}"
        raise
    finally:
        summary["status"] = status
        summary["wall_time_s"] = round(time.monotonic() - started, 1)
        if not worker:
            (run_dir / SUMMARY).write_text(
                json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
            )
        if loggers:
            finish(loggers, status)
    return summary


def _run_stage(
    stage: Stage,
    config: RunConfig,
    source: StageInput,
    cache: StageCache,
    context: StageContext,
    summary: dict[str, Any],
) -> StageInput:
    """One stage's output from the cache (computed if needed), linked, recorded and logged; what the
    next stage reads."""
    key = stage_key(stage.name, stage.key_settings(config), source.key)
    if context.worker:
        found = cache.lookup(key)
        if found is None:
            raise RuntimeError(
                f"rank > 0 found no {stage.name} output {key.key} in {cache.root}: rank 0 writes it first"
            )
        return StageInput(stage.output(found.path), stage.artifact, {stage.name: key.key})
    log.info("[%s] start key=%s", stage.name, key.key)
    outcome = cache.get_or_compute(
        key, lambda out: stage.run(config, source, out, context), run_dir=context.run_dir
    )
    link_into_run(context.run_dir, stage.link_name, outcome.path)
    summary["stages"][stage.name] = outcome.record()
    summary["stages"].update(context.records)
    context.records.clear()
    log.info(
        "[%s] %s key=%s in %.1f s -> %s",
        stage.name,
        outcome.status,
        key.key,
        outcome.wall_time_s,
        outcome.path,
    )
    if outcome.status == "reused":
        stage.replay(outcome.path, context)
    summary[stage.name] = stage.summary(outcome.result, outcome.path)
    inputs = [ArtifactFiles(kind, path) for kind, path in stage.external_inputs(config)]
    if source.path is not None and source.artifact is not None:
        inputs.append(ArtifactFiles(source.artifact, source.path, _artifact_files(source.artifact)))
    # W&B artifact (mwp.lineage)
    log_stage_artifact(
        context.loggers, ArtifactFiles(stage.artifact, outcome.path, stage.artifact_files), inputs=inputs
    )
    return StageInput(stage.output(outcome.path), stage.artifact, {stage.name: key.key})
