"""Rule-score files: per-response rows, our pairwise layout, RAMO's released layout, joins,
and the one-line errors for malformed rows."""

import json

import numpy as np
import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.rules.score_files import (PairScores, join_pairs, load_pairs, read_pair_scores, read_scores,
                                        score_row, write_pair_scores, write_scores)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_write_then_read_scores_round_trip(tmp_path):
    rows = [{"prompt": "p1", "response": "r1", "id": "x"}, {"prompt": [{"role": "user", "content": "p2"}],
                                                            "response": "r2"}]
    scores = np.array([[0.5, -0.25, 1.0], [0.0, 0.125, -1.0]])
    rel = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    path = str(tmp_path / "s.jsonl")
    assert write_scores(path, rows, scores, rel) == 2
    got = read_scores(path, 3)
    assert got.rows == rows
    np.testing.assert_array_equal(got.scores, scores)
    np.testing.assert_array_equal(got.relevance, rel)
    assert got.where == [f"{path}:1", f"{path}:2"]
    assert read_scores(path, None).scores.shape == (2, 3)


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "p", "response": "r", "scores": [0.1, 0.2], "relevance": [0, 0, 0]},
     "field 'scores' has 2 values, expected 3 (one per rule)"),
    ({"prompt": "p", "response": "r", "scores": [0.1, 0.2, 0.3], "relevance": [0, 0]},
     "field 'relevance' has 2 values, expected 3"),
    ('{"prompt": "p", "response": "r", "scores": [0.1, NaN, 0.3], "relevance": [0, 0, 0]}',
     "field 'scores'[1] is not finite (nan)"),
    ('{"prompt": "p", "response": "r", "scores": [0.1, 0.2, 0.3], "relevance": [Infinity, 0, 0]}',
     "field 'relevance'[0] is not finite (inf)"),
    ({"prompt": "p", "response": "r", "scores": [0.1, "0.2", 0.3], "relevance": [0, 0, 0]},
     "field 'scores'[1] must be a number, got str"),
    ({"prompt": "p", "response": "r", "scores": [0.1, True, 0.3], "relevance": [0, 0, 0]},
     "field 'scores'[1] must be a number, got bool"),
    ({"prompt": "p", "response": "r", "scores": 0.5, "relevance": [0, 0, 0]},
     "field 'scores' must be a list of numbers, got float"),
    ({"prompt": "p", "response": "r", "relevance": [0, 0, 0]}, "missing field 'scores'"),
    ({"prompt": "p", "response": "r", "scores": [0, 0, 0]}, "missing field 'relevance'"),
    ({"response": "r", "scores": [0, 0, 0], "relevance": [0, 0, 0]}, "missing field 'prompt'"),
    ("{broken", "invalid JSON"),
])
def test_read_scores_errors_name_file_and_line(tmp_path, row, needle):
    good = {"prompt": "p0", "response": "r0", "scores": [0, 0, 0], "relevance": [0, 0, 0]}
    path = _write(tmp_path / "s.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        read_scores(path, 3)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:2: "), msg
    assert needle in msg, msg


def test_length_inferred_from_first_row_then_enforced(tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r", "scores": [0, 0], "relevance": [0, 0]},
                                         {"prompt": "p", "response": "q", "scores": [0], "relevance": [0]}])
    with pytest.raises(DataError, match=r":2: field 'scores' has 1 values, expected 2"):
        read_scores(path, None)


def test_empty_and_missing_score_files(tmp_path):
    with pytest.raises(DataError, match="no score rows"):
        read_scores(_write(tmp_path / "e.jsonl", [""]), 3)
    with pytest.raises(DataError, match="file not found"):
        read_scores(str(tmp_path / "nope.jsonl"), 3)
    with pytest.raises(DataError, match="no pairs"):
        read_pair_scores(_write(tmp_path / "e2.jsonl", [""]), 3)


def test_score_row_validates():
    assert score_row({"prompt": "p", "response": "r"}, [1, 2], [0, 0]) == {
        "prompt": "p", "response": "r", "scores": [1.0, 2.0], "relevance": [0.0, 0.0]}
    with pytest.raises(DataError, match="not finite"):
        score_row({}, [1.0, float("nan")], [0, 0])
    with pytest.raises(DataError, match="expected 3"):
        score_row({}, [1.0, 2.0], [0, 0], num_rules=3)


