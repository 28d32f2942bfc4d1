"""On-policy distillation (GKD, Agarwal et al., 2024): the student learns on sequences it samples.

`OnPolicySource` is a `DenseTeacherSource` (a T5 teacher with the student's vocabulary) that, on a
share `fraction` (lambda) of the optimizer steps, replaces a batch's dataset targets with the
student's own samples before the teacher scores them; the configured divergence terms then compare
the two on those samples. Cross-entropy terms skip on-policy batches (the module drops them).

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

from mwp.signals.positions import COT_ROWS_KEY
from mwp.signals.sources import DenseTeacherSource
from mwp.signals.types import IGNORE_INDEX

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


def sampled_labels(sequences: torch.Tensor, eos_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Generated `[B, 1 + n]` sequences (decoder start first) as labels `[B, n]`: each up to and
    including its first EOS, -100 after it."""
    if sequences.shape[1] and bool((sequences[:, 0] == decoder_start_token_id).all()):
        sequences = sequences[:, 1:]
    is_eos = sequences == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return sequences.masked_fill(after_eos, IGNORE_INDEX)


class OnPolicySource(DenseTeacherSource):
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
        super().__init__(teacher)
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

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, path: str, *, fraction: float, temperature: float, max_new_tokens: int, seed: int
    ) -> OnPolicySource:
        dense = DenseTeacherSource.from_pretrained(path)
        return cls(
            dense.teacher,
            fraction=fraction,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )

    def is_on_policy(self, step: int) -> bool:
        return is_on_policy_step(self.fraction, self.seed, step)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Any], student: nn.Module) -> torch.Tensor:
        """The student's samples for the batch's sources, as labels `[B, n]` (-100 after EOS)."""
        was_training = student.training
        student.eval()  # no dropout while sampling: the samples are the policy being trained
        try:
            sequences = student.generate(  # type: ignore[operator]
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                do_sample=True,
                temperature=self.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.max_new_tokens,
            )
        finally:
            student.train(was_training)
        config = student.config  # type: ignore[union-attr]
        return sampled_labels(sequences, config.eos_token_id, config.decoder_start_token_id)

    def targets(self, batch: dict[str, Any], student: nn.Module, step: int) -> dict[str, Any]:
        if not self.is_on_policy(step):
            return batch
        out = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": self.sample(batch, student),
            ON_POLICY_KEY: True,
        }
        if COT_ROWS_KEY in batch:
            out[COT_ROWS_KEY] = batch[COT_ROWS_KEY]
        return out
