"""Fine-tune a student on distilled rows with Lightning: what the train stage and the middle model both call.

The student, the DataModule, the Trainer and its callbacks are built from the validated config
sections (`student`, `data`, `trainer`, `callbacks`, `optim`, `loss`); the rows, the tokenizer and the
teacher signals are only known here and are passed in. `fit` trains in a folder (checkpoints, logs)
and saves the student as a `from_pretrained` folder with what evaluation needs beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from mwp.config.schema import RunConfig
from mwp.data.artifact import DistilledRow, read_distilled
from mwp.data.dedup import question_keys
from mwp.data.io import write_json
from mwp.loggers import log_metrics
from mwp.signals.factory import TeacherSignals, build_teacher_signals
from mwp.student.codec import Codec
from mwp.student.datamodule import DistilledDataModule, Signals, vocabulary_texts
from mwp.student.model import save_student
from mwp.student.module import StudentModule

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
TRAIN_IDS = "train_problems.txt"
SEEN_QUESTIONS = "seen_questions.txt"
TRAIN_STATS = "train_stats.json"


@dataclass
class TrainResult:
    student_dir: Path
    best_checkpoint: str | None
    best_val_acc: float | None
    train_problems: set[str]
    steps: int
    is_global_zero: bool = True
    # the sparse teacher signals' coverage report (`reused` says whether an earlier run built them), or
    # what a source that runs a teacher during training gave (a dense teacher's token counts)
    signals: dict[str, Any] | None = None


def _signals_report(teacher: TeacherSignals) -> dict[str, Any] | None:
    if teacher.report is not None:
        return teacher.report.to_json()
    report = teacher.source.report() if teacher.source is not None else None
    if report is not None:
        log.info(
            "teacher signal (%s): %d of %d target tokens covered (%.1f%%) in %d batches",
            report["source"],
            report["covered_tokens"],
            report["target_tokens"],
            100 * report["coverage"],
            report["batches"],
        )
    return report


def student_config(config: RunConfig) -> dict[str, Any]:
    """The `student` section with the run's seed: what builds the student (saved with its checkpoints)."""
    return {**config.student.model_dump(by_alias=True), "seed": config.seed}


def build_datamodule(
    config: RunConfig,
    rows: list[DistilledRow],
    tokenizer: Any,
    signals: Signals | None = None,
    codec: Codec | None = None,
) -> DistilledDataModule:
    # The class from `_target_`, called directly: instantiate would turn the typed rows it is
    # given into config nodes (plain dicts).
    arguments = config.data.model_dump(by_alias=True)
    datamodule_class = get_class(arguments.pop("_target_"))
    return datamodule_class(
        rows=rows,
        tokenizer=tokenizer,
        codec=codec,
        signals=signals,
        seed=config.seed,
        train_split=config.dataset.train_split,
        **arguments,
    )


def _flat_stats(stats: dict[str, Any]) -> dict[str, float]:
    """The numeric train stats as `train_stats/...` metrics (the W&B summary keeps the last value)."""
    flat: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                if isinstance(inner, int | float) and not isinstance(inner, bool):
                    flat[f"train_stats/{key}_{sub}"] = float(inner)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"train_stats/{key}"] = float(value)
    return flat


def build_callbacks(config: RunConfig, *, has_val: bool, has_logger: bool) -> list[pl.Callback]:
    """The `callbacks` group's entries; those that watch validation are left out when nothing is held out."""
    callbacks: list[pl.Callback] = []
    for name, entry in config.callbacks.items():
        if entry is None:
            continue
        arguments = entry.arguments()
        monitor = str(arguments.get("monitor") or "")
        if monitor.startswith("val/") and not has_val:
            log.info(
                "callbacks.%s: no validation problems (data.val_fraction=0 or data.val_size=0), so it is not used",
                name,
            )
            continue
        callback = instantiate(arguments, _convert_="all")
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            continue
        callbacks.append(callback)
    return callbacks


