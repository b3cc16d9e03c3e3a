"""Verdict probabilities against transformers: a random tiny Qwen2 saved with the ChatML
tokenizer fixture; P(A) of each judgment must be the softmax over the two continuations'
log-probabilities that transformers' forward gives for the same token ids."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import hf_models
import rmr1_jax as rj
from rmr1_jax.inference.verdict_prob import both_orders_probability, verdict_probabilities
from rmr1_jax.text.tokenizer import load_tokenizer
from rmr1_jax.text.verdict import verdict_prefix

JUDGMENTS = [
    "<type>Chat</type> The first answer is right. <answer>[[A]]</answer>",
    "cut off while reasoning about",  # no verdict
    "<think>maybe [[A]]?</think> Response B explains it. <answer> [[B]] </answer>",
    "Both fine. <answer>[[A]]</answer> and more text",  # text after the answer: no verdict
]


def test_the_verdict_prefix_ends_where_the_letter_is_written():
    assert verdict_prefix(JUDGMENTS[0]) == "<type>Chat</type> The first answer is right. <answer>[["
    assert verdict_prefix(JUDGMENTS[1]) is None and verdict_prefix(JUDGMENTS[3]) is None
    assert verdict_prefix(JUDGMENTS[2]).endswith("explains it. <answer> [[")  # after the thinking, not in it
    assert verdict_prefix("no think close <answer>[[A]]</answer>", opened_thinking=True) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF directory, torch model, transformers tokenizer, our model, params, our tokenizer)."""
    d = str(tmp_path_factory.mktemp("verdict") / "judge")
    hf, theirs = hf_models.make_chatml_qwen2(d, seed=2)
    model, params = rj.load_hf(d)
    return d, hf, theirs, model, params, load_tokenizer(d)


def test_verdict_probabilities_are_transformers_softmax_over_the_two_verdicts(tiny):
    _, hf, theirs, model, params, tok = tiny
    prompts = [theirs("Which response is better?", add_special_tokens=False)["input_ids"],
               theirs("q", add_special_tokens=False)["input_ids"]] * 2
    got = verdict_probabilities(model, params, tok, prompts, JUDGMENTS, batch_size=2)
    assert got[1] is None and got[3] is None

    def logp(ids, start):
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        return sum(float(out[t - 1, ids[t]]) for t in range(start, len(ids)))

    for i in (0, 2):
        prefix = verdict_prefix(JUDGMENTS[i])
        a, b = (prompts[i] + theirs(prefix + c, add_special_tokens=False)["input_ids"] for c in ("A]]", "B]]"))
        d_ = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
        want = 1.0 / (1.0 + np.exp(logp(b, d_) - logp(a, d_)))
        assert 0.0 < got[i] < 1.0
        np.testing.assert_allclose(got[i], want, atol=1e-5, err_msg=f"judgment {i}")


@pytest.mark.parametrize("first,second,want", [
    (0.9, 0.2, 0.85),  # A first: 0.9; then shown at B, P(B) = 0.8
    (0.9, None, 0.9), (None, 0.3, 0.7), (None, None, None),
])
def test_both_orders_probability(first, second, want):
    got = both_orders_probability(first, second)
    assert (got is None and want is None) or abs(got - want) < 1e-12


def test_judge_pairs_reports_each_orders_probability(tiny, monkeypatch):
    """``judge_pairs(prob=True)`` in both orders: ``prob_a`` is P(A) of the first order's judgment,
    ``prob_a_swapped`` 1 - P(A) of the swapped one's, ``prob`` their mean (the judgments fixed
    here, so that each has a verdict); ``structured=True`` parses each against its order."""
    from rmr1_jax.inference import judge as judge_mod
    from rmr1_jax.inference.loading import LoadedJudge
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.text.prompts import JudgeTemplate

    d, _, _, model, params, tok = tiny
    base = JudgeTemplate.builtin("instruct")  # a short prompt: the forwards stay small
    template = JudgeTemplate("instruct", "Judge.", "Q {question} A {response_a} B {response_b}", base.user_multiturn)
    judge = LoadedJudge(model, params, tok, template, d, mesh=make_mesh())
    texts = [JUDGMENTS[0], JUDGMENTS[2], JUDGMENTS[1], JUDGMENTS[0]]  # pair 1: both orders; pair 2: first only
    seen = {}

    def fixed(sampler, p, prompt_ids, tokenizer, **kw):
        seen["prompts"] = prompt_ids
        return [judge_mod.Judgment(t, None, True, 5) for t in texts]

    monkeypatch.setattr(judge_mod, "judge_prompts", fixed)
    out = judge_mod.judge_pairs(judge, [("q1", "a1", "b1"), ("q2", "a2", "b2")], both_orders=True, prob=True,
                                structured=True, max_new_tokens=4, batch_size=2)
    ps = verdict_probabilities(model, params, tok, seen["prompts"], texts, batch_size=2)
    assert out[0]["prob_a"] == ps[0] and out[0]["prob_a_swapped"] == 1.0 - ps[1]
    assert out[0]["prob"] == pytest.approx((ps[0] + 1.0 - ps[1]) / 2)
    assert out[1]["prob_a"] is None and out[1]["prob_a_swapped"] == 1.0 - ps[3] and out[1]["prob"] == 1.0 - ps[3]
    # with structured=True each order's judgment is parsed against the responses as shown in it
    from rmr1_jax.text.structured import structure

    assert out[0]["structured"] == structure(texts[0], "a1", "b1")
    assert out[0]["structured_swapped"] == structure(texts[1], "b1", "a1")
    assert out[1]["structured"]["verdict"] is None and out[1]["structured"]["errors"]


def test_judge_pairs_gives_each_pair_its_principles(tiny, monkeypatch):
    from rmr1_jax.inference import judge as judge_mod
    from rmr1_jax.inference.loading import LoadedJudge
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.text.prompts import JudgeTemplate, render_principles

    d, _, _, model, params, tok = tiny
    base = JudgeTemplate.builtin("instruct")
    judge = LoadedJudge(model, params, tok, JudgeTemplate("instruct", "Judge.", "Q {question} A {response_a} "
                                                          "B {response_b}", base.user_multiturn), d, mesh=make_mesh())
    seen = []
    monkeypatch.setattr(judge_mod, "judge_prompts", lambda s, p, ids, t, **kw: seen.extend(ids) or
                        [judge_mod.Judgment("x", None, False, 1)] * len(ids))
    judge_mod.judge_pairs(judge, [("q1", "a1", "b1"), ("q2", "a2", "b2")], both_orders=True,
                          principles=[["Be kind."], None])
    texts = [tok.decode(ids) for ids in seen]
    block = render_principles(["Be kind."])
    assert [block in t for t in texts] == [True, True, False, False]  # pair 1 in both orders, pair 2 none
    seen.clear()
    judge_mod.judge_pairs(judge, [("q1", "a1", "b1"), ("q2", "a2", "b2")], principles=["Be kind."])
    assert all(block in tok.decode(ids) for ids in seen) and len(seen) == 2
