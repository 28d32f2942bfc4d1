"""`optim`: the optimiser and its learning-rate schedule."""

from __future__ import annotations

from typing import Literal

from mwp.config.schema.base import Section, help_field

# transformers' scheduler names (`transformers.SchedulerType`), listed here so that checking a
# config never imports transformers.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


# What a schedule's length counts (`schedule_length`).
SCHEDULE_LENGTHS = ("optimizer_steps", "micro_batches")
# Which parameters weight decay applies to (`weight_decay_on`).
DECAYED_PARAMETERS = ("matrices", "all")


class OptimConfig(Section):
    lr: float = help_field(5e-4, gt=0, le=1, help="AdamW peak learning rate")
    weight_decay: float = help_field(0.01, ge=0, le=1, help="AdamW weight decay (see weight_decay_on)")
    weight_decay_on: Literal[DECAYED_PARAMETERS] = help_field(  # type: ignore[valid-type]
        "matrices",
        help="matrices: every parameter but norms and biases; all: every parameter (torch's AdamW "
        "without parameter groups, as Fu et al.)",
    )
    warmup_ratio: float = help_field(0.05, ge=0, lt=1, help="share of optimizer steps of linear warm-up")
    warmup_steps: int | None = help_field(
        None,
        ge=0,
        le=10_000_000,
        help="optimizer steps of linear warm-up, a count that overrides warmup_ratio",
    )
    scheduler: Literal[SCHEDULERS] = help_field("linear", help="transformers scheduler after warm-up")  # type: ignore[valid-type]
    schedule_length: Literal[SCHEDULE_LENGTHS] = help_field(  # type: ignore[valid-type]
        "optimizer_steps",
        help="what the scheduler's length counts, stepped once per optimizer step either way: "
        "optimizer_steps (the schedule runs its course) or micro_batches (Fu et al.'s quirk: sized in "
        "micro-batches of every device together, so under accumulation a (per device x devices) a cosine "
        "decays only to about 0.5(1+cos(pi/a)))",
    )
