"""``rmr1 policy-grpo``: a policy's GRPO with a trained judge or reward model as its reward.

The rewards against hand-worked groups (the checks, a judge's round robin with the check mixed
in, a judge at chance), a reward model's reward against transformers' score of the same
conversation, and a whole run through the CLI with a (random) judge on the job's mesh: the
judge's calls per prompt, the time split, the held-out accuracy, a resume from a SIGTERM inside
a rollout equal bit for bit to the uninterrupted run, and a bad row named with its file and
line. (Two processes against one: tests/train/test_multihost_equality.py.)"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch

from tests import hf_models
from rmr1_jax.errors import DataError
from rmr1_jax.train.policy_rewards import PolicyReward, PolicyRewardSpec, PolicyTarget, check_answer, last_number


def test_the_checks_read_the_answer_as_documented():
    assert last_number("7 * 8 equals 56.") == "56"
    assert last_number("It is -3, or 3.50 at most") == "3.5"
    assert last_number("1,024 items") == "1024"
    assert last_number("no digits") is None
    t = lambda answer, q="q": PolicyTarget([{"role": "user", "content": q}], None, answer)  # noqa: E731
    assert check_answer("last_number", "I count 07.", t("7"))
    assert not check_answer("last_number", "56 or 57", t("56"))  # the last number decides
    assert check_answer("last_number", "anything 5", t(None)) is None  # no answer: does not apply
    assert check_answer("exact", "  The Answer  is 5 ", t("the answer is 5"))
    assert not check_answer("exact", "The answer is 5.", t("the answer is 5"))
    caps = "Reply with one word in capital letters: name a color."
    assert check_answer("oracle", "TEAL.", t(None, caps))
    assert not check_answer("oracle", "Teal", t(None, caps)) and not check_answer("oracle", "RED BLUE", t(None, caps))
    assert check_answer("oracle", "tall green quiet", t(None, "Answer in exactly three words: describe a tree."))
    with pytest.raises(DataError, match="not a synthetic task"):
        check_answer("oracle", "x", t(None, "What is love?"))


def _larger_number_judge(monkeypatch):
    """A judge (in place of judge_pairs) that prefers the response with the larger last number,
    and has no verdict when either has none."""
    calls = []

    def judge_pairs(judge, triples, **kw):
        assert kw["shared"] is False  # each process judges its own samples
        calls.append(len(triples))
        out = []
        for _, a, b in triples:
            x, y = last_number(a), last_number(b)
            out.append({"verdict": None if x is None or y is None else "A" if float(x) > float(y) else "B"})
        return out

    import rmr1_jax.inference.judge as judge_mod

    monkeypatch.setattr(judge_mod, "judge_pairs", judge_pairs)
    return calls


def test_a_judges_round_robin_with_the_check_mixed_in(monkeypatch):
    calls = _larger_number_judge(monkeypatch)
    spec = PolicyRewardSpec(kind="judge", ckpt="unused", scheme="round_robin", check_weight=0.5)
    reward = PolicyReward(spec, n=3, scorer=object())
    targets = [PolicyTarget([{"role": "user", "content": "q1"}], None, "2"),
               PolicyTarget([{"role": "user", "content": "q2"}], None, None)]
    texts = ["1", "3", "2", "x 5", "no number", "4"]
    rewards, counts = reward(targets, texts, [True] * 6, [False, False])
    # group 1: 3 beats 1 and 2, 2 beats 1 -> win rates 0, 1, 1/2; "2" passes the check (+0.5)
    # group 2: 5 beats 4; "no number" has no verdict in its matches -> ties (1/2 each)
    #   5: win + tie = 1.5/2; no number: tie + tie = 1/2; 4: loss + tie = 1/4; no answer, no check
    np.testing.assert_allclose(rewards, [0.0, 1.0, 0.5 + 0.5, 0.75, 0.5, 0.25])
    assert calls == [12]  # one round: 3 matches a group, both orders, both groups in one call
    assert counts["check_accuracy"] == (1.0, 3.0)  # only group 1's rows have an answer
    assert counts["judge_calls_per_prompt"] == (12.0, 2.0) and counts["judge_calls_per_step"] == (12.0, 1.0)
    assert counts["judge_no_verdict_rate"] == (2.0, 6.0)
    assert counts["judge_inconsistent_rate"] == (0.0, 6.0)


def test_a_judge_at_chance_flips_a_coin_per_judgment():
    reward = PolicyReward(PolicyRewardSpec(kind="chance", scheme="round_robin", seed=1), n=4)
    targets = [PolicyTarget([{"role": "user", "content": f"q{g}"}], None, None) for g in range(50)]
    texts = [f"reply {j % 4}" for j in range(200)]
    rewards, counts = reward(targets, texts, [True] * 200, [False] * 50)
    again, _ = reward(targets, texts, [True] * 200, [False] * 50)
    np.testing.assert_array_equal(rewards, again)  # the coins are keyed by the judgment, not drawn in turn
    calls, groups = counts["judge_calls_per_prompt"]
    assert calls / groups == 12  # round robin of 4 in both orders
    inconsistent, matches = counts["judge_inconsistent_rate"]
    assert abs(inconsistent / matches - 0.5) < 0.1  # two fair coins disagree on the position half the time
    assert abs(rewards.mean() - 0.5) < 1e-6  # every match gives out one point in all


def test_a_judges_verdict_probabilities_make_soft_rewards(monkeypatch):
    seen = {}

    def judge_pairs(judge, triples, **kw):  # P(A) = 0.9 when the longer response is at A, else 0.3
        seen.update(kw)
        return [{"verdict": "A" if len(a) > len(b) else "B", "prob_a": 0.9 if len(a) > len(b) else 0.3}
                for _, a, b in triples]

    import rmr1_jax.inference.judge as judge_mod

    monkeypatch.setattr(judge_mod, "judge_pairs", judge_pairs)
    spec = PolicyRewardSpec(kind="judge", ckpt="unused", scheme="reference", verdict="prob")
    rewards, _ = PolicyReward(spec, n=2, scorer=object())(
        [PolicyTarget([{"role": "user", "content": "q"}], "four", None)], ["longer one", "no"], [True] * 2, [False])
    assert seen["prob"] is True
    # against the reference: at A then at B; P(sample better) = mean(P(A) first, 1 - P(A) swapped)
    np.testing.assert_allclose(rewards, [(0.9 + (1 - 0.3)) / 2, (0.3 + (1 - 0.9)) / 2])


def test_the_reference_scheme_needs_references(monkeypatch):
    _larger_number_judge(monkeypatch)
    reward = PolicyReward(PolicyRewardSpec(kind="judge", ckpt="unused", scheme="reference"), n=2, scorer=object())
    targets = [PolicyTarget([{"role": "user", "content": "q"}], "4", "4")]
    rewards, _ = reward(targets, ["5", "3"], [True, True], [False])
    np.testing.assert_allclose(rewards, [1.0, 0.0])  # 5 beats the reference 4 in both orders; 3 loses
    with pytest.raises(DataError, match="reference"):
        reward([PolicyTarget([{"role": "user", "content": "q"}], None, "4")], ["5", "3"], [True, True], [False])


@pytest.fixture(scope="module")
def chatml_rm(tmp_path_factory):
    """A random Qwen2ForSequenceClassification saved with the ChatML tokenizer fixture."""
    d = str(tmp_path_factory.mktemp("policy") / "rm")
    model, theirs = hf_models.make_chatml_scalar_qwen2(d)
    return d, model, theirs


def test_a_reward_models_reward_is_its_score_of_the_conversation(chatml_rm):
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.train.policy_grpo import load_reward_scorer

    d, model, theirs = chatml_rm
    spec = PolicyRewardSpec(kind="scalar", ckpt=d, batch_size=4)
    reward = PolicyReward(spec, n=2, scorer=load_reward_scorer(spec, make_mesh(), log=lambda s: None))
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a color."}]]
    texts = ["4", "It is 5.", "Blue, clearly.", "red"]
    rewards, counts = reward([PolicyTarget(p, None, None) for p in prompts], texts, [True] * 4, [False, False])
    want = []
    for j, t in enumerate(texts):
        text = theirs.apply_chat_template(prompts[j // 2] + [{"role": "assistant", "content": t}], tokenize=False)
        with torch.no_grad():
            want.append(float(model(input_ids=torch.tensor([theirs(text, add_special_tokens=False)["input_ids"]]))
                              .logits[0, 0]))
    np.testing.assert_allclose(rewards, want, rtol=1e-4, atol=1e-4)
    assert counts["check_accuracy"] == (0.0, 0.0) and counts["model_reward_mean"][1] == 4.0


def _rows(path, n, start=0):
    with open(path, "w") as f:
        for i in range(start, start + n):
            a, b = i % 7 + 1, i % 5 + 2
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "reference": f"The answer is {a + b}.",
                                "answer": str(a + b)}) + "\n")


def test_policy_grpo_runs_with_a_judge_on_the_jobs_mesh(tmp_path, monkeypatch, capsys):
    from rmr1_jax.cli import main

    policy, judge = str(tmp_path / "policy"), str(tmp_path / "judge")
    hf_models.make_chatml_qwen2(policy, seed=0)
    hf_models.make_chatml_qwen2(judge, seed=3)
    _rows(tmp_path / "train.jsonl", 8)
    _rows(tmp_path / "eval.jsonl", 4, start=50)
    cfg = {"model": {"preset": None, "hf_dir": policy, "scan_layers": False},
           "data": {"train": [str(tmp_path / "train.jsonl")], "eval": [str(tmp_path / "eval.jsonl")]},
           "optim": {"lr": 1e-3},
           "grpo": {"n": 4, "max_prompt_tokens": 128, "max_response_tokens": 6, "prompts_per_step": 4,
                    "minibatch_prompts": 2, "rollout_steps": 2, "logprob_batch": 8, "kl_coef": 0.0},
           "sampling": {"max_slots": 16, "page_size": 8},
           "policy_reward": {"kind": "judge", "ckpt": judge, "scheme": "knockout", "max_new_tokens": 4,
                             "batch_size": 16, "check_weight": 1.0},
           "train": {"run_dir": str(tmp_path / "run"), "log_every": 1, "progress": False},
           "checkpoint": {"save_every": 2}}
    (tmp_path / "policy.yaml").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["policy-grpo", "policy.yaml"]) == 0
    out = capsys.readouterr().out
    assert "policy-grpo finished at step 4" in out and "held-out" in out
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in rows if "time_reward_s" in r]
    assert len(train) == 2  # one rollout step each, both judged (the judge's weights survived the updates)
    for r in train:
        assert r["judge_calls_per_prompt"] == 6.0  # knockout of 4: 3 matches, both orders
        assert r["judge_calls_per_step"] == 24.0  # 4 prompts
        assert r["time_reward_s"] > 0 and r["time_rollout_s"] > 0 and "time_update_s" in r
        assert 0.0 <= r["check_accuracy"] <= 1.0
    assert any("accuracy" in r and "truncated_rate" in r and "time_reward_s" not in r for r in rows)

    # stopped by SIGTERM inside the first rollout (one of its two mini-batches trained) and
    # resumed: bit for bit the parameters the uninterrupted run saved at its end
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from sigterm_hook import sigterm_at_step

    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.train.runner import load_config, run

    cfg["train"]["run_dir"] = str(tmp_path / "stopped")
    (tmp_path / "stopped.yaml").write_text(json.dumps(cfg))
    remove = sigterm_at_step(1)
    try:
        stopped = run(load_config("policy-grpo", "stopped.yaml"), "policy-grpo", log=lambda *_: None).result
    finally:
        remove()
    assert stopped.stopped_early and stopped.step == 1
    logs = []
    resumed = run(load_config("policy-grpo", "stopped.yaml"), "policy-grpo", log=logs.append)
    assert resumed.result.step == 4 and any("resumed from" in line and "at step 1" in line for line in logs)
    _, straight = load_model(str(tmp_path / "run" / "checkpoints"), "lm", kind="orbax", mesh=make_mesh())
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    # a row without a prompt: one line naming the file and line, non-zero exit
    capsys.readouterr()
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write(json.dumps({"answer": "3"}) + "\n")
    cfg["train"]["run_dir"] = str(tmp_path / "run2")
    (tmp_path / "policy.yaml").write_text(json.dumps(cfg))
    assert main(["policy-grpo", "policy.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.jsonl:9" in err[0] and "'prompt'" in err[0], err
