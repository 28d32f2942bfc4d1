"""Enumeration search over Math23K train: speed, coverage, and how often a hit is the gold equation.

    .venv/bin/python benchmarks/bench_enumeration.py                       # whole train split, 2 processes
    .venv/bin/python benchmarks/bench_enumeration.py --limit 2000 --max-ops 4

Figures, all from one run:
* problems/s over the search alone (equivalence checks run afterwards, outside the timing);
* coverage: the share of problems with at least one template reaching the gold answer;
* semantic precision: Math23K carries gold equations, so each hit is compared with the gold template
  by evaluating both on several random re-assignments of N0..Nk (equal on all trials = equivalent).
  Reported as top-1 (the first template is the gold one, among problems with a hit), any-of-k (the
  gold template is among those returned) and per template (share of all returned templates).
  Problems whose gold equation cannot be written as "x=<template>" over the problem's numbers and
  the search's constants are left out of the precision figures and counted separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mwp.data.loaders import load_problems  # noqa: E402
from mwp.data.problem import Problem  # noqa: E402
from mwp.refinement.template_search import (  # noqa: E402
    DEFAULT_MAX_CONSTANTS,
    DEFAULT_MAX_OPS,
    DEFAULT_TIME_LIMIT_S,
    ENUMERATION_CONSTANTS,
    EnumerationSearch,
    SearchStats,
)
from mwp.verify.masking import mask_question  # noqa: E402
from mwp.verify.templates import equivalent, gold_template  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only (a slice)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--max-ops", type=int, default=DEFAULT_MAX_OPS)
    parser.add_argument("--max-constants", type=int, default=DEFAULT_MAX_CONSTANTS)
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    problems = load_problems("math23k", args.split, args.data_dir)[: args.limit]
    search = EnumerationSearch(
        ENUMERATION_CONSTANTS,
        args.max_ops,
        processes=args.processes,
        max_constants=args.max_constants,
        time_limit_s=args.time_limit,
        log_every=2000,
    )
    load = os.getloadavg()
    started = time.monotonic()
    results: list[tuple[Problem, list[str], SearchStats]] = list(search.search(problems))
    seconds = time.monotonic() - started
    load_after = os.getloadavg()

    with_hit = [(p, templates) for p, templates, _ in results if templates]
    comparable = top1 = any_k = templates_total = templates_gold = no_gold = 0
    for problem, templates in with_hit:
        gold = gold_template(problem)
        if gold is None:
            no_gold += 1
            continue
        count = len(mask_question(problem.question, problem.language).numbers)
        matches = [equivalent(t, gold, count) for t in templates]
        comparable += 1
        top1 += matches[0]
        any_k += any(matches)
        templates_total += len(matches)
        templates_gold += sum(matches)

    figures = {
        "split": args.split,
        "problems": len(results),
        "max_ops": args.max_ops,
        "max_constants": args.max_constants,
        "processes": args.processes,
        "time_limit_s": args.time_limit,
        "search_seconds": round(seconds, 1),
        "problems_per_s": round(len(results) / seconds, 1),
        "coverage": round(len(with_hit) / len(results), 4),
        "timed_out": sum(stats.timed_out for _, _, stats in results),
        "mean_candidates": round(sum(stats.candidates for _, _, stats in results) / len(results)),
        "mean_distinct_values": round(sum(stats.distinct_values for _, _, stats in results) / len(results)),
        "max_problem_seconds": round(max(stats.seconds for _, _, stats in results), 2),
        "precision_top1": round(top1 / comparable, 4) if comparable else None,
        "precision_any_of_k": round(any_k / comparable, 4) if comparable else None,
        "precision_per_template": round(templates_gold / templates_total, 4) if templates_total else None,
        "hits_without_usable_gold": no_gold,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
