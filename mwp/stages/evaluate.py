"""Evaluate stage: greedy generation on the in-distribution and out-of-distribution sets.

A test problem whose normalised question the student saw (its distilled problems, listed in
`student/seen_questions.txt`) or that is in the dataset's training split is dropped before
scoring, and counted per set (`dropped` in results.json, the logged metrics and the table).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from transformers import AutoTokenizer, T5ForConditionalGeneration

from mwp.data.dedup import drop_seen, question_keys
from mwp.data.io import write_json
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
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


def seen_questions(cfg: DictConfig, student_dir: Path) -> set[str]:
    """Normalised questions evaluation must not score: the student's and its dataset's training split."""
    seen = question_keys(load_problems(cfg.dataset.name, cfg.dataset.train_split, cfg.paths.data_dir))
    path = student_dir / "seen_questions.txt"
    if path.exists():
        seen |= {line for line in path.read_text(encoding="utf-8").splitlines() if line}
    return seen


def select_eval_problems(
    name: str, split: str, data_dir: Any, seen: set[str], limit: int | None = None
) -> tuple[list[Problem], int]:
    """The split's problems not seen in training (the first `limit` of them) and how many were dropped."""
    filtered = drop_seen(load_problems(name, split, data_dir), seen)
    kept = filtered.kept[:limit] if limit is not None else filtered.kept
    return kept, len(filtered.dropped)


def generation_lengths(cfg: DictConfig, student_dir: Path) -> tuple[int | None, int]:
    """(max source tokens or None = never cut, max new tokens): "auto" reads what training derived."""
    stats_path = student_dir / "train_stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else {}
    source = cfg.data.max_source_len
    new = cfg.data.max_new_tokens
    if new == "auto":
        new = int(stats.get("max_new_tokens") or cfg.data.max_target_len)
    return (None if source == "auto" else int(source)), int(new)


def run_evaluate(
    cfg: DictConfig, run_dir: Path, loggers: list[Logger], student_dir: Path
) -> list[EvalResult]:
    model, tokenizer, train_ids = load_trained_student(student_dir)
    out_dir = run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = cfg.evaluation
    seen = seen_questions(cfg, student_dir)
    max_source_len, max_new_tokens = generation_lengths(cfg, student_dir)
    results: list[EvalResult] = []
    for spec in cfg.dataset.eval_sets:
        problems, dropped = select_eval_problems(spec.name, spec.split, cfg.paths.data_dir, seen, ev.limit)
        result = evaluate_problems(
            model,
            tokenizer,
            problems,
            dataset=spec.name,
            split=spec.split,
            role=spec.role,
            fmt=cfg.data.eval_format,
            batch_size=ev.batch_size,
            max_source_len=max_source_len,
            max_new_tokens=max_new_tokens,
            exclude_ids=train_ids,
            dropped=dropped,
        )
        if result.dropped:
            log.warning(
                "%s/%s: %d problems seen in training were not scored (%d scored)",
                spec.name,
                spec.split,
                result.dropped,
                result.size,
            )
        save_predictions(result, out_dir)
        prefix = f"test/{spec.name}_{spec.split}"
        log_metrics(
            loggers,
            {
                f"{prefix}/strict_acc": result.strict_acc,
                f"{prefix}/flexible_acc": result.flexible_acc,
                f"{prefix}/size": result.size,
                f"{prefix}/dropped": result.dropped,
            },
        )
        log_table(loggers, f"predictions/{spec.name}_{spec.split}", result.predictions)
        results.append(result)
    write_json(out_dir / "results.json", [r.summary() for r in results])
    print(format_table(results, title=f"Evaluation of {student_dir}"), flush=True)
    return results
