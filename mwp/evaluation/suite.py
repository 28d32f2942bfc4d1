"""The evaluation suite: every configured model, in every configured format, on every evaluation set.

`evaluation.models` names the models (the trained student, the configured live teacher, local HF
folders) and `evaluation.formats` Fu et al.'s source formats, so one table puts e.g. the student's
zero-shot and in-context accuracy beside the teacher's. All rows share the same sources and the same
answer extraction; in-context exemplars come from the training dataset's train split only.

A test problem whose normalised question the student saw (its distilled problems, listed in
`student/seen_questions.txt`) or that is in the dataset's training split is dropped before
scoring, and counted per set (`dropped` in results.json, the logged metrics and the table).

In the equation format every set also gets the trivial baseline: the student's most frequent
training template (`student/train_stats.json`) applied to every problem, as a row of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from mwp.config.schema import BBHEvalConfig, RunConfig
from mwp.data.dedup import drop_seen, question_keys
from mwp.data.formats import EQUATION
from mwp.data.io import write_json
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.evaluation.exemplars import ExemplarPool
from mwp.evaluation.generators import Generator, StudentGenerator, TeacherGenerator, load_hf_folder
from mwp.evaluation.scoring import (
    EvalResult,
    format_table,
    model_slug,
    result_slug,
    save_predictions,
    score_baseline,
    score_problems,
)
from mwp.loggers import log_metrics, log_table
from mwp.student.codec import Codec
from mwp.student.model import load_student

log = logging.getLogger(__name__)

RESULTS = "results.json"
TABLE = "table.txt"


def seen_questions(config: RunConfig, student_dir: Path) -> set[str]:
    """Normalised questions evaluation must not score: the student's and its dataset's training split."""
    seen = question_keys(
        load_problems(config.dataset.name, config.dataset.train_split, config.paths.data_dir)
    )
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


def baseline_template(student_dir: Path) -> str | None:
    """The most frequent equation template the student trained on (None: it trained on none)."""
    stats_path = student_dir / "train_stats.json"
    if not stats_path.exists():
        return None
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    return (stats.get("equation") or {}).get("most_frequent_template")


def generation_lengths(config: RunConfig, student_dir: Path) -> tuple[int | None, int]:
    """(max source tokens or None = never cut, max new tokens): "auto" reads what training derived."""
    stats_path = student_dir / "train_stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else {}
    source = config.data.max_source_len
    new: int | str = config.data.max_new_tokens
    if new == "auto":
        new = int(stats.get("max_new_tokens") or config.data.max_target_len)
    return (None if source == "auto" else int(source)), int(new)


# Entries of evaluation.models that are the student: trained (its folder), or as built before training.
LOCAL_STUDENTS = ("student", "initial")


def local_student(entry: str, config: RunConfig, student_dir: Path) -> tuple[Any, Codec, set[str]]:
    """The trained student (`student`), or the configured student as built, before any training (`initial`)."""
    if entry == "student":
        return load_student(student_dir)
    from hydra.utils import instantiate

    from mwp.student.fit import student_config

    bundle = instantiate(student_config(config), _convert_="all")
    return bundle.model, bundle.codec, set()


@contextmanager
def open_model(
    entry: str, config: RunConfig, student_dir: Path, max_source_len: int | None, max_new_tokens: int
) -> Iterator[tuple[Generator, set[str]]]:
    """The generator of one `evaluation.models` entry and the problem ids it must not be scored on."""
    ev = config.evaluation
    generator: Generator
    exclude: set[str] = set()
    if entry in LOCAL_STUDENTS:
        model, codec, exclude = local_student(entry, config, student_dir)
        generator = StudentGenerator(
            entry,
            model,
            codec,
            batch_size=ev.batch_size,
            max_source_len=max_source_len,
            max_new_tokens=max_new_tokens,
        )
    elif entry == "teacher":
        from mwp.teachers.factory import build_teacher

        generator = TeacherGenerator(
            f"teacher:{config.teacher.name}", build_teacher(config.teacher), max_new_tokens
        )
    else:
        generator = load_hf_folder(
            entry.removeprefix("hf:"),
            batch_size=ev.batch_size,
            max_source_len=max_source_len,
            max_new_tokens=max_new_tokens,
        )
    try:
        yield generator, exclude
    finally:
        generator.close()


def run_evaluate(
    config: RunConfig, out_dir: Path, loggers: list[Logger], student_dir: Path
) -> list[EvalResult]:
    """Score the configured models on every evaluation set; results, predictions and the table in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = config.evaluation
    formats = list(ev.formats)
    seen = seen_questions(config, student_dir)
    max_source_len, max_new_tokens = generation_lengths(config, student_dir)
    sets = []
    for spec in config.dataset.eval_sets:
        problems, dropped = select_eval_problems(spec.name, spec.split, config.paths.data_dir, seen, ev.limit)
        if dropped:
            log.warning("%s/%s: %d problems seen in training are not scored", spec.name, spec.split, dropped)
        sets.append((spec, problems, dropped))
    pools: dict[int, ExemplarPool] = {}
    if any(f.startswith("in_context") for f in formats):
        train: list[Problem] = load_problems(
            config.dataset.name, config.dataset.train_split, config.paths.data_dir
        )
        for index, (spec, problems, _) in enumerate(sets):
            pools[index] = pool = ExemplarPool.build(train, problems)
            log.info(
                "%s/%s: %d exemplar candidates from %s/%s (%d with a question of the set removed)",
                spec.name,
                spec.split,
                len(pool.entries),
                config.dataset.name,
                config.dataset.train_split,
                pool.removed_overlap,
            )
    results: list[EvalResult] = []
    baseline = baseline_template(student_dir) if EQUATION in formats else None
    if EQUATION in formats and baseline is None:
        log.info(
            "no equation templates in %s/train_stats.json: the equation rows have no baseline", student_dir
        )
    for entry in ev.models:
        with open_model(entry, config, student_dir, max_source_len, max_new_tokens) as (generator, exclude):
            for index, (spec, problems, dropped) in enumerate(sets):
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
                        dropped=dropped,
                        equation_notation=config.data.equation_notation,
                        paper_metric=ev.paper_metric,
                    )
                    _record(result, out_dir, loggers)
                    results.append(result)
                    if fmt == EQUATION and entry == "student" and baseline is not None:
                        base = score_baseline(
                            baseline,
                            problems,
                            dataset=spec.name,
                            split=spec.split,
                            role=spec.role,
                            exclude_ids=exclude,
                            dropped=dropped,
                        )
                        _record(base, out_dir, loggers)
                        results.append(base)
            usage = generator.usage()
            if usage is not None:
                usage.write(out_dir / f"usage_{model_slug(generator.label)}.json")
    write_json(out_dir / RESULTS, [r.summary() for r in results])
    named = {"student": str(student_dir), "initial": f"{config.student.name_or_path} before training"}
    models = ", ".join(f"{e} = {named[e]}" if e in named else e for e in ev.models)
    origin = f"student distilled from teacher {config.teacher.name!r} on {config.dataset.name}/{config.dataset.train_split}"
    title = f"Evaluation of {models} ({origin}; greedy; strict = answer phrase, flexible = else last number"
    if EQUATION in formats:
        title += "; equation = the generated template with the problem's numbers, evaluated"
    if ev.paper_metric:
        title += (
            "; last number (paper) = Fu et al.'s metric, the completion's last number against the gold's, "
            "not the headline"
        )
    title += ")"
    table = format_table(results, title=title)
    (out_dir / TABLE).write_text(table + "\n", encoding="utf-8")
    print(table, flush=True)
    if ev.bbh is not None:
        # BIG-Bench Hard measures what specialisation costs the student in generality: before and after.
        for entry in (e for e in ev.models if e in LOCAL_STUDENTS):
            model, codec, _ = local_student(entry, config, student_dir)
            run_bbh(
                model,
                codec,
                ev.bbh,
                config.paths.data_dir,
                out_dir,
                loggers,
                label=entry,
                model_name=named[entry],
            )
    return results


