"""Rule scoring in a multi-host job: two local JAX processes (4 CPU devices each, loopback, a
(2, 2, 2) mesh) run ``score_file``, with and without prefix sharing; process 0 alone writes,
and the rows equal a single-process run's. Resuming a partial output skips its rows on both
processes; an unusable output fails on both. The judge is test_scoring.py's random tiny Qwen2
with a SentencePiece tokenizer."""

import json
import os

import numpy as np
import pytest

import test_scoring
from mp_launch import start_job
from test_scoring import ITEMS, RULES, _read, _scorer, _sentence, _write_jsonl
from rmr1_jax.inference.rules import score_file

ROWS = [{"id": k, "prompt": p, "response": r} for k, (p, r) in enumerate(
    ITEMS + [(_sentence(k, 6) + "?", _sentence(k + 5, 9)) for k in range(3)])]
judge, mesh = test_scoring.judge, test_scoring.mesh  # its module fixtures (a judge of this module's own)


def _same(got, want):
    assert [r["line"] for r in got] == [r["line"] for r in want] == list(range(1, len(ROWS) + 1))
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in ("scores", "relevance")} == \
            {k: v for k, v in w.items() if k not in ("scores", "relevance")}
        np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g["relevance"], w["relevance"], rtol=1e-5, atol=1e-6)


@pytest.mark.multiprocess
def test_two_processes_score_and_resume(judge, mesh, tmp_path):
    hf_dir = judge[0]
    in_path = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    rules = RULES[:3]
    rules_path = _write_jsonl(tmp_path / "rules.jsonl", [{"id": f"r{j}", "text": t} for j, t in enumerate(rules)])
    ref_path = str(tmp_path / "ref.jsonl")
    stats = score_file(_scorer(judge, mesh), rules, in_path, ref_path)  # this process alone, 8 devices
    assert (stats.total, stats.written) == (len(ROWS), len(ROWS))
    ref = _read(ref_path)
    with open(ref_path) as f:
        lines = f.readlines()
    with open(tmp_path / "resume.jsonl", "w") as f:  # two rows done, the third cut off mid-line
        f.write(lines[0] + lines[1] + lines[2][:len(lines[2]) // 2])

    worker = os.path.join(os.path.dirname(__file__), "scoring_worker.py")
    start_job(worker, [hf_dir, rules_path, in_path, tmp_path], processes=2, devices=4).wait(timeout=240)
    res = []
    for pid in range(2):
        with open(tmp_path / f"result.{pid}.json") as f:
            res.append(json.load(f))

    n = len(ROWS)
    for r in res:  # both processes scored every row (the resume: all but the two done)
        assert r["full"] == [n, 0, n] and r["resume"] == [n, 2, n - 2] and r["unshared"] == [n, 0, n]
        assert "batch_size=5 must be a multiple of the process count (2)" in r["odd_batch"]
        assert "\n" not in r["odd_batch"]
    assert "another rule pool" in res[0]["other_pool"]
    assert res[1]["other_pool"].startswith("process 0 failed: ") and "another rule pool" in res[1]["other_pool"]
    # each file holds one copy of every row (process 1 wrote nothing), equal to the single-process run
    for name in ("full", "resume", "unshared"):
        _same(_read(tmp_path / f"{name}.jsonl"), ref)
    with open(tmp_path / "resume.jsonl") as f:
        assert f.read().startswith(lines[0] + lines[1])  # the done rows stay as they were
