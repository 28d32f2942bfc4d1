"""Sharded sampling: which problems a shard samples, and merging the shards' artifacts once all have finished.

    todo = shard(problems, config.stage.shard, config.stage.num_shards)
    ...
    merge_distilled([shard_0/distilled.jsonl, shard_1/distilled.jsonl], "distilled.jsonl")

`python -m mwp.data.shards merge OUT SHARD...` does the merge from the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mwp.data.artifact import ARTIFACT, DistilledRow, read_distilled, write_distilled
from mwp.data.io import DataError, read_complete_jsonl, write_jsonl

T = TypeVar("T")


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


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mwp.data.shards merge OUT SHARD...`: merge the shard artifacts of a sharded distill run."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mwp.data.shards",
        description="Merge shard artifacts (JSONL) into one, dropping duplicates.",
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

    try:
        _refuse_overwriting_an_input(args.out, args.shards)
        if distilled:
            count = merge_distilled(
                args.shards, args.out, key=(lambda r: field_key(r.to_json())) if fields else None
            )
        else:
            count = merge_shards(args.shards, args.out, key=field_key if fields else None)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"merge: error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{count} rows -> {args.out}")


def _refuse_overwriting_an_input(out: str, shards: Sequence[str]) -> None:
    """The merge writes `out` atomically, but never over one of the files it reads."""
    target = Path(out).resolve()
    for shard_path in shards:
        if Path(shard_path).resolve() == target:
            raise ValueError(f"output {out} is one of the inputs; name a new file")


if __name__ == "__main__":
    main()
