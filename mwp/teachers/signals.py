"""Per-token teacher distributions for distillation, and their compact on-disk form.

Two kinds of signal, one per kind of teacher:

* `DenseSignal` - full next-token logits `[L, V]` from a teacher that shares the student's
  vocabulary. Only ever held in memory for a batch.
* `SparseSignal` - per student target position, the teacher's top-k alternatives already mapped
  into student-vocabulary ids: `ids int32 [L, k]`, `logprobs float16 [L, k]`, `mask bool [L]`
  (positions that carry a distribution; the others fall back to plain cross-entropy). Unused slots
  hold id -1 and logprob -inf. `target_ids int32 [L]` optionally records the student tokens the
  signal was aligned to, so a batch can drop positions whose labels disagree (truncation, a
  different tokenizer).

`SignalStore` keeps sparse signals next to a distilled artifact as one `.safetensors` file (plain
tensors plus a row index, no pickles) and reads rows lazily from a memory map. `collate_sparse`
pads a batch to `[B, L, k]`; a sparse signal never becomes a `[B, L, V]` tensor.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

STORE_FORMAT = "mwp-sparse-signal"
STORE_VERSION = "1"
PAD_ID = -1
IGNORE_INDEX = -100


@dataclass(frozen=True)
class DenseSignal:
    """Teacher logits `[L, V]` over the student's own vocabulary."""

    logits: Tensor

    def __post_init__(self) -> None:
        if self.logits.dim() != 2 or not self.logits.is_floating_point():
            raise ValueError(
                f"DenseSignal.logits must be a float [L, V] tensor, got {tuple(self.logits.shape)}"
            )

    def __len__(self) -> int:
        return self.logits.shape[0]

    def to_sparse(self, k: int, target_ids: Tensor | None = None) -> SparseSignal:
        """Keep the top-k of each position (log-probabilities at temperature 1)."""
        if not 1 <= k <= self.logits.shape[1]:
            raise ValueError(f"k must be in [1, {self.logits.shape[1]}], got {k}")
        logprobs, ids = torch.log_softmax(self.logits.float(), dim=-1).topk(k, dim=-1)
        mask = torch.ones(len(self), dtype=torch.bool)
        return SparseSignal(ids=ids, logprobs=logprobs, mask=mask, target_ids=target_ids)


@dataclass(frozen=True)
class SparseSignal:
    """Teacher top-k per student target position, in student-vocabulary ids (see module doc)."""

    ids: Tensor
    logprobs: Tensor
    mask: Tensor
    target_ids: Tensor | None = None

    def __post_init__(self) -> None:
        ids, logprobs, mask = self.ids, self.logprobs, self.mask
        if ids.dim() != 2 or logprobs.shape != ids.shape:
            raise ValueError(
                f"SparseSignal ids and logprobs must both be [L, k]; got {tuple(ids.shape)} and {tuple(logprobs.shape)}"
            )
        if mask.shape != ids.shape[:1]:
            raise ValueError(f"SparseSignal.mask must be [L]={ids.shape[0]}, got {tuple(mask.shape)}")
        if self.target_ids is not None and self.target_ids.shape != ids.shape[:1]:
            raise ValueError(
                f"SparseSignal.target_ids must be [L]={ids.shape[0]}, got {tuple(self.target_ids.shape)}"
            )
        ids = ids.to(torch.int32)
        logprobs = logprobs.to(torch.float16)
        # One convention for unused slots whichever side marked them.
        unused = (ids < 0) | ~torch.isfinite(logprobs)
        if bool(unused.any()):
            ids = ids.masked_fill(unused, PAD_ID)
            logprobs = logprobs.masked_fill(unused, float("-inf"))
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "logprobs", logprobs)
        object.__setattr__(self, "mask", mask.to(torch.bool))
        if self.target_ids is not None:
            object.__setattr__(self, "target_ids", self.target_ids.to(torch.int32))

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def empty(cls, length: int, k: int = 1, target_ids: Tensor | None = None) -> SparseSignal:
        """A signal with no distribution anywhere (every position trains on cross-entropy only)."""
        return cls(
            ids=torch.full((length, k), PAD_ID, dtype=torch.int32),
            logprobs=torch.full((length, k), float("-inf"), dtype=torch.float16),
            mask=torch.zeros(length, dtype=torch.bool),
            target_ids=target_ids,
        )


