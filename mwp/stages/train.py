"""Train stage: fine-tune the Flan-T5 student on distilled data with Lightning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from mwp.data.datamodule import DistilledDataModule, Signals
from mwp.signals import DenseTeacherSource, SignalSource, StoredSparseSource
from mwp.stages.distill import read_distilled
from mwp.student.losses import LossTerm, terms_from_config
from mwp.student.model import StudentBundle, build_student
from mwp.student.module import StudentModule

log = logging.getLogger(__name__)

STUDENT_DIR = "student"
UNSTABLE_PRECISIONS = {"16", "16-mixed", "16-true", "fp16"}


@dataclass
class TrainResult:
    student_dir: Path
    best_checkpoint: str | None
    best_val_acc: float | None
    train_problems: set[str]
    steps: int


def student_from_config(cfg: DictConfig) -> StudentBundle:
    s = cfg.student
    return build_student(
        s.name_or_path,
        pretrained=s.pretrained,
        fallback_config=s.fallback_config,
        size=OmegaConf.to_container(s.size, resolve=True),  # type: ignore[arg-type]
        seed=cfg.seed,
    )


def loss_terms(cfg: DictConfig) -> list[LossTerm]:
    return terms_from_config(OmegaConf.to_container(cfg.loss.terms, resolve=True))  # type: ignore[arg-type]


def teacher_signals(
    cfg: DictConfig, rows: list[dict[str, Any]], tokenizer: Any, run_dir: Path, data_path: Path
) -> Signals:
    """Sparse teacher signals for the distilled rows (built once per run folder, then reused)."""
    from mwp.signals import TeacherForcedScorer, prepare_signals, signals_path

    signal = cfg.loss.signal
    scorer = None
    if signal.missing == "score":
        scorer = TeacherForcedScorer.from_config(OmegaConf.to_container(signal.scorer, resolve=True))  # type: ignore[arg-type]
    try:
        store, report = prepare_signals(
            rows,
            tokenizer,
            signals_path(run_dir, tokenizer),
            max_target_len=cfg.data.max_target_len,
            missing=signal.missing,
            scorer=scorer,
            source=str(data_path),
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
    return store


def build_datamodule(
    cfg: DictConfig, rows: list[dict[str, Any]], tokenizer: Any, signals: Signals | None = None
) -> DistilledDataModule:
    d = cfg.data
    return DistilledDataModule(
        rows,
        tokenizer,
        formats=list(d.formats),
        eval_format=d.eval_format,
        num_exemplars=d.num_exemplars,
        val_fraction=d.val_fraction,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        max_source_len=d.max_source_len,
        max_target_len=d.max_target_len,
        num_workers=d.num_workers,
        seed=cfg.seed,
        accumulate=int(cfg.trainer.get("accumulate_grad_batches") or 1),
        signals=signals,
    )


def run_train(cfg: DictConfig, run_dir: Path, loggers: list[Logger], data_path: Path) -> TrainResult:
    precision = str(cfg.trainer.precision)
    if precision in UNSTABLE_PRECISIONS:
        raise ValueError(f"trainer.precision={precision}: T5 overflows in fp16; use 32-true or bf16-mixed")
    pl.seed_everything(cfg.seed, workers=True)
    rows = read_distilled(data_path)
    terms = loss_terms(cfg)
    bundle = student_from_config(cfg)
    signals: Signals | None = None
    signal_source: SignalSource | None = None
    if any(t.needs_teacher for t in terms):
        if cfg.loss.signal.source == "dense":
            signal_source = DenseTeacherSource.from_pretrained(str(cfg.loss.signal.teacher_model))
        else:
            signals = teacher_signals(cfg, rows, bundle.tokenizer, run_dir, data_path)
            signal_source = StoredSparseSource()
    datamodule = build_datamodule(cfg, rows, bundle.tokenizer, signals)
    datamodule.setup("fit")
    module = StudentModule(
        bundle.model,
        bundle.tokenizer,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_ratio=cfg.optim.warmup_ratio,
        scheduler=cfg.optim.scheduler,
        max_new_tokens=cfg.data.max_new_tokens,
        terms=terms,
        signal_source=signal_source,
    )
    ckpt_dir = run_dir / "checkpoints"
    has_val = bool(datamodule.val_items)
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="step{step}-acc{val/acc:.3f}" if has_val else "step{step}",
        auto_insert_metric_name=False,
        monitor="val/acc" if has_val else None,
        mode="max",
        save_last=True,
        save_top_k=1,
    )
    callbacks: list[pl.Callback] = [checkpoint]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if not has_val:
        trainer_kwargs["limit_val_batches"] = 0
    trainer = pl.Trainer(
        **trainer_kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )
    resume = ckpt_dir / "last.ckpt"
    ckpt_path = str(resume) if cfg.stage.resume and resume.exists() else None
    if ckpt_path:
        log.info("resuming training from %s", ckpt_path)
    log.info(
        "training on %d examples from %d problems (%d held out for validation)",
        len(datamodule.train_examples),
        len(datamodule.train_ids),
        len(datamodule.val_items),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    best = checkpoint.best_model_path or checkpoint.last_model_path or None
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    student_dir = run_dir / STUDENT_DIR
    module.model.save_pretrained(student_dir)
    bundle.tokenizer.save_pretrained(student_dir)
    (student_dir / "train_problems.txt").write_text(
        "\n".join(sorted(datamodule.train_ids)) + "\n", encoding="utf-8"
    )
    score = checkpoint.best_model_score
    return TrainResult(
        student_dir=student_dir,
        best_checkpoint=best,
        best_val_acc=float(score) if score is not None else None,
        train_problems=set(datamodule.train_ids),
        steps=trainer.global_step,
    )
