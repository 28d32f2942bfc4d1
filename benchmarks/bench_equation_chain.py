"""Cost of the equation chain's checks: what the distill stage spends besides the teacher's time.

    .venv/bin/python benchmarks/bench_equation_chain.py [--problems 1000] [--n 2]

The teacher is the SIMULATED one (conf/teacher/simulated.yaml's error profile, answers from Math23K
gold equations), whose answers cost next to nothing, so the time measured is the chain's own:
parsing and checking equations, building the follow-up prompts, verifying and deduplicating
templates, writing the artifact. Reported in one run: problems/s and checked outputs/s of the chain,
and its time relative to the one-call `equation` route (one prompt, one check) on the same problems.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mwp.data.loaders import load_problems
from mwp.distill.equation_chain import distill_chain
from mwp.distill.rationales import distill
from mwp.teachers.base import SamplingParams
from mwp.teachers.prompts import build_requests
from mwp.teachers.simulated import SimulatedTeacher

PROFILE = {
    "equation": {
        "wrong_operator": 0.08,
        "swapped_numbers": 0.05,
        "wrong_number": 0.05,
        "malformed": 0.06,
        "refusal": 0.02,
        "plausible_wrong": 0.04,
    },
    "masked_equation": {
        "wrong_operator": 0.03,
        "swapped_numbers": 0.02,
        "wrong_number": 0.02,
        "refusal": 0.01,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--n", type=int, default=2)
    args = parser.parse_args()
    problems = load_problems("math23k", "train", limit=args.problems)
    teacher = SimulatedTeacher("math23k", errors=PROFILE)
    params = SamplingParams(n=args.n)
    with tempfile.TemporaryDirectory() as tmp:
        chain_requests = build_requests(problems, {"style": "equation_chain", "language": "zh"})
        start = time.perf_counter()
        stats = distill_chain(
            problems, teacher, chain_requests, params, Path(tmp) / "chain", dataset="math23k", split="train"
        )
        chain_s = time.perf_counter() - start
        plain_requests = build_requests(problems, {"style": "equation", "language": "zh"})
        start = time.perf_counter()
        distill(
            problems,
            teacher,
            plain_requests,
            params,
            Path(tmp) / "plain",
            dataset="math23k",
            split="train",
            extraction="equation",
        )
        plain_s = time.perf_counter() - start
    checked = sum(step["checked"] for step in stats["steps"].values())
    print(f"teacher: {teacher.name}; {len(problems)} problems x n={args.n}")
    print(
        f"chain: {chain_s:.2f} s, {len(problems) / chain_s:.0f} problems/s, {checked / chain_s:.0f} checked outputs/s"
    )
    print(f"one-call equation route: {plain_s:.2f} s; chain / one-call = {chain_s / plain_s:.2f}x")
    print(f"problem yield: chain {stats['problem_yield']:.3f}")


if __name__ == "__main__":
    main()
