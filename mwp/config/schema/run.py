"""The whole composed config, every group checked together (`mwp.config.validate`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import field_validator, model_validator

from mwp.config.schema.base import OpenSection, Section, help_field
from mwp.config.schema.cache import CacheConfig
from mwp.config.schema.data import DataConfig
from mwp.config.schema.dataset import DatasetConfig
from mwp.config.schema.evaluation import EvaluationConfig
from mwp.config.schema.loss import LossConfig
from mwp.config.schema.optim import OptimConfig
from mwp.config.schema.paths import PathsConfig
from mwp.config.schema.prompt import PromptConfig
from mwp.config.schema.refine import RefineConfig
from mwp.config.schema.stage import StageConfig
from mwp.config.schema.student import StudentConfig
from mwp.config.schema.teacher import (
    TEACHER_SCHEMAS,
    BatchFileTeacherConfig,
    RecordedTeacherConfig,
    SimulatedTeacherConfig,
    TeacherConfig,
)
from mwp.config.schema.trainer import TrainerConfig
from mwp.objective import parse_metric

WANDB_MODES = ("online", "offline", "disabled")


class RunConfig(Section):
    """The whole composed config (the `hydra` node excluded)."""

    task_name: str = help_field(help="name of the run folder's parent")
    seed: int = help_field(42, help="seed of everything (splits, shuffling, random init)")
    tags: list[str] = help_field([], help="labels of this run in the loggers (W&B tags)")
    debug_traceback: bool = help_field(False, help="print full tracebacks for project errors")
    optimized_metric: str = help_field(
        "val/acc",
        help="what a run returns to an optimising sweeper (hparams_search=optuna_*): val/acc, "
        "eval/<set>/strict_acc, eval/<set>/<format>/strict_acc or eval/ood/strict_acc (flexible_acc likewise)",
    )
    paths: PathsConfig
    dataset: DatasetConfig
    teacher: TeacherConfig
    prompt: PromptConfig | None = None
    student: StudentConfig
    loss: LossConfig
    data: DataConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logger: dict[str, OpenSection | None] = help_field({}, help="experiment loggers (_target_ mappings)")
    callbacks: dict[str, OpenSection | None] = help_field({}, help="Lightning callbacks (_target_ mappings)")
    evaluation: EvaluationConfig
    stage: StageConfig
    cache: CacheConfig
    refine: RefineConfig = help_field(RefineConfig(), help="the refine step (From Large to Tiny)")
    experiment: Any = None
    hparams_search: Any = None
    debug: Any = None

    @field_validator("optimized_metric")
    @classmethod
    def _metric_spelling(cls, value: str) -> str:
        parse_metric(value)
        return value

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_by_target(cls, value: Any) -> Any:
        if isinstance(value, dict):
            schema = TEACHER_SCHEMAS.get(str(value.get("_target_")))
            if schema is not None:
                return schema.model_validate(value)
        return value

    @field_validator("logger")
    @classmethod
    def _wandb_mode(cls, loggers: dict[str, OpenSection | None]) -> dict[str, OpenSection | None]:
        for name, entry in loggers.items():
            if entry is not None and entry.target.endswith("WandbLogger"):
                mode = (entry.model_extra or {}).get("mode", "offline")
                if mode not in WANDB_MODES:
                    raise ValueError(f"logger.{name}.mode={mode!r}: choose one of {list(WANDB_MODES)}")
        return loggers

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        # Every problem at once, one line each: fixing one should not reveal the next.
        problems = [*self._problems(), *self._refine_problems(), *self._missing_paths()]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _problems(self) -> Iterator[str]:
        steps = self.stage.steps
        if "train" in steps and "distill" not in steps and not (self.stage.data or self.stage.resume):
            yield ("stage.data: training without the distill step needs stage.data=<distill folder>")
        if (
            "evaluate" in steps
            and "student" in self.evaluation.models
            and "train" not in steps
            and not (self.stage.student or self.stage.resume)
        ):
            yield ("stage.student: evaluating without the train step needs stage.student=<student folder>")
        teacher = self.teacher
        if "evaluate" in steps and "teacher" in self.evaluation.models:
            index = self.evaluation.models.index("teacher")
            if isinstance(teacher, RecordedTeacherConfig | BatchFileTeacherConfig):
                yield (
                    f"evaluation.models.{index}=teacher: {teacher.name!r} replays completions recorded "
                    "for other prompts and cannot answer new ones; evaluate a live teacher "
                    "(teacher=smollm2, openai, vllm) or drop it from evaluation.models"
                )
        if "distill" in steps and isinstance(teacher, RecordedTeacherConfig):
            from mwp.data.loaders import canonical_name

            if canonical_name(teacher.dataset) != canonical_name(self.dataset.name):
                yield (
                    f"teacher.dataset: the recorded teacher {teacher.name!r} covers {teacher.dataset!r}, "
                    f"not dataset.name={self.dataset.name!r}; pick a live teacher (teacher=smollm2, openai, vllm)"
                )
            if self.dataset.train_split not in teacher.completions:
                yield (
                    f"teacher.completions: the recorded teacher has splits {sorted(teacher.completions)}, "
                    f"not dataset.train_split={self.dataset.train_split!r}"
                )
        if "distill" in steps and isinstance(teacher, SimulatedTeacherConfig):
            from mwp.data.loaders import canonical_name

            if canonical_name(teacher.dataset) != canonical_name(self.dataset.name):
                yield (
                    f"teacher.dataset: the simulated teacher answers from {teacher.dataset!r} gold equations, "
                    f"not dataset.name={self.dataset.name!r}"
                )
        if self.data.packing:
            kind = self.student.known_kind()
            if kind == "seq2seq":
                yield (
                    f"data.packing=true packs causal students' batches, and the student ({self.student.name_or_path}) is "
                    "seq2seq (T5: its encoder and decoder read separate sequences); set data.packing=false"
                )
            if self.loss.on_policy.fraction > 0:
                yield (
                    f"data.packing=true: on-policy steps (loss.on_policy.fraction={self.loss.on_policy.fraction}) "
                    "sample from each example's prompt, which a packed batch does not keep; set data.packing=false"
                )
        if "train" in steps and self.trainer.max_steps == -1 and self.trainer.max_epochs in (None, -1):
            yield "trainer.max_steps=-1 needs trainer.max_epochs >= 1, or training never ends"

    def _refine_problems(self) -> Iterator[str]:
        steps = self.stage.steps
        if "refine" not in steps:
            return
        if "distill" not in steps and not (self.stage.data or self.stage.resume):
            yield ("stage.data: refining without the distill step needs stage.data=<distill folder>")
        if self.refine.method == "teacher_feedback":
            assert self.refine.teacher_feedback is not None
            chosen = self.refine.teacher_feedback.teacher
            key = "refine.teacher_feedback.teacher"
            if chosen is None:
                teacher: Any = self.teacher
                key = f"{key} (null: the run's teacher, teacher={self.teacher.name})"
            else:
                schema = TEACHER_SCHEMAS.get(str(chosen.get("_target_")), TeacherConfig)
                try:
                    teacher = schema.model_validate(chosen)
                except ValueError as err:
                    yield f"refine.teacher_feedback.teacher: {err}"
                    return
            if isinstance(teacher, RecordedTeacherConfig | BatchFileTeacherConfig):
                yield (
                    f"{key}: {teacher.name!r} replays completions recorded for other prompts and cannot "
                    "answer feedback prompts; name a live teacher, e.g. "
                    "+teacher@refine.teacher_feedback.teacher=smollm2 (or openai, vllm)"
                )

    def _missing_paths(self) -> Iterator[str]:
        """Inputs a stage will read exist: checked now, not after a teacher was paid or a model loaded."""
        from pathlib import Path

        checks = [
            (
                "paths.data_dir",
                self.paths.data_dir,
                "set $MWP_DATA_DIR or paths.data_dir to the bundled data",
            ),
            ("stage.data", self.stage.data, "a distill folder or its distilled.jsonl"),
            ("stage.student", self.stage.student, "a trained student folder"),
            ("stage.resume", self.stage.resume, "the folder of the run to continue"),
        ]
        if self.student.pretrained == "never":
            checks.append(
                ("student.fallback_config", self.student.fallback_config, "a config + tokenizer folder")
            )
        for key, value, what in checks:
            if value is not None and not Path(value).exists():
                yield f"{key}={value!r}: no such file or folder ({what})"
