"""GRPO rollout assembly: which prompt each sample row came from, which label it is rewarded
against, and how rows are grouped into mini-batches (plain and with both A/B orders)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.parallel import make_mesh
from rmr1_jax.sampling.sampler import Sampler
from rmr1_jax.text import verdict
from rmr1_jax.train.grpo import GRPOSpec, RolloutSource

N = 3  # samples per prompt


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _records(k):
    """k prompt records; record i has a distinct prompt and a distinct swapped prompt."""
    out = []
    for i in range(k):
        out.append({"input_ids": np.array([5, 6 + i, 7], np.int32),
                    "input_ids_swapped": np.array([5, 40 + i, 8, 9], np.int32),
                    "winner": b"A" if i % 2 == 0 else b"B"})
    return out


@pytest.fixture(scope="module")
def tiny():
    model = DecoderLM(preset("tiny", scan_layers=False))
    return model, init_params(model, jax.random.key(0))


@pytest.mark.parametrize("both", [False, True])
def test_rollout_rows_prompts_and_labels(tiny, monkeypatch, both):
    model, params = tiny
    spec = GRPOSpec(n=N, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=4, minibatch_prompts=2,
                    rollout_batch=4, logprob_batch=8, both_orders=both, old_logprobs="sampler")
    recs = _records(4)
    calls = []  # (text, winner) in sample order

    def reward(text, winner, opened_thinking=False):
        calls.append((text, winner))
        return 1.0 if len(calls) % 2 else -1.0

    monkeypatch.setattr(verdict, "judgment_reward", reward)
    mesh = make_mesh()
    # every token ends a sequence: each sample is one finished token, so each is rewarded
    src = RolloutSource(model=model, ref_params=params, sampler=Sampler(model, eos_ids=range(model.cfg.vocab_size), pad_id=0, mesh=mesh),
                        tokenizer=_Tok(), prompts=iter(recs), spec=spec, mesh=mesh, per_host_prompts=4,
                        per_host_minibatch_prompts=2, seed=0)
    src._rollout(params)
    if both:  # two pairs, each judged as drawn and swapped, the swapped one against the other letter
        want_prompts = [recs[0]["input_ids"], recs[0]["input_ids_swapped"],
                        recs[1]["input_ids"], recs[1]["input_ids_swapped"]]
        want_winners = ["A", "B", "B", "A"]
    else:
        want_prompts = [r["input_ids"] for r in recs]
        want_winners = ["A", "B", "A", "B"]
    assert [w for _, w in calls] == [w for w in want_winners for _ in range(N)]
    assert len(src.queue) == 2  # 4 prompts / 2 per mini-batch
    rows = np.concatenate([b["input_ids"] for b in src.queue])
    masks = np.concatenate([b["attention_mask"] for b in src.queue])
    prompt_len = rows.shape[1] - spec.max_response_tokens
    for j in range(4 * N):
        got = rows[j, :prompt_len][masks[j, :prompt_len].astype(bool)]
        np.testing.assert_array_equal(got, want_prompts[j // N])
    adv = np.concatenate([b["advantages"] for b in src.queue]).reshape(4, N)
    np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-6)  # normalized within each prompt's group


def test_samples_do_not_depend_on_how_the_step_is_split_into_sampler_calls(tiny):
    """A prompt's samples are keyed by its index in the rollout step, so one sampler call for
    the step's prompts or several (``rollout_batch``) give the same rows."""
    model, params = tiny
    mesh = make_mesh()
    sampler = Sampler(model, eos_ids=[model.cfg.vocab_size], pad_id=0, mesh=mesh)
    rows = []
    for rollout_batch in (4, 2):
        spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=4, minibatch_prompts=2,
                        rollout_batch=rollout_batch, logprob_batch=4, old_logprobs="sampler", kl_estimator="none",
                        skip_zero_advantage=False)
        src = RolloutSource(model=model, ref_params=None, sampler=sampler, tokenizer=_Tok(), prompts=iter(_records(4)),
                            spec=spec, mesh=mesh, per_host_prompts=4, per_host_minibatch_prompts=2, seed=0)
        src._rollout(params)
        rows.append(np.concatenate([b["input_ids"] for b in src.queue]))
    assert rows[0].shape[0] == 8  # 4 prompts x 2 samples
    np.testing.assert_array_equal(rows[0], rows[1])
    assert all(not np.array_equal(rows[0][2 * i], rows[0][2 * i + 1]) for i in range(4))  # a prompt's samples differ


