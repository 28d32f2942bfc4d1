"""Evaluate stage: greedy generation on the in-distribution and out-of-distribution sets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from transformers import AutoTokenizer, T5ForConditionalGeneration

from mwp.data.io import write_json
from mwp.data.loaders import load_problems
from mwp.evaluation.evaluate import EvalResult, evaluate_problems, format_table, save_predictions
from mwp.loggers import log_metrics, log_table

log = logging.getLogger(__name__)


def load_trained_student(student_dir: Path) -> tuple[T5ForConditionalGeneration, AutoTokenizer, set[str]]:
    if not (student_dir / "config.json").exists():
        raise FileNotFoundError(
            f"no trained student at {student_dir}: run `mwp stage=train` or set stage.student"
        )
    model = T5ForConditionalGeneration.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    ids_file = student_dir / "train_problems.txt"
    train_ids = set(ids_file.read_text(encoding="utf-8").split()) if ids_file.exists() else set()
    return model, tokenizer, train_ids


def run_evaluate(
    cfg: DictConfig, run_dir: Path, loggers: list[Logger], student_dir: Path
) -> list[EvalResult]:
    model, tokenizer, train_ids = load_trained_student(student_dir)
    out_dir = run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = cfg.evaluation
    results: list[EvalResult] = []
    for spec in cfg.dataset.eval_sets:
        problems = load_problems(spec.name, spec.split, cfg.paths.data_dir, limit=ev.limit)
        result = evaluate_problems(
            model,
            tokenizer,
            problems,
            dataset=spec.name,
            split=spec.split,
            role=spec.role,
            fmt=cfg.data.eval_format,
            batch_size=ev.batch_size,
            max_source_len=cfg.data.max_source_len,
            max_new_tokens=cfg.data.max_new_tokens,
            exclude_ids=train_ids,
        )
        if result.excluded_overlap:
            log.warning(
                "%s/%s: %d problems the student trained on were not scored",
                spec.name,
                spec.split,
                result.excluded_overlap,
            )
        save_predictions(result, out_dir)
        prefix = f"test/{spec.name}_{spec.split}"
        log_metrics(
            loggers,
            {f"{prefix}/strict_acc": result.strict_acc, f"{prefix}/flexible_acc": result.flexible_acc},
        )
        log_table(loggers, f"predictions/{spec.name}_{spec.split}", result.predictions)
        results.append(result)
    write_json(out_dir / "results.json", [r.summary() for r in results])
    print(format_table(results, title=f"Evaluation of {student_dir}"), flush=True)
    if ev.get("bbh") is not None:
        run_bbh(model, tokenizer, ev.bbh, cfg.paths.data_dir, out_dir, loggers, model_name=str(student_dir))
    return results


def run_bbh(
    model: Any,
    tokenizer: Any,
    bbh: DictConfig,
    data_dir: str,
    out_dir: Path,
    loggers: list[Logger],
    *,
    model_name: str,
) -> None:
    """BIG-Bench Hard (`evaluation=bbh`): eval/bbh_results.json, the predictions and the per-task table."""
    from mwp.evaluation.bbh import evaluate_bbh, format_bbh_table, save_bbh_predictions

    tasks = bbh.tasks if isinstance(bbh.tasks, str) else list(bbh.tasks)
    result = evaluate_bbh(
        model,
        tokenizer,
        tasks,
        prompt=bbh.prompt,
        limit_per_task=bbh.limit_per_task,
        batch_size=bbh.batch_size,
        max_source_len=bbh.max_source_len,
        max_new_tokens=bbh.max_new_tokens,
        data_dir=data_dir,
        model_name=model_name,
    )
    write_json(out_dir / "bbh_results.json", result.summary())
    save_bbh_predictions(result, out_dir)
    prefix = f"bbh_{result.prompt}"
    log_metrics(
        loggers,
        {
            f"{prefix}/macro_strict_acc": result.macro_strict_acc,
            f"{prefix}/macro_flexible_acc": result.macro_flexible_acc,
        }
        | {f"{prefix}/{t.task}/strict_acc": t.strict_acc for t in result.tasks},
    )
    print(format_bbh_table(result), flush=True)
