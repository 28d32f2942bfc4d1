"""Build the Flan-T5 student: real weights when a checkpoint is available, else a random init offline.

A random init may also take a vocabulary trained on the training split (`student.tokenizer=word|char`,
`mwp.student.tokenizer`): the T5 architecture of `fallback_config` with that vocabulary's size and
T5's special-token ids. The tokenizer is saved with the student, so `from_pretrained(student_dir)`
reloads both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
    tokenizer: str = "pretrained",
    vocab_min_frequency: int = 1,
    training_texts: Iterable[str] | None = None,
) -> StudentBundle:
    """`pretrained`: "auto" loads weights if found, else random init; "required" fails without them;
    "never" always builds a random init (from `fallback_config`, or `name_or_path`'s config).

    `tokenizer`: "pretrained" uses the checkpoint's (or `fallback_config`'s) tokenizer; "word" or
    "char" trains one on `training_texts` (the train stage passes the training split's sources and
    targets) and needs `pretrained="never"`: pretrained weights belong to their own vocabulary."""
    from mwp.student.tokenizer import TOKENIZER_KINDS, train_tokenizer

    if pretrained not in {"auto", "required", "never"}:
        raise ValueError(f"student.pretrained must be auto, required or never; got {pretrained!r}")
    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"student.tokenizer must be one of {list(TOKENIZER_KINDS)}, got {tokenizer!r}")
    if tokenizer != "pretrained":
        if pretrained != "never":
            raise ValueError(
                f"student.tokenizer={tokenizer} trains a new vocabulary, which pretrained weights do not "
                "share: set student.pretrained=never"
            )
        if training_texts is None:
            raise ValueError(
                f"student.tokenizer={tokenizer} is trained on the training split: build_student needs "
                "training_texts (the train stage passes them; a trained student reloads from its folder)"
            )
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
        if training_texts is None:
            vocabulary = AutoTokenizer.from_pretrained(config_source)
        else:
            vocabulary = train_tokenizer(training_texts, tokenizer, min_frequency=vocab_min_frequency)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot build a student: neither weights at {name_or_path!r} nor a config+tokenizer at "
            f"{config_source!r} (set student.fallback_config or paths.models_dir)"
        ) from err
    for key, value in size.items():
        setattr(config, key, value)
    if training_texts is not None:
        config.vocab_size = len(vocabulary)
        config.pad_token_id = config.decoder_start_token_id = vocabulary.pad_token_id
        config.eos_token_id = vocabulary.eos_token_id
    # Flan-T5's config unties the output layer from the embeddings and so skips T5's d_model**-0.5
    # output scaling; with random weights that gives logits of std ~sqrt(d_model) and a start-up
    # loss near 50. A random init uses the tied-embedding scaling instead (loss starts near ln V).
    config.scale_decoder_outputs = True
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    log.warning(
        "student %r: no pretrained weights; randomly initialised from %s (%.1fM parameters, %s vocabulary of %d)",
        name_or_path,
        config_source,
        sum(p.numel() for p in model.parameters()) / 1e6,
        tokenizer,
        len(vocabulary),
    )
    return StudentBundle(model, vocabulary, pretrained=False, source=config_source)


def t5_block_classes() -> set[type]:
    """The layer FSDP wraps (and checkpoints) one by one in a T5 (`conf/trainer/fsdp.yaml`)."""
    from transformers.models.t5.modeling_t5 import T5Block

    return {T5Block}


def load_student(student_dir: Path) -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase, set[str]]:
    """A trained student folder: the model, its tokenizer and the ids of the problems it trained on."""
    if not (student_dir / "config.json").exists():
        raise FileNotFoundError(
            f"no trained student at {student_dir}: run `mwp stage=train` or set stage.student"
        )
    model = T5ForConditionalGeneration.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    ids_file = student_dir / "train_problems.txt"
    train_ids = set(ids_file.read_text(encoding="utf-8").split()) if ids_file.exists() else set()
    return model, tokenizer, train_ids
