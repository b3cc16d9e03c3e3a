"""GRPO rollouts: which prompt each sample row came from, which label it is rewarded against,
how rows are grouped into mini-batches (plain and with both A/B orders), and that a run's
rollouts come from the generation engine with the policy's current weights (the checkpoint it
starts from, then each update's)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.parallel import make_mesh
from rmr1_jax.sampling.engine import Engine, EngineConfig
from rmr1_jax.sampling.sampler import Sampler
from rmr1_jax.text import verdict
from rmr1_jax.train import rollouts
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
                    logprob_batch=8, both_orders=both, old_logprobs="sampler")
    recs = _records(4)
    calls = []  # (text, winner) in sample order

    def reward(text, winner, opened_thinking=False):
        calls.append((text, winner))
        return 1.0 if len(calls) % 2 else -1.0

    monkeypatch.setattr(verdict, "judgment_reward", reward)
    mesh = make_mesh()
    # every token ends a sequence: each sample is one finished token, so each is rewarded
    src = RolloutSource(model=model, ref_params=params, generator=Engine(model, eos_ids=range(model.cfg.vocab_size), pad_id=0, mesh=mesh),
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


def test_engine_rollouts_are_the_static_samplers(tiny):
    """A prompt's samples are keyed by its index in the rollout step, so the generation engine
    (a few slots, refilled as samples end) and the static sampler (the whole step in one batch)
    give the same rows; and the engine's KV pool is given back after the rollout."""
    model, params = tiny
    mesh = make_mesh()
    half = range(model.cfg.vocab_size // 2)  # half the ids end a sequence: ragged lengths
    rows = []
    for gen in (Sampler(model, eos_ids=half, pad_id=0, mesh=mesh),
                Engine(model, eos_ids=half, pad_id=0, mesh=mesh, config=EngineConfig(max_slots=2, page_size=4))):
        spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=6, prompts_per_step=4, minibatch_prompts=2,
                        logprob_batch=4, old_logprobs="sampler", kl_estimator="none", skip_zero_advantage=False)
        src = RolloutSource(model=model, ref_params=None, generator=gen, tokenizer=_Tok(), prompts=iter(_records(4)),
                            spec=spec, mesh=mesh, per_host_prompts=4, per_host_minibatch_prompts=2, seed=0)
        src._rollout(params)
        rows.append([np.concatenate([b[k] for b in src.queue]) for k in ("input_ids", "response_mask", "old_logp")])
    assert rows[0][0].shape[0] == 8  # 4 prompts x 2 samples
    assert len(set(rows[0][1].sum(axis=1).tolist())) > 1  # ragged
    np.testing.assert_array_equal(rows[0][0], rows[1][0])
    np.testing.assert_array_equal(rows[0][1], rows[1][1])
    np.testing.assert_allclose(rows[0][2], rows[1][2], atol=1e-5)
    assert all(not np.array_equal(rows[0][0][2 * i], rows[0][0][2 * i + 1]) for i in range(4))  # a prompt's samples differ
    m = src.pop_metrics()
    assert not gen.holds_pool and m["rollout_slot_use"] > 0
    lengths = rows[1][1].sum(axis=1)  # the quantiles `rmr1 plan` reads back, of the step's lengths
    assert (m["response_length_min"], m["response_length_max"]) == (lengths.min(), lengths.max())
    assert m["response_length_p50"] == np.median(lengths)


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
    """``rollout_dtype``: samples come from the bf16-cast engine, but the old-policy log-probs
    in the update batch are the float32 model's teacher-forced ones (``old_logprobs=recompute``)."""
    from rmr1_jax.train.grpo import response_logprobs

    model, params = tiny
    spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=5, prompts_per_step=2, minibatch_prompts=2,
                    logprob_batch=4, rollout_dtype="bfloat16", old_logprobs="recompute")
    spec.validate("test")
    mesh = make_mesh()
    sampler = Engine(model, eos_ids=[model.cfg.vocab_size], pad_id=0, mesh=mesh, weights_dtype="bfloat16")
    src = RolloutSource(model=model, ref_params=params, generator=sampler, tokenizer=_Tok(), prompts=iter(_records(2)),
                        spec=spec, mesh=mesh, per_host_prompts=2, per_host_minibatch_prompts=2, seed=0)
    src._rollout(params)
    (batch,) = src.queue
    want = np.asarray(response_logprobs(model, params, {k: batch[k] for k in ("input_ids", "attention_mask")}))
    m = batch["response_mask"].astype(bool)
    assert m.sum() == 4 * spec.max_response_tokens  # nothing ends early: the EOS id is outside the vocabulary
    np.testing.assert_allclose(batch["old_logp"][m], want[m], atol=1e-5)


