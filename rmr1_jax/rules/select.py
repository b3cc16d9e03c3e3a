"""Per-pair rule selection and rule labels (RAMO), on arrays and on files.

Arrays are numpy, ``[N, R]`` for N pairs and R rules in pool order: ``scores_a``,
``scores_b`` (rule scores of response A / B) and ``relevance``.

Strategies (``select_rules``; ranking ties go to the lower rule index):

* ``topk_discrepancy`` (RAMO as released): the k rules with the largest
  ``relevance_i + weight * |s_i(A) - s_i(B)|``, weight 0.5 by default.
* ``max_discrepancy``: the k rules with the largest ``|s_i(A) - s_i(B)|``.
* ``random_k``: k rules drawn uniformly without replacement per pair (seeded).
* ``all_rules``: every rule (k is ignored).
* ``fitted_linear`` (a baseline after OpenAI's rule-based rewards): weights ``w`` [R] fitted
  by :func:`fit_linear` on gold-labeled pairs; the label uses the whole weighted sum
  ``w . s(A)`` vs ``w . s(B)``; ``rule_indices`` are the k rules with the largest
  contribution ``|w_i (s_i(A) - s_i(B))|`` to that pair's margin.

Label: A wins iff the sum of its selected rule scores is larger than B's (the weighted sum
for ``fitted_linear``); exactly equal sums are ties, always counted, and resolved by
``ties``: ``"skip"`` (default: the pair gets no label), ``"a"`` / ``"b"`` (give it to that
side; upstream silently uses ``"b"``) or ``"random"`` (a seeded fair coin).

File outputs (``select_file`` / ``label_file``), one JSON row per pair: the pair's metadata
fields (everything in the input except the score lists; a gold ``winner`` stays as it was)
plus ``strategy``, ``k``, ``rule_indices`` (selected rule positions, best first),
``rule_ids`` (their pool ids, when a pool is given), ``labels`` (R-hot 0/1 list, the
Rule Adapter's target), ``score_a`` / ``score_b`` (the summed or weighted scores) and
``rule_winner``. In the selection file ``rule_winner`` is ``"A"``, ``"B"`` or ``"tie"``
(unresolved) and every pair is written. In the label file ``rule_winner`` is ``"A"`` or
``"B"`` after tie handling, ``tie`` (bool) says whether the sums were equal, skipped ties
are not written, and when the pair has ``prompt`` and both response texts (``a`` / ``b`` or
``response_a`` / ``response_b``) the row also has ``chosen`` / ``rejected`` (the rule
winner's text and the other), so it feeds ``rmr1 train-rm`` directly.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rmr1_jax.data.readers import write_jsonl
from rmr1_jax.errors import DataError, UserError
from rmr1_jax.rules.pool import Rule
from rmr1_jax.rules.score_files import PairScores, load_pairs

STRATEGIES = ("topk_discrepancy", "max_discrepancy", "random_k", "all_rules", "fitted_linear")
TIES = ("skip", "a", "b", "random")
# strategies whose label does not change with k
K_FREE = ("all_rules", "fitted_linear")


@dataclasses.dataclass
class Labeling:
    """One strategy's result on N pairs: ``indices`` [N, k] selected rules (best first),
    ``score_a`` / ``score_b`` [N], ``tie`` [N] bool (equal scores), ``winner`` [N] int8
    (1: A, 0: B, -1: a tie left unlabeled by ``ties="skip"``)."""

    strategy: str
    k: int
    indices: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray
    tie: np.ndarray
    winner: np.ndarray

    def mask(self, num_rules: int) -> np.ndarray:
        """[N, R] 0/1 int8: the selected rules of each pair."""
        m = np.zeros((self.indices.shape[0], num_rules), dtype=np.int8)
        np.put_along_axis(m, self.indices, 1, axis=1)
        return m


def check_ks(num_rules: int, ks_by_option: dict[str, Sequence]) -> None:
    """The one rule for every k (``--k`` of select, label and apply; the diagnostics' ``--ks``):
    an integer from 1 to the pool's size. Every value that breaks it, under each option that
    gave it, is named in one error with the pool's size; nothing is dropped silently."""
    bad = {opt: [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer))
                 or not 1 <= k <= num_rules] for opt, ks in ks_by_option.items()}
    named = "; ".join(f"{opt} {' '.join(map(str, v))}" for opt, v in bad.items() if v)
    if named:
        raise UserError(f"{named}: k must be an integer from 1 to the pool size ({num_rules} rules)")


