"""Enumeration search as a refinement method: every template up to `max_ops` operators, kept if it verifies.

The search itself is `mwp.refinement.template_search.EnumerationSearch`; this wraps it in the stage's round
contract (one round: enumeration is exhaustive within its bound, so a second round finds nothing new)
and re-checks every template it returns with the same verifier as the other methods.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence

from mwp.data.artifact import DistilledRow
from mwp.data.problem import Problem
from mwp.progress import Progress
from mwp.refinement.candidates import RoundStats, distinct_verified, recovered_row

METHOD = "enumeration"


class EnumerationMethod:
    method = METHOD

    def __init__(
        self,
        *,
        constants: Collection[str],
        max_ops: int,
        max_results: int,
        processes: int,
        time_limit_s: float | None = None,
        max_per_problem: int = 1,
    ) -> None:
        self.time_limit_s = time_limit_s
        self.constants = tuple(constants)
        self.max_ops = max_ops
        self.source = f"enumeration of templates up to {max_ops} operators (no model)"
        self.max_results = max_results
        self.processes = processes
        self.max_per_problem = max_per_problem

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow] = ()
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]:
        del attempts, kept
        from mwp.refinement.template_search import EnumerationSearch

        problems = [p for p in failed if p.answer is not None]
        if not problems:
            return
        stats = RoundStats(method=METHOD, round=1, attempted=len(problems))
        search = EnumerationSearch(
            constants=self.constants,
            max_ops=self.max_ops,
            max_results=self.max_results,
            processes=self.processes,
            time_limit_s=self.time_limit_s,
        )
        recovered: list[DistilledRow] = []
        start = time.perf_counter()
        bar = Progress(len(problems), "refine enumeration", unit="problem")
        for problem, templates, problem_stats in search.search(problems):
            bar.update()
            stats.candidates += problem_stats.candidates
            kept_templates = distinct_verified(problem, list(templates), self.constants, self.max_per_problem)
            stats.verified_candidates += len(kept_templates)
            recovered.extend(
                recovered_row(problem, t, method=METHOD, round_index=1, teacher=METHOD)
                for t in kept_templates
            )
        bar.close()
        stats.search_s = time.perf_counter() - start
        stats.recovered = len({row.id for row in recovered})
        yield stats.finish(len(problems) - stats.recovered), recovered
