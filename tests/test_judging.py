"""The A/B rules of :mod:`rmr1_jax.judging`: placement balance, the flip back from the swapped
order, both-orders accuracy and position consistency on hand-worked examples."""

import ast
import collections
import itertools

import pytest

from rmr1_jax import judging
from rmr1_jax.data.schemas import PreferencePair, assign_positions, pair_to_example
from rmr1_jax.eval.benchmarks import ComparisonTask
from rmr1_jax.eval.scalar import first_shown_as_a


def test_alternating_placement_is_balanced_in_every_prefix():
    for seed in range(8):
        start = judging.seeded_start(seed)
        assert start in (0, 1)
        labels = [judging.place("chosen", "rejected", judging.alternate_at_a(i, start))[2] for i in range(51)]
        for k in range(1, len(labels) + 1):
            c = collections.Counter(labels[:k])
            assert abs(c["A"] - c["B"]) <= 1
        assert labels[0] == ("A" if start == 0 else "B")
    # both starts occur, so the seed decides which label the stream begins with
    assert {judging.seeded_start(s) for s in range(16)} == {0, 1}


def test_alternate_from_zero_puts_even_items_at_a():
    assert [judging.alternate_at_a(i) for i in range(4)] == [True, False, True, False]


def test_place_returns_the_position_of_the_first():
    assert judging.place("c", "r", True) == ("c", "r", "A")
    assert judging.place("c", "r", False) == ("r", "c", "B")


def test_flip_and_swap_map_back():
    assert [judging.flip(x) for x in ("A", "B", None)] == ["B", "A", None]
    for x in ("A", "B", None):
        assert judging.flip(judging.flip(x)) == x
    a, b, w = judging.place("c", "r", False)
    assert judging.swap(a, b, w) == ("c", "r", "A")
    assert judging.swap(*judging.swap(a, b, w)) == (a, b, w)
    with pytest.raises(KeyError):
        judging.flip("model_a")


def test_data_placement_uses_the_judging_rule():
    pair = PreferencePair("p", [{"role": "user", "content": "Q?"}], [{"role": "assistant", "content": "good"}],
                          [{"role": "assistant", "content": "bad"}])
    for seed in (0, 1, 5):
        for i in range(6):
            want = judging.place(pair.chosen, pair.rejected, judging.alternate_at_a(i, judging.seeded_start(seed)))
            assert assign_positions(pair, i, seed) == want
            ex, sw = pair_to_example(pair, i, seed), pair_to_example(pair, i, seed, swap=True)
            assert sw.winner == judging.flip(ex.winner) == sw.chosen_position


def test_coin_is_seeded_and_keyed_by_the_task():
    flips = [judging.coin_at_a(3, "rewardbench", str(i), 0) for i in range(400)]
    assert flips == [judging.coin_at_a(3, "rewardbench", str(i), 0) for i in range(400)]
    assert 150 < sum(flips) < 250
    assert flips != [judging.coin_at_a(4, "rewardbench", str(i), 0) for i in range(400)]
    task = ComparisonTask("rewardbench", "17", "alpacaeval-easy", 0, [], "x", "y")
    assert first_shown_as_a(task, 3) == judging.coin_at_a(3, "rewardbench", "17", 0)


def test_position_consistent_by_hand():
    # better response at A first, then at B
    assert judging.position_consistent(["A", "B"], ["A", "B"])  # right both times
    assert judging.position_consistent(["B", "A"], ["A", "B"])  # wrong both times, still consistent
    assert not judging.position_consistent(["A", "A"], ["A", "B"])  # always says A: a position bias
    assert not judging.position_consistent(["A", None], ["A", "B"])
    assert not judging.position_consistent([None, None], ["A", "B"])
    # the verdict of the swapped order mapped back names the same response exactly when consistent
    for v0, v1 in itertools.product(("A", "B", None), repeat=2):
        want = v0 is not None and v0 == judging.flip(v1)
        assert judging.position_consistent([v0, v1], ["A", "B"]) == want
        assert judging.position_consistent([v0, v1], ["B", "A"]) == want


def _row(verdict, swapped_as_shown):
    """A judge_pairs(both_orders=True) row from the two verdicts as the judge gave them."""
    return {"verdict": verdict, "verdict_swapped": judging.flip(swapped_as_shown),
            "consistent": judging.position_consistent([verdict, swapped_as_shown], ["A", "B"])}


def test_both_orders_metrics_by_hand():
    rows = [_row("A", "B"),  # winner A: right twice, consistent
            _row("A", "A"),  # winner B: wrong, then right (swapped "A" is the original B)
            _row(None, "B"),  # winner A: no verdict, then right
            _row("B", None)]  # winner B: right, then no verdict
    winners = ["A", "B", "A", "B"]
    assert [r["consistent"] for r in rows] == [True, False, False, False]
    m = judging.both_orders_metrics(rows, winners, groups=["x", "y", "x", "y"])
    # right: 2 + 1 + 1 + 1 = 5 of 8 judgments; 2 of 8 without a verdict; 1 of 4 consistent
    assert m == {"accuracy": 5 / 8, "no_verdict_rate": 2 / 8, "position_consistency": 1 / 4,
                 "by_group": {"x": 3 / 4, "y": 2 / 4}}
    assert "by_group" not in judging.both_orders_metrics(rows, winners)
    empty = judging.both_orders_metrics([], [])
    assert empty == {"accuracy": 0.0, "no_verdict_rate": 0.0, "position_consistency": 0.0}


def test_prompts_open_thinking_decodes_each_prompt_once():
    class Tok:
        calls = 0

        def decode(self, ids):
            Tok.calls += 1
            return "".join({1: "<|Assistant|>", 2: "<think>\n", 3: "</think>"}[i] for i in ids)

    assert judging.prompts_open_thinking(Tok(), [[1, 2], [1], [2, 3], [2, 3, 1, 2]]) == [True, False, False, True]
    assert Tok.calls == 4


def test_judging_imports_neither_data_train_nor_eval():
    """judging sits below data, train and eval (data imports it for the placement rule)."""
    tree = ast.parse(open(judging.__file__, encoding="utf-8").read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    for below in ("rmr1_jax.data", "rmr1_jax.train", "rmr1_jax.eval"):
        assert not any(m == below or m.startswith(below + ".") for m in names), names
