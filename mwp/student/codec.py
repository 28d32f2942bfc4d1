"""How text meets a student: the tensors it trains on, the prompts it generates from, and its output as text.

Two kinds of student read the same (source, target) pairs (`mwp.data.formats`) differently:

- `seq2seq` (Flan-T5): the encoder reads the source, the decoder writes the target. Sources are
  right-padded; the labels are the target tokens (T5 appends `</s>`).
- `causal` (Qwen, Llama, SmolLM2, ...): one sequence, the prompt then the completion. The prompt is
  the source, wrapped in the model's chat template as a user turn when `chat_template` is on (the
  generation prompt of the assistant turn included); the completion is the target and the EOS token.
  A batch lays every prompt out left-padded to one width P and every completion right-padded to one
  width T, so the completion tokens of all rows sit in the same T columns: the logits that predict them
  are positions P-1 .. P+T-2. Loss is on the completion only, by construction.

Either way a batch carries `input_ids`, `attention_mask` and `labels` `[B, T]` (the target tokens,
-100 where padded), and `logits(model, batch)` returns `[B, T, V]` aligned with the labels, so every
loss term, teacher signal and token count is the same code for both kinds.

A causal batch may be packed (`data.packing`, `CausalCodec.packed_train_batch`): its B examples, each
its prompt then its completion with no padding between, are laid end to end into R <= B rows of at most
`packed_length` tokens, right-padded. Position ids restart at 0 with every example, and the model runs
without a 2D mask, so transformers reads the restarts as sequence boundaries and attends causally
within each example only (block-diagonal; with the KV cache off, which it must be). `labels` stay
`[B, T]`, one row per example, and `packed_index` `[B, T]` says where in the flattened `[R * W]` rows
the logit predicting each label sits: `logits` gathers them back into `[B, T, V]`, so the losses, the
teacher signals (stored top-k indexed by target position) and the supervised-token counts see the same
tensors as unpacked, and only padding goes. Generation takes prompts
left-padded for causal models and right-padded for seq2seq ones and returns only the new tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from mwp.signals.types import IGNORE_INDEX

StudentKind = Literal["seq2seq", "causal"]
KINDS: tuple[str, ...] = ("seq2seq", "causal")
# A packed causal batch's `[B, T]` flat index into its `[R * W]` rows of the logit predicting each label.
PACKED_INDEX_KEY = "packed_index"
# Config attributes of architectures whose logits are more than the output layer over the last hidden
# state: `CausalCodec` computes a packed batch's logits from the gathered hidden states, which would skip them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of examples of `lengths` tokens grouped into rows of at most `capacity` tokens: first fit,
    longest first (ties in input order), each row's indices ascending. Deterministic."""
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"an example of {max(too_long)} tokens does not fit a packed row of {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return [sorted(row) for row in rows]