def test_logprob_forwards_stop_at_their_longest_response(tiny, monkeypatch):
    """The old-policy log-probs come from forwards over rows sorted by response length, each
    cut after its longest response (rounded up to a quarter of the budget here): they equal one
    teacher-forced pass over the whole rows, and some forwards are shorter than the rows."""
    from rmr1_jax.train.grpo import response_logprobs

    model, params = tiny
    spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=32, prompts_per_step=4, minibatch_prompts=4,
                    logprob_batch=2, logprob_buckets=4, old_logprobs="recompute", kl_estimator="none",
                    skip_zero_advantage=False)
    mesh = make_mesh()
    # one token in five ends a sequence: ragged response lengths
    sampler = Engine(model, eos_ids=range(0, model.cfg.vocab_size, 5), pad_id=0, mesh=mesh)
    src = RolloutSource(model=model, ref_params=None, generator=sampler, tokenizer=_Tok(), prompts=iter(_records(4)),
                        spec=spec, mesh=mesh, per_host_prompts=4, per_host_minibatch_prompts=4, seed=0)
    widths, real = [], src._lp
    src._lp = lambda p, b: widths.append(b["input_ids"].shape[1]) or real(p, b)
    src._rollout(params)
    (batch,) = src.queue
    want = np.asarray(response_logprobs(model, params, {k: batch[k] for k in ("input_ids", "attention_mask")}))
    m = batch["response_mask"].astype(bool)
    assert len(set(m.sum(axis=1).tolist())) > 2  # ragged
    np.testing.assert_allclose(batch["old_logp"][m], want[m], atol=1e-5)
    assert len(widths) == 4 and widths == sorted(widths) and widths[0] < batch["input_ids"].shape[1]
    # in a multi-process job every process runs the forwards the others run: here another process
    # has two more forwards than this one and runs each of its at the whole width (this process
    # pads the extra ones with a row of its own), and this process's rows still get their log-probs
    full = batch["input_ids"].shape[1]
    other = lambda v: np.maximum(np.asarray(v), 6 if len(v) == 1 else full)  # noqa: E731
    monkeypatch.setattr(rollouts, "agree_max", other)
    rows = {k: batch[k] for k in ("input_ids", "attention_mask")}
    lengths = m.sum(axis=1)
    widths.clear()
    got = src._logprobs(params, rows, int(np.argmax(m.any(axis=0))) + 1, lengths)
    assert widths == [full] * 6
    np.testing.assert_allclose(got[m], want[m], atol=1e-5)


