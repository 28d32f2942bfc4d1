"""Read what an offline W&B run wrote: the records of its `run-<id>.wandb` file.

The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of checksummed chunks), each
complete chunk sequence one protobuf `Record`; this is what `wandb sync` replays.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, out, pending = _HEADER, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


@dataclass
class OfflineRun:
    """One offline run folder (`<save_dir>/wandb/offline-run-<time>-<id>`), read back."""

    folder: Path
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # (type, name, metadata, {file: "ref" or "file"}, used) per artifact record
    artifacts: list[tuple[str, str, dict[str, Any], dict[str, str], bool]] = field(default_factory=list)
    exit_code: int | None = None

    @classmethod
    def read(cls, folder: Path) -> OfflineRun:
        (wandb_file,) = folder.glob("run-*.wandb")
        run = cls(folder)
        for record in records(wandb_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
                run.tags = list(r.tags)
                run.config.update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "config":
                run.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                run.history.append(
                    {
                        i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json)
                        for i in record.history.item
                    }
                )
            elif kind == "artifact":
                a = record.artifact
                files = {c.path: ("ref" if c.ref else "file") for c in a.manifest.contents}
                run.artifacts.append(
                    (a.type, a.name, json.loads(a.metadata or "{}"), files, a.use_after_commit)
                )
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run


def offline_runs(save_dir: Path) -> list[OfflineRun]:
    """Every offline run under `save_dir/wandb`, oldest first."""
    return [OfflineRun.read(f) for f in sorted((save_dir / "wandb").glob("offline-run-*"))]


def finished_runs(save_dir: Path, count: int, timeout_s: float = 60.0) -> list[OfflineRun]:
    """The offline runs under `save_dir`, once `count` of them hold their exit record: W&B's
    writer process may still be flushing the file when `wandb.finish()` has returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = offline_runs(save_dir)
        if sum(r.exit_code is not None for r in runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)
