"""Per-example results files: one JSON object per judged pair (or scored RewardBench 2 prompt),
keyed by ``(item_id, pair_index)``, appended as examples finish through
:class:`ResultsWriter`, the package's one resumable JSONL writer
(:class:`~rmr1_jax.data.resumable.ResumableJsonl`: fsynced per batch, a line cut off by a crash
dropped on reopen, the fingerprint of what produced the file kept beside it), so an
interrupted run resumes where it stopped. Read back with :func:`read_results` (a cut-off last
line is left out). The row format is described in :mod:`rmr1_jax.eval.scoring`."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from rmr1_jax.data.readers import read_rows
from rmr1_jax.data.resumable import ResumableJsonl
from rmr1_jax.errors import DataError
from rmr1_jax.eval.registry import canonical


def row_key(row: dict) -> tuple[str, int]:
    return (str(row["item_id"]), int(row["pair_index"]))


def _checked(row: dict, where: str, benchmark: str | None) -> dict:
    """A results row: it has ``item_id`` and ``pair_index``, and (with ``benchmark``) is not
    another benchmark's."""
    if "item_id" not in row or "pair_index" not in row:
        raise DataError(f"{where}: results row needs 'item_id' and 'pair_index'")
    if benchmark is not None and row.get("benchmark") is not None and canonical(row["benchmark"]) != benchmark:
        raise DataError(f"{where}: row is from benchmark {row['benchmark']!r}, not {benchmark!r}")
    return row


def read_results(path: str, benchmark: str | None = None) -> list[dict]:
    """The rows of a results file, one per ``(item_id, pair_index)`` (a later duplicate
    replaces an earlier one), each with its line number as ``_line``. A last line cut off by an
    interrupted write is left out; a bad line anywhere else is an error naming it. With
    ``benchmark``, rows of another benchmark are an error."""
    want = canonical(benchmark) if benchmark else None
    rows: dict[tuple[str, int], dict] = {}
    for lineno, row in read_rows(path, what="results file", cut_tail=True):
        row = _checked(row, f"{path}:{lineno}", want)
        row["_line"] = lineno
        rows[row_key(row)] = row
    return list(rows.values())


def done_keys(path: str, benchmark: str | None = None) -> set[tuple[str, int]]:
    """``(item_id, pair_index)`` of every finished example in ``path`` (empty if the file does
    not exist yet). A truncated last line from an interrupted run is not counted."""
    if not os.path.exists(path):
        return set()
    return {row_key(r) for r in read_results(path, benchmark)}


class ResultsWriter(ResumableJsonl):
    """Appends result rows to a JSONL file, one line per finished example, flushed and fsynced
    after each :meth:`write` (one call per batch). ``done`` holds the keys already in the file,
    so a rerun can skip them. ``benchmark``: rows of another benchmark in the file are an
    error; ``check_row(row, where)`` may reject a done row further (raise DataError);
    ``fingerprint``: what produces the rows (see :mod:`rmr1_jax.data.resumable`).

    In a multi-host job process 0 alone reads and writes the file; every process gets its
    ``done`` set and the outcome of every write, so all of them skip the same examples and
    stop together when one fails (:mod:`rmr1_jax.parallel.agreement`)."""

    def __init__(self, path: str, benchmark: str | None = None, *,
                 check_row: Callable[[dict, str], None] | None = None, fingerprint: dict[str, Any] | None = None):
        self.benchmark = canonical(benchmark) if benchmark else None

        def key(row: dict, where: str) -> list:
            _checked(row, where, self.benchmark)
            if check_row is not None:
                check_row(row, where)
            return list(row_key(row))

        super().__init__(path, key=key, fingerprint=fingerprint, what="results file")

    def write(self, rows: Iterable[dict]) -> int:
        rows = list(rows)
        self.append(rows)
        self.done.update(row_key(r) for r in rows)
        return len(rows)
