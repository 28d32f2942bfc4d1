"""A teacher that shares the student's tokenizer (SmolLM2 teaching a SmolLM2-shaped causal student) is aligned
token by token, on the student's own target encoding (its completion and EOS): every target token gets the
teacher's distribution, the alternatives mapped to the student's ids by their exact text."""

from __future__ import annotations

import math
import re

import pytest
from hydra.utils import instantiate

from mwp.data.artifact import TokenLogprobs
from mwp.signals.alignment import make_aligner
from mwp.student.fit import student_config
from tests.helpers import typed_config

TARGET = "Luke scored 84 points in 2 rounds. 84 / 2 = 42. The answer is 42."


@pytest.fixture(scope="module")
def causal():
    return instantiate(student_config(typed_config(["student=tiny_causal"])), _convert_="all")


def _teacher(tokenizer, text: str, prefix: str = "") -> TokenLogprobs:
    """What a SmolLM2 teacher reports for `text`: its tokens as text, each with 3 alternatives."""
    ids = tokenizer(prefix + text, add_special_tokens=False)["input_ids"]
    alternatives = [tokenizer.decode([i]) for i in (578, 1045, 2543)]  # three ordinary vocabulary entries
    return TokenLogprobs(
        tokens=[tokenizer.decode([i]) for i in ids],
        logprobs=[math.log(0.7)] * len(ids),
        top_tokens=[[tokenizer.decode([i]), *alternatives] for i in ids],
        top_logprobs=[[math.log(0.7), math.log(0.1), math.log(0.05), math.log(0.01)]] * len(ids),
    )


@pytest.mark.parametrize("method", ["span", "dtw"])
def test_a_shared_tokenizer_aligns_every_target_token_to_its_own_position(causal, method: str) -> None:
    codec = causal.codec
    aligner = make_aligner(method, causal.tokenizer, max_length=64, encode_target=codec.target_encoding)
    assert aligner.space == "Ġ"  # SmolLM2's vocabulary is byte-level BPE
    aligned = aligner.align(_teacher(causal.tokenizer, TARGET), TARGET)
    ids = codec.target_ids(TARGET, 64)
    assert aligned.student_ids == ids and ids[-1] == causal.tokenizer.eos_token_id
    body = len(ids) - 1
    assert aligned.pairs == [(s, s) for s in range(body)]
    signal = aligned.signal
    assert signal.mask[:body].all() and not signal.mask[body]  # EOS: no teacher distribution
    for s in range(body):
        # the label first, at the teacher's own probability, then the three alternatives by their ids
        assert signal.ids[s, 0] == ids[s] and math.isclose(math.exp(signal.logprobs[s, 0]), 0.7, rel_tol=1e-5)
        assert signal.ids[s, 1:4].tolist() == [578, 1045, 2543]


def test_tokenizations_that_differ_fall_back_to_cross_tokenizer_alignment(causal) -> None:
    codec = causal.codec
    aligner = make_aligner("span", causal.tokenizer, max_length=64, encode_target=codec.target_encoding)
    # an API teacher's tokens (whitespace-led words, "84" and "/ 2" spelt otherwise): not the student's
    words = re.findall(r"\s*\S+", TARGET)
    teacher = TokenLogprobs(
        tokens=words,
        logprobs=[math.log(0.7)] * len(words),
        top_tokens=[[w] for w in words],
        top_logprobs=[[math.log(0.7)]] * len(words),
    )
    aligned = aligner.align(teacher, TARGET)
    body = len(codec.target_ids(TARGET, 64)) - 1
    # not token by token: the span alignment lays each word over the student tokens that spell it
    assert aligned.pairs != [(s, s) for s in range(body)]
    teachers = [t for t, _ in aligned.pairs]
    assert max(teachers) == len(words) - 1 and len(set(teachers)) < len(teachers)
