"""How well rule labels carry the gold preference: agreement and mutual information.

On pairs with a gold label (1: A better, 0: B better), for each strategy and k:

* ``agreement``: the fraction of labeled pairs whose rule label equals gold (ties skipped by
  ``ties="skip"`` are left out of it; ``coverage`` is the labeled fraction);
* ``mutual_information``: I(label; gold) in bits, the plug-in estimate from the 2x2
  contingency table of (label, gold) counts over the labeled pairs:
  ``sum_ij p_ij log2(p_ij / (p_i. p_.j))`` with 0 log 0 = 0. It is 0 for independent
  labels and 1 bit for a label that equals (or always contradicts) a balanced gold; the
  plug-in estimate is biased upward by about 1 / (2 N ln 2) bits for small N;
* ``mi_low`` / ``mi_high``: a bootstrap percentile interval: the labeled pairs are
  resampled with replacement ``n_boot`` times (seeded) and the (1 - level) / 2 and
  (1 + level) / 2 quantiles of the resampled estimates reported.
"""

from __future__ import annotations

import json

import numpy as np

from rmr1_jax.data.readers import atomic_write_text
from rmr1_jax.errors import UserError
from rmr1_jax.rules.pool import Rule
from rmr1_jax.rules.score_files import PairScores, load_pairs
from rmr1_jax.rules.select import K_FREE, STRATEGIES, check_ks, fit_pairs_weights, label_arrays

DEFAULT_KS = (3, 5, 8)


def contingency(labels, gold) -> np.ndarray:
    """[2, 2] int64 counts ``table[label, gold]`` of two 0/1 arrays of the same length."""
    labels, gold = np.asarray(labels, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    if labels.shape != gold.shape or not np.isin(labels, (0, 1)).all() or not np.isin(gold, (0, 1)).all():
        raise ValueError("labels and gold must be 0/1 arrays of the same shape")
    return np.bincount(labels * 2 + gold, minlength=4).reshape(2, 2)


def mutual_information_table(table) -> float:
    """I(X; Y) in bits from a [2, 2] (or any 2-D) table of counts."""
    t = np.asarray(table, dtype=np.float64)
    n = t.sum()
    if n <= 0:
        return 0.0
    p = t / n
    outer = p.sum(axis=1, keepdims=True) * p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(max(0.0, np.sum(p[nz] * np.log2(p[nz] / outer[nz]))))


def mutual_information(labels, gold) -> float:
    """Plug-in I(label; gold) in bits of two 0/1 arrays."""
    return mutual_information_table(contingency(labels, gold))


def bootstrap_mi(labels, gold, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap percentile interval (low, high) of :func:`mutual_information`."""
    if not 0 < level < 1:
        raise UserError(f"the interval level must be between 0 and 1, got {level}")
    if n_boot < 1:
        raise UserError(f"the number of bootstrap resamples must be at least 1, got {n_boot}")
    codes = np.asarray(labels, dtype=np.int64) * 2 + np.asarray(gold, dtype=np.int64)
    contingency(labels, gold)  # validates
    n = codes.shape[0]
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    est = np.empty(n_boot)
    for i in range(n_boot):
        sample = codes[rng.integers(0, n, size=n)]
        est[i] = mutual_information_table(np.bincount(sample, minlength=4).reshape(2, 2))
    lo, hi = np.quantile(est, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def diagnose(pairs: PairScores, strategies=STRATEGIES, ks=DEFAULT_KS, *, ties: str = "skip",
             weight: float = 0.5, seed: int = 0, n_boot: int = 1000, level: float = 0.95,
             fit: PairScores | None = None, l2: float = 1e-2) -> list[dict]:
    """One row per (strategy, k) on the gold-labeled pairs of ``pairs``: ``strategy``, ``k``
    (None for strategies whose label ignores k: ``all_rules``, ``fitted_linear``),
    ``gold_pairs``, ``labeled``, ``ties``, ``coverage``, ``agreement``,
    ``mutual_information``, ``mi_low``, ``mi_high``, ``level``. ``fitted_linear`` fits on the
    gold pairs of ``fit`` (default: the evaluated pairs themselves, in-sample). A value of
    ``ks`` above the pool size is an error (``select.check_ks``); ``agreement`` is None when
    no pair got a label."""
    check_ks(pairs.num_rules, {"--ks": ks})
    gold_pairs = pairs.subset(np.flatnonzero(pairs.gold >= 0))
    if len(gold_pairs) == 0:
        raise UserError("the diagnostics need pairs with a gold 'winner' (A or B); none has one")
    out = []
    for strategy in strategies:
        weights = None
        if strategy == "fitted_linear":
            weights = fit_pairs_weights(fit if fit is not None else gold_pairs, l2)
        for k in ([max(ks)] if strategy in K_FREE else ks):
            lab = label_arrays(gold_pairs.scores_a, gold_pairs.scores_b, gold_pairs.relevance, strategy, k,
                               weight=weight, seed=seed, ties=ties, weights=weights)
            keep = lab.winner >= 0
            labels, gold = lab.winner[keep], gold_pairs.gold[keep]
            lo, hi = bootstrap_mi(labels, gold, n_boot, seed, level)
            out.append({
                "strategy": strategy, "k": None if strategy in K_FREE else int(k),
                "gold_pairs": len(gold_pairs), "labeled": int(keep.sum()), "ties": int(lab.tie.sum()),
                "coverage": float(keep.mean()),
                "agreement": float(np.mean(labels == gold)) if keep.any() else None,
                "mutual_information": mutual_information(labels, gold), "mi_low": lo, "mi_high": hi,
                "level": level,
            })
    return out


def check_label_ks(num_rules: int, strategy: str, k: int, ks) -> None:
    """Before ``rmr1 rules label --diagnostics`` writes anything: every k the pool cannot hold,
    the label's ``--k`` (unless the strategy ignores it) and the diagnostics' ``--ks``, in one
    error (``select.check_ks``)."""
    check_ks(num_rules, {"--k": [] if strategy == "all_rules" else [k], "--ks": ks})


def format_table(rows: list[dict]) -> str:
    """The diagnostics as an aligned text table."""
    head = f"{'strategy':<18} {'k':>3} {'labeled':>8} {'ties':>6} {'agree':>7} {'MI bits':>8}  interval"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = "-" if r["k"] is None else str(r["k"])
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        lines.append(f"{r['strategy']:<18} {k:>3} {r['labeled']:>8} {r['ties']:>6} {agree:>7} "
                     f"{r['mutual_information']:>8.4f}  [{r['mi_low']:.4f}, {r['mi_high']:.4f}]")
    return "\n".join(lines)


def diagnose_file(scores_path: str, out_path: str | None, *, pairs_path: str | None = None,
                  rules: list[Rule] | None = None, strategies=STRATEGIES, ks=DEFAULT_KS,
                  fit_scores_path: str | None = None, fit_pairs_path: str | None = None,
                  **options) -> list[dict]:
    """:func:`diagnose` on a score file (inputs as in ``select.select_file``); writes the
    rows as a JSON list to ``out_path`` when given. ``options`` go to :func:`diagnose`."""
    pairs = load_pairs(scores_path, len(rules) if rules is not None else None, pairs_path)
    fit = load_pairs(fit_scores_path, pairs.num_rules, fit_pairs_path) if fit_scores_path else None
    rows = diagnose(pairs, strategies, ks, fit=fit, **options)
    if out_path is not None:
        atomic_write_text(out_path, json.dumps(rows, indent=2) + "\n")
    return rows
