"""The one definition of "this target position is supervised by the teacher".

The loss terms (what they sum and count) and the DataModule (the token counts of an accumulation
group) must agree exactly on it, or accumulated micro-batch means stop adding up to the big-batch
mean; so both call `supervised_positions`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mwp.signals.types import IGNORE_INDEX, SparseBatch, TeacherSignal


def has_distribution(teacher: SparseBatch) -> Tensor:
    """`[B, L]` positions whose sparse teacher has at least one valid slot (id >= 0, logprob > -inf)."""
    return ((teacher.ids >= 0) & (teacher.logprobs.float() > float("-inf"))).any(dim=-1)


def covered_positions(teacher: SparseBatch) -> Tensor:
    """`[B, L]` positions where a sparse teacher gives a distribution: masked in, with some valid id."""
    return teacher.mask.to(torch.bool) & has_distribution(teacher)


def supervised_positions(labels: Tensor, teacher: TeacherSignal | None = None) -> Tensor:
    """`[B, L]` bool: the positions a term with this teacher counts.

    Labelled positions (`labels != -100`); with a sparse teacher only those it covers
    (`covered_positions`). A dense teacher (logits) or none (cross-entropy) supervises every
    labelled position.
    """
    positions = labels != IGNORE_INDEX
    if isinstance(teacher, SparseBatch):
        positions = positions & covered_positions(teacher)
    return positions