def _best_checkpoint(callbacks: list[pl.Callback]) -> ModelCheckpoint | None:
    return next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def fit(
    config: RunConfig,
    data_path: Path,
    run_dir: Path,
    *,
    loggers: Sequence[Logger] = (),
    resume: bool = False,
    student_dir: Path | None = None,
    signals_dir: Path | None = None,
) -> TrainResult:
    """Train in `run_dir` (checkpoints, logs) and save the student to `student_dir` (`run_dir/student`)."""
    pl.seed_everything(config.seed, workers=True)
    loggers = list(loggers)
    rows = read_distilled(data_path)
    student = student_config(config)
    if config.student.tokenizer != "pretrained":
        # A vocabulary of the training split's own sources and targets, in every format trained or validated on.
        formats = [*config.data.formats, config.data.eval_format]
        texts = vocabulary_texts(rows, formats, config.data.equation_notation)
        bundle = instantiate(student, _convert_="all", training_texts=texts)
    else:
        bundle = instantiate(student, _convert_="all")
    teacher = build_teacher_signals(
        config.loss,
        rows,
        bundle.tokenizer,
        seed=config.seed,
        max_target_len=config.data.max_target_len,
        data_path=data_path,
        run_dir=run_dir,
        signals_dir=signals_dir,
        encode_target=bundle.codec.target_encoding,
        encoding=bundle.codec.identity,
    )
    datamodule = build_datamodule(config, rows, bundle.tokenizer, teacher.stored, bundle.codec)
    datamodule.setup("fit")
    module = StudentModule(
        bundle.model,
        bundle.tokenizer,
        codec=bundle.codec,
        student=student,
        **config.optim.model_dump(),
        max_new_tokens=datamodule.max_new_tokens,
        val_extraction=config.evaluation.select_extraction,
        terms=config.loss.terms,
        signal_source=teacher.source,
    )
    has_val = bool(datamodule.val_items)
    callbacks = build_callbacks(config, has_val=has_val, has_logger=bool(loggers))
    overrides: dict[str, Any] = {} if has_val else {"limit_val_batches": 0}
    trainer: pl.Trainer = instantiate(config.trainer.arguments(), _partial_=True, _convert_="all")(
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **overrides,
    )
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path:
        log.info("resuming training from %s", ckpt_path)
    log.info(
        "training on %d examples from %d problems (%d held out for validation); %s",
        len(datamodule.train_examples),
        len(datamodule.train_ids),
        len(datamodule.val_items),
        datamodule.stats,
    )
    log_metrics(loggers, _flat_stats(datamodule.stats))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.checkpoint_callback is not None:
        # The final state, whatever validation said and however max_steps falls on the interval.
        trainer.save_checkpoint(last, weights_only=False)

    student_dir = student_dir if student_dir is not None else run_dir / "student"
    best_callback = _best_checkpoint(callbacks)
    best = best_callback.best_model_path if best_callback is not None else None
    score = best_callback.best_model_score if best_callback is not None else None
    result = TrainResult(
        student_dir=student_dir,
        best_checkpoint=best or None,
        best_val_acc=float(score) if score is not None else None,
        train_problems=set(datamodule.train_ids),
        steps=trainer.global_step,
        is_global_zero=trainer.is_global_zero,
        signals=_signals_report(teacher),
    )
    if not trainer.is_global_zero:
        return result
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    # A LoRA adapter over a random init has no base to load from: it is saved merged.
    merge = bool(config.student.peft is not None and config.student.peft.merge) or not bundle.pretrained
    save_student(module.model, bundle.codec, student_dir, merge=merge)
    write_seen(student_dir, datamodule)
    return result


def write_seen(student_dir: Path, datamodule: DistilledDataModule) -> None:
    """What the evaluate stage needs to keep test sets clean, and what setup derived.

    `train_problems.txt` lists the training ids; `seen_questions.txt` the normalised questions of
    every distilled problem (training and validation hold-out), which evaluation drops by content;
    `train_stats.json` the derived lengths and the exemplars kept per in-context example.
    """
    student_dir.mkdir(parents=True, exist_ok=True)
    (student_dir / TRAIN_IDS).write_text("\n".join(sorted(datamodule.train_ids)) + "\n", encoding="utf-8")
    seen = sorted(question_keys(row.problem for row in datamodule.rows))
    (student_dir / SEEN_QUESTIONS).write_text("\n".join(seen) + "\n", encoding="utf-8")
    write_json(student_dir / TRAIN_STATS, datamodule.stats)
