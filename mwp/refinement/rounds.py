"""The refinement loop: a method recovers failed training problems round by round; the result is written once.

A method (`RefineMethod`) yields, per round, its statistics and the rows it recovered; `refine` runs
it and writes `refined.jsonl` (the distilled rows, then every recovered row with its `method` and
`round`), `failed.jsonl` (the failed problems it started from) and `stats.json` (per method and round:
problems attempted, recovered, remaining, candidates tried and per second, wall time, teacher calls,
and the semantic precision of the kept templates against the dataset's gold equations, for distill too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mwp.data.artifact import DistilledRow, write_distilled
from mwp.data.io import write_json, write_jsonl
from mwp.data.problem import Problem
from mwp.refinement.candidates import RoundStats, semantic_precision

log = logging.getLogger(__name__)

REFINED = "refined.jsonl"
FAILED = "failed.jsonl"
STATS = "stats.json"


class RefineMethod(Protocol):
    method: str

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow]
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]: ...


@dataclass
class RefineResult:
    method: str
    distilled_rows: int
    failed: int
    recovered: int
    remaining: int
    rounds: list[RoundStats] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "distilled_rows": self.distilled_rows,
            "failed": self.failed,
            "recovered": self.recovered,
            "remaining": self.remaining,
            "rounds": len(self.rounds),
        }


def kept_ids(rows: Sequence[DistilledRow]) -> set[str]:
    return {row.id for row in rows if row.template is not None}


def refine(
    method: RefineMethod,
    rows: Sequence[DistilledRow],
    failed: Sequence[Problem],
    attempts: Mapping[str, str],
    out_dir: Path,
    *,
    precision: bool = True,
) -> RefineResult:
    """Run `method` round by round; write the refined artifact and the statistics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out_dir / FAILED,
        ({"id": p.id, "problem": p.to_json(), "attempt": attempts.get(p.id)} for p in failed),
    )
    started = time.perf_counter()
    recovered: list[DistilledRow] = []
    rounds: list[RoundStats] = []
    remaining = len(failed)
    for stats, new_rows in method.rounds(failed, attempts, [*rows]):
        if precision:
            stats.precision = semantic_precision(new_rows)
        recovered.extend(new_rows)
        rounds.append(stats)
        remaining = stats.remaining
        log.info(
            "refine %s round %d: %d of %d attempted recovered (%d remaining), %d candidates (%.1f/s) in %.1fs",
            method.method,
            stats.round,
            stats.recovered,
            stats.attempted,
            stats.remaining,
            stats.candidates,
            stats.candidates_per_s,
            stats.wall_s,
        )
    write_distilled(out_dir / REFINED, [*rows, *recovered])
    recovered_ids = {row.id for row in recovered}
    report: dict[str, Any] = {
        "distill": {
            "rows": len(rows),
            "problems_kept": len(kept_ids(rows)),
            "problems_failed": len(failed),
            "precision": semantic_precision(rows) if precision else {},
        },
        "methods": {
            method.method: {
                # who proposed the recovered equations: a teacher's name, the middle model, a search
                "by": str(getattr(method, "source", method.method)),
                "rounds": [r.to_json() for r in rounds],
                "recovered": len(recovered_ids),
                "remaining": remaining,
                "recovered_share": round(len(recovered_ids) / len(failed), 4) if failed else None,
                "precision": semantic_precision(recovered) if precision else {},
                "wall_s": round(time.perf_counter() - started, 3),
            }
        },
    }
    write_json(out_dir / STATS, report)
    return RefineResult(
        method=method.method,
        distilled_rows=len(rows),
        failed=len(failed),
        recovered=len(recovered_ids),
        remaining=remaining,
        rounds=rounds,
        stats=report,
    )


class NoRefinement:
    """refine.method=none: the distilled rows pass through; the failed problems are still counted."""

    method = "none"

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow]
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]:
        return iter(())
