"""Sampling from llama-cpp-python's server: samples/s and work done twice at concurrency 1, 4 and adaptive.

    .venv/bin/python benchmarks/bench_llamacpp_server.py                     # ~7 min on 2 cores
    .venv/bin/python benchmarks/bench_llamacpp_server.py --problems 24 --timeouts 8

Needs `llama_cpp` (`make bench-servers` installs it; or MWP_LLAMA_CPP_PYTHON=<python with it>);
without it the script says so and exits 0. The server (SmolLM2-135M GGUF, one thread) works one
request at a time and finishes requests whose client gave up, so a call that times out and is asked
again is generated twice. The timeouts are scaled down with the model: SmolLM2 answers in ~1-2 s,
where a 7B model on a CPU takes 30-60 s against the default timeout_s=120; 4 s is that tight case,
30 s a generous one. Each setting samples the same seeded requests; "server gens" counts the
generations the server's log reports, abandoned calls included, "twice" those beyond the calls
answered.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mwp.data.loaders import load_problems  # noqa: E402
from mwp.teachers.base import SamplingParams, TeacherError, TeacherRequest  # noqa: E402
from mwp.teachers.openai_compat import OpenAITeacher  # noqa: E402
from tests.servers.llamacpp import SERVED_MODEL, SKIP_REASON, LlamaCppServer, server_python  # noqa: E402


def _wait_idle(server: LlamaCppServer) -> None:
    """Return once the server has finished every call, abandoned ones included (GET /models waits for them)."""
    with urllib.request.urlopen(server.base_url + "/models", timeout=600) as answer:
        answer.read()


def run_setting(
    server: LlamaCppServer,
    label: str,
    requests: list[TeacherRequest],
    params: SamplingParams,
    *,
    concurrency: int,
    adaptive: bool,
    timeout_s: float,
) -> dict[str, float | int | str]:
    teacher = OpenAITeacher(
        SERVED_MODEL,
        base_url=server.base_url,
        api_key_required=False,
        concurrency=concurrency,
        adaptive_concurrency=adaptive,
        timeout_s=timeout_s,
        max_n_per_call=1,
        retry_base_s=0.5,
        retry_max_s=5.0,
        max_retries=6,
        on_error="skip",
    )
    _wait_idle(server)
    before = server.generated_tokens()
    start = time.perf_counter()
    received = sum(len(r.completions) for r in teacher.generate(requests, params))
    wall = time.perf_counter() - start
    _wait_idle(server)
    generations = server.generated_tokens()[len(before) :]
    usage = teacher.usage
    return {
        "setting": label,
        "wall_s": wall,
        "received": received,
        "samples_per_s": received / wall,
        "calls_ok": usage.calls,
        "timeouts": usage.timeouts,
        "failed": len(requests) * params.n - received,
        "server_generations": len(generations),
        "duplicated_generations": len(generations) - usage.calls,
        "server_tokens": sum(generations),
        "delivered_tokens": usage.completion_tokens,
        "max_in_flight": teacher.limit.max_in_flight,
        "final_limit": teacher.limit.allowed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=12, help="MultiArith train problems")
    parser.add_argument("--n", type=int, default=2, help="samples per problem (one per call)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--timeouts",
        type=float,
        nargs="+",
        default=[4.0, 30.0],
        help="timeout_s values, scaled down with the model",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if server_python() is None:
        print(f"skipped: {SKIP_REASON}")
        return

    problems = load_problems("multiarith", "train", limit=args.problems)
    requests = [TeacherRequest(p.id, f"Q: {p.question}\nA: Let's think step by step.") for p in problems]
    # seeded: every setting asks for the same samples, so each does the same useful work
    params = SamplingParams(n=args.n, temperature=0.7, max_tokens=args.max_tokens, seed=1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LlamaCppServer(Path(tmp) / "server.log", threads=args.threads) as server,
    ):
        print(
            f"## llama_cpp.server {server.version()} (SmolLM2-135M-Instruct Q4_1, {args.threads} thread(s)): "
            f"{args.problems} problems x n={args.n} (one sample per call), max_tokens={args.max_tokens}"
        )
        settings = [
            ("concurrency 1", 1, False),
            ("concurrency 4", 4, False),
            ("adaptive (max 16)", 16, True),
        ]
        for timeout_s in args.timeouts:
            print(f"\n### timeout_s={timeout_s:g}")
            print(
                f"{'setting':<18} {'wall s':>7} {'samples/s':>9} {'received':>8} {'timeouts':>8} "
                f"{'server gens':>11} {'twice':>5} {'tokens gen/delivered':>21} {'max in flight':>13}"
            )
            for label, concurrency, adaptive in settings:
                try:
                    row = run_setting(
                        server,
                        label,
                        requests,
                        params,
                        concurrency=concurrency,
                        adaptive=adaptive,
                        timeout_s=timeout_s,
                    )
                except TeacherError as err:
                    print(f"{label}: failed: {err}")
                    continue
                tokens = f"{row['server_tokens']}/{row['delivered_tokens']}"
                print(
                    f"{row['setting']:<18} {row['wall_s']:7.1f} {row['samples_per_s']:9.2f} {row['received']:8d} "
                    f"{row['timeouts']:8d} {row['server_generations']:11d} {row['duplicated_generations']:5d} "
                    f"{tokens:>21} {row['max_in_flight']:13d}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
