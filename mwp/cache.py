"""Stage outputs stored by content, so that a sweep computes each distinct stage once.

A stage's key hashes the settings that determine its output (`stage_settings`) and the keys of the
stages it reads from; nothing of the run folder, the time or settings that only change how a stage
runs (progress bars, HTTP concurrency, retries) goes in. A changed upstream setting therefore changes
that stage's key and every key below it, and a changed downstream setting leaves the keys above it
alone. Layout under `cache.dir`:

    <stage>/<key>/            the published output, with manifest.json (settings, upstream, result)
    <stage>/<key>.partial/    being computed; kept after a crash (the stage resumes from it)
    <stage>/<key>.lock        held while computing: a parallel job with the same key waits, then reuses

Publishing is a rename of the finished `.partial` folder, so a reader never sees half an output, and
the lock (`fcntl.flock`, released by the kernel when a job dies) means two jobs never compute one key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import mwp
from mwp.config.schema import STEPS

log = logging.getLogger(__name__)

# Bumped when a stage's output format changes: older entries stop matching instead of being misread.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial"
LOCK = ".lock"
CACHED_STAGES = STEPS

# Keys that change how a stage runs, never what it writes: left out of every key.
OPERATIONAL_KEYS = {
    "teacher": (
        "concurrency",
        "timeout_s",
        "max_retries",
        "retry_base_s",
        "retry_max_s",
        "preflight",
        "cache",
        "cache_path",
        "api_key_env",
        "api_key_required",
        "price_input_per_1m",
        "price_output_per_1m",
    ),
    "trainer": ("enable_progress_bar", "enable_model_summary", "log_every_n_steps"),
    "data": ("num_workers",),
}
# Keys naming where a run writes (its own folder), wherever they appear.
RUN_FOLDER_KEYS = ("dirpath", "save_dir", "default_root_dir")


@dataclass(frozen=True)
class StageKey:
    """A stage's content key and the settings it was computed from (written to the manifest)."""

    stage: str
    key: str
    settings: dict[str, Any]
    upstream: dict[str, str]


@dataclass
class StageOutcome:
    """Where a stage's output is and whether this run computed it or found it."""

    stage: str
    key: str
    path: Path
    status: str  # "computed" or "reused"
    result: dict[str, Any]
    wall_time_s: float

    def record(self) -> dict[str, Any]:
        """What `summary.json`'s `stages.<name>` says of it."""
        return {
            "status": self.status,
            "key": self.key,
            "path": str(self.path),
            "wall_time_s": round(self.wall_time_s, 2),
        }


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _without(value: Any, drop: tuple[str, ...] = ()) -> Any:
    """`value` without the `drop` keys at its top and without run-folder keys anywhere."""
    if isinstance(value, Mapping):
        return {k: _without(v) for k, v in value.items() if k not in drop and k not in RUN_FOLDER_KEYS}
    if isinstance(value, list):
        return [_without(v) for v in value]
    return value


def _section(cfg: DictConfig, name: str) -> Any:
    return _without(_plain(cfg.get(name)), OPERATIONAL_KEYS.get(name, ()))


def _named_files(path: Path) -> list[tuple[str, Path]]:
    """A file as (its name, it), or a folder's files as (path relative to the folder, file), sorted."""
    if not path.is_dir():
        return [(path.name, path)]
    return [(str(f.relative_to(path)), f) for f in sorted(p for p in path.rglob("*") if p.is_file())]


def content_digest(named_files: Iterable[tuple[str, Path]]) -> str:
    """SHA-256 (hex) over (name, file) pairs: each name and the file's bytes, in the order given."""
    digest = hashlib.sha256()
    for name, file in named_files:
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """The content hash of a file, or of a folder's files (names and bytes): for inputs given by path."""
    return content_digest(_named_files(Path(path)))[:16]


