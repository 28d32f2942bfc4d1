"""Sampling at scale: token/cost ledger, problem sharding, shard merging and a progress bar.

The distill stage uses these around any teacher:

    todo = shard(problems, cfg.stage.shard, cfg.stage.num_shards)
    with SamplingProgress(total=len(todo) * params.n) as progress:
        for response in teacher.generate(requests, params):
            ...
            progress.update(samples=len(response.completions), kept=kept, cost=teacher_usage(teacher).cost_usd)
    teacher_usage(teacher).write(out_dir / "usage.json")
    merge_shards([shard_0.jsonl, shard_1.jsonl], "kept.jsonl")  # once every shard has finished
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mwp.data.artifact import ARTIFACT, DistilledRow, read_distilled, write_distilled
from mwp.data.io import read_complete_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class UsageLedger:
    """Tokens, calls and money spent by one teacher; thread-safe; written next to the artifact as usage.json."""

    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    samples: int = 0
    cached_samples: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_call(self, prompt_tokens: int, completion_tokens: int, samples: int) -> None:
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.samples += samples

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_failure(self) -> None:
        with self._lock:
            self.failed_calls += 1

    def record_cached(self, samples: int) -> None:
        with self._lock:
            self.cached_samples += samples

    @property
    def cost_usd(self) -> float:
        return (
            self.prompt_tokens * self.price_input_per_1m + self.completion_tokens * self.price_output_per_1m
        ) / 1e6

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "failed_calls": self.failed_calls,
                "retries": self.retries,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "samples": self.samples,
                "cached_samples": self.cached_samples,
                "price_input_per_1m": self.price_input_per_1m,
                "price_output_per_1m": self.price_output_per_1m,
                "cost_usd": round(self.cost_usd, 6),
            }

    def write(self, path: str | os.PathLike[str]) -> Path:
        write_json(path, self.to_json())
        return Path(path)


def teacher_usage(teacher: object) -> UsageLedger:
    """The teacher's ledger, or an empty one for teachers that spend nothing (recorded, batch files)."""
    usage = getattr(teacher, "usage", None)
    return usage if isinstance(usage, UsageLedger) else UsageLedger()


def _stable_bucket(key: str, num_shards: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shard(items: Sequence[T], shard: int, num_shards: int, key: Callable[[T], str] | None = None) -> list[T]:
    """The items of shard `shard` of `num_shards`, chosen by a stable hash of each item's id.

    Membership depends only on the id (never on list order, `limit` or the process), so shards
    of one dataset are disjoint, cover it, and stay the same when a run is restarted.
    """
    if num_shards < 1:
        raise ValueError(f"stage.num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"stage.shard must be in [0, {num_shards}), got {shard}")
    key_of = key or (lambda item: str(item.id))  # type: ignore[attr-defined]
    if num_shards == 1:
        return list(items)
    return [item for item in items if _stable_bucket(key_of(item), num_shards) == shard]


def read_jsonl_tolerant(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file that may end in a torn line (a writer killed mid-line).

    A row counts only once its newline is written. Returns (rows, byte offset just past the last
    complete line). A bad complete line is corruption, not a crash: ValueError naming file and line.
    """
    return read_complete_jsonl(path)


def merge_shards(
    paths: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    key: Callable[[dict[str, Any]], Hashable] | None = None,
    sort_key: Callable[[dict[str, Any]], Any] | None = None,
) -> int:
    """Concatenate shard JSONL artifacts into `out` (atomically), dropping duplicate rows.

    Duplicates are rows with the same `key` (default: the whole row). A torn last line in a
    shard that was killed mid-write is skipped with a warning. Returns the number of rows written.
    """
    key_of = key or (lambda row: json.dumps(row, sort_keys=True, ensure_ascii=False))
    seen: set[Hashable] = set()
    merged: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"shard artifact {path} does not exist (did that shard finish?)")
        rows, _ = read_jsonl_tolerant(path)
        for row in rows:
            k = key_of(row)
            if k in seen:
                continue
            seen.add(k)
            merged.append(row)
    if sort_key is not None:
        merged.sort(key=sort_key)
    write_jsonl(out, merged)
    return len(merged)


def merge_distilled(
    paths: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    key: Callable[[DistilledRow], Hashable] | None = None,
) -> int:
    """`merge_shards` for distill artifacts: every row is checked as a `DistilledRow` (errors name
    file:line) before it is published, so a merged artifact is one the train stage can read.

    Duplicates are rows with the same `key` (default: the whole row). Returns the rows written.
    """
    key_of = key or (lambda row: json.dumps(row.to_json(), sort_keys=True, ensure_ascii=False))
    seen: set[Hashable] = set()
    merged: list[DistilledRow] = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"shard artifact {path} does not exist (did that shard finish?)")
        for row in read_distilled(path, skip_partial_tail=True):
            k = key_of(row)
            if k not in seen:
                seen.add(k)
                merged.append(row)
    return write_distilled(out, merged)


class SamplingProgress:
    """Progress over samples showing samples/s, kept/s and the money spent so far (`mwp.progress`)."""

    def __init__(self, total: int | None, desc: str = "sampling", disable: bool | None = None) -> None:
        from mwp.progress import Progress

        self._progress = Progress(total, desc, unit="sample", disable=bool(disable))
        self._start = time.monotonic()
        self.samples = 0
        self.kept = 0
        self.cost_usd = 0.0

    def update(self, samples: int, kept: int = 0, cost: float | None = None) -> None:
        self.samples += samples
        self.kept += kept
        if cost is not None:
            self.cost_usd = cost
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._progress.postfix(
            **{
                "kept/s": f"{self.kept / elapsed:.1f}",
                "kept": self.kept,
                "cost": f"${self.cost_usd:.4f}",
            }
        )
        self._progress.update(samples)

    def close(self) -> None:
        self._progress.close()

    def __enter__(self) -> SamplingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mwp.teachers.scale merge OUT SHARD...`: merge the shard artifacts of a sharded distill run."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Merge shard artifacts (JSONL) into one, dropping duplicates."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge")
    merge.add_argument("out")
    merge.add_argument("shards", nargs="+")
    merge.add_argument(
        "--key",
        nargs="*",
        default=None,
        help="fields that identify a row (default: the whole row), e.g. id rationale",
    )
    merge.add_argument(
        "--rows",
        choices=("auto", "distilled", "any"),
        default="auto",
        help=f"check rows as distilled rows (auto: when every shard is named {ARTIFACT})",
    )
    args = parser.parse_args(argv)
    fields = args.key
    distilled = args.rows == "distilled" or (
        args.rows == "auto" and all(Path(s).name == ARTIFACT for s in args.shards)
    )

    def field_key(row: dict[str, Any]) -> Hashable:
        return tuple(json.dumps(row.get(f), sort_keys=True) for f in fields)

    if distilled:
        count = merge_distilled(
            args.shards, args.out, key=(lambda r: field_key(r.to_json())) if fields else None
        )
    else:
        count = merge_shards(args.shards, args.out, key=field_key if fields else None)
    print(f"{count} rows -> {args.out}")


if __name__ == "__main__":
    main()
