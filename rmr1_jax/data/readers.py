"""Readers for JSONL and Parquet record files, with errors that name the file and line.

``read_records(path, parse, on_error)`` yields parsed records. With ``on_error="raise"`` the
first bad row raises :class:`DataError` ("``file:line: what is wrong``"); with ``"skip"`` bad
rows are counted by reason in the returned :class:`ReadStats` and reading goes on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
from typing import Callable, Iterator, TypeVar

from rmr1_jax.errors import DataError

T = TypeVar("T")


@dataclasses.dataclass
class ReadStats:
    read: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.read} records read, none skipped"
        reasons = ", ".join(f"{n} x {r}" for r, n in self.skipped.most_common())
        return f"{self.read} records read, {self.num_skipped} skipped ({reasons})"

    def merge(self, other: "ReadStats") -> None:
        self.read += other.read
        self.skipped.update(other.skipped)


def iter_rows(path: str) -> Iterator[tuple[int, dict | Exception]]:
    """(line number, row dict or the decode error) for every non-blank row of a JSONL or
    Parquet file. Parquet rows are numbered from 1 like lines."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: unreadable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, DataError(f"not valid UTF-8 (byte {e.start})")
                continue
            if line.strip():
                yield lineno, parse_json_line(line)


def parse_json_line(line: str) -> dict | DataError:
    """One JSON Lines row: the object, or the error that says why it is not one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return DataError(f"invalid JSON ({e.msg} at column {e.colno})")
    return row if isinstance(row, dict) else DataError("row is not a JSON object")


def read_records(path: str, parse: Callable[[dict, str], T], on_error: str = "raise",
                 stats: ReadStats | None = None) -> Iterator[T]:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = stats if stats is not None else ReadStats()
    base = os.path.basename(path)
    for lineno, row in iter_rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            rec = parse(row, f"{base}:{lineno}")
        except DataError as e:
            if on_error == "raise":
                raise DataError(f"{path}:{lineno}: {e}") from None
            stats.skipped[_reason(str(e))] += 1
            continue
        stats.read += 1
        yield rec


def _reason(msg: str) -> str:
    """Short reason key for skip counts: the message up to its first quoted value."""
    return msg.split(" (")[0][:80]


@contextlib.contextmanager
def atomic_open(path: str):
    """Open ``path`` for writing text through a temporary file renamed over it on success: a
    reader never sees a half-written file, and a failed write leaves the old one in place."""
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_jsonl(path: str, rows) -> int:
    """Write rows atomically (temporary file, then rename). Returns the row count."""
    n = 0
    with atomic_open(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


@dataclasses.dataclass
class FileStats:
    """What a resumable file job did: rows in its input, rows already in its output, rows
    written by this run."""

    total: int = 0
    skipped: int = 0
    written: int = 0


def repair_tail(path: str) -> None:
    """Make a JSONL file end at a line boundary before appending: drop a cut-off last line (a
    crash mid-write), or terminate a complete one that merely lacks its newline."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:].decode("utf-8"))
            f.write(b"\n")
        except (UnicodeDecodeError, json.JSONDecodeError):
            f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
