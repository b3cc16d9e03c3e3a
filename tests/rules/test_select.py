"""Rule selection, labels, tie handling, the fitted-linear baseline, the mutual-information
diagnostics, and the file-level select / label commands."""

import json
import math
import os

import numpy as np
import pytest

from cli_runs import handle
from rmr1_jax.errors import DataError, UserError
from rmr1_jax.rules import diagnostics as diag
from rmr1_jax.rules.pool import Rule, load_pool, write_pool
from rmr1_jax.rules.score_files import PairScores, write_pair_scores
from rmr1_jax.rules.select import (check_options, fit_linear, label_arrays, label_file, label_pairs, resolve_ties,
                                   select_file, select_rules)

# one pair, four rules, worked by hand:
#   |a - b|               = [1.4, 0.1, 0.0, 0.6]
#   rel + 0.5 |a - b|     = [0.8, 0.95, 0.0, 0.5]  -> rank 1, 0, 3, 2
A = np.array([[0.9, -0.2, 0.1, 0.0]])
B = np.array([[-0.5, -0.1, 0.1, 0.6]])
REL = np.array([[0.1, 0.9, 0.0, 0.2]])


def test_topk_discrepancy_by_hand():
    np.testing.assert_array_equal(select_rules(A, B, REL, "topk_discrepancy", 4), [[1, 0, 3, 2]])
    lab = label_arrays(A, B, REL, "topk_discrepancy", 2)
    np.testing.assert_array_equal(lab.indices, [[1, 0]])
    assert lab.score_a[0] == pytest.approx(0.7) and lab.score_b[0] == pytest.approx(-0.6)
    assert lab.winner[0] == 1 and not lab.tie[0]
    np.testing.assert_array_equal(lab.mask(4), [[1, 1, 0, 0]])
    # weight 0: relevance alone picks rule 1, on which B is ahead (-0.1 > -0.2)
    lab0 = label_arrays(A, B, REL, "topk_discrepancy", 1, weight=0.0)
    np.testing.assert_array_equal(lab0.indices, [[1]])
    assert lab0.winner[0] == 0
    # a large weight makes it max-discrepancy
    np.testing.assert_array_equal(select_rules(A, B, REL, "topk_discrepancy", 2, weight=100.0), [[0, 3]])


def test_max_discrepancy_and_all_rules_by_hand():
    lab = label_arrays(A, B, REL, "max_discrepancy", 2)
    np.testing.assert_array_equal(lab.indices, [[0, 3]])
    assert lab.score_a[0] == pytest.approx(0.9) and lab.score_b[0] == pytest.approx(0.1)
    assert lab.winner[0] == 1
    lab = label_arrays(A, B, REL, "all_rules", 2)  # k is ignored
    assert lab.k == 4
    np.testing.assert_array_equal(lab.indices, [[0, 1, 2, 3]])
    assert lab.score_a[0] == pytest.approx(0.8) and lab.score_b[0] == pytest.approx(0.1)


def test_ranking_ties_go_to_the_lower_rule_index():
    z = np.zeros((1, 5))
    np.testing.assert_array_equal(select_rules(z, z, z, "topk_discrepancy", 3), [[0, 1, 2]])
    np.testing.assert_array_equal(select_rules(z, z, np.array([[0, 1, 0, 1, 0.0]]), "topk_discrepancy", 3),
                                  [[1, 3, 0]])


def test_random_k_is_seeded_and_without_replacement():
    n, r = 50, 10
    z = np.zeros((n, r))
    idx = select_rules(z, z, z, "random_k", 4, seed=3)
    assert idx.shape == (n, 4)
    assert all(len(set(row)) == 4 for row in idx.tolist())
    np.testing.assert_array_equal(idx, select_rules(z, z, z, "random_k", 4, seed=3))
    assert not np.array_equal(idx, select_rules(z, z, z, "random_k", 4, seed=4))
    assert len({tuple(row) for row in idx.tolist()}) > 10  # differs per pair
    assert set(idx.ravel().tolist()) == set(range(r))


TIE_A = np.array([[0.5, 0.25], [1.0, 0.0]])
TIE_B = np.array([[0.25, 0.5], [0.0, 0.0]])


