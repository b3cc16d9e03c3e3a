"""Test-time voting (``rmr1 eval --samples k --vote RULE``) on hand-made votes: the majority and
mean-probability rules with their ties and missing verdicts, the accuracy at every k' <= k read
back from stored votes, and the report's table. (End to end with a tiny judge:
tests/eval/test_eval_cli.py.)"""

from __future__ import annotations

import pytest

from rmr1_jax.errors import UserError
from rmr1_jax.eval import voting
from rmr1_jax.eval.report import summary_line, to_markdown
from rmr1_jax.eval.scoring import score_rows


def test_majority_ties_and_missing_verdicts():
    assert voting.majority(["A", "A", "B"]) == "A"
    assert voting.majority(["A", "B", None, "B"]) == "B"  # a sample without a verdict abstains
    assert voting.majority([None, "B"]) == "B"
    assert voting.majority(["A", "B"]) is None  # a tie is no verdict
    assert voting.majority([None, None]) is None and voting.majority([]) is None


def test_mean_prob_thresholds_the_mean_at_one_half():
    assert voting.mean_prob([0.9, 0.2, None]) == ("A", pytest.approx(0.55))  # None abstains
    assert voting.mean_prob([0.4, 0.4]) == ("B", pytest.approx(0.4))
    assert voting.mean_prob([0.75, 0.25]) == (None, 0.5)  # exactly 1/2: no verdict
    assert voting.mean_prob([None, None]) == (None, None)
    # the two rules disagree on the same samples: two B letters, but A's probability mass
    assert voting.aggregate("majority", ["A", "B", "B"], [0.95, 0.45, 0.45]) == ("B", pytest.approx(0.6166666))
    assert voting.aggregate("mean-prob", ["A", "B", "B"], [0.95, 0.45, 0.45])[0] == "A"
    with pytest.raises(ValueError, match="probability"):
        voting.aggregate("mean-prob", ["A"])
    with pytest.raises(ValueError, match="unknown vote rule"):
        voting.aggregate("median", ["A"])


def test_check_voting_defaults_and_error_lines():
    assert voting.check_voting(1, None, None) == (None, 0.0)  # one greedy judgment, as before
    assert voting.check_voting(1, None, 0.7) == (None, 0.7)  # one sampled judgment
    assert voting.check_voting(8, None, None) == ("majority", 1.0)
    assert voting.check_voting(8, "mean-prob", 0.5) == ("mean-prob", 0.5)
    for args, msg in [((0, None, None), "at least 1"), ((1, "majority", None), "needs --samples K with K > 1"),
                      ((4, None, 0.0), "needs --temperature > 0"), ((4, None, -1.0), "0 \\(greedy\\) or positive"),
                      ((4, "mode", None), "must be one of majority, mean-prob")]:
        with pytest.raises(UserError, match=msg):
            voting.check_voting(*args)


def test_ks_upto():
    assert voting.ks_upto(1) == [1] and voting.ks_upto(16) == [1, 2, 4, 8, 16]
    assert voting.ks_upto(6) == [1, 2, 4, 6]


def test_vote_outputs_turn_samples_into_one_verdict():
    outs = [{"judgment": ["x", "y", "z"], "verdict": ["B", None, "B"], "finished": [True, False, True]},
            {"judgment": ["u", "v"], "verdict": ["A", "B"], "finished": [True, True], "prob_a": [0.8, 0.4]}]
    got = voting.vote_outputs(outs, "majority")
    assert got[0] == {"verdict": "B", "votes": ["B", None, "B"], "judgment": ["x", "y", "z"], "vote": "majority"}
    assert got[1]["verdict"] is None and got[1]["vote_probs"] == [0.8, 0.4]
    assert got[1]["prob_a"] == pytest.approx(0.6)
    assert voting.vote_outputs(outs[1:], "mean-prob")[0]["verdict"] == "A"


