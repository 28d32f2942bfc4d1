"""Run the configured stages in order inside one run folder: distill → (refine →) train → evaluate.

The whole config is validated first, before any teacher call, model load or W&B run. A run
folder belongs to one run: a new run never writes into a folder that already holds one, and
`stage.resume=<run folder>` continues that run in place (training resumes from
`checkpoints/last.ckpt`). Every stage's output lives in the stage cache (`mwp.cache`, under
`cache.dir`), keyed by the settings that determine it, and is linked into the run folder as
`distill/`, `refine/`, `student/` and `eval/`: a sweep over student or loss settings distils once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mwp.cache import (
    StageCache,
    StageKey,
    StageOutcome,
    file_fingerprint,
    folder_stamp,
    forced_stages,
    link_into_run,
    stage_key,
)
from mwp.config import ConfigError, validate

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
SUMMARY = "summary.json"


def is_worker_rank() -> bool:
    """True in the extra processes of a multi-process launch (DDP ranks > 0): they train, nothing else."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return int(rank) > 0 or int(os.environ.get("NODE_RANK") or 0) > 0


def claim_run_dir(cfg: DictConfig) -> Path:
    """This run's folder: a new one (claimed atomically by writing its config), or the one resumed."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if cfg.stage.resume:
        run_dir = Path(cfg.stage.resume)
        if not (run_dir / RUN_CONFIG).is_file():
            raise ConfigError(
                f"stage.resume={str(run_dir)!r}: not an mwp run folder (it has no {RUN_CONFIG})"
            )
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        (run_dir / f"config.resume-{stamp}.yaml").write_text(text, encoding="utf-8")
        log.info("resuming the run in %s", run_dir)
        return run_dir
    run_dir = Path(cfg.paths.output_dir)
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job as a plain function (the CLI is a thin Hydra wrapper around it).

    Each stage's output comes from the stage cache (`mwp.cache`): reused when a run with the same
    settings computed it before, computed (once, even by parallel jobs) otherwise, and linked into
    the run folder under the stage's name. `summary.json` says which, with each stage's key.
    """
    validate(cfg)
    if cfg.stage.resume:
        # Everything of a resumed run (checkpoints, logs) goes to its own folder, not Hydra's new one.
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(cfg.stage.resume))
    worker = is_worker_rank()
    # Ranks > 0 of a multi-process launch re-run the command in the folder rank 0 claimed.
    run_dir = Path(cfg.stage.resume or cfg.paths.output_dir) if worker else claim_run_dir(cfg)
    resume = bool(cfg.stage.resume)
    steps = list(cfg.stage.steps)
    cache = StageCache(cfg.cache.dir, force=forced_stages(cfg.cache.force, steps))
    summary: dict[str, Any] = {"run_dir": str(run_dir), "status": "running", "stages": {}}
    started = time.monotonic()

    def staged(name: str, key: StageKey, compute: Any, link: str | None = None) -> StageOutcome:
        """The stage's output from the cache (rank > 0 only reads it), linked into the run folder."""
        if worker:
            found = cache.lookup(key)
            if found is None:
                raise RuntimeError(
                    f"rank > 0 found no {name} output {key.key} in {cache.root}: rank 0 writes it first"
                )
            return found
        log.info("[%s] start key=%s", name, key.key)
        outcome = cache.get_or_compute(key, compute, run_dir=run_dir)
        link_into_run(run_dir, link or name, outcome.path)
        summary["stages"][name] = outcome.record()
        log.info(
            "[%s] %s key=%s in %.1f s -> %s", name, outcome.status, key.key, outcome.wall_time_s, outcome.path
        )
        return outcome

    from mwp.lineage import log_stage_artifact, teacher_samples
    from mwp.loggers import build_loggers

    # Every stage is a W&B run (job_type = stage) that logs its output as an artifact.
    loggers: list[Any] = build_loggers(cfg)
    status = "failed"
    try:
        # What the next stage reads, and the key (or content fingerprint) that identifies it.
        data_path: Path | None = Path(cfg.stage.data) if cfg.stage.data else None
        upstream = {"data": file_fingerprint(data_path)} if data_path is not None else {}
        if "distill" in steps:
            from mwp.stages.distill import run_distill

            key = stage_key(cfg, "distill")
            outcome = staged("distill", key, lambda out: run_distill(cfg, out).to_json())
            summary["distill"] = outcome.result
            data_path, upstream = outcome.path, {"distill": key.key}
            if not worker:  # W&B artifact (mwp.lineage)
                log_stage_artifact(loggers, "distilled", outcome.path, inputs=[teacher_samples(cfg)])

        if "refine" in steps:
            from mwp.stages.refine import REFINED, run_refine

            assert data_path is not None
            source = data_path
            key = stage_key(cfg, "refine", upstream)
            outcome = staged("refine", key, lambda out: run_refine(cfg, source, out).to_json())
            summary["refine"] = outcome.result
            if not worker:  # W&B artifact (mwp.lineage)
                log_stage_artifact(loggers, "refined", outcome.path, inputs=[("distilled", source)])
            data_path, upstream = outcome.path / REFINED, {"refine": key.key}

        student_dir = Path(cfg.stage.student) if cfg.stage.student else run_dir / "student"
        student_key = {"student": folder_stamp(student_dir)} if cfg.stage.student else {}
        if "train" in steps:
            from mwp.stages.train import STUDENT_DIR, run_train

            assert data_path is not None
            train_data = data_path
            signals_dir = cache.root / "signals"
            if worker:
                # Ranks > 0 train beside rank 0 (which holds the cache entry) and save nothing.
                run_train(cfg, run_dir, loggers, train_data, resume=resume, signals_dir=signals_dir)
                status = "success"
                return summary

            def train(out: Path) -> dict[str, Any]:
                # Checkpoints stay in the run folder (a killed run resumes there); the student is the entry.
                trained = run_train(
                    cfg, run_dir, loggers, train_data, resume=resume, student_dir=out, signals_dir=signals_dir
                )
                result = {"steps": trained.steps, "best_val_acc": trained.best_val_acc}
                if trained.signals is not None:
                    signals = trained.signals
                    summary["stages"]["signals"] = {
                        "status": "reused" if signals["reused"] else "computed",
                        "path": signals["path"],
                    }
                    result["signals"] = signals
                return result

            key = stage_key(cfg, "train", upstream)
            outcome = staged("train", key, train, link=STUDENT_DIR)
            student_dir = outcome.path
            summary["train"] = {**outcome.result, "student_dir": str(student_dir)}
            student_key = {"train": key.key}
            # W&B artifact (mwp.lineage)
            inputs = [("refined" if "refine" in steps else "distilled", train_data)]
            log_stage_artifact(loggers, "student", student_dir, inputs=inputs)
        if "evaluate" in steps and not worker:
            from mwp.stages.evaluate import replay_evaluation, run_evaluate

            evaluated = student_dir
            key = stage_key(cfg, "evaluate", student_key)

            def evaluate(out: Path) -> dict[str, Any]:
                return {"results": [r.summary() for r in run_evaluate(cfg, out, loggers, evaluated)]}

            outcome = staged("evaluate", key, evaluate, link="eval")
            if outcome.status == "reused":
                replay_evaluation(outcome.path, loggers)
            summary["evaluate"] = outcome.result["results"]
            # W&B artifact (mwp.lineage)
            log_stage_artifact(loggers, "predictions", outcome.path, inputs=[("student", evaluated)])
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
            from mwp.loggers import finish

            finish(loggers, status)
    return summary