@pytest.mark.parametrize("ties, expected", [("skip", [-1, 1]), ("a", [1, 1]), ("b", [0, 1])])
def test_tie_handling(ties, expected):
    lab = label_arrays(TIE_A, TIE_B, np.zeros((2, 2)), "all_rules", ties=ties)
    np.testing.assert_array_equal(lab.tie, [True, False])
    np.testing.assert_array_equal(lab.winner, expected)


def test_random_ties_are_seeded_coins():
    sa, sb = np.zeros(200), np.zeros(200)
    w1, tie = resolve_ties(sa, sb, "random", seed=7)
    assert tie.all() and set(w1.tolist()) == {0, 1}
    assert 60 < w1.sum() < 140
    np.testing.assert_array_equal(w1, resolve_ties(sa, sb, "random", seed=7)[0])
    assert not np.array_equal(w1, resolve_ties(sa, sb, "random", seed=8)[0])
    w, _ = resolve_ties(np.array([1.0, 0.0]), np.array([0.0, 1.0]), "random")
    np.testing.assert_array_equal(w, [1, 0])  # non-ties are untouched


@pytest.mark.parametrize("kwargs, needle", [
    ({"strategy": "best"}, "unknown rule selection strategy 'best'"),
    ({"k": 0}, "--k 0: k must be an integer from 1 to the pool size (4 rules)"),
    ({"k": 5}, "--k 5: "),
    ({"k": True}, "--k True: "),
    ({"k": 2.0}, "--k 2.0: "),
    ({"ties": "coin"}, "unknown tie handling 'coin'"),
])
def test_option_errors(kwargs, needle):
    opts = {"strategy": "topk_discrepancy", "k": 2, "ties": "skip", **kwargs}
    with pytest.raises(UserError) as e:
        check_options(opts["strategy"], opts["k"], 4, opts["ties"])
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        label_arrays(A, B, REL, opts["strategy"], opts["k"], ties=opts["ties"])


def _synthetic_fit(n=3000, r=10, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, r)), rng.normal(size=(n, r))
    d = a - b
    gold = (2.0 * d[:, 0] - 1.5 * d[:, 3] + 0.3 * rng.normal(size=n) > 0).astype(np.int8)
    return a, b, gold


def test_fitted_linear_recovers_the_informative_rules():
    a, b, gold = _synthetic_fit()
    w = fit_linear(a - b, gold)
    top = np.argsort(-np.abs(w))[:2]
    assert set(top.tolist()) == {0, 3}
    assert w[0] > 0 > w[3]
    assert np.abs(w[[1, 2, 4, 5, 6, 7, 8, 9]]).max() < 0.2 * min(abs(w[0]), abs(w[3]))
    pairs = PairScores([{}] * len(gold), a, b, np.zeros_like(a), gold)
    lab = label_pairs(pairs, "fitted_linear", 2)
    assert np.mean(lab.winner == gold) > 0.9
    # rule_indices: the largest contributions |w_i (a_i - b_i)| to each pair's margin
    contrib = np.abs(w * (a - b))
    np.testing.assert_array_equal(lab.indices[:, 0], contrib.argmax(axis=1))
    np.testing.assert_allclose(lab.score_a - lab.score_b, (a - b) @ w, atol=1e-9)
    # summing all rules unweighted is much worse on the same data
    assert np.mean(label_pairs(pairs, "all_rules").winner == gold) < 0.8


def test_fitted_linear_l2_shrinks_and_separable_data_stays_finite():
    a, b, gold = _synthetic_fit(n=400)
    w_small, w_big = fit_linear(a - b, gold, l2=1e-3), fit_linear(a - b, gold, l2=1.0)
    assert np.linalg.norm(w_big) < np.linalg.norm(w_small)
    d = np.array([[1.0], [-1.0], [2.0], [-2.0]])
    w = fit_linear(d, np.array([1, 0, 1, 0]))  # perfectly separable: L2 keeps it finite
    assert np.isfinite(w).all() and w[0] > 0


def test_fitted_linear_errors():
    with pytest.raises(UserError, match="fitted weights"):
        select_rules(A, B, REL, "fitted_linear", 2)
    no_gold = PairScores([{}], A, B, REL, np.array([-1], dtype=np.int8))
    with pytest.raises(UserError, match="needs gold-labeled pairs"):
        label_pairs(no_gold, "fitted_linear", 2)
    other = PairScores([{}], A[:, :2], B[:, :2], REL[:, :2], np.array([1], dtype=np.int8))
    with pytest.raises(UserError, match="the fit pairs have 2 rules, the pairs to label 4"):
        label_pairs(no_gold, "fitted_linear", 2, fit=other)


