"""The A/B rules of :mod:`rmr1_jax.ab_positions`: placement balance, the flip back from the swapped
order, both-orders accuracy and position consistency on hand-worked examples."""

import ast
import collections
import itertools

import pytest

from rmr1_jax import ab_positions as ab
from rmr1_jax.data.schemas import PreferencePair, assign_positions, pair_to_example
from rmr1_jax.eval.benchmarks import ComparisonTask
from rmr1_jax.eval.runs import first_shown_as_a


def test_alternating_placement_is_balanced_in_every_prefix():
    for seed in range(8):
        start = ab.seeded_start(seed)
        assert start in (0, 1)
        labels = [ab.place("chosen", "rejected", ab.alternate_at_a(i, start))[2] for i in range(51)]
        for k in range(1, len(labels) + 1):
            c = collections.Counter(labels[:k])
            assert abs(c["A"] - c["B"]) <= 1
        assert labels[0] == ("A" if start == 0 else "B")
    # both starts occur, so the seed decides which label the stream begins with
    assert {ab.seeded_start(s) for s in range(16)} == {0, 1}


def test_alternate_from_zero_puts_even_items_at_a():
    assert [ab.alternate_at_a(i) for i in range(4)] == [True, False, True, False]


def test_place_returns_the_position_of_the_first():
    assert ab.place("c", "r", True) == ("c", "r", "A")
    assert ab.place("c", "r", False) == ("r", "c", "B")


def test_flip_and_swap_map_back():
    assert [ab.flip(x) for x in ("A", "B", None)] == ["B", "A", None]
    for x in ("A", "B", None):
        assert ab.flip(ab.flip(x)) == x
    a, b, w = ab.place("c", "r", False)
    assert ab.swap(a, b, w) == ("c", "r", "A")
    assert ab.swap(*ab.swap(a, b, w)) == (a, b, w)
    with pytest.raises(KeyError):
        ab.flip("model_a")


def test_data_placement_uses_the_ab_rule():
    pair = PreferencePair("p", [{"role": "user", "content": "Q?"}], [{"role": "assistant", "content": "good"}],
                          [{"role": "assistant", "content": "bad"}])
    for seed in (0, 1, 5):
        for i in range(6):
            want = ab.place(pair.chosen, pair.rejected, ab.alternate_at_a(i, ab.seeded_start(seed)))
            assert assign_positions(pair, i, seed) == want
            ex, sw = pair_to_example(pair, i, seed), pair_to_example(pair, i, seed, swap=True)
            assert sw.winner == ab.flip(ex.winner) == sw.chosen_position


def test_coin_is_seeded_and_keyed_by_the_task():
    flips = [ab.coin_at_a(3, "rewardbench", str(i), 0) for i in range(400)]
    assert flips == [ab.coin_at_a(3, "rewardbench", str(i), 0) for i in range(400)]
    assert 150 < sum(flips) < 250
    assert flips != [ab.coin_at_a(4, "rewardbench", str(i), 0) for i in range(400)]
    task = ComparisonTask("rewardbench", "17", "alpacaeval-easy", 0, [], "x", "y")
    assert first_shown_as_a(task, 3) == ab.coin_at_a(3, "rewardbench", "17", 0)


def test_position_consistent_by_hand():
    # better response at A first, then at B
    assert ab.position_consistent(["A", "B"], ["A", "B"])  # right both times
    assert ab.position_consistent(["B", "A"], ["A", "B"])  # wrong both times, still consistent
    assert not ab.position_consistent(["A", "A"], ["A", "B"])  # always says A: a position bias
    assert not ab.position_consistent(["A", None], ["A", "B"])
    assert not ab.position_consistent([None, None], ["A", "B"])
    # the verdict of the swapped order mapped back names the same response exactly when consistent
    for v0, v1 in itertools.product(("A", "B", None), repeat=2):
        want = v0 is not None and v0 == ab.flip(v1)
        assert ab.position_consistent([v0, v1], ["A", "B"]) == want
        assert ab.position_consistent([v0, v1], ["B", "A"]) == want


def _row(verdict, swapped_as_shown):
    """A judge_pairs(both_orders=True) row from the two verdicts as the judge gave them."""
    return {"verdict": verdict, "verdict_swapped": ab.flip(swapped_as_shown),
            "consistent": ab.position_consistent([verdict, swapped_as_shown], ["A", "B"])}


def test_both_orders_metrics_by_hand():
    rows = [_row("A", "B"),  # winner A: right twice, consistent
            _row("A", "A"),  # winner B: wrong, then right (swapped "A" is the original B)
            _row(None, "B"),  # winner A: no verdict, then right
            _row("B", None)]  # winner B: right, then no verdict
    winners = ["A", "B", "A", "B"]
    assert [r["consistent"] for r in rows] == [True, False, False, False]
    m = ab.both_orders_metrics(rows, winners, groups=["x", "y", "x", "y"])
    # right: 2 + 1 + 1 + 1 = 5 of 8 judgments; 2 of 8 without a verdict; 1 of 4 consistent
    assert m == {"accuracy": 5 / 8, "no_verdict_rate": 2 / 8, "position_consistency": 1 / 4,
                 "by_group": {"x": 3 / 4, "y": 2 / 4}}
    assert "by_group" not in ab.both_orders_metrics(rows, winners)
    empty = ab.both_orders_metrics([], [])
    assert empty == {"accuracy": 0.0, "no_verdict_rate": 0.0, "position_consistency": 0.0}


def test_ab_positions_imports_nothing_of_the_package():
    """The A/B rules sit below data, train, eval and inference: every one of them imports them."""
    tree = ast.parse(open(ab.__file__, encoding="utf-8").read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not any(m == "rmr1_jax" or m.startswith("rmr1_jax.") for m in names), names
