"""Rule-score files and the pair form that selection works on.

**Per-response rule-score file** (what ``rmr1 rules score`` writes; any other judge's scores
load if written the same way): JSONL, one row per (prompt, response)::

    {"prompt": str | [messages], "response": str | [messages], ...other input fields...,
     "scores": [R floats], "relevance": [R floats]}

``scores[i]`` is rule i's score of the response (pool order; our scorer writes
P(" Yes") - P(" No"), in [-1, 1]) and ``relevance[i]`` how much rule i bears on the
conversation. Input fields are passed through untouched.

**Pairwise score files** (read by :func:`read_pair_scores`), one row per pair, either

* ours: ``{"scores_a": [R], "scores_b": [R], "relevance": [R], "winner": "A"|"B"|null, ...}``
* RAMO's released layout: ``{"scoresA": [R], "scoresB": [R], "relevance": [R], ...}``
  (released rows also carry ``responseA_model``, ``responseB_model``, ``text``; they, and
  every other non-score field, are kept as the pair's metadata).

``winner`` (optional, gold) is "A" / "B" / "model_a" / "model_b" (any case) or null.

**Pairs joined with a per-response file** (:func:`join_pairs`): a pairs file of
``{"prompt", "a", "b", "winner"?}`` rows (``response_a`` / ``response_b`` also accepted),
each response looked up by (prompt, response) in the per-response file. A pair's
relevance is the mean of its two responses' relevance vectors (the prompt is shared, and a
rule that bears on either response bears on the choice between them).

Every malformed row (missing field, wrong length, non-finite value, non-numeric entry)
is a one-line :class:`~rmr1_jax.errors.DataError` naming ``file:line``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from rmr1_jax.data.readers import iter_rows, write_jsonl
from rmr1_jax.errors import DataError

_SCORE_KEYS = ("scores", "relevance")
_OURS = ("scores_a", "scores_b", "relevance")
_RAMO = ("scoresA", "scoresB", "relevance")
_WINNERS = {"a": 1, "model_a": 1, "b": 0, "model_b": 0}


@dataclasses.dataclass
class ResponseScores:
    """A per-response score file: ``rows`` (input fields, without the score lists),
    ``scores`` and ``relevance`` [N, R] float64, ``where`` ("file:line" per row)."""

    rows: list[dict]
    scores: np.ndarray
    relevance: np.ndarray
    where: list[str]


@dataclasses.dataclass
class PairScores:
    """Pairs ready for selection: ``scores_a``, ``scores_b``, ``relevance`` [N, R] float64;
    ``gold`` [N] int8 (1: A is better, 0: B is better, -1: unknown); ``rows`` the pairs'
    metadata (every non-score field), in file order."""

    rows: list[dict]
    scores_a: np.ndarray
    scores_b: np.ndarray
    relevance: np.ndarray
    gold: np.ndarray

    def __post_init__(self):
        n, r = self.scores_a.shape
        for name in ("scores_b", "relevance"):
            if getattr(self, name).shape != (n, r):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(n, r)}")
        if self.gold.shape != (n,) or len(self.rows) != n:
            raise ValueError(f"gold {self.gold.shape} / rows {len(self.rows)} do not match {n} pairs")

    def __len__(self) -> int:
        return self.scores_a.shape[0]

    @property
    def num_rules(self) -> int:
        return self.scores_a.shape[1]

    def subset(self, idx) -> "PairScores":
        idx = np.asarray(idx, dtype=np.int64)
        return PairScores([self.rows[i] for i in idx], self.scores_a[idx], self.scores_b[idx],
                          self.relevance[idx], self.gold[idx])


def float_vector(value, key: str, num_rules: int | None) -> np.ndarray:
    """``value`` as a finite float64 vector of length ``num_rules`` (any length when None);
    DataError (without a location) otherwise."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise DataError(f"field {key!r} must be a list of numbers, got {type(value).__name__}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise DataError(f"field {key!r}[{i}] must be a number, got {type(v).__name__}")
        if not math.isfinite(float(v)):
            raise DataError(f"field {key!r}[{i}] is not finite ({v})")
    if num_rules is not None and len(value) != num_rules:
        raise DataError(f"field {key!r} has {len(value)} values, expected {num_rules} (one per rule)")
    return np.asarray(value, dtype=np.float64).reshape(len(value))


def score_row(row: dict, scores, relevance, num_rules: int | None = None) -> dict:
    """One per-response score row: ``row``'s fields plus validated ``scores`` / ``relevance``."""
    s = float_vector(list(np.asarray(scores, dtype=np.float64).ravel()), "scores", num_rules)
    r = float_vector(list(np.asarray(relevance, dtype=np.float64).ravel()), "relevance", len(s))
    return {**row, "scores": s.tolist(), "relevance": r.tolist()}