def test_prompt_stream_is_shuffled_globally_then_dealt():
    """GRPO's prompts, as each process draws them (``prompt_stream``): the records shuffled as
    one process shuffles them, then each update's mini-batch of records dealt in blocks, so the
    processes' streams, block by block in process order, are the one-process stream (the same
    prompts on any process count), and each resumes exactly from its iterator's state."""
    import itertools

    from rmr1_jax.data.pipeline import CheckpointableIterator
    from rmr1_jax.train.grpo import prompt_stream

    recs = list(range(13))  # not a multiple of any block here
    per_update = 4
    one = list(itertools.islice(prompt_stream(recs, seed=3, records_per_update=per_update).to_iter_dataset(), 48))
    assert sorted(one[:13]) == recs and one[:13] != recs  # an epoch: every record once, shuffled
    streams = {}
    for n in (2, 4):
        m = per_update // n
        streams[n] = [list(itertools.islice(prompt_stream(recs, seed=3, records_per_update=per_update,
                                                          process_index=p, process_count=n).to_iter_dataset(), 48 // n))
                      for p in range(n)]
        dealt = [x for u in range(48 // per_update) for s in streams[n] for x in s[u * m:(u + 1) * m]]
        assert dealt == one, n
    # exact resume of a process's stream from its iterator's state
    def make():
        return CheckpointableIterator(prompt_stream(recs, seed=3, records_per_update=per_update, process_index=1,
                                                    process_count=2).to_iter_dataset())

    it = make()
    first = [next(it) for _ in range(7)]
    state = it.state()
    rest = [next(it) for _ in range(9)]
    assert first + rest == streams[2][1][:16]
    again = make()
    again.restore(state)
    assert [next(again) for _ in range(9)] == rest


def test_bf16_rollouts_take_old_logprobs_from_the_trained_weights(tiny):
    """``rollout_dtype``: samples come from the bf16-cast sampler, but the old-policy log-probs
    in the update batch are the float32 model's teacher-forced ones (``old_logprobs=recompute``)."""
    from rmr1_jax.train.grpo import response_logprobs

    model, params = tiny
    spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=5, prompts_per_step=2, minibatch_prompts=2,
                    rollout_batch=2, logprob_batch=4, rollout_dtype="bfloat16", old_logprobs="recompute")
    spec.validate("test")
    mesh = make_mesh()
    sampler = Sampler(model, eos_ids=[model.cfg.vocab_size], pad_id=0, mesh=mesh, weights_dtype="bfloat16")
    src = RolloutSource(model=model, ref_params=params, sampler=sampler, tokenizer=_Tok(), prompts=iter(_records(2)),
                        spec=spec, mesh=mesh, per_host_prompts=2, per_host_minibatch_prompts=2, seed=0)
    src._rollout(params)
    (batch,) = src.queue
    want = np.asarray(response_logprobs(model, params, {k: batch[k] for k in ("input_ids", "attention_mask")}))
    m = batch["response_mask"].astype(bool)
    assert m.sum() == 4 * spec.max_response_tokens  # nothing ends early: the EOS id is outside the vocabulary
    np.testing.assert_allclose(batch["old_logp"][m], want[m], atol=1e-5)


def test_rows_keep_only_the_columns_responses_reach(tiny):
    """Responses that end early are not padded to max_response_tokens in the update batch:
    the rows stop at the longest response, rounded up to the bucket (32 columns here)."""
    model, params = tiny
    spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=96, prompts_per_step=2, minibatch_prompts=2,
                    rollout_batch=2, logprob_batch=4, old_logprobs="sampler")
    mesh = make_mesh()
    # every token ends a sequence: each response is one token long
    sampler = Sampler(model, eos_ids=range(model.cfg.vocab_size), pad_id=0, mesh=mesh)
    src = RolloutSource(model=model, ref_params=params, sampler=sampler, tokenizer=_Tok(), prompts=iter(_records(2)),
                        spec=spec, mesh=mesh, per_host_prompts=2, per_host_minibatch_prompts=2, seed=0)
    src._rollout(params)
    (batch,) = src.queue
    plen = 32  # prompts of 3 tokens, left-padded to the 32-token bucket
    assert batch["input_ids"].shape == (4, plen + 32)
    m = batch["response_mask"].astype(bool)
    assert m.sum(axis=1).tolist() == [1, 1, 1, 1]
    assert m[:, plen - 1].all()  # position plen-1 scores the first response token
    assert (batch["old_logp"][m] < 0).all() and (batch["old_logp"][~m] == 0).all()


def test_zero_advantage_rows_are_left_out_and_the_updates_unchanged(tiny, monkeypatch):
    """With no KL or entropy term, rows whose advantage is 0 (a prompt whose samples were all
    rewarded alike) are left out of the updates: fewer rows per update, and the same parameters
    after every update as training on all rows (token-mean over all response tokens)."""
    import optax

    from rmr1_jax.train.grpo import grpo_loss_fn
    from rmr1_jax.train.loop import init_state, make_train_step, to_global

    model, params = tiny
    n_prompts = 8  # 2 updates of 4 prompts x N samples
    # per prompt: all right, mixed, all wrong, mixed | all right, all right, all wrong, mixed
    pattern = [[1, 1, 1], [1, -1, 1], [-1, -1, -1], [-1, 1, -1], [1, 1, 1], [1, 1, 1], [-1, -1, -1], [1, -1, -1]]
    flat = [r for group in pattern for r in group]
    mesh = make_mesh()

    def run(skip):
        calls = []

        def reward(text, winner, opened_thinking=False):
            calls.append(text)
            return float(flat[len(calls) - 1])

        monkeypatch.setattr(verdict, "judgment_reward", reward)
        spec = GRPOSpec(n=N, max_prompt_tokens=8, max_response_tokens=16, prompts_per_step=n_prompts,
                        minibatch_prompts=4, rollout_batch=8, logprob_batch=8, old_logprobs="recompute",
                        kl_estimator="none", kl_coef=0.0, skip_zero_advantage=skip, temperature=1.0)
        # half the ids end a sequence: responses of different lengths, all finished (checked)
        sampler = Sampler(model, eos_ids=range(model.cfg.vocab_size // 2), pad_id=0, mesh=mesh)
        src = RolloutSource(model=model, ref_params=params, sampler=sampler, tokenizer=_Tok(),
                            prompts=iter(_records(n_prompts)), spec=spec, mesh=mesh, per_host_prompts=n_prompts,
                            per_host_minibatch_prompts=4, seed=0)
        src._rollout(params)
        assert src._metrics["truncated_rate"] == 0.0 and len(calls) == len(flat)
        opt = optax.sgd(1.0)  # parameters move by minus the gradient: rounding is not amplified
        step = make_train_step(grpo_loss_fn(model, spec), opt, lambda s: 1.0, 1, mesh)
        state = init_state(jax.tree.map(lambda x: x.copy(), params), opt)
        rows, losses = [], []
        for batch in src.queue:
            rows.append(batch["input_ids"].shape[0])
            state, m = step(state, to_global(batch, mesh), jax.random.key(0))
            losses.append(float(m["loss"]))
        return rows, losses, state["params"], src._metrics

    rows_all, loss_all, p_all, m_all = run(skip=False)
    rows_skip, loss_skip, p_skip, m_skip = run(skip=True)
    assert rows_all == [12, 12]
    assert m_all["response_length"] > 1.2  # not every response is one token
    # update 1 keeps prompts 2 and 4 (6 rows, padded to 2 quarters of 3); update 2 keeps prompt 8 (3 rows)
    assert rows_skip == [6, 3]
    assert m_skip["zero_advantage_rate"] == pytest.approx(5 / 8) and m_skip["trained_rows_rate"] == pytest.approx(3 / 8)
    assert m_all["trained_rows_rate"] == 1.0
    np.testing.assert_allclose(loss_skip, loss_all, rtol=1e-5, atol=1e-7)
    assert any(abs(x) > 1e-4 for x in loss_all)  # the updates do move the parameters
    moved = 0.0
    for a, b, p0 in zip(jax.tree.leaves(p_all), jax.tree.leaves(p_skip), jax.tree.leaves(params)):
        d_all, d_skip = np.asarray(a) - np.asarray(p0), np.asarray(b) - np.asarray(p0)
        np.testing.assert_allclose(d_skip, d_all, rtol=1e-4, atol=1e-7)
        moved = max(moved, float(np.max(np.abs(d_all))))
    assert moved > 1e-3


def test_no_reference_copy_or_pass_without_a_kl_term(tiny, monkeypatch):
    """kl_estimator none (or kl_coef 0): no second copy of the weights is made and the rollout
    runs no reference pass; with the KL term both exist."""
    from rmr1_jax.train.grpo import reference_params

    model, params = tiny
    assert reference_params(GRPOSpec(kl_estimator="none"), params) is None
    assert reference_params(GRPOSpec(kl_coef=0.0), params) is None
    ref = reference_params(GRPOSpec(), params)
    assert all(a is not b for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params)))
    mesh = make_mesh()
    sampler = Sampler(model, eos_ids=range(model.cfg.vocab_size), pad_id=0, mesh=mesh)
    passes = []
    for spec in (GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=2, minibatch_prompts=2,
                          rollout_batch=2, logprob_batch=4, kl_estimator="none", skip_zero_advantage=False),
                 GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=2, minibatch_prompts=2,
                          rollout_batch=2, logprob_batch=4)):
        src = RolloutSource(model=model, ref_params=reference_params(spec, params), sampler=sampler,
                            tokenizer=_Tok(), prompts=iter(_records(2)), spec=spec, mesh=mesh, per_host_prompts=2,
                            per_host_minibatch_prompts=2, seed=0)
        seen = []
        real = src._logprobs
        monkeypatch.setattr(src, "_logprobs", lambda p, rows: seen.append(p) or real(p, rows))
        src._rollout(params)
        passes.append(len(seen))
        if not spec.uses_reference():
            assert src.ref_params is None and all(p is params for p in seen)
            assert not src.queue[0]["ref_logp"].any()
    assert passes == [1, 2]  # old log-probs only | reference and old log-probs
