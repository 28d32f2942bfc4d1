"""The OpenAI-compatible teacher against a server none of us wrote: llama-cpp-python's, over the SmolLM2 GGUF.

`make test-servers` installs `llama-cpp-python[server]` and runs this tier; without it every test
here is skipped with the reason. What the server does differently from ours (docs/how-to/servers-tested.md, "Servers
tested"): one choice per request whatever `n` asks, one request at a time, k+1 top logprobs when
the sampled token is outside the top k.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwp.data.artifact import ARTIFACT
from mwp.data.loaders import load_problems
from mwp.distill.rationales import STATS
from mwp.paths import REPO_ROOT
from mwp.pipeline import run
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.teachers.base import SamplingParams, TeacherRequest
from mwp.teachers.batch import BatchFileTeacher, export_batch, import_batch
from mwp.teachers.completion_cache import CompletionCache
from mwp.teachers.openai_compat import OpenAITeacher
from tests.helpers import compose_config
from tests.servers.llamacpp import SERVED_MODEL, SKIP_REASON, LlamaCppServer, server_python

pytestmark = [
    pytest.mark.servers,
    pytest.mark.slow,
    pytest.mark.skipif(server_python() is None, reason=SKIP_REASON),
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    server = LlamaCppServer(tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    yield server
    server.stop()


def _distill_overrides(llama: LlamaCppServer, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "stage=distill",
        "dataset=multiarith",
        "dataset.limit=3",
        "teacher=llamacpp",
        f"teacher.model={SERVED_MODEL}",
        f"teacher.base_url={llama.base_url}",
        "teacher.max_tokens=48",
        "teacher.temperature=0.8",
        f"teacher.cache_path={tmp_path / 'cache.jsonl'}",
        "stage.extraction=flexible",
        *extra,
    ]


def _cached(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_chat_n_is_topped_up_with_top_logprobs_trimmed_to_k(llama, tmp_path, caplog):
    """n=3 asked in one call (teacher.max_n_per_call=8): the server gives 1, the rest are topped up."""
    import logging

    caplog.set_level(logging.INFO)
    cfg = compose_config(
        _distill_overrides(
            llama, tmp_path, "teacher.n=3", "teacher.top_logprobs=3", "teacher.max_n_per_call=8"
        ),
        run_dir=tmp_path,
    )
    stats = run_distill(load_config(cfg), tmp_path / "distill").to_json()
    assert (stats["samples_requested"], stats["samples_seen"]) == (9, 9)
    warnings = [r.message for r in caplog.records if "caps `n`" in r.message]
    assert len(warnings) == 1 and "returned 1 choice(s) for n=3" in warnings[0]
    usage = json.loads((tmp_path / "distill" / "usage.json").read_text())
    # the first call of each problem was planned before the cap was known (concurrency 1 at the
    # start: at most the two requests started ahead), the rest ask for one sample each
    assert usage["samples"] == 9 and usage["short_calls"] >= 1 and usage["timeouts"] == 0
    assert usage["calls"] == 9 and usage["concurrency"]["max_in_flight"] <= 4

    rows = _cached(tmp_path / "cache.jsonl")
    by_problem: dict[str, list[int]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).extend(row["indices"])
        for completion in row["completions"]:
            lp = completion["logprobs"]
            # the server returns 4 alternatives where the sampled token is outside the top 3
            assert {len(alts) for alts in lp["top_tokens"]} == {3}
            assert all(a >= b for alts in lp["top_logprobs"] for a, b in itertools.pairwise(alts))
            assert "".join(lp["tokens"]).startswith(completion["text"])  # mwp cuts at stop sequences
    assert sorted(by_problem) == [f"multiarith/{i}" for i in range(3)]
    assert all(sorted(indices) == [0, 1, 2] for indices in by_problem.values())


def test_completions_endpoint_one_sample_per_call_from_the_start(llama, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    cfg = compose_config(
        _distill_overrides(
            llama, tmp_path, "teacher.n=2", "teacher.endpoint=completions", "teacher.top_logprobs=2"
        ),
        run_dir=tmp_path,
    )
    stats = run_distill(load_config(cfg), tmp_path / "distill").to_json()
    assert (stats["samples_requested"], stats["samples_seen"]) == (6, 6)
    usage = json.loads((tmp_path / "distill" / "usage.json").read_text())
    assert usage["calls"] == 6 and usage["short_calls"] == 0 and usage["completion_tokens"] > 0
    assert "caps `n`" not in caplog.text
    for row in _cached(tmp_path / "cache.jsonl"):
        for completion in row["completions"]:
            assert {len(alts) for alts in completion["logprobs"]["top_tokens"]} == {2}


def test_killed_distill_resumes_without_asking_twice(llama, tmp_path):
    """`mwp stage=distill` against the server, SIGKILLed mid-way, then run again to the end."""
    cache = tmp_path / "cache.jsonl"
    overrides = [
        *_distill_overrides(llama, tmp_path, "teacher.n=2"),
        "dataset.limit=8",
        f"cache.dir={tmp_path / 'stages'}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}

    def start(run_dir: Path) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "mwp.cli", *overrides, f"hydra.run.dir={run_dir}"]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    first = start(tmp_path / "first")
    deadline = time.monotonic() + 300
    while not cache.exists() or cache.read_bytes().count(b"\n") < 4:
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert time.monotonic() < deadline, "the first run never got going"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stored = len(CompletionCache(cache))
    assert 4 <= stored < 16

    second = start(tmp_path / "second")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    store = CompletionCache(cache)
    assert len(store) == 16 and store.duplicate_samples == 0
    usage = json.loads((tmp_path / "second" / "distill" / "usage.json").read_text())
    # only the missing samples were asked for, one per call
    assert usage["calls"] == 16 - stored and usage["cached_samples"] == stored
    stats = json.loads((tmp_path / "second" / "distill" / STATS).read_text())
    assert (stats["samples_requested"], stats["samples_seen"]) == (16, 16)
    assert (tmp_path / "second" / "distill" / ARTIFACT).exists()


def test_the_evaluated_teacher_row_through_the_server(llama, tmp_path):
    sets = "[{name:svamp,split:test,role:in-distribution}]"
    overrides = [
        "stage=evaluate",
        f"dataset.eval_sets={sets}",
        "evaluation.limit=3",
        "data.max_new_tokens=24",
        "teacher=llamacpp",
        f"teacher.model={SERVED_MODEL}",
        f"teacher.base_url={llama.base_url}",
        "teacher.name=smollm2-llamacpp",
        f"teacher.cache_path={tmp_path / 'cache.jsonl'}",
        "evaluation.models=[teacher]",
        "evaluation.formats=[zero_shot_cot,in_context_answer]",
    ]
    run(compose_config(overrides, run_dir=tmp_path / "first"))
    eval_dir = tmp_path / "first" / "eval"
    results = json.loads((eval_dir / "results.json").read_text())
    assert [(r["model"], r["format"], r["size"]) for r in results] == [
        ("teacher:smollm2-llamacpp", "zero_shot_cot", 3),
        ("teacher:smollm2-llamacpp", "in_context_answer", 3),
    ]
    usage = json.loads((eval_dir / "usage_teacher-smollm2-llamacpp.json").read_text())
    assert usage["calls"] == 6 and usage["completion_tokens"] > 0 and usage["short_calls"] == 0
    rows = [
        json.loads(line)
        for line in (eval_dir / "predictions_svamp_test_teacher-smollm2-llamacpp.jsonl").open()
    ]
    assert len(rows) == 3 and all(r["completion"] for r in rows)
    # greedy and cached: forced to evaluate again, nothing is asked of the server
    generations = len(llama.generated_tokens())
    run(compose_config([*overrides, "cache.force=[evaluate]"], run_dir=tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "eval" / "usage_teacher-smollm2-llamacpp.json").read_text())
    assert again["calls"] == 0 and len(llama.generated_tokens()) == generations


def _execute(input_path: Path, output_path: Path, base_url: str) -> None:
    """Run a batch input file against the server, line by line, writing the Batch API output format."""
    root = base_url.rsplit("/v1", 1)[0]
    with output_path.open("w") as out:
        for line in input_path.read_text().splitlines():
            row = json.loads(line)
            request = urllib.request.Request(
                root + row["url"],
                data=json.dumps(row["body"]).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as answer:
                body = json.loads(answer.read())
            result = {
                "id": "r",
                "custom_id": row["custom_id"],
                "response": {"status_code": 200, "body": body},
            }
            out.write(json.dumps(result) + "\n")


def test_batch_results_written_by_the_server_are_imported(llama, tmp_path, caplog):
    import logging

    problems = load_problems("multiarith", "train", limit=2)
    requests = [TeacherRequest(p.id, p.question) for p in problems]
    params = SamplingParams(n=2, temperature=0.8, max_tokens=32, top_logprobs=2)
    # one sample per line: every sample comes back
    one, one_out = tmp_path / "one.jsonl", tmp_path / "one_out.jsonl"
    export_batch(requests, params, SERVED_MODEL, one, samples_per_line=1)
    _execute(one, one_out, llama.base_url)
    caplog.set_level(logging.WARNING)
    responses = {r.request.problem_id: r for r in import_batch(one_out, one)}
    assert [len(responses[p.id].completions) for p in problems] == [2, 2]
    assert all(
        {len(alts) for alts in c.logprobs.top_tokens} == {2}
        for r in responses.values()
        for c in r.completions
    )
    assert "fewer choices" not in caplog.text
    replayed = list(BatchFileTeacher(one_out, one).generate(requests, params))
    assert [len(r.completions) for r in replayed] == [2, 2]

    # both samples asked for in one line: the server writes one, and the import says so
    both, both_out = tmp_path / "both.jsonl", tmp_path / "both_out.jsonl"
    export_batch(requests, params, SERVED_MODEL, both)
    _execute(both, both_out, llama.base_url)
    short = {r.request.problem_id: r for r in import_batch(both_out, both)}
    assert [len(short[p.id].completions) for p in problems] == [1, 1]
    assert "2 of 2 result lines hold fewer choices than their custom_id asks for" in caplog.text


def test_adaptive_concurrency_keeps_the_queue_short(llama):
    """Eight requests at once against a server that works one at a time: none times out, none is asked twice."""
    teacher = OpenAITeacher(
        SERVED_MODEL,
        base_url=llama.base_url,
        api_key_required=False,
        concurrency=8,
        timeout_s=60,
        max_n_per_call=1,
    )
    requests = [
        TeacherRequest(f"q{i}", f"Count from {i} to {i + 30}, one number per line.") for i in range(8)
    ]
    before = len(llama.generated_tokens())
    responses = list(teacher.generate(requests, SamplingParams(n=1, temperature=0.5, max_tokens=32)))
    assert len(responses) == 8
    assert teacher.usage.timeouts == 0 and teacher.usage.retries == 0
    assert len(llama.generated_tokens()) - before == 8  # the server generated each request once
    assert teacher.limit.max_in_flight <= 4
