"""Sparse signals of one artifact on disk: one `.safetensors` file, read row by row from a memory map.

Plain tensors plus a row index (no pickles), so any safetensors reader can inspect the file. Logprobs
are stored as float32: what the losses read back is exactly what alignment produced, so an identical
student and teacher still give a KL below 1e-6 through the store (float16 left ~2e-4).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mwp.signals.types import PAD_ID, SparseSignal

STORE_FORMAT = "mwp-sparse-signal"
# Version 3 adds `in_vocab` (which slots the student's vocabulary shares); version 2 files (every
# slot shared) are still read. Version 1 stored float16 logprobs; such a file is rebuilt, not read.
STORE_VERSION = "3"
_READABLE_VERSIONS = ("2", STORE_VERSION)


_DTYPES = {"I32": np.int32, "I64": np.int64, "F32": np.float32, "BOOL": np.bool_}
# Tensor name -> safetensors dtype; written in this order so each tensor's start stays aligned.
_LAYOUT = (
    ("offsets", "I64"),
    ("ids", "I32"),
    ("target_ids", "I32"),
    ("logprobs", "F32"),
    ("mask", "BOOL"),
    ("in_vocab", "BOOL"),
)
_OPTIONAL = {"in_vocab"}  # absent from version 2 files


class SignalStoreError(ValueError):
    """A signal file is missing, malformed, or does not match what was asked of it."""


class SignalStore:
    """Sparse signals of one artifact in one `.safetensors` file, read row by row from a memory map.

    Tensors: `ids int32 [N, k]`, `logprobs float32 [N, k]`, `mask bool [N]`, `target_ids int32 [N]`
    (-1 where not recorded), `in_vocab bool [N, k]` (shared slots; every valid one where a row did
    not mark them) over all N positions of all rows, and `offsets int64 [R + 1]`: row r
    spans positions `offsets[r]:offsets[r + 1]`. Metadata: format, version, k, rows, plus the
    caller's string metadata (teacher, student tokenizer, coverage, ...).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: Any = None
        self._open()

    def _open(self) -> None:
        from safetensors import safe_open

        if not self.path.is_file():
            raise SignalStoreError(f"{self.path}: no such signal file")
        try:
            handle = safe_open(str(self.path), framework="pt")
        except Exception as err:  # the library raises its own error types for a corrupt header
            raise SignalStoreError(f"{self.path}: not a readable safetensors file ({err})") from err
        meta = handle.metadata() or {}
        if meta.get("format") != STORE_FORMAT:
            raise SignalStoreError(
                f"{self.path}: format is {meta.get('format')!r}, expected {STORE_FORMAT!r}"
            )
        if meta.get("version") not in _READABLE_VERSIONS:
            raise SignalStoreError(f"{self.path}: version {meta.get('version')!r} is not supported")
        names = set(handle.keys())
        missing = {name for name, _ in _LAYOUT} - names - _OPTIONAL
        if missing:
            raise SignalStoreError(f"{self.path}: missing tensors {sorted(missing)}")
        offsets = handle.get_tensor("offsets")
        n_pos, k = handle.get_slice("ids").get_shape()
        shapes_ok = (
            handle.get_slice("logprobs").get_shape() == [n_pos, k]
            and handle.get_slice("mask").get_shape() == [n_pos]
            and handle.get_slice("target_ids").get_shape() == [n_pos]
            and ("in_vocab" not in names or handle.get_slice("in_vocab").get_shape() == [n_pos, k])
            and offsets.dim() == 1
            and len(offsets) >= 1
        )
        if not shapes_ok:
            raise SignalStoreError(f"{self.path}: tensor shapes disagree with each other")
        if int(offsets[0]) != 0 or int(offsets[-1]) != n_pos or bool((offsets[1:] < offsets[:-1]).any()):
            raise SignalStoreError(f"{self.path}: row offsets do not cover the {n_pos} positions in order")
        self._file = handle
        self._has_in_vocab = "in_vocab" in names
        self._offsets = offsets
        self.k = int(k)
        self.metadata: dict[str, str] = dict(meta)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> SparseSignal:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.path}: row {index} out of range ({n} rows)")
        index %= n
        if self._file is None:
            self._open()
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        with_targets = self.metadata.get("target_ids") == "1"
        return SparseSignal(
            ids=self._file.get_slice("ids")[start:stop],
            logprobs=self._file.get_slice("logprobs")[start:stop],
            mask=self._file.get_slice("mask")[start:stop],
            target_ids=self._file.get_slice("target_ids")[start:stop] if with_targets else None,
            in_vocab=self._file.get_slice("in_vocab")[start:stop] if self._has_in_vocab else None,
        )

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen the memory map themselves.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._file = None
        self._open()

    @staticmethod
    def write(
        path: str | Path,
        rows: Iterable[SparseSignal],
        *,
        k: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Write rows to `path` atomically (a crash leaves any earlier file intact).

        With `k` the rows stream through temporary files (bounded memory; a row wider than `k`
        is an error); without it they are gathered first to find the widest.
        """
        path = Path(path)
        if k is None:
            rows = list(rows)
            k = max((r.k for r in rows), default=1)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        reserved = {"format", "version", "k", "rows", "target_ids"}
        clash = reserved & set(metadata or {})
        if clash:
            raise ValueError(f"metadata keys {sorted(clash)} are reserved")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            parts = {name: open(Path(tmp) / name, "wb") for name, _ in _LAYOUT if name != "offsets"}  # noqa: SIM115
            offsets = [0]
            with_targets: bool | None = None
            try:
                for number, row in enumerate(rows):
                    if row.k > k:
                        raise ValueError(f"row {number} has {row.k} slots, more than k={k}")
                    if with_targets is None:
                        with_targets = row.target_ids is not None
                    elif with_targets != (row.target_ids is not None):
                        raise ValueError(f"row {number}: either every row records target_ids or none does")
                    n = len(row)
                    ids = np.full((n, k), PAD_ID, dtype=np.int32)
                    ids[:, : row.k] = row.ids.numpy()
                    logprobs = np.full((n, k), -np.inf, dtype=np.float32)
                    logprobs[:, : row.k] = row.logprobs.numpy()
                    targets = (
                        row.target_ids.numpy() if row.target_ids is not None else np.full(n, PAD_ID, np.int32)
                    )
                    parts["ids"].write(ids.tobytes())
                    parts["logprobs"].write(logprobs.tobytes())
                    parts["mask"].write(row.mask.numpy().astype(np.bool_).tobytes())
                    in_vocab = np.zeros((n, k), dtype=np.bool_)
                    in_vocab[:, : row.k] = (
                        row.in_vocab if row.in_vocab is not None else row.ids >= 0
                    ).numpy()
                    parts["in_vocab"].write(in_vocab.tobytes())
                    parts["target_ids"].write(targets.astype(np.int32).tobytes())
                    offsets.append(offsets[-1] + n)
            finally:
                for handle in parts.values():
                    handle.close()
            n_pos = offsets[-1]
            shapes = {
                "offsets": [len(offsets)],
                "ids": [n_pos, k],
                "target_ids": [n_pos],
                "logprobs": [n_pos, k],
                "mask": [n_pos],
                "in_vocab": [n_pos, k],
            }
            meta = {
                **dict(metadata or {}),
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "k": str(k),
                "rows": str(len(offsets) - 1),
                "target_ids": "1" if with_targets else "0",
            }
            header: dict[str, Any] = {"__metadata__": meta}
            start = 0
            for name, dtype in _LAYOUT:
                size = int(np.prod(shapes[name])) * np.dtype(_DTYPES[dtype]).itemsize
                header[name] = {"dtype": dtype, "shape": shapes[name], "data_offsets": [start, start + size]}
                start += size
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)
            staging = Path(tmp) / "store.safetensors"
            with open(staging, "wb") as out:
                out.write(struct.pack("<Q", len(encoded)))
                out.write(encoded)
                out.write(np.asarray(offsets, dtype=np.int64).tobytes())
                for name, _ in _LAYOUT[1:]:
                    with open(Path(tmp) / name, "rb") as part:
                        while chunk := part.read(1 << 22):
                            out.write(chunk)
            os.replace(staging, path)
        return path