# ---- mutual information ----

def _from_table(table):
    labels, gold = [], []
    for i in range(2):
        for j in range(2):
            labels += [i] * table[i][j]
            gold += [j] * table[i][j]
    return np.array(labels), np.array(gold)


def test_mutual_information_hand_computed_table():
    # p = [[.4, .1], [.2, .3]], label marginals (.5, .5), gold marginals (.6, .4)
    expected = (0.4 * math.log2(0.4 / 0.3) + 0.1 * math.log2(0.1 / 0.2)
                + 0.2 * math.log2(0.2 / 0.3) + 0.3 * math.log2(0.3 / 0.2))
    assert expected == pytest.approx(0.124511, abs=1e-6)
    labels, gold = _from_table([[20, 5], [10, 15]])
    np.testing.assert_array_equal(diag.contingency(labels, gold), [[20, 5], [10, 15]])
    assert diag.mutual_information(labels, gold) == pytest.approx(expected, abs=1e-12)
    assert diag.mutual_information_table([[20, 5], [10, 15]]) == pytest.approx(expected, abs=1e-12)


def test_mutual_information_extremes():
    assert diag.mutual_information(*_from_table([[10, 10], [10, 10]])) == pytest.approx(0.0, abs=1e-12)
    assert diag.mutual_information(*_from_table([[30, 10], [15, 5]])) == pytest.approx(0.0, abs=1e-12)
    gold = np.array([0, 1] * 50)
    assert diag.mutual_information(gold, gold) == pytest.approx(1.0)
    assert diag.mutual_information(1 - gold, gold) == pytest.approx(1.0)
    assert diag.mutual_information(np.zeros(100, int), gold) == 0.0  # constant label carries nothing
    assert diag.mutual_information_table(np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError):
        diag.contingency([0, 2], [0, 1])


def test_bootstrap_interval_contains_the_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    labels = np.where(rng.random(400) < 0.8, gold, 1 - gold)
    point = diag.mutual_information(labels, gold)
    lo, hi = diag.bootstrap_mi(labels, gold, n_boot=500, seed=1)
    assert 0 <= lo < point < hi <= 1
    assert (lo, hi) == diag.bootstrap_mi(labels, gold, n_boot=500, seed=1)
    lo90, hi90 = diag.bootstrap_mi(labels, gold, n_boot=500, seed=1, level=0.5)
    assert lo <= lo90 <= hi90 <= hi
    with pytest.raises(UserError, match="level"):
        diag.bootstrap_mi(labels, gold, level=1.0)
    with pytest.raises(UserError, match="resamples"):
        diag.bootstrap_mi(labels, gold, n_boot=0)


