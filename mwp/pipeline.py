"""Run the configured stages in order inside one run folder: distill → (refine →) train → evaluate.

The whole config is validated first, before any teacher call, model load or W&B run. A run
folder belongs to one run: a new run never writes into a folder that already holds one, and
`stage.resume=<run folder>` continues that run in place (its distilled and refined data are reused,
training resumes from `checkpoints/last.ckpt`). When the refine step runs, training reads its
`refine/refined.jsonl` instead of the distilled rows.
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
    """The whole job as a plain function (the CLI is a thin Hydra wrapper around it)."""
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
    summary: dict[str, Any] = {"run_dir": str(run_dir), "status": "running"}
    started = time.monotonic()

    from mwp.lineage import log_stage_artifact, teacher_samples
    from mwp.loggers import build_loggers

    # Every stage is a W&B run (job_type = stage) that logs its output as an artifact.
    loggers: list[Any] = build_loggers(cfg)
    status = "failed"
    try:
        distill_dir = run_dir / "distill"
        if "distill" in steps:
            from mwp.stages.distill import ARTIFACT, run_distill

            if (resume or worker) and (distill_dir / ARTIFACT).exists():
                log.info("reusing the distilled data in %s", distill_dir)
                summary["distill"] = {"reused": str(distill_dir / ARTIFACT)}
            elif worker:
                raise RuntimeError(
                    f"rank > 0 found no distilled data in {distill_dir}: rank 0 writes it first"
                )
            else:
                summary["distill"] = run_distill(cfg, distill_dir).to_json()
            if not worker:  # W&B artifact (mwp.lineage)
                log_stage_artifact(loggers, "distilled", distill_dir, inputs=[teacher_samples(cfg)])

        refine_dir = run_dir / "refine"
        if "refine" in steps:
            from mwp.stages.refine import REFINED, distill_source, run_refine

            if (resume or worker) and (refine_dir / REFINED).exists():
                log.info("reusing the refined data in %s", refine_dir)
                summary["refine"] = {"reused": str(refine_dir / REFINED)}
            elif worker:
                raise RuntimeError(f"rank > 0 found no refined data in {refine_dir}: rank 0 writes it first")
            else:
                summary["refine"] = run_refine(cfg, distill_source(cfg, distill_dir), refine_dir).to_json()
            if not worker:  # W&B artifact (mwp.lineage)
                inputs = [("distilled", distill_source(cfg, distill_dir))]
                log_stage_artifact(loggers, "refined", refine_dir, inputs=inputs)

        student_dir = Path(cfg.stage.student) if cfg.stage.student else run_dir / "student"
        if "train" in steps:
            from mwp.stages.train import run_train

            if "refine" in steps:
                data_path = refine_dir / REFINED
            else:
                data_path = Path(cfg.stage.data) if cfg.stage.data else distill_dir
            trained = run_train(cfg, run_dir, loggers, data_path, resume=resume)
            if not trained.is_global_zero:
                status = "success"
                return summary
            student_dir = trained.student_dir
            summary["train"] = {
                "steps": trained.steps,
                "best_val_acc": trained.best_val_acc,
                "student_dir": str(student_dir),
            }
            # W&B artifact (mwp.lineage)
            inputs = [("refined" if "refine" in steps else "distilled", data_path)]
            log_stage_artifact(loggers, "student", student_dir, inputs=inputs)
        if "evaluate" in steps and not worker:
            from mwp.stages.evaluate import run_evaluate

            results = run_evaluate(cfg, run_dir, loggers, student_dir)
            summary["evaluate"] = [r.summary() for r in results]
            # W&B artifact (mwp.lineage)
            log_stage_artifact(loggers, "predictions", run_dir / "eval", inputs=[("student", student_dir)])
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
