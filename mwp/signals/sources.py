"""Where a training batch's teacher signal comes from, behind one interface.

The LightningModule asks its `SignalSource` for the signal of each collated batch and hands the
result to the losses, whatever the teacher is (DistillKit's split between signal sources and the
trainer):

* `StoredSparseSource` - the sparse top-k the collator already put in the batch from a
  `SignalStore` (`teacher_ids`, `teacher_logprobs`, `teacher_mask`). Rows a recorded teacher left
  without logprobs were scored into that store at build time (`mwp.signals.scoring`), so a
  "scored by a local causal LM" teacher is this source too.
* `DenseTeacherSource` - a same-vocabulary teacher of the student's kind (a T5 for a T5, a causal LM with
  the student's tokenizer for a causal student) run beside it: logits `[B, L, V]`,
  or with `top_k` its top-k per position as a `SparseBatch` (what a stored top-k of it holds).
* `NoSignal` - cross-entropy only (a module may also be given no source at all).
* `mwp.signals.on_policy.OnPolicySource` - a dense teacher that, on a share of the optimizer
  steps, scores sequences the student samples itself instead of the dataset's targets (GKD).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwp.signals.types import BATCH_KEYS, IGNORE_INDEX, LOGPROB_DTYPE, Sequences, SparseBatch, TeacherSignal

log = logging.getLogger(__name__)


class SignalSource(ABC):
    """The teacher signal of a collated training batch (see the module doc)."""

    @abstractmethod
    def signal(self, batch: Mapping[str, Any]) -> TeacherSignal | None:
        """Dense logits `[B, L, V]`, a `SparseBatch`, or None (no teacher for this batch)."""

    sequences: Sequences | None = None

    def attach(self, student: nn.Module, sequences: Sequences) -> None:
        """Bind the source to the student it supervises and its batch layout (once, when the module is
        built); raise if this source cannot supervise `student`."""
        del student
        self.sequences = sequences

    def report(self) -> dict[str, Any] | None:
        """What the source gave the losses over training (`summary.json`'s `train.signals`), or None."""
        return None

    def targets(self, batch: dict[str, Any], student: nn.Module, step: int) -> dict[str, Any]:
        """The batch the student trains on at optimizer step `step`: the dataset's, unless the source
        replaces its targets (`mwp.signals.on_policy.OnPolicySource`: the student's own samples)."""
        del student, step
        return batch


class NoSignal(SignalSource):
    """No teacher: every term is cross-entropy."""

    def signal(self, batch: Mapping[str, Any]) -> None:
        return None


class StoredSparseSource(SignalSource):
    """The sparse teacher the DataModule collated into the batch from its `SignalStore`."""

    def signal(self, batch: Mapping[str, Any]) -> SparseBatch:
        missing = [key for key in BATCH_KEYS if key not in batch]
        if missing:
            raise ValueError(
                f"loss.terms need teacher signals, but the batch has none ({', '.join(missing)} missing): "
                "build the DataModule with signals (set loss.signal.source), or use loss=ce"
            )
        return SparseBatch.from_batch(batch)


class DenseTeacherSource(SignalSource):
    """A frozen teacher with the student's vocabulary (a T5 for a T5, a causal LM with the student's
    tokenizer for a causal student); its logits are the signal.

    The teacher is held here, not by the LightningModule, so it is no child module of the student:
    not trained, not in `state_dict` or checkpoints. It moves to the batch's device on first use and
    always runs in eval mode without autograd. It counts the target tokens it gave a distribution to,
    for `report` (every one: it runs on the student's own batches, so nothing needs aligning).
    """

    def __init__(self, teacher: nn.Module, *, top_k: int | None = None) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"loss.signal.dense_top_k must be >= 1 or null, got {top_k}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.top_k = top_k
        self.teacher_model: str | None = None  # the folder it was loaded from, for the report
        self.batches = 0
        self.target_tokens = 0
        self.covered_tokens = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, *, top_k: int | None = None) -> DenseTeacherSource:
        """A teacher from a local checkpoint folder (`loss.signal.teacher_model`): a T5 for a T5 student,
        a causal LM for a causal student (it must share the student's tokenizer)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        try:
            config = AutoConfig.from_pretrained(str(path))
            loader = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            source = cls(loader.from_pretrained(str(path)), top_k=top_k)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"loss.signal.teacher_model={str(path)!r}: no checkpoint could be loaded ({err})"
            ) from err
        source.teacher_model = str(path)
        return source

    def attach(self, student: nn.Module, sequences: Sequences) -> None:
        super().attach(student, sequences)
        teacher_kind = "seq2seq" if getattr(self.teacher.config, "is_encoder_decoder", False) else "causal"
        if teacher_kind != sequences.kind:
            raise ValueError(
                f"loss.signal.teacher_model is a {teacher_kind} model and the student a {sequences.kind} one: a "
                "dense teacher runs on the student's own batches, so it must be of the same kind"
            )
        student_vocab = student.get_output_embeddings().weight.shape[0]  # type: ignore[operator]
        teacher_vocab = self.teacher.get_output_embeddings().weight.shape[0]  # type: ignore[operator]
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"loss.signal.teacher_model has a vocabulary of {teacher_vocab}, the student {student_vocab}: "
                "a dense teacher must share the student's vocabulary"
            )
        log.info(
            "dense teacher %s (%s %s, %.1fM parameters, vocabulary %d shared with the student): %s at every "
            "target token of the student's batches",
            self.teacher_model or type(self.teacher).__name__,
            teacher_kind,
            getattr(self.teacher.config, "model_type", "?"),
            sum(p.numel() for p in self.teacher.parameters()) / 1e6,
            teacher_vocab,
            "its full distribution" if self.top_k is None else f"its top-{self.top_k}",
        )

    def report(self) -> dict[str, Any]:
        covered = self.covered_tokens
        return {
            "source": "dense",
            "teacher_model": self.teacher_model,
            "top_k": self.top_k,
            "batches": self.batches,
            "target_tokens": self.target_tokens,
            "covered_tokens": covered,
            "coverage": round(covered / self.target_tokens, 4) if self.target_tokens else 0.0,
        }

    def signal(self, batch: Mapping[str, Any]) -> TeacherSignal:
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()
        with torch.no_grad():
            if self.sequences is not None:
                logits = self.sequences.logits(self.teacher, batch)
            elif getattr(self.teacher.config, "is_encoder_decoder", False):
                # Not attached to a student yet: a T5's batches are laid out one way only. Decoder
                # inputs, not `labels=`: T5 would compute a [B, L, V] cross-entropy nobody reads.
                logits = self.teacher(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    decoder_input_ids=self.teacher._shift_right(batch["labels"]),
                ).logits
            else:
                raise RuntimeError(
                    "a causal dense teacher runs on its student's batch layout: attach it first"
                )
        labelled = batch["labels"] != IGNORE_INDEX
        self.batches += 1
        self.target_tokens += int(labelled.sum())
        # a position has the teacher's distribution when its logits are finite (always, for a sound teacher)
        self.covered_tokens += int((labelled & torch.isfinite(logits).all(dim=-1)).sum())
        if self.top_k is None:
            return logits
        logprobs, ids = torch.log_softmax(logits.float(), dim=-1).topk(
            min(self.top_k, logits.shape[-1]), dim=-1
        )
        mask = batch["labels"] != IGNORE_INDEX
        return SparseBatch(ids.to(torch.int32), logprobs.to(LOGPROB_DTYPE), mask)