def write_scores(path: str, rows: list[dict], scores, relevance) -> int:
    """Write a per-response score file atomically: ``rows[i]`` plus ``scores[i]`` and
    ``relevance[i]`` (arrays [N, R]). Returns the row count."""
    scores, relevance = np.asarray(scores, dtype=np.float64), np.asarray(relevance, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != relevance.shape or scores.shape[0] != len(rows):
        raise ValueError(f"scores {scores.shape} and relevance {relevance.shape} must both be [{len(rows)}, R]")
    r = scores.shape[1]
    return write_jsonl(path, (score_row(row, s, rel, r) for row, s, rel in zip(rows, scores, relevance)))


def read_scores(path: str, num_rules: int | None) -> ResponseScores:
    """Read a per-response score file; ``num_rules`` None takes the first row's length."""
    rows, scores, rel, where = [], [], [], []
    for lineno, row in iter_rows(path):
        loc = f"{path}:{lineno}"
        try:
            if isinstance(row, Exception):
                raise row
            for key in ("prompt", "response") + _SCORE_KEYS:
                if key not in row:
                    raise DataError(f"missing field {key!r}")
            s = float_vector(row["scores"], "scores", num_rules)
            num_rules = len(s)
            r = float_vector(row["relevance"], "relevance", num_rules)
        except DataError as e:
            raise DataError(f"{loc}: {e}") from None
        rows.append({k: v for k, v in row.items() if k not in _SCORE_KEYS})
        scores.append(s)
        rel.append(r)
        where.append(loc)
    if not rows:
        raise DataError(f"{path}: no score rows")
    return ResponseScores(rows, np.stack(scores), np.stack(rel), where)


def parse_gold(value) -> int:
    """Gold winner field -> 1 (A), 0 (B), -1 (absent / null)."""
    if value is None:
        return -1
    key = str(value).strip().lower() if isinstance(value, str) else None
    if key not in _WINNERS:
        raise DataError(f"field 'winner' must be A, B, model_a, model_b or null, got {value!r}")
    return _WINNERS[key]


def read_pair_scores(path: str, num_rules: int | None) -> PairScores:
    """Read a pairwise score file, ours (``scores_a``/``scores_b``) or RAMO's released
    layout (``scoresA``/``scoresB``), row by row; both carry ``relevance``."""
    rows, a, b, rel, gold = [], [], [], [], []
    for lineno, row in iter_rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            keys = _RAMO if ("scoresA" in row or "scoresB" in row) else _OURS
            for key in keys:
                if key not in row:
                    raise DataError(f"missing field {key!r}")
            sa = float_vector(row[keys[0]], keys[0], num_rules)
            num_rules = len(sa)
            sb = float_vector(row[keys[1]], keys[1], num_rules)
            r = float_vector(row["relevance"], "relevance", num_rules)
            g = parse_gold(row.get("winner"))
        except DataError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        rows.append({k: v for k, v in row.items() if k not in keys})
        a.append(sa)
        b.append(sb)
        rel.append(r)
        gold.append(g)
    if not rows:
        raise DataError(f"{path}: no pairs")
    return PairScores(rows, np.stack(a), np.stack(b), np.stack(rel), np.asarray(gold, dtype=np.int8))


def write_pair_scores(path: str, pairs: PairScores) -> int:
    """Write ``pairs`` in our pairwise layout (metadata, ``scores_a``, ``scores_b``,
    ``relevance``, and ``winner`` when gold is known)."""
    def rows():
        for i, meta in enumerate(pairs.rows):
            row = dict(meta)
            if pairs.gold[i] >= 0:
                row["winner"] = "A" if pairs.gold[i] == 1 else "B"
            row.update(scores_a=pairs.scores_a[i].tolist(), scores_b=pairs.scores_b[i].tolist(),
                       relevance=pairs.relevance[i].tolist())
            yield row
    return write_jsonl(path, rows())


def _key(prompt, response) -> str:
    return json.dumps([prompt, response], sort_keys=True, ensure_ascii=False)


def join_pairs(pairs_path: str, scores: ResponseScores) -> PairScores:
    """Pairs of ``pairs_path`` (``{"prompt", "a", "b", "winner"?}``) with each response's
    rule scores looked up in ``scores``; relevance is the mean of the two responses'."""
    index: dict[str, int] = {}
    for i, row in enumerate(scores.rows):
        k = _key(row["prompt"], row["response"])
        j = index.setdefault(k, i)
        if j != i and not (np.array_equal(scores.scores[i], scores.scores[j])
                           and np.array_equal(scores.relevance[i], scores.relevance[j])):
            raise DataError(f"{scores.where[i]}: the same prompt and response as {scores.where[j]} "
                            "with different scores")
    rows, a, b, gold = [], [], [], []
    for lineno, row in iter_rows(pairs_path):
        try:
            if isinstance(row, Exception):
                raise row
            if "prompt" not in row:
                raise DataError("missing field 'prompt'")
            found = []
            for side in ("a", "b"):
                key = side if side in row else f"response_{side}"
                if key not in row:
                    raise DataError(f"missing field {side!r}")
                j = index.get(_key(row["prompt"], row[key]))
                if j is None:
                    raise DataError(f"response {side!r} has no row in the score file")
                found.append(j)
            g = parse_gold(row.get("winner"))
        except DataError as e:
            raise DataError(f"{pairs_path}:{lineno}: {e}") from None
        rows.append(dict(row))
        a.append(found[0])
        b.append(found[1])
        gold.append(g)
    if not rows:
        raise DataError(f"{pairs_path}: no pairs")
    a, b = np.asarray(a), np.asarray(b)
    return PairScores(rows, scores.scores[a], scores.scores[b], (scores.relevance[a] + scores.relevance[b]) / 2,
                      np.asarray(gold, dtype=np.int8))


def load_pairs(scores_path: str, num_rules: int | None, pairs_path: str | None = None) -> PairScores:
    """``pairs_path`` given: join it with the per-response file ``scores_path``; otherwise
    ``scores_path`` is a pairwise score file (ours or RAMO's)."""
    if pairs_path is not None:
        return join_pairs(pairs_path, read_scores(scores_path, num_rules))
    return read_pair_scores(scores_path, num_rules)
