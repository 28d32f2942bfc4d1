"""`evaluation`: which models are scored, in which formats, and BIG-Bench Hard."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from mwp.config.schema.base import Section, help_field
from mwp.data.formats import FORMATS


class BBHEvalConfig(Section):
    tasks: str | list[str] = help_field("all", help="BIG-Bench Hard tasks: all, or a list of task names")
    prompt: Literal["cot", "answer_only"] = help_field(
        "cot", help="3-shot chain of thought, or the same exemplars answer-only"
    )
    limit_per_task: int | None = help_field(None, ge=1, help="first N examples of each task (null = all)")
    max_source_len: int = help_field(
        1024, ge=1, le=16384, help="source tokens; longer prompts drop exemplars from the front"
    )
    max_new_tokens: int = help_field(256, ge=1, le=16384, help="generation length")
    batch_size: int = help_field(16, ge=1, help="generation batch size")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: str | list[str]) -> str | list[str]:
        from mwp.verify.bbh_answers import TASK_ANSWER_TYPES

        names = [tasks] if isinstance(tasks, str) else tasks
        if tasks == "all":
            return tasks
        unknown = [t for t in names if t not in TASK_ANSWER_TYPES]
        if unknown or not names:
            raise ValueError(f"unknown BBH task(s) {unknown}; use 'all' or some of {list(TASK_ANSWER_TYPES)}")
        return tasks


class EvaluationConfig(Section):
    limit: int | None = help_field(None, ge=1, help="problems per evaluation set (null = the whole split)")
    batch_size: int = help_field(32, ge=1, help="generation batch size")
    select_extraction: Literal["strict", "flexible"] = help_field(
        "strict",
        help="answer extraction of val/acc, which picks the checkpoint (strict = the headline metric)",
    )
    formats: list[Literal[FORMATS]] = help_field(  # type: ignore[valid-type]
        ["zero_shot_cot"],
        min_length=1,
        help=f"source formats every model is evaluated in, any of {list(FORMATS)}",
    )
    num_exemplars: int = help_field(
        2, ge=1, le=32, help="exemplars per in-context source (from dataset.name's train split)"
    )
    exemplar_seed: int = help_field(0, help="seed of the exemplar draw (per problem: seed and problem id)")
    paper_metric: bool = help_field(
        False,
        help="also score Fu et al.'s metric, the completion's last number against the gold's "
        "(last_number_acc in results.json, the logs and the table); the headline stays strict",
    )
    models: list[str] = help_field(
        ["student"],
        min_length=1,
        help="models to evaluate: student (the trained one), initial (the configured student as built, before any "
        "training: the before of a before/after table), teacher (the configured live teacher), hf:<local model folder>",
    )

    @field_validator("formats", "models")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{repeated} repeat")
        return values

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from pathlib import Path

        for index, entry in enumerate(models):
            if entry in ("student", "initial", "teacher"):
                continue
            if not entry.startswith("hf:") or not entry[3:]:
                raise ValueError(
                    f"evaluation.models.{index}={entry!r}: use student, initial, teacher or hf:<local model folder>"
                )
            if not (Path(entry[3:]).expanduser() / "config.json").is_file():
                raise ValueError(f"evaluation.models.{index}={entry!r}: no config.json in {entry[3:]}")
        return models

    bbh: BBHEvalConfig | None = help_field(
        None,
        help="BIG-Bench Hard after the math sets, for the student and the initial model (evaluation=bbh; null = skip)",
    )
