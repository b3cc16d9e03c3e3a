"""Pairwise verdicts to per-sample rewards, against hand-worked groups.

The judge here is a rule whose verdicts are known by hand: the longer response wins; two
responses of equal length get "A" in both orders (a position bias: inconsistent, a tie); a
response holding "?" gets no verdict.
"""

from __future__ import annotations

import numpy as np
import pytest

from rmr1_jax.inference.group_rewards import (REFERENCE, SCHEMES, judge_calls, match_outcome, points,
                                              score_groups)


class LengthJudge:
    """Prefers the longer response; records every call's triples."""

    def __init__(self):
        self.calls = []

    def __call__(self, triples):
        self.calls.append(list(triples))
        out = []
        for _, a, b in triples:
            if "?" in a or "?" in b:
                out.append(None)
            else:
                out.append("A" if len(a) >= len(b) else "B")
        return out


def test_a_match_is_won_in_both_orders_or_a_tie():
    assert match_outcome(0, 1, "A", "B").winner == 0  # 0 at A wins, then 0 at B wins
    assert match_outcome(0, 1, "B", "A").winner == 1
    same_a = match_outcome(0, 1, "A", "A")  # whoever sits at A wins: position bias
    assert same_a.winner is None and same_a.inconsistent and not same_a.no_verdict
    assert match_outcome(0, 1, "B", "B").inconsistent
    missing = match_outcome(0, REFERENCE, None, "A")
    assert missing.winner is None and missing.no_verdict and not missing.inconsistent
    assert [points(match_outcome(0, 1, "A", "B"), k) for k in (0, 1)] == [1.0, 0.0]
    assert [points(same_a, k) for k in (0, 1)] == [0.5, 0.5]


def test_reference_scheme():
    judge = LengthJudge()
    # against "xx": longer wins (1), shorter loses (0), equal length is a position-biased tie (1/2),
    # and a response the judge gives no verdict on is a tie too
    out = score_groups("reference", ["q"], [["xxx", "x", "yy", "?zzz"]], judge, references=["xx"])
    np.testing.assert_array_equal(out.rewards[0], [1.0, 0.0, 0.5, 0.5])
    assert out.judge_calls == 8 == judge_calls("reference", 4) and out.rounds == 1 and out.matches == 4
    assert out.inconsistent == 1 and out.no_verdict == 1 and out.inconsistent_rate == 0.25
    # each match: sample at A then the reference at A, side by side
    assert judge.calls[0][:2] == [("q", "xxx", "xx"), ("q", "xx", "xxx")]
    with pytest.raises(ValueError, match="needs a reference answer"):
        score_groups("reference", ["q"], [["a"]], judge)


@pytest.mark.parametrize("group,want", [
    (["xxx", "x", "xx"], [1.0, 0.0, 0.5]),  # G odd: 2, 0 and 1 wins of 2
    (["xxx", "x", "xx", "yy"], [1.0, 0.0, 0.5, 0.5]),  # G even: "xx" and "yy" tie (1 + 0.5 of 3)
])
def test_round_robin_is_the_win_rate(group, want):
    judge = LengthJudge()
    out = score_groups("round_robin", ["q"], [group], judge)
    np.testing.assert_allclose(out.rewards[0], want)
    g = len(group)
    assert out.judge_calls == g * (g - 1) == judge_calls("round_robin", g) and out.rounds == 1
    assert out.inconsistent == (1 if g == 4 else 0)


@pytest.mark.parametrize("g", [2, 4, 5, 7, 8])
def test_knockout_rewards_the_round_reached(g):
    judge = LengthJudge()
    group = ["x" * (k + 1) for k in range(g)]  # every length different: the longest wins it all
    out = score_groups("knockout", ["q"], [group], judge, seed=3)
    r = int(np.ceil(np.log2(g)))
    rewards = out.rewards[0]
    assert out.matches == g - 1 and out.judge_calls == 2 * (g - 1) == judge_calls("knockout", g)
    assert out.rounds == len(judge.calls) == r
    assert rewards[g - 1] == 1.0 and rewards.max() == 1.0 and (rewards == 1.0).sum() == 1
    # 2^R - G byes reach round 2 unjudged; half of each round's entrants get through it
    reached = np.round(rewards * r).astype(int) + 1
    for k in range(2, r + 2):
        assert (reached >= k).sum() == 2 ** (r + 1 - k), (k, rewards)
    assert (rewards == 0).sum() == g - 2 ** (r - 1)  # the first-round losers
    # the bracket is the seed's: the same seed gives the same rewards
    again = score_groups("knockout", ["q"], [group], LengthJudge(), seed=3)
    np.testing.assert_array_equal(again.rewards[0], rewards)