def check_options(strategy: str, k: int, num_rules: int, ties: str = "skip") -> int:
    """Validate the options; returns the effective k (R for ``all_rules``)."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown rule selection strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if ties not in TIES:
        raise UserError(f"unknown tie handling {ties!r} (choose from {', '.join(TIES)})")
    if strategy == "all_rules":
        return num_rules
    check_ks(num_rules, {"--k": [k]})
    return int(k)


def select_rules(scores_a, scores_b, relevance, strategy: str = "topk_discrepancy", k: int = 5, *,
                 weight: float = 0.5, seed: int = 0, weights=None) -> np.ndarray:
    """[N, k] int64 selected rule indices per pair, best first (``weights`` [R] is required
    for ``fitted_linear``)."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    n, r = a.shape
    k = check_options(strategy, k, r)
    gap = np.abs(a - b)
    if strategy == "all_rules":
        return np.broadcast_to(np.arange(r), (n, r)).copy()
    if strategy == "topk_discrepancy":
        key = np.asarray(relevance, dtype=np.float64) + weight * gap
    elif strategy == "max_discrepancy":
        key = gap
    elif strategy == "random_k":
        key = np.random.default_rng([seed, 0]).random((n, r))
    else:
        if weights is None:
            raise UserError("fitted_linear needs fitted weights (fit them on gold-labeled pairs)")
        key = np.abs(np.asarray(weights, dtype=np.float64)[None, :] * (a - b))
    return np.argsort(-key, axis=1, kind="stable")[:, :k]


