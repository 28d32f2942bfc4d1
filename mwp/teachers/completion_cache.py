"""Cache and resume: every completion is stored the moment it arrives, so a killed run loses nothing.

The store is an append-only JSONL file, one line per teacher response:

    {"key": "<sha256>", "problem_id": "...", "indices": [3, 4], "completions": [{...}, {...}]}

`key` hashes (model identity, prompt, system, sampling parameters except n); `indices` are the
sample indices the completions fill. A line is written with a single `write` under an exclusive
`flock`, so concurrent shards can share one file, and a SIGKILL can at worst leave one torn last
line, which the next open truncates. A sample index already stored is never requested again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mwp.data.io import DataError, encode_jsonl_line, parse_jsonl_line, scan_jsonl
from mwp.paths import user_cache_dir
from mwp.teachers.base import Completion, SamplingParams, Teacher, TeacherRequest, TeacherResponse
from mwp.teachers.usage import UsageLedger

log = logging.getLogger(__name__)


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed derived from `parts`, the same in every process and Python version."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") % (2**31 - 1)


def teacher_identity(teacher: Teacher) -> str:
    """What distinguishes one teacher's samples from another's: the model, not the run's label."""
    return str(getattr(teacher, "identity", None) or teacher.name)


def request_key(identity: str, request: TeacherRequest, params: SamplingParams) -> str:
    """Cache key of one (teacher, prompt, sampling parameters) triple; `n` is not part of it."""
    fields = {
        "model": identity,
        "prompt": request.prompt,
        "system": request.system,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop),
        "top_logprobs": params.top_logprobs,
        "seed": params.seed,
    }
    if request.task != "solve":  # plain requests keep the keys stored before tasks existed
        fields["task"] = request.task
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# Lines are written key first, so loading indexes a file without parsing its completions.
_LINE_PREFIX = re.compile(rb'^\{"key": "([0-9a-f]{64})", "indices": \[([0-9, ]*)\]')


