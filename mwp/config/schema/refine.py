"""`refine`: the refinement method of From Large to Tiny and its settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from mwp.config.schema.base import Section, help_field
from mwp.config.schema.student import StudentConfig

REFINE_METHODS = ("none", "middle_model", "teacher_feedback", "enumeration")


class MiddleModelConfig(Section):
    student: StudentConfig | None = help_field(
        None, help="the middle model: null = the run's student, or a student option (a larger one)"
    )
    max_steps: int = help_field(300, ge=1, le=1_000_000, help="optimizer steps of each round's fine-tuning")
    batch_size: int = help_field(16, ge=1, le=4096, help="micro-batch size of the middle model's training")
    lr: float = help_field(1e-3, gt=0, le=1, help="AdamW peak learning rate of the middle model")
    num_beams: int = help_field(5, ge=1, le=64, help="beams when decoding candidates (do_sample=false)")
    num_return_sequences: int = help_field(
        5, ge=1, le=256, help="K: candidate templates decoded per failed problem and round"
    )
    do_sample: bool = help_field(False, help="sample candidates instead of beam search")
    temperature: float = help_field(1.0, gt=0, le=5, help="sampling temperature (do_sample=true)")
    top_k: int = help_field(0, ge=0, le=100_000, help="top-k of sampling (0 = the whole vocabulary)")
    max_new_tokens: int = help_field(48, ge=1, le=1024, help="length cap of a decoded template in tokens")
    decode_batch_size: int = help_field(16, ge=1, le=4096, help="problems per generate call")

    @model_validator(mode="after")
    def _beams_cover_sequences(self) -> MiddleModelConfig:
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"refine.middle_model.num_return_sequences={self.num_return_sequences} exceeds "
                f"num_beams={self.num_beams}: beam search returns at most num_beams sequences "
                "(raise num_beams or set do_sample=true)"
            )
        return self


class TeacherFeedbackConfig(Section):
    teacher: dict[str, Any] | None = help_field(
        None,
        help="the live teacher re-prompted (a teacher config node, e.g. +teacher@refine.teacher_feedback."
        "teacher=smollm2); null = the run's teacher",
    )
    max_retries: int = help_field(2, ge=1, le=20, help="rounds of re-prompting the still-failed problems")
    n: int = help_field(1, ge=1, le=64, help="replies per re-prompt")
    temperature: float = help_field(0.0, ge=0, le=5, help="sampling temperature of the replies")
    max_tokens: int = help_field(96, ge=1, le=4096, help="reply length cap in tokens")
    stop: list[str] = help_field(["\n\n"], help="stop sequences of the replies")


class EnumerationConfig(Section):
    max_ops: int = help_field(3, ge=1, le=5, help="operators per enumerated template (the depth bound)")
    max_results: int = help_field(8, ge=1, le=1000, help="verified templates the search keeps per problem")
    processes: int = help_field(1, ge=1, le=256, help="worker processes of the search")
    time_limit_s: float | None = help_field(
        10.0, gt=0, le=3600, help="wall-time bound of one problem's search (null = none)"
    )


class RefineConfig(Section):
    method: Literal[REFINE_METHODS] = help_field(  # type: ignore[valid-type]
        "none", help=f"how failed problems are recovered, one of {list(REFINE_METHODS)}"
    )
    max_rounds: int = help_field(3, ge=1, le=50, help="rounds of the middle-model search")
    constants: list[str] = help_field(
        ["1", "2", "100", "3.14"], help="numbers an equation may use without their being in the problem"
    )
    max_per_problem: int = help_field(1, ge=1, le=100, help="verified templates kept per recovered problem")
    limit: int | None = help_field(None, ge=1, help="first N failed problems only (null = all)")
    precision: bool = help_field(True, help="report semantic precision against the datasets' gold equations")
    middle_model: MiddleModelConfig | None = help_field(None, help="settings of refine.method=middle_model")
    teacher_feedback: TeacherFeedbackConfig | None = help_field(
        None, help="settings of refine.method=teacher_feedback"
    )
    enumeration: EnumerationConfig | None = help_field(None, help="settings of refine.method=enumeration")

    @field_validator("constants")
    @classmethod
    def _numbers(cls, constants: list[str]) -> list[str]:
        from mwp.verify.numbers import parse_number

        bad = [c for c in constants if parse_number(c) is None]
        if bad:
            raise ValueError(f"{bad} are not numbers")
        return constants

    @model_validator(mode="after")
    def _method_has_settings(self) -> RefineConfig:
        if self.method != "none" and getattr(self, self.method) is None:
            raise ValueError(
                f"refine.{self.method}: refine.method={self.method} needs its settings; pick the option "
                f"with refine={self.method} instead of setting refine.method alone"
            )
        return self
