"""On-policy distillation (GKD, Agarwal et al., 2024): the student learns on sequences it samples.

On a share `fraction` (lambda) of the optimizer steps a source replaces a batch's dataset targets
with the student's own samples before the teacher scores them; the configured divergence terms then
compare the two on those samples. Cross-entropy terms skip on-policy batches (the module drops them).
Two teachers (both share `StudentSampling`):

* `OnPolicySource` - a `DenseTeacherSource` (a T5 teacher with the student's vocabulary) scores the
  sampled ids directly: logits `[B, L, V]`.
* `CausalOnPolicySource` - a local causal LM with its own tokenizer (`loss.signal.scorer`, e.g.
  SmolLM2 through `HFTeacher.score`) teacher-forces the sample's text as its answer to the source's
  text; its top-k is carried onto the sampled student tokens by the span aligner
  (`loss.signal.alignment`) into a sparse signal. A sampled token sequence the student's tokenizer
  would spell differently keeps a distribution only up to where the two agree (`collate_sparse`
  checks the aligned target ids against the labels). Off-policy steps read the stored sparse signal
  of the dataset's targets, as `StoredSparseSource` does.

Which steps are on-policy is a pure function of (seed, optimizer step): the same for every
micro-batch of an accumulation window and on every rank, and reproducible across runs and resumes.
An on-policy window has no token count known in advance (the samples do not exist yet), so the
module counts each micro-batch's own tokens, all-reduced over ranks (`StudentModule._step_counts`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mwp.signals.alignment import TargetEncoder, make_aligner
from mwp.signals.collate import collate_sparse
from mwp.signals.positions import COT_ROWS_KEY, SOURCES_KEY
from mwp.signals.scoring import TeacherForcedScorer
from mwp.signals.sources import DenseTeacherSource, StoredSparseSource
from mwp.signals.types import IGNORE_INDEX, SparseBatch

# A batch whose targets are the student's own samples carries `on_policy: True`.
ON_POLICY_KEY = "on_policy"
MAX_NEW_TOKENS_LIMIT = 4096


def is_on_policy_step(fraction: float, seed: int, step: int) -> bool:
    """Whether optimizer step `step` trains on the student's samples: a seeded draw below `fraction`."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    # A string seed is hashed with SHA-512 by `random`: stable across processes and PYTHONHASHSEED.
    return random.Random(f"on-policy:{seed}:{step}").random() < fraction


def sampled_labels(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Generated tokens `[B, n]` (the new ones only) as labels: each row up to and including its first
    EOS, -100 after it."""
    is_eos = sequences == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return sequences.masked_fill(after_eos, IGNORE_INDEX)


class StudentSampling:
    """Which steps are on-policy, and the student's samples as a batch's targets (module doc)."""

    fraction: float
    temperature: float
    max_new_tokens: int
    seed: int

    def _init_sampling(self, fraction: float, temperature: float, max_new_tokens: int, seed: int) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"loss.on_policy.fraction must be in [0, 1], got {fraction}")
        if not temperature > 0:
            raise ValueError(f"loss.on_policy.temperature must be > 0, got {temperature}")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(
                f"loss.on_policy.max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {max_new_tokens}"
            )
        self.fraction = fraction
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def is_on_policy(self, step: int) -> bool:
        return is_on_policy_step(self.fraction, self.seed, step)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Any], student: nn.Module) -> torch.Tensor:
        """The student's samples for the batch's prompts, as labels `[B, n]` (-100 after EOS)."""
        sequences = self.sequences
        was_training = student.training
        student.eval()  # no dropout while sampling: the samples are the policy being trained
        try:
            new = sequences.generate(
                student,
                sequences.prompts(batch),
                do_sample=True,
                temperature=self.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.max_new_tokens,
            )
        finally:
            student.train(was_training)
        return sampled_labels(new, sequences.eos_id)

    def targets(self, batch: dict[str, Any], student: nn.Module, step: int) -> dict[str, Any]:
        if not self.is_on_policy(step):
            return batch
        out = self.sequences.with_labels(
            {
                k: v
                for k, v in batch.items()
                if k in ("input_ids", "attention_mask", "labels", COT_ROWS_KEY, SOURCES_KEY)
            },
            self.sample(batch, student),
        )
        out[ON_POLICY_KEY] = True
        return out


class OnPolicySource(StudentSampling, DenseTeacherSource):
    """A dense T5 teacher scoring the student's own samples on a share of the steps (module doc)."""

    def __init__(
        self,
        teacher: nn.Module,
        *,
        fraction: float,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
    ) -> None:
        DenseTeacherSource.__init__(self, teacher)
        self._init_sampling(fraction, temperature, max_new_tokens, seed)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, path: str, *, fraction: float, temperature: float, max_new_tokens: int, seed: int
    ) -> OnPolicySource:
        dense = DenseTeacherSource.from_pretrained(path)
        source = cls(
            dense.teacher,
            fraction=fraction,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )
        source.teacher_model = dense.teacher_model
        return source


class CausalOnPolicySource(StudentSampling, StoredSparseSource):
    """A local causal LM with its own vocabulary scoring the student's samples, span-aligned (module doc).

    `scorer` is a `TeacherForcedScorer` (its `HFTeacher` loads on the first on-policy step);
    `tokenizer` the student's (a fast one: the aligner needs character offsets).
    """

    def __init__(
        self,
        scorer: TeacherForcedScorer,
        tokenizer: PreTrainedTokenizerBase,
        *,
        fraction: float,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        alignment: str = "span",
        encode_target: TargetEncoder | None = None,
    ) -> None:
        self._init_sampling(fraction, temperature, max_new_tokens, seed)
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.aligner = make_aligner(alignment, tokenizer, encode_target=encode_target)

    def scored_texts(self, batch: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """The batch's sources and sampled targets as text (what the causal teacher reads)."""
        sources = batch.get(SOURCES_KEY) or self.tokenizer.batch_decode(
            batch["input_ids"], skip_special_tokens=True
        )
        labels = batch["labels"].masked_fill(batch["labels"] == IGNORE_INDEX, self.tokenizer.pad_token_id)
        samples = self.tokenizer.batch_decode(labels, skip_special_tokens=True)
        return [" ".join(s.split()) for s in sources], [" ".join(s.split()) for s in samples]

    def signal(self, batch: Mapping[str, Any]) -> SparseBatch:
        if not batch.get(ON_POLICY_KEY):
            return super().signal(batch)
        sources, samples = self.scored_texts(batch)
        scored = self.scorer.score_texts(sources, samples)
        signals = [
            self.aligner.align(logprobs, text).signal for logprobs, text in zip(scored, samples, strict=True)
        ]
        labels = batch["labels"]
        collated = collate_sparse(signals, labels.shape[1], labels=labels.cpu())
        return SparseBatch.from_batch({key: value.to(labels.device) for key, value in collated.items()})

    def close(self) -> None:
        self.scorer.close()
