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
