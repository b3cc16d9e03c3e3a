"""Calibration of verdict probabilities against the definitions: scikit-learn's Brier score
and reliability curve, and a direct re-implementation of the expected calibration error."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from rmr1_jax.eval.calibration import expected_calibration_error, observations, plot, summarize


def _rows(rng, n=400):
    rows = []
    for _ in range(n):
        truth = rng.random()
        p = float(np.clip(truth + rng.normal(0, 0.15), 0.0, 1.0))
        w = "A" if rng.random() < truth else "B"
        if rng.random() < 0.5:  # both orders: the second shows the pair swapped
            rows.append({"winner": [w, "B" if w == "A" else "A"], "prob_a": [p, None if rng.random() < 0.1 else 1 - p]})
        else:
            rows.append({"winner": w, "prob_a": p})
    rows.append({"winner": "A", "verdict": None})  # no probability at all
    return rows


def test_brier_and_reliability_are_sklearns_and_ece_its_definition(tmp_path):
    rows = _rows(np.random.default_rng(0))
    p, y = observations(rows)
    assert len(p) == sum(1 if not isinstance(r.get("prob_a"), list) else sum(v is not None for v in r["prob_a"])
                         for r in rows if "prob_a" in r)
    s = summarize(rows, bins=10)
    np.testing.assert_allclose(s["brier"], brier_score_loss(y, p), rtol=1e-12)
    frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b["frac_a"] for b in s["reliability"]], frac, rtol=1e-12)
    np.testing.assert_allclose([b["mean_p"] for b in s["reliability"]], mean_p, rtol=1e-12)
    # ECE by its definition, observation by observation
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5) == (y == 1)
    total = 0.0
    for k in range(10):
        lo, hi = 0.5 + 0.05 * k, 0.5 + 0.05 * (k + 1)
        m = (conf >= lo) & ((conf < hi) if k < 9 else (conf <= hi))
        if m.any():
            total += m.sum() / len(p) * abs(correct[m].mean() - conf[m].mean())
    np.testing.assert_allclose(s["ece"], total, rtol=1e-12)
    assert 0.0 < s["ece"] < 0.2 and s["n"] == len(p)
    assert plot(s, str(tmp_path / "reliability.png"), "test").endswith(".png")


def test_hand_worked_cases():
    # always 1/2: Brier 1/4; confidence 1/2 and right half the time: no calibration error
    half = summarize([{"winner": w, "prob_a": 0.5} for w in "ABAB"])
    assert half["brier"] == 0.25 and half["ece"] == 0.0
    # P(A) = 0.9 four times, A better three times: confidence 0.9 at 75% accuracy
    p, y = np.full(4, 0.9), np.array([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(expected_calibration_error(p, y), 0.15, atol=1e-12)
    np.testing.assert_allclose(summarize([{"winner": w, "prob_a": 0.9} for w in "AAAB"])["brier"],
                               (3 * 0.01 + 0.81) / 4, atol=1e-12)
    assert summarize([{"winner": "A", "prob_a": None}, {"winner": "B"}]) is None
