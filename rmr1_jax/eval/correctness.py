"""The correctness of one result row: each judgment's 1 / 0 (a missing verdict as the
no-verdict rule says), a scalar pair's by its two scores, and the example's mean over its
orders. Shared by the benchmark scoring (:mod:`rmr1_jax.eval.scoring`) and the accuracy
against k of voted rows (:mod:`rmr1_jax.eval.voting`)."""

from __future__ import annotations

from rmr1_jax.errors import DataError

NO_VERDICT_RULES = {"zero": 0.0, "half": 0.5}


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def judgment_values(row: dict, no_verdict: str = "zero", scalar_tie: float = 0.5) -> list[float]:
    """The correctness of each judgment in a row (two for a both-orders row)."""
    nv = NO_VERDICT_RULES[no_verdict]
    if row.get("scores") is not None:
        s = row["scores"]
        if not isinstance(s, (list, tuple)) or len(s) != 2:
            raise DataError("field 'scores' must be [score_1, score_2]")
        s1, s2 = float(s[0]), float(s[1])
        better, worse = (s1, s2) if row.get("first_is_better", True) else (s2, s1)
        return [1.0 if better > worse else scalar_tie if better == worse else 0.0]
    if "verdict" in row:
        verdicts, winners = _as_list(row["verdict"]), _as_list(row.get("winner"))
        if len(verdicts) != len(winners) or any(w not in ("A", "B") for w in winners):
            raise DataError("generative row needs 'winner' (\"A\"/\"B\", one per verdict) next to 'verdict'")
        out = []
        for v, w in zip(verdicts, winners):
            if v is None:
                out.append(nv)
            elif v in ("A", "B"):
                out.append(1.0 if v == w else 0.0)
            else:
                raise DataError(f"verdict must be \"A\", \"B\" or null, got {v!r}")
        return out
    if row.get("correct") is not None:
        return [float(row["correct"])]
    raise DataError("row has none of 'verdict', 'scores' or 'correct'")


def example_correct(row: dict, no_verdict: str = "zero", scalar_tie: float = 0.5) -> float:
    """1 / 0 / fractional correctness of one example (mean over orders when judged twice)."""
    vals = judgment_values(row, no_verdict, scalar_tie)
    return sum(vals) / len(vals)