def folder_stamp(path: Path) -> str:
    """A cheap identity of a large folder given by path (a trained student): names, sizes and mtimes."""
    path = Path(path)
    digest = hashlib.sha256(str(path.resolve()).encode())
    for name, file in _named_files(path):
        stat = file.stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def stage_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The settings that determine `stage`'s output (its upstream stages' keys are added separately)."""
    if stage == "distill":
        dataset = _section(cfg, "dataset")
        dataset.pop("eval_sets", None)
        return {
            "dataset": dataset,
            "teacher": _section(cfg, "teacher"),
            "prompt": _section(cfg, "prompt"),
            "stage": {
                k: _plain(cfg.stage.get(k)) for k in ("extraction", "shard", "num_shards", "dedup", "chain")
            },
            "data_dir": str(cfg.paths.data_dir),
        }
    if stage == "refine":
        settings: dict[str, Any] = {"refine": _section(cfg, "refine")}
        method = cfg.refine.method
        if method == "middle_model":
            # The middle model is trained by the train stage's code, on the run's settings as the
            # search rewrites them (its own steps, batch size, lr, format): those are what count.
            from mwp.refine.middle_model import middle_model_config

            middle = middle_model_config(cfg, cfg.refine.middle_model)
            settings |= {name: _section(middle, name) for name in ("student", "data", "optim", "trainer")}
            settings["seed"] = cfg.seed
        if method == "teacher_feedback":
            chosen = cfg.refine.teacher_feedback.get("teacher")
            teacher = (
                _without(_plain(chosen), OPERATIONAL_KEYS["teacher"]) if chosen else _section(cfg, "teacher")
            )
            settings |= {"teacher": teacher, "prompt": _section(cfg, "prompt")}
        return settings
    if stage == "train":
        return {
            **{
                name: _section(cfg, name)
                for name in ("student", "loss", "data", "optim", "trainer", "callbacks")
            },
            "seed": cfg.seed,
            "train_split": cfg.dataset.train_split,
            "select_extraction": cfg.evaluation.get("select_extraction"),
        }
    if stage == "evaluate":
        return {
            "evaluation": _section(cfg, "evaluation"),
            "eval_sets": _plain(cfg.dataset.eval_sets),
            # in-context exemplars come from the training split; templates are read in this notation
            "dataset": {"name": cfg.dataset.name, "train_split": cfg.dataset.train_split},
            "equation_notation": cfg.data.get("equation_notation"),
            "data_dir": str(cfg.paths.data_dir),
        }
    raise ValueError(f"no cache key is defined for stage {stage!r} (stages: {list(CACHED_STAGES)})")


def stage_key(cfg: DictConfig, stage: str, upstream: Mapping[str, str] | None = None) -> StageKey:
    """The content key of `stage` under `cfg`, given the keys (or input fingerprints) it reads from."""
    settings = stage_settings(cfg, stage)
    upstream = dict(upstream or {})
    payload = {
        "format": CACHE_FORMAT,
        "mwp": mwp.__version__,
        "stage": stage,
        "settings": settings,
        "upstream": upstream,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return StageKey(
        stage=stage, key=hashlib.sha256(text.encode()).hexdigest()[:16], settings=settings, upstream=upstream
    )


def forced_stages(force: Any, steps: list[str]) -> set[str]:
    """`cache.force` as a set of stages: true = all, a list = those and every step after the first of them.

    Recomputing a stage may change its output (a live teacher samples anew) under the same key, so
    everything below it is recomputed too, or it would be reused on stale inputs.
    """
    if force in (None, False):
        return set()
    if force is True:
        return set(steps)
    named = set(force)
    unknown = named - set(CACHED_STAGES)
    if unknown:
        raise ValueError(f"cache.force: {sorted(unknown)} are not stages (stages: {list(CACHED_STAGES)})")
    order = [step for step in steps if step in CACHED_STAGES]
    first = min((order.index(s) for s in named if s in order), default=len(order))
    return set(order[first:])


class StageCache:
    """Stage outputs under `root/<stage>/<key>`, computed at most once per key, even by parallel jobs."""

    def __init__(self, root: str | Path, *, force: set[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.force = set(force or ())

    def entry(self, key: StageKey) -> Path:
        return self.root / key.stage / key.key

    def lookup(self, key: StageKey) -> StageOutcome | None:
        """The published output of `key`, if there is one."""
        path = self.entry(key)
        manifest = _read_manifest(path)
        if manifest is None:
            return None
        return StageOutcome(key.stage, key.key, path, "reused", dict(manifest.get("result") or {}), 0.0)

    @contextmanager
    def _locked(self, key: StageKey) -> Iterator[None]:
        lock_path = self.root / key.stage / f"{key.key}{LOCK}"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s %s: another job is computing it; waiting for it to finish", key.stage, key.key)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_compute(
        self,
        key: StageKey,
        compute: Callable[[Path], dict[str, Any]],
        *,
        run_dir: Path | None = None,
    ) -> StageOutcome:
        """Reuse `key`'s output, or run `compute(folder)` to write it into a fresh folder and publish it.

        `compute` returns the stage's result (its stats), stored in the manifest so that a run that
        reuses the output reports the same figures.
        """
        forced = key.stage in self.force
        started = time.monotonic()
        if not forced and (found := self.lookup(key)) is not None:
            return found
        with self._locked(key):
            if not forced and (found := self.lookup(key)) is not None:
                log.info(
                    "%s: reused %s, computed meanwhile by another job (%s)", key.stage, key.key, found.path
                )
                return found
            final = self.entry(key)
            partial = final.with_name(final.name + PARTIAL)
            if forced:
                shutil.rmtree(partial, ignore_errors=True)
            elif partial.is_dir():
                log.info("%s %s: continuing the unfinished output in %s", key.stage, key.key, partial)
            partial.mkdir(parents=True, exist_ok=True)
            if forced:
                log.info("%s %s: forced, computing it anew", key.stage, key.key)
            result = compute(partial)
            wall = time.monotonic() - started
            manifest = {
                "stage": key.stage,
                "key": key.key,
                "format": CACHE_FORMAT,
                "mwp": mwp.__version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "run_dir": str(run_dir) if run_dir is not None else None,
                "wall_time_s": round(wall, 2),
                "upstream": key.upstream,
                "settings": key.settings,
                "result": result,
            }
            (partial / MANIFEST).write_text(
                json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8"
            )
            _publish(partial, final)
            return StageOutcome(key.stage, key.key, final, "computed", result, wall)

    def entries(self) -> list[dict[str, Any]]:
        """Every published entry's manifest (plus its path and size), oldest first."""
        found = []
        for manifest_path in self.root.glob(f"*/*/{MANIFEST}"):
            manifest = _read_manifest(manifest_path.parent)
            if manifest is None:
                continue
            found.append(
                {**manifest, "path": str(manifest_path.parent), "bytes": _size(manifest_path.parent)}
            )
        return sorted(found, key=lambda m: str(m.get("created")))

    def leftovers(self) -> list[Path]:
        """Unfinished `.partial` folders no job is computing (their lock is free)."""
        stale = []
        for partial in self.root.glob(f"*/*{PARTIAL}"):
            lock_path = partial.with_name(partial.name[: -len(PARTIAL)] + LOCK)
            with lock_path.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                fcntl.flock(handle, fcntl.LOCK_UN)
            stale.append(partial)
        return stale


