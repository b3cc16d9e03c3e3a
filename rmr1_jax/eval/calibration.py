"""How well a judge's verdict probabilities (:mod:`rmr1_jax.inference.verdict_prob`) are
calibrated, from an evaluation's results rows.

Each judged order of a pair is one observation: ``p`` = the judge's P(A) in that order, ``y`` =
1 when the better response was shown at A. Over the observations with a probability (a
judgment without a verdict has none):

* **Brier score**: the mean of ``(p - y)^2`` (0 is perfect; always saying 1/2 scores 0.25);
* **expected calibration error** (ECE): the verdict ``p > 1/2`` has confidence
  ``max(p, 1 - p)``; over ``bins`` equal-width confidence bins, the mean over observations of
  ``|accuracy of the bin - mean confidence of the bin|`` (each bin weighted by its share);
* **reliability**: ``p`` in ``bins`` equal-width bins on [0, 1], each bin's mean ``p`` against its
  share of ``y = 1`` (the plot's points; a calibrated judge lies on the diagonal).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def observations(rows: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(p, y)`` of every judged order with a probability: rows hold ``prob_a`` and
    ``winner`` (the better response's position), each a value or a list (both orders)."""
    ps, ys = [], []
    for r in rows:
        probs, winners = r.get("prob_a"), r.get("winner")
        if probs is None:
            continue
        probs = probs if isinstance(probs, list) else [probs]
        winners = winners if isinstance(winners, list) else [winners]
        for p, w in zip(probs, winners):
            if p is not None:
                ps.append(float(p))
                ys.append(1.0 if w == "A" else 0.0)
    return np.asarray(ps, np.float64), np.asarray(ys, np.float64)


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf = np.maximum(p, 1.0 - p)
    correct = ((p > 0.5) == (y == 1.0)).astype(np.float64)
    # confidence lies in [1/2, 1]: equal-width bins over that range, the last one closed
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    err = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            err += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(err)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """The non-empty bins of ``p`` on [0, 1]: ``{"low", "high", "n", "mean_p", "frac_a"}``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(m.sum()),
                        "mean_p": float(p[m].mean()), "frac_a": float(y[m].mean())})
    return out


def summarize(rows: Sequence[dict], bins: int = 10) -> dict | None:
    """The calibration summary of results rows, or None when no row has a probability."""
    p, y = observations(rows)
    if not len(p):
        return None
    return {"n": int(len(p)), "brier": brier(p, y), "ece": expected_calibration_error(p, y, bins), "bins": bins,
            "reliability": reliability(p, y, bins)}


def plot(summary: dict, path: str, title: str) -> str:
    """The reliability diagram (PNG) of a :func:`summarize` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmr1_jax.figures import save_figure

    pts = summary["reliability"]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="calibrated")
    ax.plot([b["mean_p"] for b in pts], [b["frac_a"] for b in pts], "o-", label="judge")
    for b in pts:
        ax.annotate(str(b["n"]), (b["mean_p"], b["frac_a"]), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="P(A) read from the judge", ylabel="share of pairs where A is better",
           title=f"{title}\nECE {summary['ece']:.3f}, Brier {summary['brier']:.3f}, n = {summary['n']}")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)
