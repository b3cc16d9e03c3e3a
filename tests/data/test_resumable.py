"""The one JSONL reading and resuming path (``data/readers.py``, ``data/resumable.py``): errors name
``file:line``, a line cut off by a crash is skipped when reading and dropped before appending,
done rows are keyed and vetted, and the fingerprint of what wrote a file is kept beside it, a
file without one adopted. Eval results files resume through it as they always did."""

import json

import pytest

from rmr1_jax.data.readers import read_rows, repair_tail
from rmr1_jax.data.resumable import ResumableJsonl, fingerprint_path
from rmr1_jax.errors import DataError
from rmr1_jax.eval.results import ResultsWriter, read_results


def _key(row, where):
    if "id" not in row:
        raise DataError(f"{where}: no id")
    return [row["id"], row.get("part", 0)]


def test_read_rows_names_file_and_line_and_skips_a_cut_off_tail(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')
    assert [n for n, _ in read_rows(str(p), cut_tail=True)] == [1, 3]
    with pytest.raises(DataError, match=r"rows\.jsonl:4: invalid JSON"):
        list(read_rows(str(p)))
    p.write_text('{"a": 1}\n[1]\n{"a": 2}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: row is not a JSON object"):
        list(read_rows(str(p), cut_tail=True))  # only a last line without its newline counts as cut off
    with pytest.raises(DataError, match="missing.jsonl: results file not found"):
        list(read_rows(str(tmp_path / "missing.jsonl"), what="results file"))
    p.write_text('{"a": 1}\n{"a": 2}')  # a complete last line without its newline is kept
    repair_tail(str(p))
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_resume_keys_repair_and_fingerprint(tmp_path):
    path = str(tmp_path / "out.jsonl")
    with ResumableJsonl(path, key=_key, fingerprint={"model": "m1", "rules": 3}) as out:
        assert out.done == set()
        out.append([{"id": "a"}, {"id": "b", "part": 1}])
    with open(path, "a") as f:
        f.write('{"id": "c", "pa')  # a crash mid-write
    with ResumableJsonl(path, key=_key, fingerprint={"model": "m1", "rules": 3, "new": 1}) as out:
        assert out.done == {("a", 0), ("b", 1)}  # keys come back as tuples
        out.append([{"id": "c"}])
    assert [r["id"] for _, r in read_rows(path)] == ["a", "b", "c"]
    before = open(path).read()
    with pytest.raises(DataError, match=r"was written by another set-up \(model 'm1' -> 'm2'\)"):
        ResumableJsonl(path, key=_key, fingerprint={"model": "m2"})
    with pytest.raises(DataError, match=r"out\.jsonl:4: no id"):
        with open(path, "a") as f:
            f.write('{"other": 1}\n')
        ResumableJsonl(path, key=_key)
    assert open(path).read() == before + '{"other": 1}\n'


def test_a_file_without_fingerprint_is_adopted_and_none_keeps_none(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n")
    with ResumableJsonl(str(path), key=_key) as out:  # fingerprint not known: nothing checked or kept
        assert out.done == {("a", 0)}
    assert not (tmp_path / "old.jsonl.fingerprint.json").exists()
    with ResumableJsonl(str(path), key=_key, fingerprint={"model": "m"}):
        pass
    assert json.load(open(fingerprint_path(str(path)))) == {"model": "m"}


def test_results_files_of_before_still_resume(tmp_path):
    """A results file as ``rmr1 eval`` wrote it before fingerprints (rows keyed by item and pair,
    a cut-off last line) resumes: its rows are done, the tail dropped, and a fingerprint kept
    from then on."""
    path = tmp_path / "results.jsonl"
    rows = [{"benchmark": "rewardbench", "item_id": str(i), "subset": "hep-go", "pair_index": 0, "scores": [1.0, 0.0],
             "first_is_better": True, "correct": 1.0} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"benchmark": "rewardbench", "item_id": "3"')
    with ResultsWriter(str(path), "rewardbench", fingerprint={"model": "m"}) as w:
        assert w.done == {("0", 0), ("1", 0), ("2", 0)}
        w.write([dict(rows[0], item_id="3")])
    assert [r["item_id"] for r in read_results(str(path))] == ["0", "1", "2", "3"]
    with pytest.raises(DataError, match=r"results\.jsonl:1: row is from benchmark 'rewardbench', not 'rmb'"):
        ResultsWriter(str(path), "rmb")
    with pytest.raises(DataError, match="another set-up"):
        ResultsWriter(str(path), "rewardbench", fingerprint={"model": "other"})


def test_an_atomic_write_creates_its_directory_and_leaves_no_partial_file(tmp_path):
    from rmr1_jax.data.readers import atomic_open, write_jsonl

    out = tmp_path / "new" / "dir" / "rows.jsonl"
    assert write_jsonl(str(out), [{"a": 1}]) == 1 and out.read_text() == '{"a": 1}\n'
    with pytest.raises(RuntimeError):
        with atomic_open(str(out)) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert out.read_text() == '{"a": 1}\n' and sorted(p.name for p in out.parent.iterdir()) == ["rows.jsonl"]
