"""`student`: the model that is trained, and how it is built."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from mwp.config.schema.base import Section, help_field


class StudentSizeConfig(Section):
    d_model: int | None = help_field(None, ge=1, help="hidden size (random init only)")
    d_ff: int | None = help_field(None, ge=1, help="feed-forward size")
    d_kv: int | None = help_field(None, ge=1, help="attention head size")
    num_layers: int | None = help_field(None, ge=1, help="encoder layers")
    num_decoder_layers: int | None = help_field(None, ge=1, help="decoder layers")
    num_heads: int | None = help_field(None, ge=1, help="attention heads")
    dropout_rate: float | None = help_field(None, ge=0, lt=1, help="dropout (null = the config's)")


class StudentConfig(Section):
    target: str = help_field(
        "mwp.student.model.build_student", alias="_target_", help="what builds the student and its tokenizer"
    )
    name_or_path: str = help_field(help="checkpoint folder or hub name, loaded with from_pretrained")
    pretrained: Literal["auto", "required", "never"] = help_field(
        "auto", help="auto: weights if found, else random init; required: fail without; never: random init"
    )
    fallback_config: str | None = help_field(None, help="config + tokenizer folder for a random init")
    size: StudentSizeConfig = help_field(StudentSizeConfig(), help="architecture overrides for a random init")
    tokenizer: Literal["pretrained", "word", "char"] = help_field(
        "pretrained",
        help="pretrained: the checkpoint's tokenizer; word / char: a word- or character-level vocabulary "
        "trained on the training split's sources and targets, saved with the student (random init only)",
    )
    vocab_min_frequency: int = help_field(
        1, ge=1, le=1000, help="trained tokenizer: entries seen fewer times map to <unk>"
    )

    @model_validator(mode="after")
    def _trained_tokenizer_needs_random_init(self) -> StudentConfig:
        if self.tokenizer != "pretrained" and self.pretrained != "never":
            raise ValueError(
                f"student.tokenizer={self.tokenizer} trains a new vocabulary that pretrained weights do not "
                "share; set student.pretrained=never (or student.tokenizer=pretrained)"
            )
        return self

    @model_validator(mode="after")
    def _size_needs_random_init(self) -> StudentConfig:
        overridden = [k for k, v in self.size.model_dump().items() if v is not None]
        if overridden and self.pretrained != "never":
            raise ValueError(
                f"student.size.{overridden[0]}: size overrides apply to a random init only; set student.pretrained=never"
            )
        return self
