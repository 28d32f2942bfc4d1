"""Train stage: fine-tune the Flan-T5 student on distilled data with Lightning.

The DataModule, the Trainer, its callbacks and loggers are built from their config nodes with
`hydra.utils.instantiate` (`data`, `trainer`, `callbacks`, `logger`); the rows, the tokenizer and
the teacher signals are only known here and are passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from mwp.data.artifact import DistilledRow, read_distilled
from mwp.data.datamodule import DistilledDataModule, Signals, vocabulary_texts
from mwp.data.dedup import question_keys
from mwp.data.io import write_json
from mwp.loggers import log_metrics
from mwp.signals import (
    DenseTeacherSource,
    SignalReport,
    SignalSource,
    StoredSparseSource,
    TeacherForcedScorer,
)
from mwp.signals.on_policy import CausalOnPolicySource, OnPolicySource
from mwp.student.module import StudentModule
from mwp.student.terms import LossTerm, terms_from_config

log = logging.getLogger(__name__)

STUDENT_DIR = "student"
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
    # the sparse teacher signals' coverage report (`reused` says whether an earlier run built them)
    signals: dict[str, Any] | None = None


def student_config(cfg: DictConfig) -> dict[str, Any]:
    """The `student` node with the run's seed: what builds the student (saved with its checkpoints)."""
    conf = OmegaConf.to_container(cfg.student, resolve=True)
    assert isinstance(conf, dict)
    return {**conf, "seed": cfg.seed}


def loss_terms(cfg: DictConfig) -> list[LossTerm]:
    return terms_from_config(OmegaConf.to_container(cfg.loss.terms, resolve=True))  # type: ignore[arg-type]


def teacher_signals(
    cfg: DictConfig,
    rows: list[DistilledRow],
    tokenizer: Any,
    run_dir: Path,
    data_path: Path,
    signals_dir: Path | None = None,
) -> tuple[Signals, SignalReport]:
    """Sparse teacher signals for the distilled rows: built once per content in `signals_dir` (the stage
    cache's, shared by the runs of a sweep), else once per run folder."""
    from mwp.signals import TeacherForcedScorer, prepare_signals, signals_path

    signal = cfg.loss.signal
    scorer = None
    if signal.missing == "score":
        scorer = TeacherForcedScorer.from_config(OmegaConf.to_container(signal.scorer, resolve=True))  # type: ignore[arg-type]
    try:
        store, report = prepare_signals(
            rows,
            tokenizer,
            signals_dir if signals_dir is not None else signals_path(run_dir, tokenizer),
            max_target_len=cfg.data.max_target_len,
            missing=signal.missing,
            scorer=scorer,
            source=str(data_path),
            alignment=signal.alignment,
            name_by_content=signals_dir is not None,
        )
    finally:
        if scorer is not None:
            scorer.close()
    if report.rows_with_signal == 0:
        raise ValueError(
            f"loss.terms need teacher distributions, but none of the {report.rows} distilled rows in {data_path} has teacher "
            "logprobs. Distil with a teacher that reports them "
            "(e.g. teacher=smollm2, or an API teacher with teacher.top_logprobs > 0), set "
            "loss.signal.missing=score to teacher-force the rows through loss.signal.scorer (SmolLM2 by "
            "default), or use loss.signal.source=dense with loss.signal.teacher_model=<T5 folder>"
        )
    return store, report


