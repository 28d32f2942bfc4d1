"""The student-side teacher signal: its types, how it is built and stored, and where a batch gets it.

One name per concept:

* `SparseSignal` - the sparse top-k of ONE target sequence (`[L, k]`), as alignment produces it and
  the store keeps it; `DenseSignal` - full logits of one sequence (`[L, V]`).
* `SparseBatch` - a collated batch of sparse signals (`[B, L, k]`), what the losses consume
  (`collate_sparse` builds its tensors; `SparseBatch.from_batch` reads them from a training batch).
* `TeacherSignal` - what a batch's teacher is for the losses: dense logits `[B, L, V]` or a
  `SparseBatch`.

Modules:

* `types` - the signal types; `positions` - `supervised_positions`, the one definition of the
  target positions a teacher supervises (losses and DataModule token counts both use it).
* `collate` - `collate_sparse`; `store` - `SignalStore`, the safetensors file of one artifact.
* `alignment` - `SpanAligner` (character-offset spans), `TokenAligner` (DTW) and `Fu2023Aligner`
  (Fu et al.'s DTW), built by `make_aligner`: a teacher's tokens onto the student's tokenization.
* `scoring` - `TeacherForcedScorer`: rationales without logprobs, scored by a local causal LM.
* `build` - `prepare_signals`: align (or score) every distilled row and write the store.
* `sources` - `SignalSource` and its kinds: where the LightningModule gets a batch's signal.
"""

from __future__ import annotations

from mwp.signals.alignment import (
    Alignment,
    Fu2023Aligner,
    SpanAligner,
    TokenAligner,
    dtw_align,
    make_aligner,
)
from mwp.signals.build import MISSING_CHOICES, SignalReport, prepare_signals, signals_path, tokenizer_id
from mwp.signals.collate import collate_sparse
from mwp.signals.positions import has_distribution, supervised_positions
from mwp.signals.scoring import TeacherForcedScorer
from mwp.signals.sources import DenseTeacherSource, NoSignal, SignalSource, StoredSparseSource
from mwp.signals.store import SignalStore, SignalStoreError
from mwp.signals.types import DenseSignal, SparseBatch, SparseSignal, TeacherSignal

__all__ = [
    "MISSING_CHOICES",
    "Alignment",
    "DenseSignal",
    "DenseTeacherSource",
    "Fu2023Aligner",
    "NoSignal",
    "SignalReport",
    "SignalSource",
    "SignalStore",
    "SignalStoreError",
    "SpanAligner",
    "SparseBatch",
    "SparseSignal",
    "StoredSparseSource",
    "TeacherForcedScorer",
    "TeacherSignal",
    "TokenAligner",
    "collate_sparse",
    "dtw_align",
    "has_distribution",
    "make_aligner",
    "prepare_signals",
    "signals_path",
    "supervised_positions",
    "tokenizer_id",
]
