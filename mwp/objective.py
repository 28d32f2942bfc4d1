"""The scalar a run returns to Hydra's sweeper (`optimized_metric`), read from the run summary.

    val/acc                                  best validation accuracy of training (checkpoint selection)
    eval/<set>/<strict_acc|flexible_acc>     the student's accuracy on one evaluation set (its first format)
    eval/<set>/<format>/<strict_acc|...>     ... in one evaluation format
    eval/ood/<strict_acc|flexible_acc>       the mean over the out-of-distribution sets (first format each)

Nothing here imports torch: the metric's spelling is checked with the rest of the config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

METRIC_PATTERN = re.compile(r"^(val/acc|eval/[\w.-]+(/[a-z_]+)?/(strict_acc|flexible_acc))$")
OOD = "ood"


def parse_metric(metric: str) -> tuple[str, str | None, str] | None:
    """(set or "ood", format or None, accuracy field) of an eval metric; None for val/acc."""
    if not METRIC_PATTERN.match(metric):
        raise ValueError(
            f"optimized_metric={metric!r}: one of val/acc, eval/<set>/strict_acc, eval/<set>/<format>/strict_acc, "
            "eval/ood/strict_acc (flexible_acc likewise)"
        )
    if metric == "val/acc":
        return None
    parts = metric.split("/")[1:]
    return (parts[0], None, parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def objective(summary: Mapping[str, Any], metric: str) -> float:
    """The configured metric of a finished run; NaN where the run has none (nothing held out, no
    evaluate step, an unknown set), which Optuna records as a failed trial instead of stopping the sweep."""
    parsed = parse_metric(metric)
    if parsed is None:
        value = (summary.get("train") or {}).get("best_val_acc")
        return float(value) if value is not None else math.nan
    name, fmt, field = parsed
    rows: Sequence[Mapping[str, Any]] = [
        r
        for r in summary.get("evaluate") or []
        if r.get("model") == "student" and fmt in (None, r.get("format"))
    ]
    firsts: dict[str, Mapping[str, Any]] = {}
    for row in rows:  # the first row per set: its first evaluation format unless one is named
        firsts.setdefault(str(row.get("dataset")), row)
    if name == OOD:
        chosen = [r for r in firsts.values() if r.get("role") == "out-of-distribution"]
    else:
        chosen = [firsts[name]] if name in firsts else []
    values = [float(r[field]) for r in chosen if r.get(field) is not None]
    return sum(values) / len(values) if values else math.nan