def _record(result: EvalResult, out_dir: Path, loggers: list[Logger]) -> None:
    """Save a result's predictions and log its metrics and prediction table."""
    save_predictions(result, out_dir)
    _log_result(result, result.predictions, loggers)


def _log_result(result: Any, predictions: list[dict[str, Any]], loggers: list[Logger]) -> None:
    """Log one result's metrics and prediction table (`result`: an EvalResult or its summary's fields)."""
    slug = result_slug(result)
    prefix = f"test/{slug}"
    metrics = {
        f"{prefix}/strict_acc": result.strict_acc,
        f"{prefix}/flexible_acc": result.flexible_acc,
        f"{prefix}/size": result.size,
        f"{prefix}/dropped": result.dropped,
    }
    paper = _paper_metric(result)
    if paper is not None:
        metrics[f"{prefix}/last_number_acc"] = paper
    log_metrics(loggers, metrics)
    log_table(loggers, f"predictions/{slug}", predictions)


def _paper_metric(result: Any) -> float | None:
    """Fu et al.'s metric where it was scored (a replayed summary holds the key only then)."""
    if isinstance(result, EvalResult):
        return result.last_number_acc if result.has_paper_metric else None
    return getattr(result, "last_number_acc", None)


def replay_evaluation(out_dir: Path, loggers: list[Logger]) -> list[dict[str, Any]]:
    """An evaluation computed before (the stage cache): log its metrics and tables again, print its table."""
    from types import SimpleNamespace

    from mwp.data.io import read_jsonl

    summaries = json.loads((out_dir / RESULTS).read_text(encoding="utf-8"))
    for summary in summaries:
        result = SimpleNamespace(**summary)
        predictions = out_dir / f"predictions_{result_slug(result)}.jsonl"
        _log_result(result, list(read_jsonl(predictions)) if predictions.is_file() else [], loggers)
    for label in LOCAL_STUDENTS:
        results_path, _ = bbh_paths(out_dir, label)
        if results_path.is_file():
            _log_bbh(json.loads(results_path.read_text(encoding="utf-8")), loggers, label)
    for table in (TABLE, *(bbh_paths(out_dir, label)[1].name for label in LOCAL_STUDENTS)):
        if (out_dir / table).is_file():
            print((out_dir / table).read_text(encoding="utf-8"), end="", flush=True)
    return summaries


