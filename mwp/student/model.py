"""Build the Flan-T5 student: real weights when a checkpoint is available, else a random init offline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, T5ForConditionalGeneration

log = logging.getLogger(__name__)

# Config fields a user may shrink for a faster tiny student (same tokenizer, same vocabulary).
SIZE_KEYS = ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "dropout_rate")


@dataclass
class StudentBundle:
    model: T5ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    pretrained: bool
    source: str


def _load_pretrained(name_or_path: str) -> StudentBundle | None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = T5ForConditionalGeneration.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        log.info("no pretrained student at %r (%s)", name_or_path, str(err).splitlines()[0][:200])
        return None
    return StudentBundle(model, tokenizer, pretrained=True, source=name_or_path)


def build_student(
    name_or_path: str,
    *,
    pretrained: str = "auto",
    fallback_config: str | Path | None = None,
    size: dict[str, Any] | None = None,
    seed: int | None = None,
) -> StudentBundle:
    """`pretrained`: "auto" loads weights if found, else random init; "required" fails without them;
    "never" always builds a random init (from `fallback_config`, or `name_or_path`'s config)."""
    if pretrained not in {"auto", "required", "never"}:
        raise ValueError(f"student.pretrained must be auto, required or never; got {pretrained!r}")
    size = {k: v for k, v in (size or {}).items() if v is not None}
    unknown = set(size) - set(SIZE_KEYS)
    if unknown:
        raise ValueError(f"student.size has unknown keys {sorted(unknown)}; allowed: {list(SIZE_KEYS)}")
    if pretrained != "never":
        if size:
            raise ValueError(
                "student.size overrides only apply to a random init; set student.pretrained=never"
            )
        bundle = _load_pretrained(name_or_path)
        if bundle is not None:
            return bundle
        if pretrained == "required":
            raise FileNotFoundError(
                f"student.name_or_path={name_or_path!r}: no checkpoint could be loaded (offline, or wrong path) "
                "and student.pretrained=required"
            )
    config_source = str(fallback_config or name_or_path)
    try:
        config = AutoConfig.from_pretrained(config_source)
        tokenizer = AutoTokenizer.from_pretrained(config_source)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot build a student: neither weights at {name_or_path!r} nor a config+tokenizer at "
            f"{config_source!r} (set student.fallback_config or paths.models_dir)"
        ) from err
    for key, value in size.items():
        setattr(config, key, value)
    # Flan-T5's config unties the output layer from the embeddings and so skips T5's d_model**-0.5
    # output scaling; with random weights that gives logits of std ~sqrt(d_model) and a start-up
    # loss near 50. A random init uses the tied-embedding scaling instead (loss starts near ln V).
    config.scale_decoder_outputs = True
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    log.warning(
        "student %r: no pretrained weights; randomly initialised from %s (%.1fM parameters)",
        name_or_path,
        config_source,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return StudentBundle(model, tokenizer, pretrained=False, source=config_source)


def t5_block_classes() -> set[type]:
    """The layer FSDP wraps (and checkpoints) one by one in a T5 (`conf/trainer/fsdp.yaml`)."""
    from transformers.models.t5.modeling_t5 import T5Block

    return {T5Block}
