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


class OptimConfig(Section):
    lr: float = help_field(5e-4, gt=0, le=1, help="AdamW peak learning rate")
    weight_decay: float = help_field(0.01, ge=0, le=1, help="AdamW weight decay (not on norms and biases)")
    warmup_ratio: float = help_field(0.05, ge=0, lt=1, help="share of optimizer steps of linear warm-up")
    scheduler: Literal[SCHEDULERS] = help_field("linear", help="transformers scheduler after warm-up")  # type: ignore[valid-type]