class CompletionCache:
    """The append-only completion store (see the module docstring).

    Only an index (key -> sample index -> where its line is) stays in memory; completions are
    read back from the file when asked for, so a cache of millions of samples opens quickly.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # key -> sample index -> (line number, byte offset, byte length, position in the line)
        self._entries: dict[str, dict[int, tuple[int, int, int, int]]] = {}
        self.duplicate_samples = 0
        self._lines = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _load(self) -> None:
        with self._locked():
            size = os.fstat(self._fd).st_size
            offset = 0
            for _, start, raw in scan_jsonl(self.path):
                if not raw.endswith(b"\n"):
                    log.warning("%s: dropping a torn last line (%d bytes, no newline)", self.path, len(raw))
                    break
                self._lines += 1
                self._index(raw, start)
                offset = start + len(raw)
            if offset < size:
                os.ftruncate(self._fd, offset)

    def _index(self, raw: bytes, offset: int) -> None:
        number = self._lines
        if not raw.strip():
            return
        match = _LINE_PREFIX.match(raw)
        if match:
            key = match.group(1).decode()
            indices = [int(x) for x in match.group(2).split(b",") if x.strip()]
        else:
            row = parse_jsonl_line(raw, path=self.path, line=number)
            try:
                key, indices = str(row["key"]), [int(i) for i in row["indices"]]
                if len(indices) != len(row["completions"]):
                    raise ValueError("indices and completions differ in length")
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"not a cache entry: {err!r}", path=self.path, line=number) from err
        slot = self._entries.setdefault(key, {})
        for position, index in enumerate(indices):
            if index in slot:
                self.duplicate_samples += 1
                continue
            slot[index] = (number, offset, len(raw), position)

    def _locked(self) -> _Flock:
        return _Flock(self._fd)

    def get(self, key: str) -> dict[int, Completion]:
        """The stored completions of `key` by sample index (read from the file)."""
        slot = self._entries.get(key)
        if not slot:
            return {}
        rows: dict[int, list[Any]] = {}
        found: dict[int, Completion] = {}
        for index, (number, offset, length, position) in slot.items():
            if offset not in rows:
                raw = os.pread(self._fd, length, offset)
                try:
                    rows[offset] = parse_jsonl_line(raw, path=self.path, line=number)["completions"]
                except KeyError as err:
                    raise DataError(f"not a cache entry: {err!r}", path=self.path, line=number) from err
            try:
                found[index] = Completion.from_json(rows[offset][position])
            except (IndexError, KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"completion {position} is malformed: {err}", path=self.path, line=number
                ) from err
        return found

    def indices(self, key: str) -> set[int]:
        """The sample indices stored for `key` (without reading them)."""
        return set(self._entries.get(key, ()))

    def put(
        self, key: str, indices: Sequence[int], completions: Sequence[Completion], problem_id: str = ""
    ) -> None:
        if len(indices) != len(completions):
            raise ValueError("indices and completions differ in length")
        if not completions:
            return
        row = {
            "key": key,
            "indices": [int(i) for i in indices],
            "problem_id": problem_id,
            "completions": [c.to_json() for c in completions],
        }
        line = encode_jsonl_line(row, allow_nan=False)
        with self._locked():
            offset = os.lseek(self._fd, 0, os.SEEK_END)
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
        self._lines += 1
        self._index(line, offset)

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._entries.values())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Flock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class CachedTeacher(Teacher):
    """Wrap any teacher: serve stored samples, ask the inner teacher only for missing sample indices.

    If 3 of n=8 samples of a prompt are stored, the inner teacher is asked for 5. Teachers that
    accept `first_sample=` (the local model) draw those 5 exactly as an uninterrupted run would; for
    others the seed (if any) is re-derived from the first missing index so that a seeded API does not
    return copies of the stored samples.
    """

    def __init__(self, inner: Teacher, cache_path: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.identity = teacher_identity(inner)
        self.cache = CompletionCache(cache_path)
        self._own_usage = UsageLedger()

    @property
    def usage(self) -> UsageLedger:
        inner_usage = getattr(self.inner, "usage", None)
        return inner_usage if isinstance(inner_usage, UsageLedger) else self._own_usage

    @property
    def answers_new_prompts(self) -> bool:  # type: ignore[override]
        return self.inner.answers_new_prompts

    def covers(self, problem_id: str) -> bool:
        return self.inner.covers(problem_id)

    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        # key -> the requests asking for it (duplicate prompts share samples and are asked once)
        waiting: dict[str, list[TeacherRequest]] = {}
        missing: dict[str, list[int]] = {}
        for request in requests:
            key = request_key(self.identity, request, params)
            if key in waiting:
                waiting[key].append(request)
                continue
            stored = self.cache.indices(key)
            absent = [i for i in range(params.n) if i not in stored]
            if not absent:
                have = self.cache.get(key)
                self.usage.record_cached(params.n)
                yield TeacherResponse(request, [have[i] for i in range(params.n)])
                continue
            waiting[key] = [request]
            missing[key] = absent

        indexed = bool(getattr(self.inner, "accepts_first_sample", False))
        # A backend that splits n over several calls (`max_n_per_call`) is asked one call's worth
        # at a time, so each call's samples are stored as it answers: a run killed between two
        # calls of one problem keeps the samples it already paid for.
        per_call = None if indexed else getattr(self.inner, "max_n_per_call", None)
        groups: dict[tuple[int, int], list[tuple[str, list[int]]]] = {}
        calls_left: dict[str, int] = {}
        for key, absent in missing.items():
            chunks = _chunks(absent, per_call if isinstance(per_call, int) and per_call > 0 else len(absent))
            calls_left[key] = len(chunks)
            for chunk in chunks:
                # One inner call per (count, first index): the count is the call's n.
                group = (len(chunk), 0 if indexed else chunk[0])
                groups.setdefault(group, []).append((key, chunk))

        for (count, first), entries in groups.items():
            chunk_of = dict(entries)
            call_requests = [waiting[key][0] for key, _ in entries]
            call_params = replace(params, n=count)
            if indexed:
                stream = self.inner.generate(  # type: ignore[call-arg]
                    call_requests, call_params, first_sample=[chunk[0] for _, chunk in entries]
                )
            else:
                if first and params.seed is not None:
                    call_params = replace(call_params, seed=stable_seed(params.seed, first))
                stream = self.inner.generate(call_requests, call_params)
            for response in stream:
                key = request_key(self.identity, response.request, params)
                if key not in chunk_of:
                    raise RuntimeError(f"teacher {self.name!r} answered a request it was not asked")
                chunk = chunk_of.pop(key)
                new = response.completions[: len(chunk)]
                self.cache.put(key, chunk[: len(new)], new, response.request.problem_id)
                calls_left[key] -= 1
                if calls_left[key]:
                    continue
                stored = self.cache.get(key)
                self.usage.record_cached(params.n - len(missing.pop(key)))
                ordered = [stored[i] for i in sorted(stored) if i < params.n]
                for request in waiting.pop(key):
                    yield TeacherResponse(request, list(ordered))

    def close(self) -> None:
        self.cache.close()
        self.inner.close()


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """The missing sample `indices` in pieces of at most `size`: what one call asks for."""
    return [list(indices[start : start + size]) for start in range(0, len(indices), size)]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def with_cache(teacher: Teacher, conf: dict[str, Any]) -> Teacher:
    """Wrap `teacher` in a CachedTeacher unless `cache: false`; `cache_path` defaults to
    `<cache dir>/teacher/<name>.jsonl`."""
    if not conf.get("cache", True):
        return teacher
    path = conf.get("cache_path")
    if not path:
        path = user_cache_dir() / "teacher" / f"{_UNSAFE.sub('_', teacher.name) or 'teacher'}.jsonl"
    return CachedTeacher(teacher, path)
