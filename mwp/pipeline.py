"""Run the configured stages in order inside one run folder: a loop over `stage.steps` (`mwp.stages.STAGES`).

The whole config is validated first, then the inputs of every stage the run will compute
(`check_inputs`), before the run folder is claimed and before any teacher call, model load or W&B
run; the validated sections are what every stage receives. A run folder belongs to one run: a new run never
writes into a folder that already holds one, and `stage.resume=<run folder>` continues that run in
place (training resumes from `checkpoints/last.ckpt`). Every stage's output lives in the stage cache
(`mwp.stage_cache`, under `cache.dir`), keyed by the settings that determine it (the stage object's
`key_settings`) and the keys of what it read, and is linked into the run folder under the stage's
link name (`distill/`, `refine/`, `student/`, `eval/`): a sweep over student or loss settings distils once.
The run holds every entry it uses until it ends (`StageCache.lease`), and `summary.json` says
`success`, `failed` or `interrupted` (Ctrl+C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mwp.config import ConfigError
from mwp.config.schema import RunConfig
from mwp.data.io import DataError
from mwp.lineage import ArtifactFiles, log_stage_artifact
from mwp.loggers import build_loggers, finish
from mwp.runtime import is_worker_rank
from mwp.stage_cache import StageCache, forced_stages, link_into_run, stage_key
from mwp.stages import STAGES, Stage, StageContext, StageInput, load_config

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
SUMMARY = "summary.json"
# What Hydra writes into the folder it makes for a job (the log's name is hydra.job.name).
HYDRA_FILES = frozenset({".hydra", "mwp.log"})


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT (Ctrl+C); `summary.json` says `interrupted` and how to continue."""


def claim_run_dir(cfg: DictConfig, config: RunConfig) -> Path:
    """This run's folder: a new one (claimed atomically by writing its config), or the one resumed."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if config.stage.resume:
        run_dir = Path(config.stage.resume)
        if not (run_dir / RUN_CONFIG).is_file():
            raise ConfigError(
                f"stage.resume={str(run_dir)!r}: not an mwp run folder (it has no {RUN_CONFIG})"
            )
        _write_new(run_dir, f"config.resume-{_stamp()}", ".yaml", text)
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


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


def _write_new(folder: Path, stem: str, suffix: str, text: str) -> Path:
    """Write a file that must not replace another (a clock set back can repeat a time stamp)."""
    for attempt in range(1000):
        path = folder / f"{stem}{f'-{attempt}' if attempt else ''}{suffix}"
        try:
            with path.open("x", encoding="utf-8") as handle:
                handle.write(text)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder / stem}{suffix}: a thousand files of that name already")


def adopt_hydra_folder(hydra_dir: Path, run_dir: Path) -> None:
    """On resume, move what Hydra wrote into the new folder it made (`.hydra/`, the log) into the
    resumed run's folder, so that no stray folder is left: its log goes on in the run's own log."""
    if hydra_dir.resolve() == run_dir.resolve() or not hydra_dir.is_dir():
        return
    if not {p.name for p in hydra_dir.iterdir()} <= HYDRA_FILES:
        return
    if (hydra_dir / ".hydra").is_dir():
        target = run_dir / f".hydra.resume-{_stamp()}"
        if not target.exists():
            shutil.move(str(hydra_dir / ".hydra"), str(target))
    for handler in list(logging.root.handlers):
        if not isinstance(handler, logging.FileHandler):
            continue
        old = Path(handler.baseFilename)
        if old.parent.resolve() != hydra_dir.resolve():
            continue
        handler.close()
        logging.root.removeHandler(handler)
        new = run_dir / old.name
        with new.open("a", encoding="utf-8") as out:
            out.write(old.read_text(encoding="utf-8") if old.exists() else "")
        moved = logging.FileHandler(new, mode="a", encoding="utf-8")
        moved.setLevel(handler.level)
        moved.setFormatter(handler.formatter)
        logging.root.addHandler(moved)
        old.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        hydra_dir.rmdir()


def check_inputs(steps: list[str], config: RunConfig, context: StageContext, cache: StageCache) -> None:
    """Every input problem of every stage this run will compute, at once, before anything is spent.

    A stage whose output the cache already holds reads none of its inputs (a reused distill needs no
    teacher key), so only the stages to compute are asked; keys chain exactly as the run chains them.
    """
    problems: list[str] = []
    keys: dict[str, str] = {}
    for name in steps:
        stage = STAGES[name]
        upstream = next(({u: keys[u]} for u in stage.upstream if u in keys), None)
        if upstream is None:
            upstream = dict(stage.given_input(config, context).key)
        key = stage_key(name, stage.key_settings(config), upstream)
        keys[name] = key.key
        if cache.reusable(key) is None:
            problems += stage.check_inputs(config, context)
    if problems:
        raise DataError("\n".join(dict.fromkeys(problems)))


def _artifact_files(kind: str) -> tuple[str, ...]:
    """The files that make an artifact of `kind`: those its producing stage names (all for outside inputs)."""
    return next((s.artifact_files for s in STAGES.values() if s.artifact == kind), ("*",))


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job as a plain function (the CLI is a thin Hydra wrapper around it).

    Each stage's output comes from the stage cache: reused when a run with the same settings computed
    it before, computed (once, even by parallel jobs) otherwise, and linked into the run folder.
    `summary.json` says which, with each stage's key.
    """
    hydra_dir = Path(cfg.paths.output_dir)
    if cfg.stage.resume:
        # Everything of a resumed run (checkpoints, logs) goes to its own folder, not Hydra's new one.
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(cfg.stage.resume))
    config = load_config(cfg)
    worker = is_worker_rank()
    steps = list(config.stage.steps)
    cache = StageCache(config.cache.dir, force=forced_stages(config.cache.force, steps))
    context = StageContext(
        run_dir=Path(config.paths.output_dir),
        cache_root=cache.root,
        resume=bool(config.stage.resume),
        worker=worker,
    )
    if not worker:
        # Before the run folder is claimed and any W&B run, teacher call or model load.
        check_inputs(steps, config, context, cache)
    # Ranks > 0 of a multi-process launch re-run the command in the folder rank 0 claimed.
    run_dir = context.run_dir if worker else claim_run_dir(cfg, config)
    if config.stage.resume and not worker:
        adopt_hydra_folder(hydra_dir, run_dir)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "status": "running", "stages": {}}
    started = time.monotonic()
    # Every stage is a W&B run (job_type = stage) that logs its output as an artifact.
    loggers = build_loggers(config)
    context.loggers = loggers
    status = "failed"
    current = None
    try:
        outputs: dict[str, StageInput] = {}
        for name in steps:
            current = name
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
        # Lightning answers Ctrl+C by exiting (SystemExit 1) from inside its KeyboardInterrupt handler.
        if isinstance(err, KeyboardInterrupt) or isinstance(err.__context__, KeyboardInterrupt):
            status = "interrupted"
            summary["error"] = (
                f"interrupted (SIGINT) during the {current} stage; continue with stage.resume={run_dir}"
            )
            raise RunInterrupted(summary["error"]) from None
        summary["error"] = f"{type(err).__name__}: {str(err)[:500]}"
        raise
    finally:
        cache.release()
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
    if outcome.incomplete:
        log.warning(
            "[%s] the output is incomplete (%s): this run uses it, later runs compute it again",
            stage.name,
            outcome.incomplete,
        )
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