class Codec(ABC):
    """Text <-> tensors for one student kind (see the module docstring)."""

    kind: StudentKind

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    # -- token counts -----------------------------------------------------------------------------
    @abstractmethod
    def source_ids(self, source: str) -> list[int]:
        """The tokens the model reads for `source` (a causal prompt: templated, BOS where it has one)."""

    @abstractmethod
    def target_encoding(
        self, target: str, max_length: int | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """The target's tokens (EOS last, at most `max_length` of them) and each token's character span in
        `target` (EOS: an empty span at the end): what the labels hold and teacher signals align to."""

    def target_ids(self, target: str, max_length: int | None = None) -> list[int]:
        return self.target_encoding(target, max_length)[0]

    def count_source(self, source: str) -> int:
        return len(self.source_ids(source))

    def count_target(self, target: str) -> int:
        return len(self.target_ids(target))

    # -- batches ----------------------------------------------------------------------------------
    @abstractmethod
    def train_batch(
        self, sources: Sequence[str], targets: Sequence[str], max_source_len: int, max_target_len: int
    ) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask` and `labels` `[B, T]` for teacher-forced training."""

    def prompt_batch(self, sources: Sequence[str], max_source_len: int | None) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` to generate from (None: never cut a source)."""
        prompts = [self.source_ids(s) for s in sources]
        if max_source_len is not None:
            prompts = [self.cut(p, max_source_len) for p in prompts]
        return self.pad_prompts(prompts)

    @abstractmethod
    def cut(self, ids: list[int], max_len: int) -> list[int]:
        """A prompt of more than `max_len` tokens, cut to `max_len`."""

    @abstractmethod
    def pad_prompts(self, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Prompt token ids padded to one width (right for seq2seq, left for causal), with the mask."""

    def _padded(self, prompts: Sequence[list[int]], left: bool) -> dict[str, torch.Tensor]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):
            span = slice(width - len(prompt), width) if left else slice(0, len(prompt))
            input_ids[row, span] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @abstractmethod
    def logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """`[B, T, V]` logits of the target positions, aligned with `batch["labels"]`."""

    @abstractmethod
    def prompts(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The prompts of a training batch, without its targets, ready to generate from."""

    @abstractmethod
    def with_labels(self, batch: dict[str, Any], labels: torch.Tensor) -> dict[str, Any]:
        """`batch` whose targets are replaced by `labels` `[B, T]` (-100 = padding): the student's own
        samples on an on-policy step."""

    # -- generation -------------------------------------------------------------------------------
    @abstractmethod
    def generate(self, model: Any, prompts: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """The new tokens only, `[B * num_return_sequences, N]` (padded with the pad id)."""

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def complete(self, model: Any, prompts: dict[str, torch.Tensor], **kwargs: Any) -> list[str]:
        return self.decode(self.generate(model, prompts, **kwargs))

    @property
    def identity(self) -> str:
        """How targets are tokenized, as a name (teacher signals aligned to one encoding are not reused for another)."""
        return self.kind

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)


class Seq2SeqCodec(Codec):
    kind: StudentKind = "seq2seq"

    def source_ids(self, source: str) -> list[int]:
        return self.tokenizer(source)["input_ids"]

    def target_encoding(
        self, target: str, max_length: int | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.tokenizer(
            target, return_offsets_mapping=True, truncation=max_length is not None, max_length=max_length
        )
        return encoded["input_ids"], [tuple(o) for o in encoded["offset_mapping"]]

    def _encode(self, texts: Sequence[str], max_len: int | None) -> Any:
        if max_len is None:
            return self.tokenizer(list(texts), truncation=False, padding=True, return_tensors="pt")
        return self.tokenizer(
            list(texts), max_length=max_len, truncation=True, padding=True, return_tensors="pt"
        )

    def train_batch(
        self, sources: Sequence[str], targets: Sequence[str], max_source_len: int, max_target_len: int
    ) -> dict[str, torch.Tensor]:
        enc = self._encode(sources, max_source_len)
        target = self._encode(targets, max_target_len)
        labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, IGNORE_INDEX)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def cut(self, ids: list[int], max_len: int) -> list[int]:
        return [*ids[: max_len - 1], ids[-1]] if len(ids) > max_len else ids  # T5 keeps its </s> last

    def pad_prompts(self, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        return self._padded(prompts, left=False)

    def logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        # Decoder inputs instead of `labels=`: given labels, T5 computes its own [B, L, V]
        # cross-entropy, which the configured loss terms would only throw away.
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=model._shift_right(batch["labels"]),
        ).logits

    def prompts(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def with_labels(self, batch: dict[str, Any], labels: torch.Tensor) -> dict[str, Any]:
        return {**batch, "labels": labels}

    def generate(self, model: Any, prompts: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        out = model.generate(
            input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"], **kwargs
        )
        return out[:, 1:]  # the decoder start token is not generated


class CausalCodec(Codec):
    kind: StudentKind = "causal"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, chat_template: bool = True) -> None:
        super().__init__(tokenizer)
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "student.chat_template=auto found no chat template in the tokenizer; set student.chat_template=none"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("a causal student's tokenizer needs an EOS token (it ends every completion)")
        self.chat_template = chat_template
        # Without a template the completion follows the source after one space ("... step. Alice has").
        self.separator = "" if chat_template else " "

    @property
    def identity(self) -> str:
        return f"causal:{'chat' if self.chat_template else 'plain'}"

    def prompt_text(self, source: str) -> str:
        if not self.chat_template:
            return source
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": source}], tokenize=False, add_generation_prompt=True
        )

    def source_ids(self, source: str) -> list[int]:
        # A template spells out its own special tokens; a plain prompt gets the model's BOS, if any.
        return self.tokenizer(self.prompt_text(source), add_special_tokens=not self.chat_template)[
            "input_ids"
        ]

    def target_encoding(
        self, target: str, max_length: int | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        text = self.separator + target
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        shift = len(self.separator)
        ids = list(encoded["input_ids"])
        offsets = [(max(a - shift, 0), max(b - shift, 0)) for a, b in encoded["offset_mapping"]]
        if max_length is not None:
            ids, offsets = ids[: max(max_length - 1, 0)], offsets[: max(max_length - 1, 0)]
        end = len(target)
        return [*ids, self.eos_id], [*offsets, (end, end)]

    def cut(self, ids: list[int], max_len: int) -> list[int]:
        # A long in-context prompt loses its first exemplars, never the question at its end.
        return ids[-max_len:]

    def pad_prompts(self, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        return self._padded(prompts, left=True)

    def train_batch(
        self, sources: Sequence[str], targets: Sequence[str], max_source_len: int, max_target_len: int
    ) -> dict[str, torch.Tensor]:
        prompts = [self.cut(self.source_ids(s), max_source_len) for s in sources]
        completions = [self.target_ids(t, max_target_len) for t in targets]
        width_p = max(len(p) for p in prompts)
        width_t = max(len(c) for c in completions)
        pad = self.pad_id
        input_ids = torch.full((len(prompts), width_p + width_t), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(prompts), width_t), IGNORE_INDEX, dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            start = width_p - len(prompt)
            input_ids[row, start:width_p] = torch.tensor(prompt)
            input_ids[row, width_p : width_p + len(completion)] = torch.tensor(completion)
            attention_mask[row, start : width_p + len(completion)] = 1
            labels[row, : len(completion)] = torch.tensor(completion)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def packed_train_batch(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        max_source_len: int,
        max_target_len: int,
        packed_length: int,
    ) -> dict[str, torch.Tensor]:
        """The examples of `train_batch`, packed into rows of at most `packed_length` tokens (see the
        module docstring): `input_ids`, `attention_mask` (1 on real tokens) and `position_ids` `[R, W]`,
        `labels` and `packed_index` `[B, T]`."""
        prompts = [self.cut(self.source_ids(s), max_source_len) for s in sources]
        completions = [self.target_ids(t, max_target_len) for t in targets]
        if not all(prompts):
            # The first label is predicted at the prompt's last token; without one it would be another example's.
            raise ValueError("a packed causal example needs at least one prompt token (an empty source?)")
        lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
        rows = pack_rows(lengths, packed_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        width_t = max(len(c) for c in completions)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        position_ids = torch.zeros_like(input_ids)
        labels = torch.full((len(prompts), width_t), IGNORE_INDEX, dtype=torch.long)
        packed_index = torch.zeros_like(labels)
        for row, members in enumerate(rows):
            start = 0
            for index in members:
                prompt, completion = prompts[index], completions[index]
                end = start + lengths[index]
                input_ids[row, start:end] = torch.tensor([*prompt, *completion])
                attention_mask[row, start:end] = 1
                position_ids[row, start:end] = torch.arange(lengths[index])
                labels[index, : len(completion)] = torch.tensor(completion)
                # The logit at position p predicts token p + 1: the prompt's last one predicts the first label.
                first = row * width + start + len(prompt) - 1
                packed_index[index, : len(completion)] = torch.arange(first, first + len(completion))
                start = end
            # The trailing padding counts from 0 too: a segment of its own, which no example attends to.
            position_ids[row, start:] = torch.arange(width - start)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
            PACKED_INDEX_KEY: packed_index,
        }

    def logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        if PACKED_INDEX_KEY in batch:
            return self._packed_logits(model, batch)
        width_t = batch["labels"].shape[1]
        mask = batch["attention_mask"]
        # Left padding: positions count real tokens, as generation counts them.
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=position_ids,
            logits_to_keep=width_t + 1,
        )
        return out.logits[:, :-1]

    @staticmethod
    def _packed_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
        config = model.config
        transforms = [name for name in _LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1.0)]
        if transforms:
            raise ValueError(
                f"data.packing=true: a {config.model_type} student transforms its logits ({transforms[0]}), "
                "which packed batches skip; set data.packing=false"
            )
        # No 2D mask and no KV cache: transformers then reads the restarting position ids as packed
        # sequences and masks attention between them (with a cache it would not look, and the examples of
        # a row would see each other).
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state
        index = batch[PACKED_INDEX_KEY]
        picked = hidden.reshape(-1, hidden.shape[-1])[index.reshape(-1)]
        # The output layer on the target positions only, as `logits_to_keep` spares an unpacked batch.
        return model.get_output_embeddings()(picked).reshape(*index.shape, -1)

    def prompts(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if PACKED_INDEX_KEY in batch:
            raise ValueError(
                "a packed batch has no per-example prompts to generate from: data.packing=true does not "
                "combine with on-policy steps (loss.on_policy.fraction > 0)"
            )
        width_p = batch["input_ids"].shape[1] - batch["labels"].shape[1]
        return {
            "input_ids": batch["input_ids"][:, :width_p],
            "attention_mask": batch["attention_mask"][:, :width_p],
        }

    def with_labels(self, batch: dict[str, Any], labels: torch.Tensor) -> dict[str, Any]:
        """The prompts of `batch` followed by new completions `labels` (right-padded with -100)."""
        prompts = self.prompts(batch)
        prompt_ids, prompt_mask = prompts["input_ids"], prompts["attention_mask"]
        real = labels != IGNORE_INDEX
        completion = labels.masked_fill(~real, self.pad_id)
        return {
            **batch,
            "input_ids": torch.cat([prompt_ids, completion.to(prompt_ids.dtype)], dim=1),
            "attention_mask": torch.cat([prompt_mask, real.to(prompt_mask.dtype)], dim=1),
            "labels": labels,
        }

    def generate(self, model: Any, prompts: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("pad_token_id", self.pad_id)
        kwargs.setdefault("eos_token_id", self.eos_id)
        out = model.generate(
            input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"], **kwargs
        )
        return out[:, prompts["input_ids"].shape[1] :]


def as_codec(codec_or_tokenizer: Codec | PreTrainedTokenizerBase) -> Codec:
    """A codec as it is, or a (T5) tokenizer alone as the seq2seq codec over it."""
    return codec_or_tokenizer if isinstance(codec_or_tokenizer, Codec) else Seq2SeqCodec(codec_or_tokenizer)


def codec_for(
    model_or_config: Any, tokenizer: PreTrainedTokenizerBase, *, chat_template: bool = False
) -> Codec:
    """The codec of a model (or its config): causal unless the config says encoder-decoder."""
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "is_encoder_decoder", False):
        return Seq2SeqCodec(tokenizer)
    return CausalCodec(tokenizer, chat_template=chat_template)
