"""Evaluate stage: every configured model, in every configured format, on every evaluation set.

`evaluation.models` names the models (the trained student, the configured live teacher, local HF
folders) and `evaluation.formats` Fu et al.'s source formats, so one table puts e.g. the student's
zero-shot and in-context accuracy beside the teacher's. All rows share the same sources and the same
answer extraction; in-context exemplars come from the training dataset's train split only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from transformers import AutoTokenizer, T5ForConditionalGeneration

from mwp.data.io import write_json
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.evaluation.evaluate import (
    EvalResult,
    format_table,
    model_slug,
    result_slug,
    save_predictions,
    score_problems,
)
from mwp.evaluation.exemplars import ExemplarPool
from mwp.evaluation.models import Generator, Seq2SeqGenerator, TeacherGenerator, load_hf_folder
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


@contextmanager
def open_model(entry: str, cfg: DictConfig, student_dir: Path) -> Iterator[tuple[Generator, set[str]]]:
    """The generator of one `evaluation.models` entry and the problem ids it must not be scored on."""
    ev, data = cfg.evaluation, cfg.data
    generator: Generator
    exclude: set[str] = set()
    if entry == "student":
        model, tokenizer, exclude = load_trained_student(student_dir)
        generator = Seq2SeqGenerator(
            "student",
            model,
            tokenizer,
            batch_size=ev.batch_size,
            max_source_len=data.max_source_len,
            max_new_tokens=data.max_new_tokens,
        )
    elif entry == "teacher":
        from mwp.teachers.factory import build_teacher

        generator = TeacherGenerator(
            f"teacher:{cfg.teacher.name}", build_teacher(cfg.teacher), data.max_new_tokens
        )
    else:
        generator = load_hf_folder(
            entry.removeprefix("hf:"),
            batch_size=ev.batch_size,
            max_source_len=data.max_source_len,
            max_new_tokens=data.max_new_tokens,
        )
    try:
        yield generator, exclude
    finally:
        generator.close()


def run_evaluate(
    cfg: DictConfig, run_dir: Path, loggers: list[Logger], student_dir: Path
) -> list[EvalResult]:
    out_dir = run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = cfg.evaluation
    formats = list(ev.formats)
    sets = [
        (spec, load_problems(spec.name, spec.split, cfg.paths.data_dir, limit=ev.limit))
        for spec in cfg.dataset.eval_sets
    ]
    pools: dict[int, ExemplarPool] = {}
    if any(f.startswith("in_context") for f in formats):
        train: list[Problem] = load_problems(cfg.dataset.name, cfg.dataset.train_split, cfg.paths.data_dir)
        for index, (spec, problems) in enumerate(sets):
            pools[index] = pool = ExemplarPool.build(train, problems)
            log.info(
                "%s/%s: %d exemplar candidates from %s/%s (%d with a question of the set removed)",
                spec.name,
                spec.split,
                len(pool.entries),
                cfg.dataset.name,
                cfg.dataset.train_split,
                pool.removed_overlap,
            )
    results: list[EvalResult] = []
    for entry in ev.models:
        with open_model(entry, cfg, student_dir) as (generator, exclude):
            for index, (spec, problems) in enumerate(sets):
                for fmt in formats:
                    result = score_problems(
                        generator,
                        problems,
                        dataset=spec.name,
                        split=spec.split,
                        role=spec.role,
                        fmt=fmt,
                        pool=pools.get(index),
                        num_exemplars=ev.num_exemplars,
                        exemplar_seed=ev.exemplar_seed,
                        exclude_ids=exclude,
                    )
                    if result.excluded_overlap:
                        log.warning(
                            "%s/%s: %d problems the student trained on were not scored",
                            spec.name,
                            spec.split,
                            result.excluded_overlap,
                        )
                    save_predictions(result, out_dir)
                    prefix = f"test/{result_slug(result)}"
                    log_metrics(
                        loggers,
                        {
                            f"{prefix}/strict_acc": result.strict_acc,
                            f"{prefix}/flexible_acc": result.flexible_acc,
                        },
                    )
                    log_table(loggers, f"predictions/{result_slug(result)}", result.predictions)
                    results.append(result)
            usage = generator.usage()
            if usage is not None:
                usage.write(out_dir / f"usage_{model_slug(generator.label)}.json")
    write_json(out_dir / "results.json", [r.summary() for r in results])
    models = ", ".join(f"{e} = {student_dir}" if e == "student" else e for e in ev.models)
    print(format_table(results, title=f"Evaluation of {models}"), flush=True)
    return results
