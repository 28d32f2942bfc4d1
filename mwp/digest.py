"""Content digests of files and folders: what identifies an input given by path, a stage output or an artifact."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def named_files(path: Path) -> list[tuple[str, Path]]:
    """A file as (its name, it), or a folder's files as (path relative to the folder, file), sorted."""
    if not path.is_dir():
        return [(path.name, path)]
    return [(str(f.relative_to(path)), f) for f in sorted(p for p in path.rglob("*") if p.is_file())]


def content_digest(files: Iterable[tuple[str, Path]]) -> str:
    """SHA-256 (hex) over (name, file) pairs: each name and the file's bytes, in the order given."""
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """The content hash of a file, or of a folder's files (names and bytes): for inputs given by path."""
    return content_digest(named_files(Path(path)))[:16]


def folder_stamp(path: Path) -> str:
    """A cheap identity of a large folder given by path (a trained student): names, sizes and mtimes."""
    path = Path(path)
    digest = hashlib.sha256(str(path.resolve()).encode())
    for name, file in named_files(path):
        stat = file.stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
