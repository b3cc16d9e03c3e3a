"""The one way the package reads and writes its JSONL (and Parquet) row files, with errors that
name the file and line.

* :func:`read_rows` yields ``(line, row)`` and stops at the first bad row with a
  :class:`DataError` ("``file:line: what is wrong``"); :func:`iter_rows` yields the error in
  the row's place instead, and :func:`read_records` parses rows, raising or skipping bad ones
  (counted by reason in a :class:`ReadStats`).
* A file that is appended to (results, scores) may end in a line cut off by a crash:
  readers skip it (``cut_tail``), :func:`repair_tail` drops it before the next append
  (:mod:`rmr1_jax.data.resumable` resumes such files).
* :func:`atomic_open` / :func:`atomic_write_text` / :func:`write_jsonl` write a whole file
  through a temporary file renamed over it: a reader never sees half of it.
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


def iter_rows(path: str, *, what: str = "file", cut_tail: bool = False) -> Iterator[tuple[int, dict | DataError]]:
    """(line number, row dict or the error that says why the line is not one) for every
    non-blank row of a JSONL or Parquet file; Parquet rows are numbered from 1 like lines.
    ``what`` names the file in the error when it is missing. With ``cut_tail`` a last line
    that lacks its newline and is not a JSON object (a write cut off by a crash) is left out."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")
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
                row: dict | DataError = DataError(f"not valid UTF-8 (byte {e.start})")
            else:
                if not line.strip():
                    continue
                row = parse_json_line(line)
            if isinstance(row, DataError) and cut_tail and not raw.endswith(b"\n"):
                return
            yield lineno, row


def read_rows(path: str, *, what: str = "file", cut_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every non-blank row of a JSONL or Parquet file (see
    :func:`iter_rows`); the first row that is not a JSON object raises a :class:`DataError`
    naming ``file:line``."""
    for lineno, row in iter_rows(path, what=what, cut_tail=cut_tail):
        if isinstance(row, DataError):
            raise DataError(f"{path}:{lineno}: {row}")
        yield lineno, row


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
    reader never sees a half-written file, and a failed write leaves the old one in place. A
    missing parent directory is created."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
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
