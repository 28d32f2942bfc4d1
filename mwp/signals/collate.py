"""Pad a batch of per-sequence sparse signals into the `[B, L, k]` tensors of a training batch.

A sparse signal never becomes a `[B, L, V]` tensor: the losses gather the student's
log-probabilities at the k ids instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mwp.signals.types import IGNORE_INDEX, IN_VOCAB_KEY, LOGPROB_DTYPE, PAD_ID, SparseSignal


def collate_sparse(
    signals: Sequence[SparseSignal | None],
    target_len: int,
    *,
    labels: Tensor | None = None,
    k: int | None = None,
) -> dict[str, Tensor]:
    """Pad (or cut) a batch of sparse signals to `[B, target_len, k]`.

    Returns `teacher_ids` int32, `teacher_logprobs` float32 and `teacher_mask` bool
    `[B, target_len]` (`SparseBatch.from_batch` reads them back), and `teacher_in_vocab` bool
    `[B, target_len, k]` when any signal marks its slots (a signal that does not counts every
    valid slot as shared). A `None` entry (an example
    without a signal, e.g. an answer-only target) is a row with no distribution anywhere.
    With `labels` (`[B, target_len]`, -100 = padding), a position keeps its distribution only where
    the label is real and, when the signal recorded its `target_ids`, equals the token the signal
    was aligned to (so a truncated target, whose last label became EOS, or a differently tokenized
    one, falls back to cross-entropy there).
    """
    if target_len < 0:
        raise ValueError(f"target_len must be >= 0, got {target_len}")
    batch = len(signals)
    present = [s for s in signals if s is not None]
    width = max(k if k is not None else 0, max((s.k for s in present), default=1), 1)
    if k is not None and any(s.k > k for s in present):
        raise ValueError(f"a signal has more than k={k} slots; pass a larger k or none")
    ids = torch.full((batch, target_len, width), PAD_ID, dtype=torch.int32)
    logprobs = torch.full((batch, target_len, width), float("-inf"), dtype=LOGPROB_DTYPE)
    mask = torch.zeros((batch, target_len), dtype=torch.bool)
    aligned_to = torch.full((batch, target_len), PAD_ID, dtype=torch.int64)
    has_targets = torch.zeros(batch, dtype=torch.bool)
    marks_slots = any(s.in_vocab is not None for s in present)
    in_vocab = torch.zeros((batch, target_len, width), dtype=torch.bool) if marks_slots else None
    for row, signal in enumerate(signals):
        if signal is None:
            continue
        n = min(len(signal), target_len)
        ids[row, :n, : signal.k] = signal.ids[:n]
        logprobs[row, :n, : signal.k] = signal.logprobs[:n]
        mask[row, :n] = signal.mask[:n]
        if in_vocab is not None:
            shared = signal.in_vocab if signal.in_vocab is not None else signal.ids >= 0
            in_vocab[row, :n, : signal.k] = shared[:n]
        if signal.target_ids is not None:
            aligned_to[row, :n] = signal.target_ids[:n].to(torch.int64)
            has_targets[row] = True
    if labels is not None:
        if labels.shape != (batch, target_len):
            raise ValueError(f"labels must be [{batch}, {target_len}], got {tuple(labels.shape)}")
        agrees = labels == aligned_to
        mask &= (labels != IGNORE_INDEX) & (agrees | ~has_targets[:, None])
    out = {"teacher_ids": ids, "teacher_logprobs": logprobs, "teacher_mask": mask}
    if in_vocab is not None:
        out[IN_VOCAB_KEY] = in_vocab
    return out
