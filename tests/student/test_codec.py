"""The codec of a causal student: one sequence per example, loss on the completion only, left-padded prompts.

Checked with a tiny random-init causal LM of SmolLM2's architecture and its real tokenizer (chat
template included), against plain unpadded forward passes: padding and batching must not change a
single logit, and the labels hold exactly the completion's tokens and the EOS.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from mwp.signals.types import IGNORE_INDEX
from mwp.student.codec import CausalCodec, Seq2SeqCodec
from mwp.student.fit import student_config
from mwp.student.model import build_student
from tests.helpers import typed_config

SOURCES = [
    "Q: Luke scored 84 points after 2 rounds. How many points per round? A: Let's think step by step.",
    "Q: 3 apples and 4 pears? A:",
]
TARGETS = ["He scored 84 / 2 = 42 points per round. The answer is 42.", "The answer is 7."]


@pytest.fixture(scope="module")
def tiny():
    bundle = instantiate(student_config(typed_config(["student=tiny_causal"])), _convert_="all")
    bundle.model.eval()
    return bundle


def test_a_causal_batch_is_the_prompt_then_the_completion_and_its_eos(tiny) -> None:
    codec = tiny.codec
    assert isinstance(codec, CausalCodec) and codec.chat_template
    batch = codec.train_batch(SOURCES, TARGETS, 512, 128)
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    width_t = labels.shape[1]
    for row, (source, target) in enumerate(zip(SOURCES, TARGETS, strict=True)):
        prompt = codec.source_ids(source)
        completion = codec.target_ids(target)
        # the chat template wraps the source as a user turn and opens the assistant's
        text = tiny.tokenizer.decode(prompt)
        assert "<|im_start|>user\n" + source in text and text.endswith("<|im_start|>assistant\n")
        assert completion[-1] == tiny.tokenizer.eos_token_id
        assert tiny.tokenizer.decode(completion[:-1]) == target
        # the labels are the completion and nothing else: no prompt token is ever supervised
        real = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert real == completion
        # left-padded prompt, completion at the same columns in every row, mask over both
        prompt_end = ids.shape[1] - width_t
        assert ids[row, prompt_end - len(prompt) : prompt_end].tolist() == prompt
        assert ids[row, prompt_end : prompt_end + len(completion)].tolist() == completion
        assert mask[row].sum().item() == len(prompt) + len(completion)


def test_batched_logits_equal_the_unpadded_forward_pass_of_each_row(tiny) -> None:
    codec = tiny.codec
    batch = codec.train_batch(SOURCES, TARGETS, 512, 128)
    with torch.no_grad():
        logits = codec.logits(tiny.model, batch)
        assert logits.shape[:2] == batch["labels"].shape
        for row, (source, target) in enumerate(zip(SOURCES, TARGETS, strict=True)):
            prompt, completion = codec.source_ids(source), codec.target_ids(target)
            alone = tiny.model(input_ids=torch.tensor([prompt + completion])).logits[0]
            # the logits that predict completion token j sit at position len(prompt) - 1 + j
            expected = alone[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
            torch.testing.assert_close(logits[row, : len(completion)], expected, rtol=1e-4, atol=1e-4)


def test_generation_returns_only_new_tokens_and_ignores_left_padding(tiny) -> None:
    codec = tiny.codec
    prompts = codec.prompt_batch(SOURCES, None)
    together = codec.generate(tiny.model, prompts, max_new_tokens=6, do_sample=False)
    for row, source in enumerate(SOURCES):
        alone = codec.generate(
            tiny.model, codec.prompt_batch([source], None), max_new_tokens=6, do_sample=False
        )
        n = alone.shape[1]
        assert together[row, :n].tolist() == alone[0].tolist()
    # a cut prompt keeps its end (the question, and the assistant turn's opening)
    cut = codec.prompt_batch([SOURCES[0]], 10)["input_ids"][0].tolist()
    assert cut == codec.source_ids(SOURCES[0])[-10:]


def test_without_a_chat_template_the_completion_follows_the_plain_source(tiny) -> None:
    codec = CausalCodec(tiny.tokenizer, chat_template=False)
    prompt = codec.source_ids(SOURCES[1])
    assert tiny.tokenizer.decode(prompt) == SOURCES[1]
    assert tiny.tokenizer.decode(codec.target_ids(TARGETS[1])[:-1]) == " " + TARGETS[1]
    ids, offsets = codec.target_encoding(TARGETS[1])
    # offsets point into the target text itself (the separator is not part of it)
    assert [TARGETS[1][a:b].strip() for a, b in offsets[:-1]] == [
        tiny.tokenizer.decode([i]).strip() for i in ids[:-1]
    ]


def test_a_t5_batch_is_unchanged_by_the_codec(flan_t5_dir) -> None:
    size = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=size)
    codec = bundle.codec
    assert isinstance(codec, Seq2SeqCodec)
    batch = codec.train_batch(SOURCES, TARGETS, 64, 32)
    expected = bundle.tokenizer(TARGETS, padding=True, return_tensors="pt")["input_ids"]
    expected = expected.masked_fill(expected == bundle.tokenizer.pad_token_id, IGNORE_INDEX)
    assert torch.equal(batch["labels"], expected)
    assert codec.logits(bundle.model, batch).shape[:2] == batch["labels"].shape
