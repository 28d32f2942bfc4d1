"""`data`: how distilled rows become training examples and batches."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from mwp.config.schema.base import Section, help_field
from mwp.data.formats import EQUATION, EQUATION_NOTATIONS, EVAL_FORMATS, EXEMPLAR_SOURCES, FORMATS


class DataConfig(Section):
    @field_validator("max_source_len", "max_new_tokens")
    @classmethod
    def _token_count(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 16384:
            raise ValueError("a token count in [1, 16384], or auto")
        return value

    target: str = help_field(alias="_target_", help="the LightningDataModule class")
    formats: list[Literal[FORMATS]] = help_field(  # type: ignore[valid-type]
        ["zero_shot_cot"], min_length=1, help=f"training formats, any of {list(FORMATS)}"
    )
    eval_format: Literal[EVAL_FORMATS] = help_field(  # type: ignore[valid-type]
        "zero_shot_cot",
        help="format of validation sources during training (evaluation.formats: the evaluate stage)",
    )
    num_exemplars: int = help_field(
        2, ge=0, le=32, help="exemplars per in-context source (training problems only)"
    )
    exemplars: Literal[EXEMPLAR_SOURCES] = help_field(  # type: ignore[valid-type]
        "rationales",
        help="what an in-context CoT exemplar shows: rationales (a kept teacher rationale) or gold (the "
        "problem's own worked solution, GSM8K's without calculator notes; Fu et al.'s); drawn per example "
        "from the training problems, never the example's own question",
    )
    val_fraction: float = help_field(
        0.1, ge=0, lt=1, help="share of distilled problems held out for validation"
    )
    val_size: int | None = help_field(
        None,
        ge=0,
        le=1_000_000,
        help="distilled problems (distinct questions) held out for validation, a count that overrides "
        "val_fraction (null = use val_fraction); must leave at least one to train on",
    )
    batch_size: int = help_field(8, ge=1, le=65536, help="micro-batch size per device")
    batch_size_by_format: dict[Literal[FORMATS], int] | None = help_field(  # type: ignore[valid-type]
        None,
        help="micro-batch size per training format, e.g. {in_context_cot: 2, zero_shot_answer: 16}; a run "
        "uses the smallest entry over data.formats (every one needs an entry) instead of batch_size "
        "(null = batch_size)",
    )
    eval_batch_size: int = help_field(32, ge=1, help="batch size of validation generation")
    max_source_len: int | Literal["auto"] = help_field(
        "auto",
        help="source tokens; auto = the longest training source with all its exemplars (a number that "
        "drops exemplars from over 5% of in-context examples is an error naming the length needed)",
    )
    max_target_len: int = help_field(192, ge=1, le=16384, help="target tokens (longer targets are cut)")
    max_new_tokens: int | Literal["auto"] = help_field(
        "auto",
        help="generation length for validation and evaluation; auto = the longest training target "
        "(up to max_target_len); a number below the 95th-percentile target is an error",
    )
    num_workers: int = help_field(0, ge=0, le=64, help="DataLoader worker processes", operational=True)
    shuffle: bool = help_field(
        True, help="shuffle training examples each epoch (seeded by `seed` and the epoch)"
    )
    equation_notation: Literal[EQUATION_NOTATIONS] = help_field(  # type: ignore[valid-type]
        "infix",
        help="equation format targets: infix '(N0-N1)*N2' or prefix '* - N0 N1 N2' (scored the same way)",
    )

    packing: bool = help_field(
        False,
        help="causal students: pack each micro-batch's examples (prompt then completion) end to end into "
        "fewer rows of at most data.packed_length tokens, so less of a batch is padding. Each example attends "
        "only to itself (position ids restart per example), the loss stays on completion tokens, and "
        "data.batch_size still counts examples: token means and teacher signals are unchanged. Not with "
        "T5 students or on-policy steps",
    )
    packed_length: int | Literal["auto"] = help_field(
        "auto",
        help="tokens per packed row (data.packing); auto = data.max_source_len + data.max_target_len, the "
        "widest unpacked row. A number must hold the longest example: at least max_source_len + "
        "max_target_len when both are numbers, else the longest training example (checked on the data)",
    )

    @field_validator("packed_length")
    @classmethod
    def _row_tokens(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 2 <= value <= 65536:
            raise ValueError("a token count in [2, 65536], or auto")
        return value

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        if not self.packing:
            # Off, packing changes nothing: stage-cache keys stay those of runs from before it existed.
            del out["packing"], out["packed_length"]
        return out

    @field_validator("batch_size_by_format")
    @classmethod
    def _positive_sizes(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        bad = {k: v for k, v in (value or {}).items() if not 1 <= v <= 65536}
        if bad:
            raise ValueError(f"micro-batch sizes must be in [1, 65536], got {bad}")
        return value

    @model_validator(mode="after")
    def _equation_validation(self) -> DataConfig:
        if self.batch_size_by_format:
            missing = [f for f in self.formats if f not in self.batch_size_by_format]
            if missing:
                raise ValueError(
                    f"data.batch_size_by_format has no size for {missing} of data.formats={self.formats}; add "
                    "them, or set data.batch_size_by_format=null to use data.batch_size"
                )
        if (
            self.packing
            and isinstance(self.packed_length, int)
            and isinstance(self.max_source_len, int)
            and self.packed_length < self.max_source_len + self.max_target_len
        ):
            raise ValueError(
                f"data.packed_length={self.packed_length} is shorter than one example can be (data.max_source_len="
                f"{self.max_source_len} prompt + data.max_target_len={self.max_target_len} completion tokens); "
                "raise it, or set data.packed_length=auto"
            )
        if self.eval_format == EQUATION and EQUATION not in self.formats:
            raise ValueError(
                f"data.eval_format=equation validates templates, but data.formats={self.formats} trains none; "
                "add equation to data.formats"
            )
        if self.formats == [EQUATION] and self.eval_format != EQUATION:
            raise ValueError(
                f"data.eval_format={self.eval_format}: a student trained only in the equation format writes "
                "templates; set data.eval_format=equation"
            )
        return self
