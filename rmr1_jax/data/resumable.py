"""The one way the package writes a JSONL file row by row so that a rerun resumes it after a
crash, written by process 0 alone in a multi-host job: per-input-row outputs (``score-rm``,
``rules score``: :class:`ResumableOutput`) and benchmark results (``rmr1 eval``, RewardBench 2:
:class:`rmr1_jax.eval.results.ResultsWriter`) are both a :class:`ResumableJsonl`.

::

    with ResumableJsonl(path, key=lambda row, where: row["id"], fingerprint={...}) as out:
        todo = [x for x in items if x.id not in out.done]    # the same on every process
        ...
        out.append(rows)                                     # process 0 writes, flushes, fsyncs

Opening the file (on process 0; the others learn the outcome):

* a line cut off by a crash is dropped (:func:`~rmr1_jax.data.readers.repair_tail`);
* every row is read (:func:`~rmr1_jax.data.readers.read_rows`: a bad line is an error naming
  ``file:line``) and given to ``key(row, "file:line")``, which returns the row's key (``done``
  holds them) or raises a DataError when the row does not belong there (another input, another
  benchmark): an error, never an overwrite;
* ``fingerprint`` says what produces the rows (the model, its tokenizer and templates, the
  rules, the options that change a value). It is kept beside the file in
  ``<path>.fingerprint.json``; resuming with another fingerprint is an error naming what
  differs (keys only one of them has are not compared). A file without one (written before
  fingerprints were kept) is adopted; ``fingerprint=None`` (not known) checks and keeps nothing.

Every failure reaches every process (:mod:`rmr1_jax.parallel.agreement`), so a multi-host job
stops together instead of waiting on the process that failed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Hashable, Iterable, Sequence

from rmr1_jax.data.readers import atomic_write_text, read_rows, repair_tail
from rmr1_jax.errors import DataError
from rmr1_jax.parallel.agreement import on_process_zero


def fingerprint_path(path: str) -> str:
    return f"{path}.fingerprint.json"


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, on the keys both have (a key one lacks is not
    known there, e.g. the model of a library call that did not name it)."""
    keys = sorted(set(old) & set(new))
    return [f"{k} {old.get(k)!r:.60} -> {new.get(k)!r:.60}" for k in keys if old.get(k) != new.get(k)]


def _hashable(key):
    """A key back from JSON (every process gets process 0's keys so): lists become tuples."""
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


class ResumableJsonl:
    """See the module docstring. ``key(row, where)``: a done row's key (JSON-serializable), or a
    DataError naming ``where``; ``what`` names the file in errors ("output file", "results
    file")."""

    def __init__(self, path: str, *, key: Callable[[dict, str], Hashable], fingerprint: dict[str, Any] | None = None,
                 what: str = "output file"):
        self.path, self.what = path, what
        self._f = None
        done = on_process_zero(self._open, key, None if fingerprint is None else dict(fingerprint))
        self.done: set = {_hashable(k) for k in done}

    def _open(self, key, fingerprint) -> list:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        done = []
        if os.path.exists(self.path):
            repair_tail(self.path)
            done = [key(row, f"{self.path}:{n}") for n, row in read_rows(self.path, what=self.what)]
        if fingerprint is not None:
            self._check_fingerprint(fingerprint, bool(done))
        self._f = open(self.path, "a", encoding="utf-8")
        return done

    def _check_fingerprint(self, fingerprint: dict, resuming: bool) -> None:
        fp_path = fingerprint_path(self.path)
        if resuming and os.path.isfile(fp_path):
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

    def append(self, rows: Iterable[dict]) -> None:
        """Write ``rows`` at the end of the file, flushed and fsynced, on process 0; every process
        learns whether that worked (a failure stops every process)."""
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


class ResumableOutput(ResumableJsonl):
    """An output file made row by row from an input file's rows: each output row carries
    ``line``, the input line it was made from, and the input row's own fields, so a done row
    must be one of the input's rows (same line, same fields), else the file was written for
    another input. ``inputs``: {input line number: input row}; ``output_fields``: the fields
    the job adds (an input field of the same name is replaced); ``check_row(row, where)`` may
    reject a done row further (raise DataError)."""

    def __init__(self, out_path: str, in_path: str, inputs: dict[int, dict], *, fingerprint: dict[str, Any],
                 output_fields: Sequence[str], check_row: Callable[[dict, str], None] | None = None):
        self.in_path = in_path
        fields = set(output_fields) | {"line"}

        def kept(row: dict) -> dict:
            return {k: v for k, v in row.items() if k not in fields}

        def key(row: dict, where: str) -> int:
            line = row.get("line")
            if not isinstance(line, int) or isinstance(line, bool):
                raise DataError(f"{where}: output row has no integer 'line'; not an output of this command "
                                f"(choose another output path)")
            if line not in inputs or kept(row) != kept(inputs[line]):
                raise DataError(f"{where}: does not match {in_path}:{line}; the output file was written "
                                f"for another input (choose another output path)")
            if check_row is not None:
                check_row(row, where)
            return line

        super().__init__(out_path, key=key, fingerprint=fingerprint)