def bbh_paths(out_dir: Path, label: str) -> tuple[Path, Path]:
    """Where a model's BBH results and table go: the student's keep their plain names."""
    suffix = "" if label == "student" else f"_{label}"
    return out_dir / f"bbh_results{suffix}.json", out_dir / f"bbh_table{suffix}.txt"


def run_bbh(
    model: Any,
    codec: Codec,
    bbh: BBHEvalConfig,
    data_dir: str,
    out_dir: Path,
    loggers: list[Logger],
    *,
    label: str = "student",
    model_name: str,
) -> None:
    """BIG-Bench Hard (`evaluation=bbh`): eval/bbh_results.json, the predictions and the per-task table."""
    from mwp.evaluation.bbh import evaluate_bbh, format_bbh_table, save_bbh_predictions

    tasks = bbh.tasks if isinstance(bbh.tasks, str) else list(bbh.tasks)
    result = evaluate_bbh(
        model,
        codec,
        tasks,
        prompt=bbh.prompt,
        limit_per_task=bbh.limit_per_task,
        batch_size=bbh.batch_size,
        max_source_len=bbh.max_source_len,
        max_new_tokens=bbh.max_new_tokens,
        data_dir=data_dir,
        model_name=model_name,
    )
    summary = result.summary()
    results_path, table_path = bbh_paths(out_dir, label)
    write_json(results_path, summary)
    save_bbh_predictions(result, out_dir, label)
    _log_bbh(summary, loggers, label)
    table = format_bbh_table(result)
    table_path.write_text(table + "\n", encoding="utf-8")
    print(table, flush=True)


def _log_bbh(summary: dict[str, Any], loggers: list[Logger], label: str = "student") -> None:
    prefix = f"bbh_{summary['prompt']}" + ("" if label == "student" else f"/{label}")
    log_metrics(
        loggers,
        {
            f"{prefix}/macro_strict_acc": summary["macro_strict_acc"],
            f"{prefix}/macro_flexible_acc": summary["macro_flexible_acc"],
        }
        | {f"{prefix}/{t['task']}/strict_acc": t["strict_acc"] for t in summary["tasks"]},
    )