def test_ramo_released_layout(tmp_path):
    rows = [{"text": "Human: hi Assistant: ...", "responseA_model": "m1", "responseB_model": "m2",
             "scoresA": [0.5, -0.5], "scoresB": [0.25, 0.75], "relevance": [0.9, 0.1]},
            {"text": "t2", "scoresA": [0, 0], "scoresB": [1, 1], "relevance": [0, 0], "winner": "model_b"}]
    pairs = read_pair_scores(_write(tmp_path / "ramo.jsonl", rows), 2)
    np.testing.assert_array_equal(pairs.scores_a, [[0.5, -0.5], [0, 0]])
    np.testing.assert_array_equal(pairs.scores_b, [[0.25, 0.75], [1, 1]])
    np.testing.assert_array_equal(pairs.relevance, [[0.9, 0.1], [0, 0]])
    np.testing.assert_array_equal(pairs.gold, [-1, 0])
    assert pairs.rows[0] == {"text": "Human: hi Assistant: ...", "responseA_model": "m1", "responseB_model": "m2"}
    assert pairs.num_rules == 2 and len(pairs) == 2


@pytest.mark.parametrize("row, needle", [
    ({"scoresA": [0, 0], "relevance": [0, 0]}, "missing field 'scoresB'"),
    ({"scoresA": [0, 0], "scoresB": [0, 0, 0], "relevance": [0, 0]}, "field 'scoresB' has 3 values, expected 2"),
    ({"scores_a": [0, 0], "scores_b": [0, 0]}, "missing field 'relevance'"),
    ({"scores_a": [0, 0], "scores_b": [0, 0], "relevance": [0, 0], "winner": "C"}, "field 'winner' must be A, B"),
    ('{"scores_a": [0, -Infinity], "scores_b": [0, 0], "relevance": [0, 0]}', "field 'scores_a'[1] is not finite"),
])
def test_pair_layout_errors(tmp_path, row, needle):
    path = _write(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError) as e:
        read_pair_scores(path, 2)
    assert str(e.value).startswith(f"{path}:1: ") and needle in str(e.value), str(e.value)


def test_our_pair_layout_round_trip(tmp_path):
    pairs = PairScores([{"id": "x"}, {"id": "y"}], np.array([[0.5, 0.0]]).repeat(2, 0),
                       np.array([[0.0, 0.5], [1.0, 1.0]]), np.zeros((2, 2)), np.array([1, -1], dtype=np.int8))
    path = str(tmp_path / "p.jsonl")
    write_pair_scores(path, pairs)
    back = load_pairs(path, 2)
    assert back.rows == [{"id": "x", "winner": "A"}, {"id": "y"}]
    np.testing.assert_array_equal(back.scores_b, pairs.scores_b)
    np.testing.assert_array_equal(back.gold, pairs.gold)


def test_join_pairs_with_per_response_scores(tmp_path):
    srows = [{"prompt": "p", "response": "good"}, {"prompt": "p", "response": "bad"},
             {"prompt": "q", "response": "good"}]
    scores = np.array([[1.0, 0.0], [-1.0, 0.0], [0.5, 0.5]])
    rel = np.array([[1.0, 0.0], [0.0, 0.0], [0.2, 0.2]])
    spath = str(tmp_path / "s.jsonl")
    write_scores(spath, srows, scores, rel)
    ppath = _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "a": "bad", "b": "good", "winner": "B"},
                                              {"prompt": "q", "response_a": "good", "response_b": "good"}])
    pairs = load_pairs(spath, 2, ppath)
    np.testing.assert_array_equal(pairs.scores_a, [[-1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_array_equal(pairs.scores_b, [[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_array_equal(pairs.relevance, [[0.5, 0.0], [0.2, 0.2]])  # mean of the two responses
    np.testing.assert_array_equal(pairs.gold, [0, -1])
    assert pairs.rows[0] == {"prompt": "p", "a": "bad", "b": "good", "winner": "B"}

    missing = _write(tmp_path / "m.jsonl", [{"prompt": "p", "a": "good", "b": "unscored"}])
    with pytest.raises(DataError, match=rf"^{missing}:1: response 'b' has no row in the score file$"):
        join_pairs(missing, read_scores(spath, 2))
    no_b = _write(tmp_path / "nb.jsonl", [{"prompt": "p", "a": "good"}])
    with pytest.raises(DataError, match=rf"^{no_b}:1: missing field 'b'$"):
        load_pairs(spath, 2, no_b)


def test_join_rejects_conflicting_duplicate_scores(tmp_path):
    spath = str(tmp_path / "s.jsonl")
    write_scores(spath, [{"prompt": "p", "response": "r"}] * 2, np.array([[1.0], [0.0]]), np.zeros((2, 1)))
    ppath = _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "a": "r", "b": "r"}])
    with pytest.raises(DataError, match=rf"^{spath}:2: the same prompt and response as {spath}:1 with different"):
        load_pairs(spath, 1, ppath)