def test_knockout_ties_advance_one_side_and_are_counted():
    out = score_groups("knockout", ["q"], [["same"] * 6], LengthJudge(), seed=0)
    rewards = out.rewards[0]
    assert out.matches == 5 and out.inconsistent == 5 and out.inconsistent_rate == 1.0
    assert (rewards == 1.0).sum() == 1 and sorted(np.round(rewards * 3).astype(int).tolist()) == [0, 0, 1, 1, 2, 3]
    brackets = {tuple(score_groups("knockout", ["q"], [["same"] * 6], LengthJudge(), seed=s).rewards[0])
                for s in range(6)}
    assert len(brackets) > 1  # the seed draws the bracket (and the coin of a tie)


def test_soft_matches_pay_the_probability_of_being_the_better_one():
    # i at A first: P(A) = 0.8; swapped (j at A): P(A) = 0.3, so P(i better) there is 0.7
    o = match_outcome(0, 1, "A", "B", 0.8, 0.3)
    assert o.winner == 0 and not o.inconsistent and points(o, 0) == pytest.approx(0.75)
    assert points(o, 1) == pytest.approx(0.25)
    # the letters disagree on the position (A both times) but the probabilities still rank them
    o = match_outcome(0, 1, "A", "A", 0.9, 0.6)
    assert o.inconsistent and o.winner == 0 and points(o, 0) == pytest.approx(0.65)
    # one order without a verdict: the other order's probability alone; none: a tie
    o = match_outcome(0, 1, "B", None, 0.2, None)
    assert o.no_verdict and o.winner == 1 and points(o, 1) == pytest.approx(0.8)
    assert match_outcome(0, 1, "A", "B", 0.5, 0.5).winner is None  # exactly 1/2: a tie
    # round robin of three with soft matches: each reward is the mean probability over its matches
    p_a = {("x", "y"): 0.9, ("y", "x"): 0.2, ("x", "z"): 0.6, ("z", "x"): 0.6, ("y", "z"): 0.3, ("z", "y"): 0.5}
    out = score_groups("round_robin", ["q"], [["x", "y", "z"]],
                       lambda triples: [("A" if p_a[(a, b)] > 0.5 else "B", p_a[(a, b)]) for _, a, b in triples])
    x_y, x_z, y_z = (0.9 + 0.8) / 2, (0.6 + 0.4) / 2, (0.3 + 0.5) / 2
    np.testing.assert_allclose(out.rewards[0], [(x_y + x_z) / 2, (1 - x_y + y_z) / 2, (1 - x_z + 1 - y_z) / 2])


def test_a_group_key_draws_the_same_bracket_wherever_the_group_sits():
    """Groups split over processes (each process scoring its own) must draw what one process
    scoring all of them draws: keyed brackets do, index-keyed ones need not."""
    groups = [["same"] * 6, ["same"] * 6]
    together = score_groups("knockout", ["q1", "q2"], groups, LengthJudge(), seed=0, group_keys=[11, 42])
    alone = score_groups("knockout", ["q2"], groups[1:], LengthJudge(), seed=0, group_keys=[42])
    np.testing.assert_array_equal(together.rewards[1], alone.rewards[0])
    by_index = score_groups("knockout", ["q2"], groups[1:], LengthJudge(), seed=0)  # key 0, as the first group
    np.testing.assert_array_equal(by_index.rewards[0], score_groups("knockout", ["q1", "q2"], groups, LengthJudge(),
                                                                     seed=0).rewards[0])


def test_every_groups_round_goes_to_the_judge_in_one_call():
    judge = LengthJudge()
    groups = [["x" * (k + 1) for k in range(5)], ["y", "yy"], ["z" * (k + 1) for k in range(4)]]
    out = score_groups("knockout", ["p0", "p1", "p2"], groups, judge, seed=1)
    assert len(judge.calls) == out.rounds == 3  # the deepest bracket's rounds, not one call a match
    assert out.judge_calls == 2 * (4 + 1 + 3) == sum(len(c) for c in judge.calls)
    for call in judge.calls:  # each match in both orders, side by side, under its own prompt
        for (p1, a1, b1), (p2, a2, b2) in zip(call[0::2], call[1::2]):
            assert (p1, a1, b1) == (p2, b2, a2) and a1[0] == {"p0": "x", "p1": "y", "p2": "z"}[p1]
    assert [len(r) for r in out.rewards] == [5, 2, 4]
    assert out.metrics()["judge_calls_per_group"] == out.judge_calls / 3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown pairwise reward scheme 'elo'"):
        score_groups("elo", ["q"], [["a", "b"]], LengthJudge())
    with pytest.raises(ValueError, match="at least 2 samples"):
        score_groups("round_robin", ["q"], [["a"]], LengthJudge())
    with pytest.raises(ValueError, match="returned 1 verdicts for 2 judgments"):
        score_groups("round_robin", ["q"], [["a", "b"]], lambda t: ["A"])
    assert set(SCHEMES) == {"reference", "round_robin", "knockout"}
