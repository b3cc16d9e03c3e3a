"""The rollout pricing of ``rmr1 plan`` (:mod:`rmr1_jax.plan.rollout`) against its definitions:
the engine's admissions replayed step by step with plain loops, the static sampler's batches,
and the response-length distributions a plan draws from."""

import json

import numpy as np
import pytest

from rmr1_jax.errors import ConfigError
from rmr1_jax.plan.rollout import decode_seconds, response_lengths, simulate, static_segments
from rmr1_jax.train.grpo_math import length_quantiles


def _brute_force(lengths, slots, prompt):
    """Step by step: (live sequences, keys and values they hold) at each decode step, slots
    refilled in order as soon as a sequence has its last token."""
    waiting = list(lengths)
    live = []  # [tokens so far, length]
    out = []
    while waiting or live:
        while waiting and len(live) < slots:
            live.append([0, waiting.pop(0)])
        out.append((len(live), sum(prompt + done for done, _ in live)))
        for seq in live:
            seq[0] += 1
        live = [s for s in live if s[0] < s[1]]
    return out


@pytest.mark.parametrize("slots", [1, 3, 8, 40])
def test_the_replayed_schedule_is_the_step_by_step_one(slots):
    lengths = np.random.default_rng(slots).integers(1, 30, 37).tolist()
    ref = _brute_force(lengths, slots, prompt=5)
    segs = simulate(lengths, slots, prompt_tokens=5)
    assert sum(s.steps for s in segs) == len(ref)
    assert sum(s.steps * s.live for s in segs) == sum(lengths) == sum(n for n, _ in ref)
    np.testing.assert_allclose(sum(s.steps * s.kv_tokens for s in segs), sum(kv for _, kv in ref))
    # per step: the segment's live count is each of its steps' count
    steps = [s.live for s in segs for _ in range(s.steps)]
    assert steps == [n for n, _ in ref]


def test_static_batches_run_to_their_longest_row():
    lengths = [3, 9, 2, 2, 7, 1, 4]
    segs = static_segments(lengths, batch=3, prompt_tokens=2)
    assert [(s.steps, s.live) for s in segs] == [(9, 3), (7, 3), (4, 1)]
    # every row holds its slot to the batch's end: the KV mean is the full batch's
    assert segs[0].kv_tokens == 3 * (2 + 8 / 2)


def test_decode_seconds_is_the_larger_of_compute_and_memory():
    segs = simulate([4, 4], slots=2, prompt_tokens=0)  # 4 steps of 2 rows, KV 0, 2, 4, 6 tokens: mean 3
    mem = decode_seconds(segs, flops_per_row_step=1.0, weight_bytes=100.0, kv_bytes_per_token=10.0,
                         peak_flops=1e9, bandwidth=1.0)
    assert mem == pytest.approx(4 * (100 + 10 * 3))
    comp = decode_seconds(segs, flops_per_row_step=50.0, weight_bytes=0.0, kv_bytes_per_token=0.0,
                          peak_flops=1.0, bandwidth=1.0, shards=2)
    assert comp == pytest.approx(4 * 50 * 1)  # one row a shard


def test_response_lengths_from_a_mean_a_list_and_a_run(tmp_path):
    assert response_lengths(None, 512, 5).tolist() == [512] * 5
    tail = response_lengths(128, 512, 20000)
    assert abs(tail.mean() - 128) < 1.5 and tail.max() == 512 and np.median(tail) < 128  # a long tail
    seen = response_lengths([10, 20, 900], 512, 1000)
    assert set(seen.tolist()) == {10, 20, 512}
    # a previous run's metrics: its logged quantiles come back
    run = np.random.default_rng(0).lognormal(4, 1, 5000).clip(1, 1000)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"split": "train", "step": s, "response_length": float(run.mean()),
                                        **length_quantiles(run)}) + "\n" for s in range(3)))
    drawn = response_lengths(str(path), 1000, 20000)
    for q in (0.1, 0.5, 0.9):
        assert np.quantile(drawn, q) == pytest.approx(np.quantile(run, q), rel=0.03, abs=1)
    with pytest.raises(ConfigError, match="must lie within 1 and the budget"):
        response_lengths(600, 512, 3)
    with pytest.raises(ConfigError, match="no such metrics file"):
        response_lengths(str(tmp_path / "nope.jsonl"), 512, 3)


def test_logprob_forwards_are_priced_at_their_longest_sorted_response():
    from rmr1_jax.plan.rollout import logprob_widths

    lengths = [7, 1, 8, 3, 2, 6, 5, 4]
    # one host: sorted 1..8, two rows a forward, widths rounded up to a quarter of the budget 8
    assert logprob_widths(lengths, 2, 8, 4).tolist() == [2, 4, 6, 8]
    assert logprob_widths(lengths, 2, 8, 1).tolist() == [8, 8, 8, 8]  # one bucket: the whole budget
    # two hosts hold [7, 1, 8, 3] and [2, 6, 5, 4]: their i-th forwards run at the wider one's
    assert logprob_widths(lengths, 2, 8, 4, hosts=2).tolist() == [4, 8]  # [1, 3] | [2, 4], then [7, 8] | [5, 6]
    assert logprob_widths([1, 1, 1], 2, 8, 8, hosts=2).tolist() == [1]