def collate_sparse(
    signals: Sequence[SparseSignal],
    target_len: int,
    *,
    labels: Tensor | None = None,
    k: int | None = None,
) -> dict[str, Tensor]:
    """Pad (or cut) a batch of sparse signals to `[B, target_len, k]`.

    Returns `teacher_ids` int32, `teacher_logprobs` float16 (compact; the losses upcast) and
    `teacher_mask` bool `[B, target_len]`. With `labels` (`[B, target_len]`, -100 = padding), a
    position keeps its distribution only where the label is real and, when the signal recorded its
    `target_ids`, equals the token the signal was aligned to (so a truncated target, whose last
    label became EOS, or a differently tokenized one, falls back to cross-entropy there).
    """
    if target_len < 0:
        raise ValueError(f"target_len must be >= 0, got {target_len}")
    batch = len(signals)
    width = max(k if k is not None else 0, max((s.k for s in signals), default=1), 1)
    if k is not None and any(s.k > k for s in signals):
        raise ValueError(f"a signal has more than k={k} slots; pass a larger k or none")
    ids = torch.full((batch, target_len, width), PAD_ID, dtype=torch.int32)
    logprobs = torch.full((batch, target_len, width), float("-inf"), dtype=torch.float16)
    mask = torch.zeros((batch, target_len), dtype=torch.bool)
    aligned_to = torch.full((batch, target_len), PAD_ID, dtype=torch.int64)
    has_targets = torch.zeros(batch, dtype=torch.bool)
    for row, signal in enumerate(signals):
        n = min(len(signal), target_len)
        ids[row, :n, : signal.k] = signal.ids[:n]
        logprobs[row, :n, : signal.k] = signal.logprobs[:n]
        mask[row, :n] = signal.mask[:n]
        if signal.target_ids is not None:
            aligned_to[row, :n] = signal.target_ids[:n].to(torch.int64)
            has_targets[row] = True
    if labels is not None:
        if labels.shape != (batch, target_len):
            raise ValueError(f"labels must be [{batch}, {target_len}], got {tuple(labels.shape)}")
        agrees = labels == aligned_to
        mask &= (labels != IGNORE_INDEX) & (agrees | ~has_targets[:, None])
    return {"teacher_ids": ids, "teacher_logprobs": logprobs, "teacher_mask": mask}


# --- storage -----------------------------------------------------------------------------------

_DTYPES = {"I32": np.int32, "I64": np.int64, "F16": np.float16, "BOOL": np.bool_}
# Tensor name -> safetensors dtype; written in this order so each tensor's start stays aligned.
_LAYOUT = (("offsets", "I64"), ("ids", "I32"), ("target_ids", "I32"), ("logprobs", "F16"), ("mask", "BOOL"))


class SignalStoreError(ValueError):
    """A signal file is missing, malformed, or does not match what was asked of it."""


class SignalStore:
    """Sparse signals of one artifact in one `.safetensors` file, read row by row from a memory map.

    Tensors: `ids int32 [N, k]`, `logprobs float16 [N, k]`, `mask bool [N]`, `target_ids int32 [N]`
    (-1 where not recorded) over all N positions of all rows, and `offsets int64 [R + 1]`: row r
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
        if meta.get("version") != STORE_VERSION:
            raise SignalStoreError(f"{self.path}: version {meta.get('version')!r} is not supported")
        names = set(handle.keys())
        missing = {name for name, _ in _LAYOUT} - names
        if missing:
            raise SignalStoreError(f"{self.path}: missing tensors {sorted(missing)}")
        offsets = handle.get_tensor("offsets")
        n_pos, k = handle.get_slice("ids").get_shape()
        shapes_ok = (
            handle.get_slice("logprobs").get_shape() == [n_pos, k]
            and handle.get_slice("mask").get_shape() == [n_pos]
            and handle.get_slice("target_ids").get_shape() == [n_pos]
            and offsets.dim() == 1
            and len(offsets) >= 1
        )
        if not shapes_ok:
            raise SignalStoreError(f"{self.path}: tensor shapes disagree with each other")
        if int(offsets[0]) != 0 or int(offsets[-1]) != n_pos or bool((offsets[1:] < offsets[:-1]).any()):
            raise SignalStoreError(f"{self.path}: row offsets do not cover the {n_pos} positions in order")
        self._file = handle
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
                    logprobs = np.full((n, k), -np.inf, dtype=np.float16)
                    logprobs[:, : row.k] = row.logprobs.numpy()
                    targets = (
                        row.target_ids.numpy() if row.target_ids is not None else np.full(n, PAD_ID, np.int32)
                    )
                    parts["ids"].write(ids.tobytes())
                    parts["logprobs"].write(logprobs.tobytes())
                    parts["mask"].write(row.mask.numpy().astype(np.bool_).tobytes())
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
