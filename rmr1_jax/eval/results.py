"""Per-example results files: one JSON object per judged pair, appended as examples finish
(:class:`ResultsWriter`, fsynced per batch), so an interrupted run resumes where it stopped
(:func:`done_keys`); a half-written last line from an interrupted write is dropped on reopen.
The row format is described in :mod:`rmr1_jax.eval.scoring`."""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

from rmr1_jax.data.readers import repair_tail
from rmr1_jax.data.resumable import JsonlAppender
from rmr1_jax.errors import DataError
from rmr1_jax.eval.registry import canonical


def row_key(row: dict) -> tuple[str, int]:
    return (str(row["item_id"]), int(row["pair_index"]))


def _parse_lines(path: str) -> Iterable[tuple[int, dict]]:
    """(line number, row) of a results file. A last line cut off by an interrupted write (no
    newline and not valid JSON) is ignored; a bad line anywhere else is an error."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: results file not found")
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    last = len(lines) - 1  # the piece after the final newline ("" for a complete file)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if i == last:  # truncated tail of an interrupted run
                return
            raise DataError(f"{path}:{i + 1}: corrupt results line ({e})") from None
        if not isinstance(row, dict) or "item_id" not in row or "pair_index" not in row:
            raise DataError(f"{path}:{i + 1}: results row needs 'item_id' and 'pair_index'")
        yield i + 1, row


def read_results(path: str, benchmark: str | None = None) -> list[dict]:
    """The rows of a results file, one per ``(item_id, pair_index)`` (a later duplicate
    replaces an earlier one). With ``benchmark``, rows of another benchmark are an error."""
    want = canonical(benchmark) if benchmark else None
    rows: dict[tuple[str, int], dict] = {}
    for lineno, row in _parse_lines(path):
        if want is not None and row.get("benchmark") is not None and \
                canonical(row["benchmark"]) != want:
            raise DataError(f"{path}:{lineno}: row is from benchmark {row['benchmark']!r}, not {want!r}")
        row["_line"] = lineno
        rows[row_key(row)] = row
    return list(rows.values())


def done_keys(path: str, benchmark: str | None = None) -> set[tuple[str, int]]:
    """``(item_id, pair_index)`` of every finished example in ``path`` (empty if the file does
    not exist yet). A truncated last line from an interrupted run is not counted."""
    if not os.path.exists(path):
        return set()
    return {row_key(r) for r in read_results(path, benchmark)}


class ResultsWriter(JsonlAppender):
    """Appends result rows to a JSONL file, one line per finished example, flushed and
    fsynced after each :meth:`write` (one call per batch). ``done`` holds the keys already in
    the file, so a rerun can skip them; a line cut off by a crash is dropped on open.
    ``check(path)``, when given, vets an existing file before it is resumed (raise DataError).

    In a multi-host job process 0 alone reads and writes the file; every process gets its
    ``done`` set and the outcome of every write, so all of them skip the same examples and
    stop together when one fails (:mod:`rmr1_jax.parallel.agreement`)."""

    def __init__(self, path: str, benchmark: str | None = None, check: Callable[[str], None] | None = None):
        from rmr1_jax.parallel.agreement import on_process_zero

        self.path = path
        self.benchmark = canonical(benchmark) if benchmark else None
        self.done: set[tuple[str, int]] = {(str(k), int(i)) for k, i in on_process_zero(self._open, check)}

    def _open(self, check) -> list[list]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        repair_tail(self.path)
        if check is not None and os.path.exists(self.path):
            check(self.path)
        done = sorted(done_keys(self.path, self.benchmark))
        self._f = open(self.path, "a", encoding="utf-8")
        return [list(k) for k in done]

    def write(self, rows: Iterable[dict]) -> int:
        rows = list(rows)
        self.append(rows)
        self.done.update(row_key(r) for r in rows)
        return len(rows)


# ============================================================================ per-example value
