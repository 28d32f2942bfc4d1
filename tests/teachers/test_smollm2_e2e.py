"""End to end: `mwp stage=distill dataset=multiarith teacher=smollm2` on a few real MultiArith problems."""

from __future__ import annotations

import json
import re
import time
from fractions import Fraction

import pytest

from mwp.data.artifact import ARTIFACT
from mwp.data.loaders import load_problems
from mwp.distill.rationales import STATS
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.teachers.completion_cache import CompletionCache
from tests.helpers import compose_config

pytestmark = pytest.mark.slow

# "The answer is 39." spelled plainly: our own reading, independent of mwp.verify's extractor
PLAIN_ANSWER = re.compile(r"[Tt]he (?:final )?answer is:?\s*\$?(-?\d+(?:\.\d+)?)\s*(?:\.|$)(?!\d)")


def test_distill_multiarith_with_smollm2(tmp_path):
    limit, n = 2, 4
    cache = tmp_path / "teacher_cache.jsonl"
    cfg = compose_config(
        [
            "stage=distill",
            "dataset=multiarith",
            f"dataset.limit={limit}",
            "teacher=smollm2",
            f"teacher.n={n}",
            "teacher.max_tokens=64",
            "teacher.top_logprobs=3",
            "teacher.device=cpu",
            "teacher.threads=1",
            f"teacher.cache_path={cache}",
            "stage.extraction=flexible",
        ],
        run_dir=tmp_path,
    )
    stats = run_distill(load_config(cfg), tmp_path / "distill").to_json()
    assert stats["teacher"] == "smollm2-135m-instruct"
    assert stats["problems_seen"] == limit and stats["samples_seen"] == limit * n
    assert (
        stats["samples_kept"]
        + stats["samples_wrong"]
        + stats["samples_no_answer"]
        + stats["samples_duplicate"]
        == limit * n
    )
    assert json.loads((tmp_path / "distill" / STATS).read_text()) == stats
    usage = json.loads((tmp_path / "distill" / "usage.json").read_text())
    assert usage["calls"] == limit and usage["samples"] == limit * n and usage["completion_tokens"] > 0

    # the same command again is served from the cache: no model load, no sampling, same result
    start = time.monotonic()
    again = run_distill(load_config(cfg), tmp_path / "again").to_json()
    assert time.monotonic() - start < 10
    assert again == stats
    usage = json.loads((tmp_path / "again" / "usage.json").read_text())
    assert usage["calls"] == 0 and usage["cached_samples"] == limit * n
    assert (tmp_path / "again" / ARTIFACT).read_text() == (tmp_path / "distill" / ARTIFACT).read_text()

    # every sample reached the cache as it arrived, with its problem and top-3 logprobs
    assert len(CompletionCache(cache)) == limit * n
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    samples = [(row["problem_id"], c) for row in cached for c in row["completions"]]
    assert sorted(pid for pid, _ in samples) == sorted(
        f"multiarith/{i}" for i in range(limit) for _ in range(n)
    )
    assert all(len(c["logprobs"]["top_tokens"][0]) == 3 for _, c in samples)

    gold = {p.id: p.answer for p in load_problems("multiarith", "train", limit=limit)}
    rows = [json.loads(line) for line in (tmp_path / "distill" / ARTIFACT).read_text().splitlines()]
    assert len(rows) == stats["samples_kept"]
    kept = {(row["id"], row["rationale"]) for row in rows}
    for row in rows:
        assert Fraction(row["pred"]) == gold[row["id"]]
        numbers = {
            Fraction(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*(?:\.\d+)?", row["rationale"])
        }
        assert gold[row["id"]] in numbers  # a kept rationale states the gold answer somewhere
        assert len(row["logprobs"]["tokens"]) == len(row["logprobs"]["top_tokens"]) > 0
    for pid, completion in samples:
        plain = PLAIN_ANSWER.findall(completion["text"])
        if plain and Fraction(plain[-1]) == gold[pid] and (pid, completion["text"].strip()) not in kept:
            # a plainly stated gold answer must have been kept, unless it repeats a kept rationale
            assert stats["samples_duplicate"] > 0
