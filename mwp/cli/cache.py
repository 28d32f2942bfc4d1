"""`mwp-cache`: list, show and prune the stage cache (`mwp.stage_cache`)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from mwp.stage_cache import INCOMPLETE, StageCache, default_stage_cache_dir, entry_size
from mwp.stages import STAGES


def describe(manifest: Mapping[str, Any]) -> str:
    """A few words on what an entry holds: its stage's one-line description of the result."""
    stage = STAGES.get(str(manifest.get("stage")))
    if stage is None:
        return ""
    result = manifest.get("result") or {}
    text = stage.describe(manifest.get("settings") or {}, result)
    if result.get(INCOMPLETE):
        text += f" [incomplete, never reused: {result[INCOMPLETE]}]"
    return text


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _matching(cache: StageCache, keys: list[str], stage: str | None) -> list[dict[str, Any]]:
    entries = [e for e in cache.entries() if stage is None or e.get("stage") == stage]
    if not keys:
        return entries
    chosen = []
    for prefix in keys:
        hits = [e for e in entries if str(e.get("key", "")).startswith(prefix)]
        if not hits:
            _fail(f"no entry matches {prefix!r} in {cache.root} (`mwp-cache ls` lists them)")
        if len(hits) > 1:
            _fail(f"{prefix!r} matches {len(hits)} entries in {cache.root}: give more of the key")
        chosen.extend(hits)
    return chosen


def _fail(message: str) -> NoReturn:
    print(f"mwp-cache: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mwp-cache", description="List, show and prune the stage cache.")
    parser.add_argument(
        "--dir", type=Path, default=None, help="the cache (default: $MWP_STAGE_CACHE, else outputs/cache)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list the entries, oldest first, and unfinished ones")
    ls.add_argument("--stage", choices=list(STAGES))
    show = commands.add_parser("show", help="print an entry's manifest (its settings, upstream keys, result)")
    show.add_argument("key")
    rm = commands.add_parser(
        "rm", help="remove entries: by key (prefix), by stage, by age, or unfinished ones"
    )
    rm.add_argument("keys", nargs="*")
    rm.add_argument("--stage", choices=list(STAGES))
    rm.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only entries created more than DAYS ago"
    )
    rm.add_argument("--partial", action="store_true", help="only unfinished outputs no job is computing")
    rm.add_argument(
        "--all", action="store_true", help="every entry (needed when no key, stage or age is given)"
    )
    rm.add_argument("--dry-run", action="store_true", help="say what would be removed")
    args = parser.parse_args(argv)
    cache = StageCache(args.dir or default_stage_cache_dir())
    if not cache.root.is_dir():
        print(f"no stage cache at {cache.root}")
        return 0 if args.command == "ls" else 1

    if args.command == "ls":
        entries = _matching(cache, [], args.stage)
        for e in entries:
            print(
                f"{e['stage']:<9} {e['key']}  {str(e.get('created'))[:19]:<19}  {_human(e['bytes']):>9}  "
                f"{float(e.get('wall_time_s') or 0):7.1f} s  {describe(e)}"
            )
        stale = cache.leftovers()
        for partial in stale:
            print(
                f"{partial.parent.name:<9} {partial.name}  unfinished (no job is computing it; `mwp-cache rm --partial`)"
            )
        total = sum(e["bytes"] for e in entries)
        print(f"{len(entries)} entries, {_human(total)}, in {cache.root}")
        return 0
    if args.command == "show":
        (entry,) = _matching(cache, [args.key], None)
        print(json.dumps({k: v for k, v in entry.items() if k != "bytes"}, indent=2, default=str))
        return 0

    if args.partial:
        targets = [Path(p) for p in cache.leftovers()]
    else:
        if not (args.keys or args.stage or args.older_than is not None or args.all):
            parser.error("rm: name keys, --stage, --older-than, --partial or --all")
        entries = _matching(cache, args.keys, args.stage)
        if args.older_than is not None:
            cutoff = datetime.now(UTC).timestamp() - args.older_than * 86400
            entries = [e for e in entries if datetime.fromisoformat(str(e["created"])).timestamp() < cutoff]
        targets = [Path(e["path"]) for e in entries]
    freed = 0
    removed = 0
    in_use = []
    for target in targets:
        size = entry_size(target)
        if args.dry_run:
            print(f"would remove {target}")
        elif args.partial:
            print(f"removing {target}")
            shutil.rmtree(target)
        elif cache.remove(target):
            print(f"removing {target}")
        else:
            in_use.append(target)
            continue
        freed += size
        removed += 1
    print(f"{removed} {'would be ' if args.dry_run else ''}removed, {_human(freed)}")
    for target in in_use:
        print(f"mwp-cache: error: {target} is in use by a running job; not removed", file=sys.stderr)
    return 2 if in_use else 0


if __name__ == "__main__":
    raise SystemExit(main())
