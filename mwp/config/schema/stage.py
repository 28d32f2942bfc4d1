"""`stage`: which steps a run takes, the inputs of earlier runs, and the equation chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import ValidationInfo, field_validator, model_validator

from mwp.config.schema.base import Section, closest, help_field

EXTRACTIONS = ("auto", "strict", "flexible", "equation")


class ChainConfig(Section):
    max_corrections: int = help_field(
        2, ge=0, le=10, help="rounds of format correction for equations that failed to parse"
    )
    dedup_trials: int = help_field(
        8, ge=1, le=64, help="random N0..Nk assignments on which equivalent templates must agree"
    )
    constants: list[str] | None = help_field(
        None,
        help="numbers a template may use without their being in the problem "
        "(null = mwp.verify.equations.DEFAULT_CONSTANTS)",
    )


class StageConfig(Section):
    name: str = help_field(help="stage label (the run folder's parent)")
    steps: list[str] = help_field(
        min_length=1,
        help="steps to run, in order, from the pipeline's stages (distill, refine, train, evaluate)",
    )
    extraction: Literal[EXTRACTIONS] = help_field("auto", help="answer extraction when distilling")  # type: ignore[valid-type]
    shard: int = help_field(0, ge=0, help="this job's shard of the problems")
    num_shards: int = help_field(1, ge=1, help="number of shards")
    dedup: bool = help_field(True, help="drop a problem's duplicate completions")
    data: str | None = help_field(None, help="distilled data of an earlier run (a distill folder or JSONL)")
    student: str | None = help_field(None, help="trained student folder of an earlier run")
    resume: str | None = help_field(
        None, help="a run folder to continue: its artifacts are reused, training resumes"
    )
    checkpoint_every_n_steps: int = help_field(
        50, ge=1, help="save last.ckpt every N optimizer steps (and at the end)"
    )
    chain: ChainConfig = help_field(
        ChainConfig(),
        help="From Large to Tiny's equation chain (prompt=fltt_*, or stage.extraction=equation)",
    )

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[str], info: ValidationInfo) -> list[str]:
        known = pipeline_steps(info)
        for index, step in enumerate(steps):
            if step not in known:
                raise ValueError(
                    f"stage.steps.{index}={step!r}: not a stage; stages: {list(known)}{closest(step, known)}"
                )
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        if repeated:
            raise ValueError(f"stage.steps={steps}: {repeated} repeat")
        order = [step for step in known if step in steps]
        if steps != order:
            raise ValueError(f"stage.steps={steps}: run the steps in the pipeline's order, {order}")
        return steps

    @model_validator(mode="after")
    def _shard_in_range(self) -> StageConfig:
        if self.shard >= self.num_shards:
            raise ValueError(f"stage.shard={self.shard} must be < stage.num_shards={self.num_shards}")
        return self


def pipeline_steps(info: ValidationInfo) -> Sequence[str]:
    """The pipeline's stage names in order, which the caller of validation passes as context["steps"]
    (the stages are defined above the config layer, so the schema reads their names, never imports them)."""
    steps = (info.context or {}).get("steps")
    if not steps:
        raise ValueError(
            "the config was validated without the pipeline's stages (use mwp.stages.load_config)"
        )
    return tuple(steps)