def test_rows_keep_only_the_columns_responses_reach(tiny):
    """Responses that end early are not padded to max_response_tokens in the update batch:
    the rows stop at the longest response, rounded up to the bucket (32 columns here)."""
    model, params = tiny
    spec = GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=96, prompts_per_step=2, minibatch_prompts=2,
                    logprob_batch=4, old_logprobs="sampler")
    mesh = make_mesh()
    # every token ends a sequence: each response is one token long
    sampler = Engine(model, eos_ids=range(model.cfg.vocab_size), pad_id=0, mesh=mesh)
    src = RolloutSource(model=model, ref_params=params, generator=sampler, tokenizer=_Tok(), prompts=iter(_records(2)),
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
                        minibatch_prompts=4, logprob_batch=8, old_logprobs="recompute",
                        kl_estimator="none", kl_coef=0.0, skip_zero_advantage=skip, temperature=1.0)
        # half the ids end a sequence: responses of different lengths, all finished (checked)
        sampler = Engine(model, eos_ids=range(model.cfg.vocab_size // 2), pad_id=0, mesh=mesh)
        src = RolloutSource(model=model, ref_params=params, generator=sampler, tokenizer=_Tok(),
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
    sampler = Engine(model, eos_ids=range(model.cfg.vocab_size), pad_id=0, mesh=mesh)
    passes = []
    for spec in (GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=2, minibatch_prompts=2,
                          logprob_batch=4, kl_estimator="none", skip_zero_advantage=False),
                 GRPOSpec(n=2, max_prompt_tokens=8, max_response_tokens=4, prompts_per_step=2, minibatch_prompts=2,
                          logprob_batch=4)):
        src = RolloutSource(model=model, ref_params=reference_params(spec, params), generator=sampler,
                            tokenizer=_Tok(), prompts=iter(_records(2)), spec=spec, mesh=mesh, per_host_prompts=2,
                            per_host_minibatch_prompts=2, seed=0)
        seen = []
        real = src._logprobs
        monkeypatch.setattr(src, "_logprobs", lambda p, rows, *a: seen.append(p) or real(p, rows, *a))
        src._rollout(params)
        passes.append(len(seen))
        if not spec.uses_reference():
            assert src.ref_params is None and all(p is params for p in seen)
            assert not src.queue[0]["ref_logp"].any()
    assert passes == [1, 2]  # old log-probs only | reference and old log-probs


# ----- a run's rollouts against teacher forcing with the weights they should come from -----


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """A two-rollout GRPO run (one update per rollout) from a saved HF directory, with held-out
    judging at the end; every call of the generation engine recorded. Returns the run's root,
    the HF directory, the recorded calls ``(SamplingParams, prompts, Generation)`` and the
    run's final params."""
    import yaml

    import rmr1_jax as rj
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.demos.rmr1 import write_demo_prompts
    from rmr1_jax.text.tokenizer import train_sentencepiece
    from rmr1_jax.train.grpo import load_grpo_config, run_grpo
    from rmr1_jax.worlds import judging_tasks as synthetic

    root = tmp_path_factory.mktemp("grpo_engine")
    pairs = synthetic.generate_pairs(16, seed=5, kinds=("compare",))
    data = str(root / "pairs.jsonl")
    synthetic.write_pairs_jsonl(data, pairs)
    files, template = write_demo_prompts(str(root / "prompts"))
    traces = synthetic.make_distillation_examples(pairs, seed=0, template=template, style="compact")
    tok_dir = str(root / "tok")
    tok = train_sentencepiece([m["content"] for ex in traces for m in ex.messages] + [ex.target for ex in traces],
                              tok_dir, vocab_size=400)
    # the starting weights: not the preset's initialization from the run's seed (0)
    model, params = load_model("tiny", "lm", mesh=None, tokenizer=tok, seed=7, dtype="float32", scan_layers=False)
    hf_dir = str(root / "hf")
    rj.save_hf(model, params, hf_dir, dtype="float32")
    cfg = {
        "model": {"preset": None, "hf_dir": hf_dir, "dtype": "float32", "scan_layers": False},
        "mesh": {"data": 2, "fsdp": 4, "tensor": 1},
        "tokenizer": {"path": tok_dir},
        "prompt": {"variant": "instruct", "system_file": files["system"], "user_file": files["user"],
                   "user_multiturn_file": files["user_multiturn"]},
        "data": {"train": [data], "eval": [data], "max_length": 384, "overlong": "skip"},
        "optim": {"lr": 1e-2, "schedule": "constant", "warmup_ratio": 0.0},
        # the entropy term gives every row a gradient, so one update moves the policy
        "grpo": {"n": 2, "max_prompt_tokens": 384, "max_response_tokens": 8, "prompts_per_step": 2,
                 "minibatch_prompts": 2, "rollout_steps": 2, "logprob_batch": 4, "temperature": 1.0,
                 "kl_estimator": "k3", "kl_coef": 0.1, "entropy_coef": 0.01},
        "sampling": {"max_slots": 2, "page_size": 4},
        "eval_max_new_tokens": 4,
        "train": {"run_dir": str(root / "run"), "progress": False, "peak_flops": 1e12, "log_every": 1,
                  "eval_limit": 2},
        "checkpoint": {"save_every": 1, "keep": 3, "async_save": False},
    }
    path = str(root / "grpo.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    calls = []
    real = Engine.generate

    def recording(self, params, prompts, sp, **kw):
        g = real(self, params, prompts, sp, **kw)
        calls.append((sp, [list(p) for p in prompts], g))
        return g

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "generate", recording)
        _, final, result, _ = run_grpo(load_grpo_config(path), log=lambda *_: None)
    assert result.step == 2
    return root, hf_dir, calls, final


def _teacher_forced(model, params, prompts, g, n: int, temperature: float) -> list[np.ndarray]:
    """Each row's response log-probs by one forward pass over prompt + response (right-padded
    rows), under ``softmax(logits / T)``: :func:`~rmr1_jax.models.logprobs.response_logprobs`."""
    from rmr1_jax.models.logprobs import response_logprobs

    rows = [prompts[j // n] + g.tokens[j, :g.lengths[j]].tolist() for j in range(len(g.lengths))]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for j, r in enumerate(rows):
        ids[j, :len(r)], mask[j, :len(r)] = r, 1
    lp = np.asarray(response_logprobs(model, params, {"input_ids": ids, "attention_mask": mask},
                                      temperature=temperature))
    # position t scores token t + 1: the response's tokens from the prompt's last position on
    return [lp[j, len(prompts[j // n]) - 1:len(prompts[j // n]) - 1 + g.lengths[j]] for j in range(len(rows))]


def _generated(g) -> list[np.ndarray]:
    return [g.logprobs[j, :g.lengths[j]] for j in range(len(g.lengths))]


def _assert_rows_close(got, want, atol=2e-4):
    for j, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, atol=atol, err_msg=f"row {j}")


def _max_gap(got, want) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))


def test_first_rollout_samples_the_loaded_checkpoint(engine_run):
    """The first rollout's log-probs (the engine's own) are those of a teacher-forced pass with
    the HF directory's weights, loaded apart from the run; not those of the preset's random
    initialization (a run that sampled with weights other than the loaded ones fails here)."""
    from rmr1_jax.checkpoint.loading import load_model

    _, hf_dir, calls, _ = engine_run
    rollouts = [(sp, p, g) for sp, p, g in calls if sp.temperature > 0]
    assert len(rollouts) == 2 and all(sp.n == 2 and len(p) == 2 for sp, p, _ in rollouts)
    sp, prompts, g = rollouts[0]
    assert g.lengths.sum() > 4  # responses of several tokens
    model, loaded = load_model(hf_dir, "lm", mesh=None, dtype="float32", scan_layers=False)
    _assert_rows_close(_generated(g), _teacher_forced(model, loaded, prompts, g, sp.n, sp.temperature))
    _, fresh = load_model("tiny", "lm", mesh=None, vocab_size=model.cfg.vocab_size, seed=0, dtype="float32",
                          scan_layers=False)
    assert _max_gap(_generated(g), _teacher_forced(model, fresh, prompts, g, sp.n, sp.temperature)) > 1e-2


def test_next_rollout_samples_the_updated_policy(engine_run):
    """After the first update, the next rollout's log-probs are a teacher-forced pass's with the
    updated weights (step 1's checkpoint) and differ from one with the starting weights; the
    held-out judging at the end decodes with the final weights as trained."""
    from rmr1_jax.checkpoint.loading import load_model

    root, hf_dir, calls, final = engine_run
    sp, prompts, g = [c for c in calls if c[0].temperature > 0][1]
    model, updated = load_model(str(root / "run" / "checkpoints"), "lm", mesh=None, step=1, dtype="float32",
                                scan_layers=False)
    _, start = load_model(hf_dir, "lm", mesh=None, dtype="float32", scan_layers=False)
    _assert_rows_close(_generated(g), _teacher_forced(model, updated, prompts, g, sp.n, sp.temperature))
    assert _max_gap(_generated(g), _teacher_forced(model, start, prompts, g, sp.n, sp.temperature)) > 1e-3
    (sp_e, prompts_e, g_e), = [c for c in calls if c[0].temperature == 0]
    assert sp_e.max_new_tokens == 4 and len(prompts_e) == 2 and g_e.lengths.sum() > 0
    _assert_rows_close(_generated(g_e), _teacher_forced(model, jax.device_get(final), prompts_e, g_e, 1, 0.0))
