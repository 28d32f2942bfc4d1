"""Stage outputs stored by content, so that a sweep computes each distinct stage once.

A stage's key hashes the settings that determine its output (`stage_settings`) and the keys of the
stages it reads from; nothing of the run folder, the time or settings that only change how a stage
runs (progress bars, HTTP concurrency, retries) goes in. A changed upstream setting therefore changes
that stage's key and every key below it, and a changed downstream setting leaves the keys above it
alone. Layout under `cache.dir`:

    <stage>/<key>/            the published output, with manifest.json (settings, upstream, result)
    <stage>/<key>.partial/    being computed; kept after a crash (the stage resumes from it)
    <stage>/<key>.lock        held while computing: a parallel job with the same key waits, then reuses
    <stage>/<key>.readers     a shared lock held by every job using the entry: `mwp-cache rm` skips it

Publishing is a rename of the finished `.partial` folder, so a reader never sees half an output, and
the lock (`fcntl.flock`, released by the kernel when a job dies) means two jobs never compute one key.
An output a stage marks incomplete (its result says `incomplete`: teacher calls that failed and were
skipped) is published for the run that made it but never reused: the next run computes it again.
A computation that fails before writing anything leaves no `.partial` folder behind.
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mwp

log = logging.getLogger(__name__)

# Bumped when a stage's output format or the way keys are computed changes: older entries stop
# matching instead of being misread. 2: keys hash the validated config sections (defaults included).
CACHE_FORMAT = 2
MANIFEST = "manifest.json"
PARTIAL = ".partial"
LOCK = ".lock"
READERS = ".readers"
# A stage's result key saying why its output must not be reused (kept in the manifest).
INCOMPLETE = "incomplete"


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

    @property
    def incomplete(self) -> str | None:
        """Why the output is not reused by later runs (None when it is complete)."""
        reason = self.result.get(INCOMPLETE)
        return str(reason) if reason else None

    def record(self) -> dict[str, Any]:
        """What `summary.json`'s `stages.<name>` says of it."""
        record = {
            "status": self.status,
            "key": self.key,
            "path": str(self.path),
            "wall_time_s": round(self.wall_time_s, 2),
        }
        if self.incomplete:
            record[INCOMPLETE] = self.incomplete
        return record


def stage_key(stage: str, settings: dict[str, Any], upstream: Mapping[str, str] | None = None) -> StageKey:
    """The content key of `stage`: a hash of the settings that determine its output (the stage object's
    `key_settings`) and of the keys (or input fingerprints) it reads from."""
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


def forced_stages(force: bool | list[str] | None, steps: list[str]) -> set[str]:
    """`cache.force` as a set of stages: true = all, a list = those and every step after the first of them.

    Recomputing a stage may change its output (a live teacher samples anew) under the same key, so
    everything below it is recomputed too, or it would be reused on stale inputs.
    """
    if force in (None, False):
        return set()
    if force is True:
        return set(steps)
    assert isinstance(force, list)
    first = min((steps.index(s) for s in force if s in steps), default=len(steps))
    return set(steps[first:])


class StageCache:
    """Stage outputs under `root/<stage>/<key>`, computed at most once per key, even by parallel jobs."""

    def __init__(self, root: str | Path, *, force: set[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.force = set(force or ())
        # Open `<key>.readers` files holding a shared lock: the entries this job uses.
        self._leases: dict[Path, int] = {}

    def entry(self, key: StageKey) -> Path:
        return self.root / key.stage / key.key

    def lookup(self, key: StageKey) -> StageOutcome | None:
        """The published output of `key`, if there is one (complete or not)."""
        path = self.entry(key)
        manifest = _read_manifest(path)
        if manifest is None:
            return None
        return StageOutcome(key.stage, key.key, path, "reused", dict(manifest.get("result") or {}), 0.0)

    def reusable(self, key: StageKey) -> StageOutcome | None:
        """The published output of `key` if a run may reuse it: not forced, and complete."""
        if key.stage in self.force:
            return None
        found = self.lookup(key)
        if found is not None and found.incomplete:
            log.info(
                "%s %s was published incomplete (%s): computing it again",
                key.stage,
                key.key,
                found.incomplete,
            )
            return None
        return found

    def lease(self, key: StageKey) -> None:
        """Hold a shared lock on `key`'s entry until `release`: `mwp-cache rm` leaves it alone meanwhile."""
        path = self.root / key.stage / f"{key.key}{READERS}"
        if path in self._leases:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s %s: being removed by mwp-cache; waiting", key.stage, key.key)
                fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self._leases[path] = fd

    def release(self) -> None:
        """Give up every lease this job holds (the kernel does it too when a job dies)."""
        for fd in self._leases.values():
            os.close(fd)
        self._leases.clear()

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
        if not forced:
            # Held before looking, so that no `mwp-cache rm` removes the entry between look and use.
            self.lease(key)
            if (found := self.reusable(key)) is not None:
                return found
        with self._locked(key):
            if not forced and (found := self.reusable(key)) is not None:
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
            try:
                result = compute(partial)
            except BaseException:
                if not any(p.is_file() for p in partial.rglob("*")):
                    shutil.rmtree(partial, ignore_errors=True)  # nothing to continue from
                raise
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
            _write_manifest(partial / MANIFEST, manifest)
            _publish(partial, final)
        if forced:
            self.lease(key)
        return StageOutcome(key.stage, key.key, final, "computed", result, wall)

    def entries(self) -> list[dict[str, Any]]:
        """Every published entry's manifest (plus its path and size), oldest first."""
        found = []
        for manifest_path in self.root.glob(f"*/*/{MANIFEST}"):
            manifest = _read_manifest(manifest_path.parent)
            if manifest is None:
                continue
            found.append(
                {**manifest, "path": str(manifest_path.parent), "bytes": entry_size(manifest_path.parent)}
            )
        return sorted(found, key=lambda m: str(m.get("created")))

    def remove(self, entry: Path) -> bool:
        """Delete a published entry unless a running job holds it (`lease`); False if one does."""
        readers = entry.with_name(entry.name + READERS)
        fd = os.open(readers, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            shutil.rmtree(entry)
            return True
        finally:
            os.close(fd)

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


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Through a temporary file and a rename, synced: a full disk leaves no half manifest behind."""
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


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


def default_stage_cache_dir() -> Path:
    """What `cache.dir` is when nothing overrides it: $MWP_STAGE_CACHE, else outputs/cache."""
    return Path(os.environ.get("MWP_STAGE_CACHE") or Path("outputs") / "cache")


def entry_size(path: Path) -> int:
    """Bytes of an entry's files (links not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
