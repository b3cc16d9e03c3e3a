"""An output JSONL file made row by row from an input file's rows, resumable after a crash,
written by process 0 alone in a multi-host job.

::

    with ResumableOutput(out_path, in_path, inputs, fingerprint={...}, output_fields=(...)) as out:
        todo = [n for n in inputs if n not in out.done]      # the same on every process
        ...
        out.append(rows)                                     # process 0 writes and fsyncs

Each output row carries ``line``, the input line it was made from, and the input row's own
fields. Opening the file (on process 0; the others learn the outcome):

* a line cut off by a crash is dropped (:func:`~rmr1_jax.data.readers.repair_tail`);
* every row must be one of the input's rows (same line, same fields), else the file was written
  for another input: an error, never an overwrite;
* ``fingerprint`` says what produces the rows (the model, its tokenizer and template, the
  rules, the options that change a value). It is kept beside the output in
  ``<out>.fingerprint.json``; resuming with another fingerprint is an error naming what
  differs (keys only one of them has are not compared). An output without one (written before
  fingerprints were kept) is adopted.

Every failure reaches every process (:mod:`rmr1_jax.parallel.agreement`), so a multi-host job
stops together instead of waiting on the process that failed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Sequence

from rmr1_jax.data.readers import atomic_write_text, repair_tail
from rmr1_jax.errors import DataError
from rmr1_jax.parallel.agreement import on_process_zero


def fingerprint_path(out_path: str) -> str:
    return f"{out_path}.fingerprint.json"


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, on the keys both have (a key one lacks is not
    known there, e.g. the model of a library call that did not name it)."""
    keys = sorted(set(old) & set(new))
    return [f"{k} {old.get(k)!r:.60} -> {new.get(k)!r:.60}" for k in keys if old.get(k) != new.get(k)]


class JsonlAppender:
    """A JSONL file that process 0 appends to (``self._f``, opened by a subclass on process 0):
    :meth:`append` writes, flushes and fsyncs a batch of rows there, and every process learns
    whether that worked (a failure stops every process)."""

    _f = None

    def append(self, rows: Iterable[dict]) -> None:
        on_process_zero(self._write, list(rows), share=False)

    def _write(self, rows: list[dict]) -> None:
        self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ResumableOutput(JsonlAppender):
    """See the module docstring. ``inputs``: {input line number: input row}; ``output_fields``:
    the fields the job adds (an input field of the same name is replaced); ``check_row(row,
    where)`` may reject a done row further (raise DataError)."""

    def __init__(self, out_path: str, in_path: str, inputs: dict[int, dict], *, fingerprint: dict[str, Any],
                 output_fields: Sequence[str], check_row: Callable[[dict, str], None] | None = None):
        self.path, self.in_path = out_path, in_path
        self._fields = set(output_fields) | {"line"}
        self._f = None
        done = on_process_zero(self._open, inputs, dict(fingerprint), check_row)
        self.done: set[int] = set(done)

    def _kept(self, row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in self._fields}

    def _open(self, inputs, fingerprint, check_row) -> list[int]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        done = self._read_done(inputs, check_row) if os.path.exists(self.path) else []
        fp_path = fingerprint_path(self.path)
        if done and os.path.isfile(fp_path):
            with open(fp_path, encoding="utf-8") as f:
                try:
                    old = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{fp_path}: corrupt fingerprint ({e}); remove it to adopt {self.path}") from None
            diff = _differences(old, fingerprint)
            if diff:
                raise DataError(f"{self.path}: was written by another set-up ({'; '.join(diff)}); resume with the "
                                f"same one, or choose another output path")
        atomic_write_text(fp_path, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
        self._f = open(self.path, "a", encoding="utf-8")
        return sorted(done)

    def _read_done(self, inputs: dict[int, dict], check_row) -> list[int]:
        repair_tail(self.path)
        done = []
        with open(self.path, "rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{self.path}:{i}"
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise DataError(f"{where}: corrupt output line ({e})") from None
                line = row.get("line") if isinstance(row, dict) else None
                if not isinstance(line, int) or isinstance(line, bool):
                    raise DataError(f"{where}: output row has no integer 'line'; not an output of this command "
                                    f"(choose another output path)")
                if line not in inputs or self._kept(row) != self._kept(inputs[line]):
                    raise DataError(f"{where}: does not match {self.in_path}:{line}; the output file was written "
                                    f"for another input (choose another output path)")
                if check_row is not None:
                    check_row(row, where)
                done.append(line)
        return done