def _planted_pairs(n=600, r=12, seed=0):
    """Each pair's gold is decided by two pair-specific rules with large discrepancies and high
    relevance; every other rule scores both responses with independent noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-0.6, 0.6, (n, r)), rng.uniform(-0.6, 0.6, (n, r))
    rel = rng.uniform(0.0, 0.3, (n, r))
    gold = rng.integers(0, 2, n).astype(np.int8)
    for i in range(n):
        for j in rng.choice(r, 2, replace=False):
            hi, lo = rng.uniform(0.7, 1.0), rng.uniform(-1.0, -0.7)
            a[i, j], b[i, j] = (hi, lo) if gold[i] == 1 else (lo, hi)
            rel[i, j] = rng.uniform(0.7, 1.0)
    return PairScores([{"id": str(i)} for i in range(n)], a, b, rel, gold)


def test_diagnose_rows_and_that_discrepancy_beats_random():
    pairs = _planted_pairs()
    rows = diag.diagnose(pairs, ks=(3, 5, 8), n_boot=200)
    keyed = {(r["strategy"], r["k"]): r for r in rows}
    assert set(keyed) == {(s, k) for s in ("topk_discrepancy", "max_discrepancy", "random_k") for k in (3, 5, 8)} \
        | {("all_rules", None), ("fitted_linear", None)}
    for r in rows:
        assert r["gold_pairs"] == 600 and r["labeled"] + r["ties"] == 600
        assert 0 <= r["mi_low"] <= r["mi_high"] <= 1
        assert 0 <= r["agreement"] <= 1
    top, rnd, all_ = keyed[("topk_discrepancy", 5)], keyed[("random_k", 5)], keyed[("all_rules", None)]
    assert top["agreement"] > rnd["agreement"] + 0.1
    assert top["agreement"] > all_["agreement"]
    assert top["mutual_information"] > rnd["mutual_information"]
    assert top["mi_low"] > rnd["mi_high"]
    table = diag.format_table(rows)
    assert "topk_discrepancy" in table and len(table.splitlines()) == len(rows) + 2


def test_diagnose_needs_gold_and_refuses_oversized_k():
    pairs = _planted_pairs(n=40, r=4)
    rows = diag.diagnose(pairs, strategies=("max_discrepancy",), ks=(3, 4), n_boot=10)
    assert [r["k"] for r in rows] == [3, 4]
    with pytest.raises(UserError, match=r"^--ks 5 8: k must be an integer from 1 to the pool size \(4 rules\)$"):
        diag.diagnose(pairs, strategies=("max_discrepancy",), ks=(3, 5, 8), n_boot=10)
    no_gold = pairs.subset(np.arange(5))
    no_gold.gold[:] = -1
    with pytest.raises(UserError, match="gold 'winner'"):
        diag.diagnose(no_gold, ks=(3,))


# ---- files and commands ----

def _pair_file(tmp_path):
    # pair 0: A clearly better on rule 0; pair 1: an exact tie on every rule; pair 2: B better
    pairs = PairScores(
        [{"id": "p0", "prompt": "q0", "a": "A0", "b": "B0"}, {"id": "p1", "prompt": "q1", "a": "A1", "b": "B1"},
         {"id": "p2", "prompt": "q2", "a": "A2", "b": "B2"}],
        np.array([[0.9, 0.0, 0.0], [0.5, 0.5, 0.0], [-0.8, 0.0, 0.1]]),
        np.array([[-0.9, 0.0, 0.0], [0.5, 0.5, 0.0], [0.8, 0.0, 0.1]]),
        np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        np.array([1, 0, -1], dtype=np.int8))
    path = str(tmp_path / "pairs.jsonl")
    write_pair_scores(path, pairs)
    pool = [Rule("r0", "Prefer the response that is safe."), Rule("r1", "Prefer the response that is honest."),
            Rule("r2", "Prefer the response that is kind.")]
    return path, pool


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_select_file_schema(tmp_path):
    path, pool = _pair_file(tmp_path)
    out = str(tmp_path / "sel.jsonl")
    s = select_file(path, out, "topk_discrepancy", 2, rules=pool)
    rows = _read(out)
    assert s == {"strategy": "topk_discrepancy", "k": 2, "pairs": 3, "ties": 1, "written": 3, "gold_pairs": 1,
                 "agreement": 1.0}
    assert [r["rule_winner"] for r in rows] == ["A", "tie", "B"]
    r0 = rows[0]
    assert r0["rule_indices"] == [0, 1] and r0["rule_ids"] == ["r0", "r1"] and r0["labels"] == [1, 1, 0]
    assert r0["score_a"] == pytest.approx(0.9) and r0["score_b"] == pytest.approx(-0.9)
    assert r0["winner"] == "A" and r0["id"] == "p0" and r0["strategy"] == "topk_discrepancy" and r0["k"] == 2
    assert "scores_a" not in r0 and "chosen" not in r0
    select_file(path, out, "max_discrepancy", 1)  # no pool: no rule ids
    assert "rule_ids" not in _read(out)[0] and _read(out)[0]["rule_indices"] == [0]


def test_label_file_schema_and_ties(tmp_path):
    path, pool = _pair_file(tmp_path)
    out = str(tmp_path / "lab.jsonl")
    s = label_file(path, out, "all_rules", rules=pool)
    rows = _read(out)
    assert s["written"] == 2 and s["ties"] == 1 and s["ties_handling"] == "skip"
    assert [r["id"] for r in rows] == ["p0", "p2"]
    assert rows[0]["chosen"] == "A0" and rows[0]["rejected"] == "B0" and rows[0]["rule_winner"] == "A"
    assert rows[1]["chosen"] == "B2" and rows[1]["rejected"] == "A2" and rows[1]["rule_winner"] == "B"
    assert rows[0]["tie"] is False and rows[0]["labels"] == [1, 1, 1] and rows[0]["k"] == 3
    label_file(path, out, "all_rules", ties="b", rules=pool)
    rows = _read(out)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert rows[1]["tie"] is True and rows[1]["rule_winner"] == "B" and rows[1]["chosen"] == "B1"


def test_file_pool_size_mismatch_is_a_line_error(tmp_path):
    path, pool = _pair_file(tmp_path)
    with pytest.raises(DataError, match=rf"^{path}:1: field 'scores_a' has 3 values, expected 2"):
        select_file(path, str(tmp_path / "o.jsonl"), rules=pool[:2])
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(UserError, match="--fit-pairs needs --fit-scores"):
        label_file(path, str(tmp_path / "o.jsonl"), "fitted_linear", fit_pairs_path=path)


def test_commands(tmp_path, capsys):
    planted = _planted_pairs(n=200, r=6)
    path = str(tmp_path / "pairs.jsonl")
    write_pair_scores(path, planted)
    pool_path = str(tmp_path / "pool.jsonl")
    write_pool(pool_path, [Rule(f"r{i}", f"Prefer the response that follows rule {i}.") for i in range(6)])
    sel = str(tmp_path / "sel.jsonl")
    handle("rules", "select", "--scores", path, "--out", sel, "--rules", pool_path, "--k", "3")
    assert "wrote 200 selections" in capsys.readouterr().out
    assert len(_read(sel)) == 200 and _read(sel)[0]["rule_ids"][0].startswith("r")
    lab, dj = str(tmp_path / "lab.jsonl"), str(tmp_path / "diag.json")
    handle("rules", "label", "--scores", path, "--out", lab, "--rules", pool_path, "--ties", "a",
                                        "--diagnostics", dj, "--ks", "2", "3", "--n-boot", "50")
    out = capsys.readouterr().out
    assert "labeled pairs (ties: a)" in out and "agreement with gold" in out and "fitted_linear" in out
    rows = json.load(open(dj))
    assert {r["strategy"] for r in rows} == {"topk_discrepancy", "max_discrepancy", "random_k", "all_rules",
                                             "fitted_linear"}
    assert len(_read(lab)) == 200
    # only the required options: the built-in pool of 100 rules, which these 6-rule scores were
    # not made with
    with pytest.raises(DataError, match="the built-in pool has 100 rules"):
        handle("rules", "select", "--scores", path, "--out", sel)


def test_scores_from_a_custom_pool_without_rules_say_to_pass_the_pool(tmp_path):
    """No --rules: the built-in pool. Scores made with another pool were blamed on their score
    vectors ("expected 100") or, at 100 rules, silently given the built-in pool's ids."""
    path, _ = _pair_file(tmp_path)  # 3 rules
    out = str(tmp_path / "o.jsonl")
    want = (rf"^{path}: scored with a custom rule pool \(its score vectors have 3 values, the built-in pool has 100 "
            r"rules\) and no --rules given: pass --rules FILE with the pool used for scoring$")
    for step in ("select", "label"):
        with pytest.raises(DataError, match=want):
            handle("rules", step, "--scores", path, "--out", out)
    assert not os.path.exists(out)
    # a custom pool of 100 rules: the rule ids its earlier selection recorded give it away
    rng = np.random.default_rng(0)
    rows = [{"id": f"p{i}", "rule_ids": ["mine-3", "mine-7"]} for i in range(4)]
    hundred = str(tmp_path / "hundred.jsonl")
    write_pair_scores(hundred, PairScores(rows, rng.random((4, 100)), rng.random((4, 100)), rng.random((4, 100)),
                                          np.full(4, -1, np.int8)))
    with pytest.raises(DataError, match=rf"^{hundred}: scored with a custom rule pool \(pair 1 records rule id "
                                        r"'mine-3', which the built-in pool lacks\) and no --rules given"):
        handle("rules", "select", "--scores", hundred, "--out", out)
    # scores of the built-in pool's size without foreign ids: the built-in pool, as before
    for r in rows:
        del r["rule_ids"]
    write_pair_scores(hundred, PairScores(rows, rng.random((4, 100)), rng.random((4, 100)), rng.random((4, 100)),
                                          np.full(4, -1, np.int8)))
    handle("rules", "select", "--scores", hundred, "--out", out, "--k", "2")
    assert _read(out)[0]["rule_ids"][0] in {r.id for r in load_pool()}