def _rows():
    """Three pairs judged with k = 4 majority votes (stored verdict: the vote of all 4)."""
    base = {"benchmark": "rewardbench", "subset": "alpacaeval-easy", "pair_index": 0, "vote": "majority"}
    return [
        # one order, A better: A | tie | tie
        {**base, "item_id": "1", "winner": "A", "votes": ["A", "B", "B", "A"], "verdict": None},
        # one order, B better: none | B | B (2 to 1)
        {**base, "item_id": "2", "winner": "B", "votes": [None, "B", "A", "B"], "verdict": "B"},
        # both orders (first A better, then B): first A, A, A; swapped A, tie, B (3 to 1)
        {**base, "item_id": "3", "winner": ["A", "B"], "votes": ["A", "A", "A", "B"],
         "votes_swapped": ["A", "B", "B", "B"], "verdict": ["A", "B"]},
    ]


def test_accuracy_at_every_k_from_the_stored_votes():
    rows = _rows()
    assert [voting.at_k(r, 2)["verdict"] for r in rows] == [None, "B", ["A", None]]
    zero = voting.accuracy_against_k(rows, "zero")
    assert zero["samples"] == 4 and zero["n"] == 3 and zero["vote"] == "majority"
    by_k = {r["k"]: r for r in zero["by_k"]}
    assert list(by_k) == [1, 2, 4]
    # correct per pair: k=1: 1, 0 (no verdict), (1 + 0) / 2; k=2: 0 (tie), 1, (1 + 0) / 2; k=4: 0, 1, 1
    assert [by_k[k]["accuracy"] for k in (1, 2, 4)] == pytest.approx([1.5 / 3, 1.5 / 3, 2 / 3])
    assert [by_k[k]["no_verdict_rate"] for k in (1, 2, 4)] == [1 / 4, 2 / 4, 1 / 4]
    assert [by_k[k]["position_consistency"] for k in (1, 2, 4)] == [0.0, 0.0, 1.0]
    # a tie or a missing verdict is scored as eval scores a missing verdict: half counts 0.5
    half = {r["k"]: r["accuracy"] for r in voting.accuracy_against_k(rows, "half")["by_k"]}
    assert [half[k] for k in (1, 2, 4)] == pytest.approx([2 / 3, 2.25 / 3, 2.5 / 3])
    assert voting.accuracy_against_k([{"verdict": "A", "winner": "A"}]) is None  # nothing voted


def test_mean_prob_rows_at_k():
    row = {"benchmark": "rewardbench", "subset": "alpacaeval-easy", "item_id": "p", "pair_index": 0,
           "vote": "mean-prob", "winner": "A", "votes": ["A", "B", None, "B"], "vote_probs": [0.9, 0.2, None, 0.4],
           "verdict": None, "prob_a": 0.5}
    assert (voting.at_k(row, 1)["verdict"], voting.at_k(row, 1)["prob_a"]) == ("A", 0.9)
    assert voting.at_k(row, 2)["verdict"] == "A" and voting.at_k(row, 2)["prob_a"] == pytest.approx(0.55)
    assert voting.at_k(row, 4)["verdict"] is None  # mean of 0.9, 0.2, 0.4 is 1/2: a tie
    acc = [r["accuracy"] for r in voting.accuracy_against_k([row])["by_k"]]
    assert acc == [1.0, 1.0, 0.0]


def test_summary_and_report_carry_the_k_table():
    s = score_rows("rewardbench", _rows(), "zero")
    v = s["voting"]
    # the stored verdicts are those of all k votes: the table's last row is the summary's score
    assert v["by_k"][-1]["accuracy"] == pytest.approx(s["subsets"]["alpacaeval-easy"]["accuracy"])
    assert all(r["overall"] is None for r in v["by_k"])  # one subset: no RewardBench overall
    md = to_markdown(s)
    assert "### Accuracy against k" in md and "a tie is no verdict" in md
    assert "| k | Accuracy % | No verdict % | Position consistency % |" in md
    assert "| 4 | 66.7 | 25.0 | 100.0 |" in md
    assert "majority vote, accuracy at k = 1/2/4: 50.0/50.0/66.7" in summary_line(s)


def test_plot(tmp_path):
    s = voting.accuracy_against_k(_rows())
    assert voting.plot(s, str(tmp_path / "k.png"), "test").endswith("k.png")