def resolve_ties(score_a, score_b, ties: str = "skip", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(winner [N] int8, tie [N] bool): A wins iff ``score_a > score_b``; equal scores are
    ties, resolved by ``ties`` (see the module docstring)."""
    if ties not in TIES:
        raise UserError(f"unknown tie handling {ties!r} (choose from {', '.join(TIES)})")
    score_a, score_b = np.asarray(score_a), np.asarray(score_b)
    tie = score_a == score_b
    winner = (score_a > score_b).astype(np.int8)
    if ties == "skip":
        winner[tie] = -1
    elif ties == "a":
        winner[tie] = 1
    elif ties == "b":
        winner[tie] = 0
    else:
        coin = np.random.default_rng([seed, 1]).integers(0, 2, size=tie.shape).astype(np.int8)
        winner[tie] = coin[tie]
    return winner, tie


def fit_linear(diff, gold, l2: float = 1e-2, max_iter: int = 100, tol: float = 1e-8) -> np.ndarray:
    """Logistic-regression weights ``w`` [R] with P(A wins) = sigmoid(w . (s(A) - s(B))).

    ``diff`` [N, R] is s(A) - s(B), ``gold`` [N] is 1 (A) / 0 (B). No intercept: swapping A
    and B negates the margin, so the model stays antisymmetric. Minimizes the mean log loss
    plus ``l2 / 2 * ||w||^2`` by Newton-Raphson from w = 0 (with step halving whenever a
    full step would raise the loss), stopping after ``max_iter`` iterations or when the
    largest weight change is below ``tol``.
    """
    x, y = np.asarray(diff, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise UserError(f"fitted_linear needs gold-labeled pairs to fit on (got {x.shape[0] if x.ndim else 0})")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("gold must be 0 or 1")
    n, r = x.shape

    def loss(w):
        z = x @ w
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    w = np.zeros(r)
    cur = loss(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / n + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + (l2 + 1e-12) * np.eye(r)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > cur + 1e-15:
            t /= 2
        w = w - t * step
        cur = loss(w)
        if np.max(np.abs(t * step)) < tol:
            break
    return w


def fit_pairs_weights(pairs: PairScores, l2: float = 1e-2) -> np.ndarray:
    """:func:`fit_linear` on the gold-labeled pairs of ``pairs``."""
    keep = pairs.gold >= 0
    if not keep.any():
        raise UserError("fitted_linear needs gold-labeled pairs ('winner' A/B) to fit its weights on")
    return fit_linear(pairs.scores_a[keep] - pairs.scores_b[keep], pairs.gold[keep], l2=l2)


def label_arrays(scores_a, scores_b, relevance, strategy: str = "topk_discrepancy", k: int = 5, *,
                 weight: float = 0.5, seed: int = 0, ties: str = "skip", weights=None) -> Labeling:
    """Select rules and label every pair (arrays [N, R]; see the module docstring)."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    k = check_options(strategy, k, a.shape[1], ties)
    idx = select_rules(a, b, relevance, strategy, k, weight=weight, seed=seed, weights=weights)
    if strategy == "fitted_linear":
        w = np.asarray(weights, dtype=np.float64)
        sa, sb = a @ w, b @ w
    else:
        sa = np.take_along_axis(a, idx, axis=1).sum(axis=1)
        sb = np.take_along_axis(b, idx, axis=1).sum(axis=1)
    winner, tie = resolve_ties(sa, sb, ties, seed)
    return Labeling(strategy, k, idx, sa, sb, tie, winner)


def label_pairs(pairs: PairScores, strategy: str = "topk_discrepancy", k: int = 5, *, weight: float = 0.5,
                seed: int = 0, ties: str = "skip", fit: PairScores | None = None, l2: float = 1e-2) -> Labeling:
    """:func:`label_arrays` on ``pairs``; ``fitted_linear`` fits its weights on the gold
    pairs of ``fit`` (default: ``pairs`` itself, an optimistic in-sample fit)."""
    if fit is not None and fit.num_rules != pairs.num_rules:
        raise UserError(f"the fit pairs have {fit.num_rules} rules, the pairs to label {pairs.num_rules}")
    weights = fit_pairs_weights(fit if fit is not None else pairs, l2) if strategy == "fitted_linear" else None
    return label_arrays(pairs.scores_a, pairs.scores_b, pairs.relevance, strategy, k, weight=weight,
                        seed=seed, ties=ties, weights=weights)


def _texts(meta: dict):
    a = meta.get("a", meta.get("response_a"))
    b = meta.get("b", meta.get("response_b"))
    return (a, b) if "prompt" in meta and a is not None and b is not None else None


def labeled_rows(pairs: PairScores, lab: Labeling, rules: list[Rule] | None, final: bool) -> list[dict]:
    """Output rows (module docstring); ``final`` gives label-file rows, else selection rows."""
    mask = lab.mask(pairs.num_rules)
    out = []
    for i, meta in enumerate(pairs.rows):
        if final and lab.winner[i] < 0:
            continue
        row = dict(meta)
        idx = [int(j) for j in lab.indices[i]]
        row.update(strategy=lab.strategy, k=lab.k, rule_indices=idx)
        if rules is not None:
            row["rule_ids"] = [rules[j].id for j in idx]
        row.update(labels=mask[i].tolist(), score_a=float(lab.score_a[i]), score_b=float(lab.score_b[i]))
        if not final:
            row["rule_winner"] = "tie" if lab.tie[i] else ("A" if lab.winner[i] == 1 else "B")
        else:
            row["rule_winner"] = "A" if lab.winner[i] == 1 else "B"
            row["tie"] = bool(lab.tie[i])
            texts = _texts(meta)
            if texts is not None:
                row["chosen"], row["rejected"] = texts if lab.winner[i] == 1 else texts[::-1]
        out.append(row)
    return out


def summary(pairs: PairScores, lab: Labeling, written: int) -> dict:
    """Counts for the command line: pairs, ties, rows written, and agreement with gold on
    the gold-labeled pairs that got a label (when there are any)."""
    s = {"strategy": lab.strategy, "k": lab.k, "pairs": len(pairs), "ties": int(lab.tie.sum()), "written": written}
    both = (pairs.gold >= 0) & (lab.winner >= 0)
    if both.any():
        s["gold_pairs"] = int(both.sum())
        s["agreement"] = float(np.mean(lab.winner[both] == pairs.gold[both]))
    return s


def report(s: dict, what: str, out: str) -> None:
    """Print the one line a labeling step reports: strategy, k, pairs, ties, rows written and,
    with gold, the agreement (``s`` is a :func:`summary`)."""
    line = f"{s['strategy']} (k={s['k']}): {s['pairs']} pairs, {s['ties']} ties; wrote {s['written']} {what} to {out}"
    if "agreement" in s:
        line += f"; agreement with gold {s['agreement']:.3f} on {s['gold_pairs']} pairs"
    print(line)


def check_builtin_pool(pairs: PairScores, rules: list[Rule], where: str) -> None:
    """No pool file was named, so ``rules`` is the built-in pool: ``pairs`` (read from
    ``where``) must have been scored with it. Score vectors of another length, or a row whose
    recorded ``rule_ids`` name a rule the built-in pool lacks, were made with a custom pool:
    one DataError saying to pass that pool with --rules (its ids would otherwise be replaced
    by the built-in pool's, or the score vectors blamed)."""
    if pairs.num_rules != len(rules):
        problem = f"its score vectors have {pairs.num_rules} values, the built-in pool has {len(rules)} rules"
    else:
        ids = {r.id for r in rules}
        unknown = next(((i, x) for i, meta in enumerate(pairs.rows) if isinstance(meta.get("rule_ids"), list)
                        for x in meta["rule_ids"] if isinstance(x, str) and x not in ids), None)
        if unknown is None:
            return
        problem = f"pair {unknown[0] + 1} records rule id {unknown[1]!r}, which the built-in pool lacks"
    raise DataError(f"{where}: scored with a custom rule pool ({problem}) and no --rules given: "
                    f"pass --rules FILE with the pool used for scoring")


def _load(scores_path, pairs_path, rules, fit_scores_path, fit_pairs_path, strategy, builtin_pool=False):
    if fit_pairs_path is not None and fit_scores_path is None:
        raise UserError("--fit-pairs needs --fit-scores (the per-response scores of those pairs)")
    num_rules = len(rules) if rules is not None else None
    pairs = load_pairs(scores_path, None if builtin_pool else num_rules, pairs_path)
    if builtin_pool:
        check_builtin_pool(pairs, rules, f"{scores_path} (pairs {pairs_path})" if pairs_path else scores_path)
    fit = None
    if strategy == "fitted_linear" and fit_scores_path is not None:
        fit = load_pairs(fit_scores_path, pairs.num_rules, fit_pairs_path)
    return pairs, fit


def select_file(scores_path: str, out_path: str, strategy: str = "topk_discrepancy", k: int = 5, *,
                pairs_path: str | None = None, rules: list[Rule] | None = None, weight: float = 0.5,
                seed: int = 0, fit_scores_path: str | None = None, fit_pairs_path: str | None = None,
                l2: float = 1e-2, builtin_pool: bool = False) -> dict:
    """Write every pair's selected rules (selection rows, module docstring) to ``out_path``.

    Input: ``scores_path`` a pairwise score file, or a per-response file joined with
    ``pairs_path`` (``score_files.load_pairs``); ``rules`` the pool (its size is checked
    against the score vectors and its ids are written), None to skip both; ``builtin_pool``:
    ``rules`` is the built-in pool because no pool file was named, and scores from another
    pool are an error saying so (:func:`check_builtin_pool`). ``fitted_linear`` fits on
    ``fit_scores_path`` (+ ``fit_pairs_path``) when given, else on the input's gold.
    Returns :func:`summary`."""
    pairs, fit = _load(scores_path, pairs_path, rules, fit_scores_path, fit_pairs_path, strategy, builtin_pool)
    lab = label_pairs(pairs, strategy, k, weight=weight, seed=seed, ties="skip", fit=fit, l2=l2)
    return summary(pairs, lab, write_jsonl(out_path, labeled_rows(pairs, lab, rules, final=False)))


def label_file(scores_path: str, out_path: str, strategy: str = "topk_discrepancy", k: int = 5, *,
               ties: str = "skip", pairs_path: str | None = None, rules: list[Rule] | None = None,
               weight: float = 0.5, seed: int = 0, fit_scores_path: str | None = None,
               fit_pairs_path: str | None = None, l2: float = 1e-2, builtin_pool: bool = False) -> dict:
    """Like :func:`select_file`, but writes label rows: ties resolved by ``ties`` (skipped
    ties not written) and ``chosen`` / ``rejected`` where the texts are known."""
    pairs, fit = _load(scores_path, pairs_path, rules, fit_scores_path, fit_pairs_path, strategy, builtin_pool)
    lab = label_pairs(pairs, strategy, k, weight=weight, seed=seed, ties=ties, fit=fit, l2=l2)
    s = summary(pairs, lab, write_jsonl(out_path, labeled_rows(pairs, lab, rules, final=True)))
    s["ties_handling"] = ties
    return s
