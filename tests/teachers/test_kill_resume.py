"""A sampling run killed with SIGKILL mid-way and restarted loses nothing and repeats nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mwp.teachers.completion_cache import CompletionCache

WORKER = Path(__file__).with_name("sampling_worker.py")
COUNT, N, CONCURRENCY = 60, 4, 4


def _run(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


@pytest.mark.slow
def test_sigkill_then_resume(fault_server, tmp_path):
    server = fault_server(latency_s=0.05)
    cache, artifact = tmp_path / "cache.jsonl", tmp_path / "kept.jsonl"
    args = [server.base_url, str(cache), str(artifact), str(COUNT), str(N), str(CONCURRENCY)]

    first = _run(args)
    deadline = time.monotonic() + 60
    while _complete_lines(cache) < 12:
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert time.monotonic() < deadline, "the worker never got going"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not artifact.exists()  # the artifact is only published complete
    stored_before = len(CompletionCache(cache))
    assert 12 * N <= stored_before < COUNT * N
    calls_before = len(server.calls)

    second = _run(args)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    # only the problems without stored samples were asked for
    assert json.loads(out)["inner_calls"] == COUNT - stored_before // N
    assert len(server.calls) - calls_before == COUNT - stored_before // N

    store = CompletionCache(cache)
    assert len(store) == COUNT * N
    assert store.duplicate_samples == 0
    rows = [json.loads(line) for line in artifact.read_text().splitlines()]
    assert sorted(r["problem_id"] for r in rows) == sorted(f"p{i}" for i in range(COUNT))
    texts = [t for r in rows for t in r["texts"]]
    assert all(len(r["texts"]) == N for r in rows)
    assert len(set(texts)) == COUNT * N
    assert set(texts) <= set(server.served_texts)

    # a warm re-run asks the server nothing
    calls_after = len(server.calls)
    third = _run(args)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert json.loads(out)["inner_calls"] == 0
    assert len(server.calls) == calls_after


_ONE_PROBLEM = """
import sys
from mwp.teachers.base import SamplingParams, TeacherRequest
from mwp.teachers.completion_cache import CachedTeacher
from mwp.teachers.openai_compat import OpenAITeacher

inner = OpenAITeacher("echo", base_url=sys.argv[1], api_key_required=False, concurrency=1, max_n_per_call=2)
with CachedTeacher(inner, sys.argv[2]) as teacher:
    (response,) = teacher.generate([TeacherRequest("p0", "Question 0?")], SamplingParams(n=4, temperature=0.7))
print(len(response.completions), inner.usage.calls, flush=True)
"""


def test_a_run_killed_between_two_calls_of_one_problem_keeps_the_first_calls_samples(fault_server, tmp_path):
    """n=4 over calls of 2: killed while the second call is out, the first call's samples stay paid for."""
    server = fault_server(faults=["ok", "slow"], slow_s=30)
    cache = tmp_path / "cache.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", _ONE_PROBLEM, server.base_url, str(cache)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while len(server.calls) < 2:
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert time.monotonic() < deadline, "the second call never came"
        time.sleep(0.01)
    time.sleep(0.2)  # the first answer is in; the second call hangs
    first.send_signal(signal.SIGKILL)
    first.wait()
    store = CompletionCache(cache)
    assert len(store) == 2, "the first call's samples were lost"
    store.close()
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["4", "1"]  # all four samples, one more call for the missing two
    assert server.calls[2]["body"]["n"] == 2
    store = CompletionCache(cache)
    assert len(store) == 4 and store.duplicate_samples == 0
