"""The consistency reward (``grpo.reward: consistency``, J1's): with both A/B orders, a judgment
earns ``reward_correct`` only when it and its twin (the same sample index of the pair's other
order) are both right. Hand-made groups of real verdict texts, no model."""

from __future__ import annotations

import numpy as np
import pytest

from rmr1_jax.errors import ConfigError
from rmr1_jax.sampling.sampler import Generation
from rmr1_jax.train.grpo import OBJECTIVE, GRPOConfig, GRPOSpec
from rmr1_jax.train.rollouts import RolloutSource, VerdictReward, twins_right

N = 3
A, B, NONE = "<answer>[[A]]</answer>", "<answer>[[B]]</answer>", "I cannot decide."


def _records(winners):
    return [{"input_ids": np.array([5, 6 + i], np.int32), "input_ids_swapped": np.array([5, 40 + i], np.int32),
             "winner": w.encode()} for i, w in enumerate(winners)]


def _rewarded(reward, records, texts, finished=None):
    """Expand the records as the rollout source does and reward ``texts`` (row j: sample j % N
    of prompt j // N)."""
    winners = [w for r in records for _, w in reward.expand(r)]
    finished = [True] * len(texts) if finished is None else finished
    return reward(winners, texts, finished, [False] * len(winners))


# Two pairs, three samples a prompt. Pair 0: A is better as drawn, so B after the swap; pair 1:
# B as drawn, A swapped. Sample by sample (right / wrong):
#   pair 0 drawn   A  A  B      -> R R W
#   pair 0 swapped B  A  B      -> R W R     twins right in both orders: R W W
#   pair 1 drawn   B* B  none   -> W R W     (* cut off at the budget: wrong whatever it says)
#   pair 1 swapped A  A  A      -> R R R     twins right in both orders: W R W
RECORDS = _records(["A", "B"])
TEXTS = [A, A, B, B, A, B, B, B, NONE, A, A, A]
FINISHED = [True] * 6 + [False] + [True] * 5


def test_expand_puts_each_swapped_prompt_right_after_its_pair():
    r = VerdictReward(GRPOSpec(n=N, both_orders=True, reward="consistency"))
    got = [(list(ids), w) for rec in RECORDS for ids, w in r.expand(rec)]
    assert got == [([5, 6], "A"), ([5, 40], "B"), ([5, 7], "B"), ([5, 41], "A")]


def test_verdict_reward_rewards_each_judgment_alone():
    rewards, counts = _rewarded(VerdictReward(GRPOSpec(n=N, both_orders=True)), RECORDS, TEXTS, FINISHED)
    np.testing.assert_array_equal(rewards, [1, 1, -1, 1, -1, 1, -1, 1, -1, 1, 1, 1])
    assert counts["verdict_accuracy"] == (8.0, 12.0)
    assert counts["format_failure_rate"] == (2.0, 12.0)  # the cut-off one and the one without a verdict
    assert counts["consistent_right_rate"] == (2.0, 6.0)  # logged for the plain reward too


def test_consistency_reward_needs_the_twin_right_too():
    rewards, counts = _rewarded(VerdictReward(GRPOSpec(n=N, both_orders=True, reward="consistency")), RECORDS,
                                TEXTS, FINISHED)
    # pair 0's sample 0 and pair 1's sample 1 are right in both orders; both twins of each get it
    np.testing.assert_array_equal(rewards, [1, -1, -1, 1, -1, -1, -1, 1, -1, -1, 1, -1])
    assert counts["verdict_accuracy"] == (8.0, 12.0)  # still each judgment's own accuracy
    assert counts["consistent_right_rate"] == (2.0, 6.0)


def test_consistency_reward_uses_the_spec_reward_values():
    spec = GRPOSpec(n=N, both_orders=True, reward="consistency", reward_correct=2.0, reward_wrong=0.0)
    rewards, _ = _rewarded(VerdictReward(spec), RECORDS, TEXTS, FINISHED)
    np.testing.assert_array_equal(rewards, [2, 0, 0, 2, 0, 0, 0, 2, 0, 0, 2, 0])


