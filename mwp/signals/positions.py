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


# A batch's `cot_rows [B]` bool marks chain-of-thought targets (the rest are answer-only).
COT_ROWS_KEY = "cot_rows"
# The source texts of a training batch (a list of str): what an on-policy teacher is prompted with.
SOURCES_KEY = "sources"
ROW_SCOPES = ("all", "cot", "answer_only")


def rows_in_scope(labels: Tensor, scope: str, cot_rows: Tensor | None) -> Tensor:
    """`[B, L]` labelled positions of the rows a term with `targets=scope` counts."""
    labelled = labels != IGNORE_INDEX
    if scope == "all":
        return labelled
    if scope not in ROW_SCOPES:
        raise ValueError(f"row scope must be one of {ROW_SCOPES}, got {scope!r}")
    if cot_rows is None:
        raise ValueError(
            f"a loss term with targets={scope} needs batches that mark their chain-of-thought rows "
            f"(`{COT_ROWS_KEY}`, set by the DataModule's collator)"
        )
    rows = cot_rows.to(torch.bool).to(labels.device)
    return labelled & (rows if scope == "cot" else ~rows)[:, None]


def count_key(scope: str, by_teacher: bool) -> str:
    """The `window_n_tokens` entry a term divides by: labelled or teacher-covered tokens of its rows."""
    base = "teacher" if by_teacher else "labels"
    return base if scope == "all" else f"{base}:{scope}"


def window_counts(
    micro_batches: list[dict[str, Tensor]] | tuple[dict[str, Tensor], ...],
) -> dict[str, Tensor]:
    """Every `count_key` summed over the micro-batches of one accumulation window (this rank's share).

    Teacher-covered counts exist where the batches carry a sparse teacher; scoped counts where they
    mark their chain-of-thought rows. Absent entries count 0.
    """
    totals: dict[str, int] = {}
    for batch in micro_batches:
        labels = batch["labels"]
        teacher = SparseBatch.from_batch(batch) if "teacher_ids" in batch else None
        cot_rows = batch.get(COT_ROWS_KEY)
        for scope in ROW_SCOPES if cot_rows is not None else ("all",):
            rows = rows_in_scope(labels, scope, cot_rows)
            covered = rows & covered_positions(teacher) if teacher is not None else rows.new_zeros(())
            totals[count_key(scope, False)] = totals.get(count_key(scope, False), 0) + int(rows.sum())
            totals[count_key(scope, True)] = totals.get(count_key(scope, True), 0) + int(covered.sum())
    return {key: torch.tensor(value) for key, value in totals.items()}