def _publish(partial: Path, final: Path) -> None:
    """Rename the finished folder into place; an older output of the same key (force) is replaced."""
    if final.exists():
        trash = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(partial, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(partial, final)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def link_into_run(run_dir: Path, name: str, target: Path) -> Path:
    """`run_dir/name` as a link to a cache entry, so a run folder shows every stage it used."""
    link = run_dir / name
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        # An output of this run from before the cache (a resumed old run): kept under another name.
        link.rename(run_dir / f"{name}.before-cache")
    link.symlink_to(target, target_is_directory=True)
    return link


# --- mwp-cache: list and prune ------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """What `cache.dir` is when nothing overrides it: $MWP_STAGE_CACHE, else outputs/cache."""
    return Path(os.environ.get("MWP_STAGE_CACHE") or Path("outputs") / "cache")


def _describe(manifest: Mapping[str, Any]) -> str:
    """A few words on what an entry holds, from its settings and result."""
    settings = manifest.get("settings") or {}
    result = manifest.get("result") or {}
    stage = manifest.get("stage")
    if stage == "distill":
        dataset = (settings.get("dataset") or {}).get("name")
        teacher = (settings.get("teacher") or {}).get("name")
        kept, seen = result.get("problems_kept"), result.get("problems_seen")
        return f"{dataset} from {teacher}: {kept}/{seen} problems kept"
    if stage == "refine":
        method = (settings.get("refine") or {}).get("method")
        return f"{method}: recovered {result.get('recovered')} of {result.get('failed')}"
    if stage == "train":
        student = settings.get("student") or {}
        return f"{student.get('name_or_path') or student.get('name')}, {result.get('steps')} steps, seed {settings.get('seed')}"
    if stage == "evaluate":
        rows = result.get("results") or []
        return ", ".join(
            f"{r.get('dataset')}/{r.get('split')} {100 * float(r.get('flexible_acc') or 0):.1f}%"
            for r in rows[:4]
        )
    return ""


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
        if len(hits) != 1:
            raise SystemExit(
                f"mwp-cache: {prefix!r} matches {len(hits)} entries in {cache.root} (give more of the key)"
            )
        chosen.extend(hits)
    return chosen


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mwp-cache", description="List, show and prune the stage cache.")
    parser.add_argument(
        "--dir", type=Path, default=None, help="the cache (default: $MWP_STAGE_CACHE, else outputs/cache)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list the entries, oldest first, and unfinished ones")
    ls.add_argument("--stage", choices=CACHED_STAGES)
    show = commands.add_parser("show", help="print an entry's manifest (its settings, upstream keys, result)")
    show.add_argument("key")
    rm = commands.add_parser(
        "rm", help="remove entries: by key (prefix), by stage, by age, or unfinished ones"
    )
    rm.add_argument("keys", nargs="*")
    rm.add_argument("--stage", choices=CACHED_STAGES)
    rm.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only entries created more than DAYS ago"
    )
    rm.add_argument("--partial", action="store_true", help="only unfinished outputs no job is computing")
    rm.add_argument(
        "--all", action="store_true", help="every entry (needed when no key, stage or age is given)"
    )
    rm.add_argument("--dry-run", action="store_true", help="say what would be removed")
    args = parser.parse_args(argv)
    cache = StageCache(args.dir or default_cache_dir())
    if not cache.root.is_dir():
        print(f"no stage cache at {cache.root}")
        return 0 if args.command == "ls" else 1

    if args.command == "ls":
        entries = _matching(cache, [], args.stage)
        for e in entries:
            print(
                f"{e['stage']:<9} {e['key']}  {str(e.get('created'))[:19]:<19}  {_human(e['bytes']):>9}  "
                f"{float(e.get('wall_time_s') or 0):7.1f} s  {_describe(e)}"
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
    freed = sum(_size(t) for t in targets)
    for target in targets:
        print(f"{'would remove' if args.dry_run else 'removing'} {target}")
        if not args.dry_run:
            shutil.rmtree(target)
    print(f"{len(targets)} {'would be ' if args.dry_run else ''}removed, {_human(freed)}")
    return 0