def test_a_judge_that_always_says_A_earns_nothing_from_the_consistency_reward():
    """Position bias: "always A" is right in exactly one order of every pair. The verdict reward
    pays it in half of the groups (a gradient towards the letter); the consistency reward pays it
    nowhere, so every group's rewards are equal and its advantages zero."""
    recs = _records(["A", "B", "A", "B"])
    texts = [A] * (8 * N)
    plain, _ = _rewarded(VerdictReward(GRPOSpec(n=N, both_orders=True)), recs, texts)
    assert plain.mean() == 0.0 and set(plain.tolist()) == {1.0, -1.0}
    cons, counts = _rewarded(VerdictReward(GRPOSpec(n=N, both_orders=True, reward="consistency")), recs, texts)
    assert (cons == -1.0).all() and counts["consistent_right_rate"] == (0.0, 4.0 * N)


def test_twins_are_paired_by_sample_index():
    # one pair, n = 4: drawn order right at samples 0 and 1, swapped order at 1 and 2
    right = np.array([1, 1, 0, 0, 0, 1, 1, 0], bool)
    np.testing.assert_array_equal(twins_right(right, 4), [[False, True, False, False]])
    with pytest.raises(ValueError, match="whole pairs"):
        twins_right(right[:6], 4)


def test_consistency_needs_both_orders():
    with pytest.raises(ConfigError, match=r"grpo\.reward=consistency needs grpo\.both_orders=true"):
        GRPOSpec(reward="consistency").validate("test")
    GRPOSpec(reward="consistency", both_orders=True, prompts_per_step=4, minibatch_prompts=2).validate("test")
    with pytest.raises(ValueError, match="both_orders"):
        VerdictReward(GRPOSpec(reward="consistency"))


def test_the_config_takes_the_reward_by_name():
    from rmr1_jax.config import load

    cfg = load(GRPOConfig, None, ["data.train=[x.jsonl]", "grpo.reward=consistency", "grpo.both_orders=true"])
    assert cfg.grpo.reward == "consistency"
    with pytest.raises(Exception, match="consistent"):
        load(GRPOConfig, None, ["data.train=[x.jsonl]", "grpo.reward=consistent"])


def test_the_run_summary_names_the_reward():
    for name in ("verdict", "consistency"):
        cfg = GRPOConfig(grpo=GRPOSpec(both_orders=True, reward=name))
        assert f"reward: {name} (" in OBJECTIVE.reward_summary(cfg)


class _Generator:
    """Stands in for the engine: returns the given texts (one token each) for the rollout."""

    pad_id = 0

    def __init__(self, texts, finished):
        self.texts, self.finished = texts, np.asarray(finished, bool)

    def generate(self, params, prompt_ids, sp, **kw):
        rows = len(prompt_ids) * sp.n
        assert rows == len(self.texts)
        return Generation(tokens=np.ones((rows, sp.max_new_tokens), np.int32),
                          logprobs=np.zeros((rows, sp.max_new_tokens), np.float32),
                          lengths=np.ones(rows, np.int32), finished=self.finished, texts=list(self.texts))


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("reward", ["verdict", "consistency"])
def test_the_rollout_logs_consistent_right_rate_and_trains_on_the_reward(reward):
    """Through the rollout source (its prompt order, its advantages, its metrics), no model:
    the rewards are the hand-worked ones above and consistent_right_rate is logged either way."""
    spec = GRPOSpec(n=N, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=4, minibatch_prompts=4,
                    both_orders=True, reward=reward, old_logprobs="sampler", kl_estimator="none",
                    skip_zero_advantage=False)
    spec.validate("test")
    src = RolloutSource(model=None, ref_params=None, generator=_Generator(TEXTS, FINISHED), tokenizer=_Tok(),
                        prompts=iter(RECORDS), spec=spec, mesh=None, per_host_prompts=4,
                        per_host_minibatch_prompts=4, seed=0)
    src._rollout(None)
    m = src.pop_metrics()
    assert m["consistent_right_rate"] == pytest.approx(2 / 6) and m["verdict_accuracy"] == pytest.approx(8 / 12)
    want = {"verdict": [1, 1, -1, 1, -1, 1, -1, 1, -1, 1, 1, 1],
            "consistency": [1, -1, -1, 1, -1, -1, -1, 1, -1, -1, 1, -1]}[reward]
    assert m["reward_mean"] == pytest.approx(np.mean(want))
    (batch,) = src.queue
    adv = batch["advantages"].reshape(4, N)
    groups = np.array(want, np.float32).reshape(4, N)
    np.testing.assert_array_equal(np.sign(adv), np.sign(groups - groups.mean(axis=1, keepdims=True)))
