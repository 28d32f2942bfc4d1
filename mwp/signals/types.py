"""The shapes a teacher signal takes: one sequence (`DenseSignal`, `SparseSignal`), one batch (`SparseBatch`).

* `DenseSignal` - full next-token logits `[L, V]` from a teacher that shares the student's
  vocabulary. Only ever held in memory; a batch of them is plain logits `[B, L, V]`.
* `SparseSignal` - one target sequence: per student target position, the teacher's top-k
  alternatives already mapped into student-vocabulary ids: `ids int32 [L, k]`,
  `logprobs float32 [L, k]`, `mask bool [L]` (positions that carry a distribution; the others fall
  back to plain cross-entropy). Unused slots hold id -1 and logprob -inf. `target_ids int32 [L]`
  optionally records the student tokens the signal was aligned to, so a batch can drop positions
  whose labels disagree (truncation, a different tokenizer). `in_vocab bool [L, k]` optionally
  marks the slots whose teacher token maps onto a student token; an unshared slot (a teacher
  token the student's vocabulary lacks) keeps its logprob under the placeholder id `UNSHARED_ID`
  (a valid id, never read as a token: -1 would make it an unused slot).
* `SparseBatch` - a collated batch of sparse signals (`ids [B, L, k]`, `logprobs [B, L, k]`,
  `mask [B, L]`), what the losses consume; `collate_sparse` builds it, as the `teacher_*` entries
  of a training batch.

Logprobs stay float32 all the way (row, store, batch): float16 rounds a logprob by up to ~5e-4,
which kept a student identical to its teacher at a KL of ~2e-4 (full-vocabulary top-k) instead of
~1e-8.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

PAD_ID = -1
# The id of a slot whose teacher token no student token spells (`in_vocab` False): valid for a
# gather, and read by no loss as a token.
UNSHARED_ID = 0
IGNORE_INDEX = -100
LOGPROB_DTYPE = torch.float32
# Keys of a training batch that carry a collated sparse signal.
BATCH_KEYS = ("teacher_ids", "teacher_logprobs", "teacher_mask")
# Optional batch key: which slots are shared with the student's vocabulary (`SparseBatch.in_vocab`).
IN_VOCAB_KEY = "teacher_in_vocab"


@dataclass(frozen=True)
class DenseSignal:
    """Teacher logits `[L, V]` over the student's own vocabulary."""

    logits: Tensor

    def __post_init__(self) -> None:
        if self.logits.dim() != 2 or not self.logits.is_floating_point():
            raise ValueError(
                f"DenseSignal.logits must be a float [L, V] tensor, got {tuple(self.logits.shape)}"
            )

    def __len__(self) -> int:
        return self.logits.shape[0]

    def to_sparse(self, k: int, target_ids: Tensor | None = None) -> SparseSignal:
        """Keep the top-k of each position (log-probabilities at temperature 1)."""
        if not 1 <= k <= self.logits.shape[1]:
            raise ValueError(f"k must be in [1, {self.logits.shape[1]}], got {k}")
        logprobs, ids = torch.log_softmax(self.logits.float(), dim=-1).topk(k, dim=-1)
        mask = torch.ones(len(self), dtype=torch.bool)
        return SparseSignal(ids=ids, logprobs=logprobs, mask=mask, target_ids=target_ids)


