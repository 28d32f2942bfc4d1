"""JSON and JSON-lines files: strict reading with file:line errors, atomic writes, resumable appends."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO

log = logging.getLogger(__name__)

# Reading the tail of a file backwards in blocks of this size, to find its last line.
_TAIL_BLOCK = 64 * 1024


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and the line, row or field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.index = index
        self.field = field
        super().__init__(_locate(message, self.path, line, index, field))


def _locate(message: str, path: Path | None, line: int | None, index: int | None, field: str | None) -> str:
    where = str(path) if path is not None else ""
    if line is not None:
        where += f":{line}"
    if index is not None:
        where += f" [row {index}]"
    if field is not None:
        where += f" field {field!r}"
    return f"{where.strip()}: {message}" if where else message


def read_jsonl(path: str | Path, *, skip_partial_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSON-lines file, one per non-blank line (1-based lines in errors).

    `skip_partial_tail=True` tolerates a final line cut short by an interrupted `append_jsonl`
    (no trailing newline and not valid JSON): it is logged and skipped instead of raising.
    """
    for _, row in read_jsonl_lines(path, skip_partial_tail=skip_partial_tail):
        yield row


def read_jsonl_lines(
    path: str | Path, *, skip_partial_tail: bool = False, max_line_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Like `read_jsonl`, yielding `(line_number, row)` so callers can name the line in their own errors.

    `max_line_bytes`: a longer line is a DataError naming it, and is never read whole into memory.
    """
    path = Path(path)
    for line_no, _, raw in scan_jsonl(path, max_line_bytes=max_line_bytes):
        if not raw.strip():
            continue
        if raw.endswith(b"\n") or not skip_partial_tail:
            yield line_no, parse_jsonl_line(raw, path=path, line=line_no)
            continue
        try:  # only the last line can lack its newline
            row = parse_jsonl_line(raw, path=path, line=line_no)
        except DataError:
            log.warning("%s:%d: skipping an incomplete last row (%d bytes)", path, line_no, len(raw))
            return
        yield line_no, row


def read_complete_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON-lines file that another process may still be appending to (or was killed writing).

    A row counts only once its newline is written, so a last line without one is ignored (with a
    warning) even if it parses. Returns (rows, byte offset just past the last complete line); a bad
    complete line is corruption, not a crash, and raises a DataError naming the file and line.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    complete_end = 0
    for line_no, offset, raw in scan_jsonl(path):
        if not raw.endswith(b"\n"):
            log.warning("%s: ignoring a torn last line (%d bytes without a newline)", path, len(raw))
            break
        complete_end = offset + len(raw)
        if raw.strip():
            rows.append(parse_jsonl_line(raw, path=path, line=line_no))
    return rows, complete_end


def scan_jsonl(path: str | Path, *, max_line_bytes: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """`(line number, byte offset, raw line)` for every line of `path`, newline included where written.

    Bytes, not text: offsets stay exact (the completion cache indexes them), and a file that is not
    UTF-8 fails in `parse_jsonl_line` with its name and line instead of a bare UnicodeDecodeError.
    With `max_line_bytes`, a longer line raises a DataError after reading at most that much of it.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    with handle:
        offset = 0
        if max_line_bytes is None:
            lines: Iterator[bytes] = iter(handle)
        else:
            lines = iter(lambda: handle.readline(max_line_bytes + 1), b"")
        for line_no, raw in enumerate(lines, start=1):
            if max_line_bytes is not None and len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise DataError(
                    f"line longer than {max_line_bytes:,} bytes; not read", path=path, line=line_no
                )
            yield line_no, offset, raw
            offset += len(raw)


def text_lines(path: str | Path, *, max_line_bytes: int) -> Iterator[str]:
    """The lines of a UTF-8 text file (a CSV), newline included; a line that is not UTF-8 or longer
    than `max_line_bytes` is a DataError naming the file and line. A leading byte-order mark is dropped."""
    for line_no, _, raw in scan_jsonl(path, max_line_bytes=max_line_bytes):
        if line_no == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"not UTF-8 text (byte {err.start} of the line)", path=path, line=line_no
            ) from None


def parse_jsonl_line(
    raw: bytes | str, *, path: str | Path | None = None, line: int | None = None
) -> dict[str, Any]:
    """One JSON-lines row as a dict; any defect (encoding, syntax, not an object) is a DataError at path:line."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"not UTF-8 text (byte {err.start} of the line); is this a JSON-lines file?",
                path=path,
                line=line,
            ) from None
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON ({err.msg} at column {err.colno})", path=path, line=line) from None
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=line)
    return row


def read_json(path: str | Path) -> Any:
    """Load one JSON document; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start}); is this a JSON file?", path=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"malformed JSON ({err.msg} at column {err.colno})", path=path, line=err.lineno
        ) from None


def encode_jsonl_line(row: Any, *, allow_nan: bool = True) -> bytes:
    """One row as the UTF-8 bytes of a JSON line, newline included: what every writer here appends."""
    return (_dump_row(row, allow_nan=allow_nan) + "\n").encode("utf-8")


def _dump_row(row: Any, *, allow_nan: bool = True) -> str:
    if not isinstance(row, dict):
        raise TypeError(f"a JSON-lines row must be a dict, got {type(row).__name__}")
    return json.dumps(row, ensure_ascii=False, allow_nan=allow_nan)


def _write_atomically(path: Path, write: Callable[[TextIO], Any]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`.

    On any error the temporary file is removed and an existing `path` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); keep the replaced file's mode, else a plain 0644.
        os.chmod(tmp_name, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write `rows` as JSON lines, replacing `path` atomically; returns the number of rows."""
    count = 0

    def write(handle: TextIO) -> None:
        nonlocal count
        for row in rows:
            handle.write(_dump_row(row) + "\n")
            count += 1

    _write_atomically(Path(path), write)
    return count


def write_json(path: str | Path, value: Any, *, indent: int | None = 2) -> None:
    """Write one JSON document, replacing `path` atomically."""
    _write_atomically(
        Path(path), lambda handle: handle.write(json.dumps(value, ensure_ascii=False, indent=indent) + "\n")
    )


def append_jsonl(path: str | Path, row: dict[str, Any], *, fsync: bool = False) -> None:
    """Append one row and flush it, so a killed run keeps every row it finished.

    A last line left incomplete by an earlier crash (no newline, not valid JSON) is cut off first,
    with a warning; a complete last line that merely lacks its newline gets one.
    """
    path = Path(path)
    line = _dump_row(row) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path), path.open("a+b") as handle:
        _repair_tail(path, handle)
        handle.write(line.encode("utf-8"))
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A failed write (a full disk, a file-size limit) names the file it was writing."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _repair_tail(path: Path, handle: BinaryIO) -> None:
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    start = _last_line_start(handle, size)
    handle.seek(start)
    tail = handle.read(size - start)
    try:
        json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        log.warning("%s: cutting an incomplete last row (%d bytes) before appending", path, len(tail))
        handle.truncate(start)
    else:
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n")
    handle.seek(0, os.SEEK_END)


def _last_line_start(handle: BinaryIO, size: int) -> int:
    end = size
    while end > 0:
        begin = max(0, end - _TAIL_BLOCK)
        handle.seek(begin)
        block = handle.read(end - begin)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return begin + cut + 1
        end = begin
    return 0