def build_datamodule(
    cfg: DictConfig, rows: list[DistilledRow], tokenizer: Any, signals: Signals | None = None
) -> DistilledDataModule:
    # The class from `_target_`, called directly: instantiate would turn the typed rows it is
    # given into config nodes (plain dicts).
    conf = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(conf, dict)
    datamodule_class = get_class(conf.pop("_target_"))
    return datamodule_class(
        rows=rows,
        tokenizer=tokenizer,
        signals=signals,
        seed=cfg.seed,
        train_split=cfg.dataset.train_split,
        **conf,
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


def build_callbacks(cfg: DictConfig, *, has_val: bool, has_logger: bool) -> list[pl.Callback]:
    """The `callbacks` group's entries; those that watch validation are left out when nothing is held out."""
    callbacks: list[pl.Callback] = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None:
            continue
        monitor = str(conf.get("monitor") or "")
        if monitor.startswith("val/") and not has_val:
            log.info(
                "callbacks.%s: no validation problems (data.val_fraction=0 or data.val_size=0), so it is not used",
                name,
            )
            continue
        callback = instantiate(conf, _convert_="all")
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            continue
        callbacks.append(callback)
    return callbacks


def _best_checkpoint(callbacks: list[pl.Callback]) -> ModelCheckpoint | None:
    return next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def run_train(
    cfg: DictConfig,
    run_dir: Path,
    loggers: list[Logger],
    data_path: Path,
    *,
    resume: bool = False,
    student_dir: Path | None = None,
    signals_dir: Path | None = None,
) -> TrainResult:
    """Train in `run_dir` (checkpoints, logs) and save the student to `student_dir` (`run_dir/student`)."""
    pl.seed_everything(cfg.seed, workers=True)
    rows = read_distilled(data_path)
    terms = loss_terms(cfg)
    student = student_config(cfg)
    if student.get("tokenizer", "pretrained") != "pretrained":
        # A vocabulary of the training split's own sources and targets, in every format trained or validated on.
        formats = [*cfg.data.formats, cfg.data.eval_format]
        texts = vocabulary_texts(rows, formats, cfg.data.equation_notation)
        bundle = instantiate(student, _convert_="all", training_texts=texts)
    else:
        bundle = instantiate(student, _convert_="all")
    signals: Signals | None = None
    signal_report: SignalReport | None = None
    signal_source: SignalSource | None = None
    if any(t.needs_teacher for t in terms):
        on_policy = cfg.loss.on_policy
        if on_policy.fraction > 0 and cfg.loss.signal.source == "sparse":
            # A causal LM teacher with its own vocabulary scores the samples (span-aligned); the other
            # steps train on the rows' stored signals.
            if on_policy.fraction < 1:
                signals, signal_report = teacher_signals(
                    cfg, rows, bundle.tokenizer, run_dir, data_path, signals_dir
                )
            scorer = TeacherForcedScorer.from_config(
                OmegaConf.to_container(cfg.loss.signal.scorer, resolve=True)
            )  # type: ignore[arg-type]
            signal_source = CausalOnPolicySource(
                scorer,
                bundle.tokenizer,
                fraction=float(on_policy.fraction),
                temperature=float(on_policy.temperature),
                max_new_tokens=int(on_policy.max_new_tokens),
                seed=int(cfg.seed),
                alignment=cfg.loss.signal.alignment,
            )
        elif on_policy.fraction > 0:
            signal_source = OnPolicySource.from_pretrained(
                str(cfg.loss.signal.teacher_model),
                fraction=float(on_policy.fraction),
                temperature=float(on_policy.temperature),
                max_new_tokens=int(on_policy.max_new_tokens),
                seed=int(cfg.seed),
            )
        elif cfg.loss.signal.source == "dense":
            signal_source = DenseTeacherSource.from_pretrained(
                str(cfg.loss.signal.teacher_model), top_k=cfg.loss.signal.dense_top_k
            )
        else:
            signals, signal_report = teacher_signals(
                cfg, rows, bundle.tokenizer, run_dir, data_path, signals_dir
            )
            signal_source = StoredSparseSource()
    datamodule = build_datamodule(cfg, rows, bundle.tokenizer, signals)
    datamodule.setup("fit")
    module = StudentModule(
        bundle.model,
        bundle.tokenizer,
        student=student,
        **OmegaConf.to_container(cfg.optim, resolve=True),  # type: ignore[arg-type]
        max_new_tokens=datamodule.max_new_tokens,
        val_extraction=cfg.evaluation.select_extraction,
        terms=terms,
        signal_source=signal_source,
    )
    has_val = bool(datamodule.val_items)
    callbacks = build_callbacks(cfg, has_val=has_val, has_logger=bool(loggers))
    overrides: dict[str, Any] = {} if has_val else {"limit_val_batches": 0}
    trainer: pl.Trainer = instantiate(cfg.trainer, _partial_=True, _convert_="all")(
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

    student_dir = student_dir if student_dir is not None else run_dir / STUDENT_DIR
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
        signals=signal_report.to_json() if signal_report is not None else None,
    )
    if not trainer.is_global_zero:
        return result
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    module.model.save_pretrained(student_dir)
    bundle.tokenizer.save_pretrained(student_dir)
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