@dataclass(frozen=True)
class SparseSignal:
    """Teacher top-k per student target position of one sequence, in student-vocabulary ids (see module doc)."""

    ids: Tensor
    logprobs: Tensor
    mask: Tensor
    target_ids: Tensor | None = None
    in_vocab: Tensor | None = None

    def __post_init__(self) -> None:
        ids, logprobs, mask = self.ids, self.logprobs, self.mask
        if ids.dim() != 2 or logprobs.shape != ids.shape:
            raise ValueError(
                f"SparseSignal ids and logprobs must both be [L, k]; got {tuple(ids.shape)} and {tuple(logprobs.shape)}"
            )
        if mask.shape != ids.shape[:1]:
            raise ValueError(f"SparseSignal.mask must be [L]={ids.shape[0]}, got {tuple(mask.shape)}")
        if self.target_ids is not None and self.target_ids.shape != ids.shape[:1]:
            raise ValueError(
                f"SparseSignal.target_ids must be [L]={ids.shape[0]}, got {tuple(self.target_ids.shape)}"
            )
        if self.in_vocab is not None and self.in_vocab.shape != ids.shape:
            raise ValueError(
                f"SparseSignal.in_vocab must be {tuple(ids.shape)} like ids, got {tuple(self.in_vocab.shape)}"
            )
        ids = ids.to(torch.int32)
        logprobs = logprobs.to(LOGPROB_DTYPE)
        # One convention for unused slots whichever side marked them.
        unused = (ids < 0) | ~torch.isfinite(logprobs)
        if bool(unused.any()):
            ids = ids.masked_fill(unused, PAD_ID)
            logprobs = logprobs.masked_fill(unused, float("-inf"))
        if self.in_vocab is not None:
            object.__setattr__(self, "in_vocab", self.in_vocab.to(torch.bool) & ~unused)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "logprobs", logprobs)
        object.__setattr__(self, "mask", mask.to(torch.bool))
        if self.target_ids is not None:
            object.__setattr__(self, "target_ids", self.target_ids.to(torch.int32))

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def empty(cls, length: int, k: int = 1, target_ids: Tensor | None = None) -> SparseSignal:
        """A signal with no distribution anywhere (every position trains on cross-entropy only)."""
        return cls(
            ids=torch.full((length, k), PAD_ID, dtype=torch.int32),
            logprobs=torch.full((length, k), float("-inf"), dtype=LOGPROB_DTYPE),
            mask=torch.zeros(length, dtype=torch.bool),
            target_ids=target_ids,
        )


@dataclass(frozen=True)
class SparseBatch:
    """A collated batch of sparse teacher distributions: `ids`, `logprobs` `[B, L, k]`, `mask [B, L]`.

    `in_vocab [B, L, k]` (optional) marks the slots whose teacher token maps exactly onto the student
    id in `ids`; a slot marked False carries the probability of a teacher token the student's
    vocabulary lacks (its id is any valid id, unused). Only the `hybrid` loss reads it; without it
    every valid slot counts as shared.
    """

    ids: Tensor
    logprobs: Tensor
    mask: Tensor
    in_vocab: Tensor | None = None

    def __post_init__(self) -> None:
        if (
            self.ids.dim() != 3
            or self.logprobs.shape != self.ids.shape
            or self.mask.shape != self.ids.shape[:2]
        ):
            raise ValueError(
                "SparseBatch needs ids and logprobs [B, L, k] and mask [B, L]; got "
                f"{tuple(self.ids.shape)}, {tuple(self.logprobs.shape)}, {tuple(self.mask.shape)}"
            )
        if self.in_vocab is not None and self.in_vocab.shape != self.ids.shape:
            raise ValueError(
                f"SparseBatch.in_vocab must be {tuple(self.ids.shape)} like ids, got {tuple(self.in_vocab.shape)}"
            )

    def shared_only(self) -> SparseBatch:
        """The batch without its unshared slots (they become unused), for the terms that compare
        distributions over student ids (forward/reverse KL, JSD): to those, an unshared token's
        probability is part of the teacher's missing mass."""
        if self.in_vocab is None:
            return self
        unshared = ~self.in_vocab.to(torch.bool)
        return SparseBatch(
            self.ids.masked_fill(unshared, PAD_ID),
            self.logprobs.masked_fill(unshared, float("-inf")),
            self.mask,
        )

    @classmethod
    def from_batch(cls, batch: Mapping[str, Tensor], prefix: str = "teacher_") -> SparseBatch:
        """The `teacher_ids`/`teacher_logprobs`/`teacher_mask` entries of a training batch."""
        return cls(
            batch[f"{prefix}ids"],
            batch[f"{prefix}logprobs"],
            batch[f"{prefix}mask"],
            batch.get(f"{prefix}in_vocab"),
        )


# What a `SignalSource` hands the losses for one batch: dense logits `[B, L, V]` or a sparse batch.
TeacherSignal = Tensor | SparseBatch


class Sequences(Protocol):
    """How a student lays out its training batches and generates (the student's `Codec` is one): what the
    signal sources need to run a teacher or the student on a batch of either kind (seq2seq or causal)."""

    kind: str
    eos_id: int

    def logits(self, model: Any, batch: Mapping[str, Any]) -> Tensor:
        """`[B, T, V]` logits of the target positions of `batch`, aligned with its labels."""
        ...

    def prompts(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The batch's prompts (without targets), ready to generate from."""
        ...

    def generate(self, model: Any, prompts: Mapping[str, Tensor], **kwargs: Any) -> Tensor:
        """The new tokens only, `[B, N]`."""
        ...

    def with_labels(self, batch: Mapping[str, Any], labels: Tensor) -> dict[str, Any]:
        """`batch` with new targets `labels` `[B, T]` (-100 = padding)."""
        ...
