"""One process of the two-process test (run by test_multiprocess.py through
:func:`mp_launch.start_job`, not by pytest). :func:`placement_free_case` is also the test's
one-process reference."""

import faulthandler
import json
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: mp_launch

PROMPTS = 8  # global prompts of the placement-free case (one per device of its mesh)
MAX_NEW = 5


def _parity_reward(text, winner, opened_thinking=False):
    """A reward of the sampled text alone (a random tiny model writes no verdict), varying
    within a group: equal samples get equal rewards on any process."""
    del winner, opened_thinking
    return 1.0 if sum(map(int, text.split())) % 2 else -1.0


class _Finishing:
    """The sampler, with every sample counted as finished (a random tiny model seldom ends, and
    the rollout gives an unfinished sample the failure reward whatever its text)."""

    def __init__(self, sampler):
        self._sampler, self.pad_id = sampler, sampler.pad_id

    def generate(self, *args, **kwargs):
        g = self._sampler.generate(*args, **kwargs)
        g.finished[:] = True
        return g


def placement_free_case(hf_dir) -> dict:
    """Generation (greedy and sampled, n = 2 samples a prompt) and a GRPO rollout step (prompts from
    :func:`rmr1_jax.train.grpo.prompt_stream`, two updates) on a (1, 8, 1) mesh, in a job of
    one process or several: this process's rows (its share of :data:`PROMPTS` prompts, in
    process order; its mini-batches). In the two-process job the mesh interleaves the
    processes' devices; every process's rows, concatenated in process order, must be the
    one-process run's, row for row."""
    import jax

    import rmr1_jax as rj
    from rmr1_jax.data.pipeline import CheckpointableIterator
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.parallel.hostlocal import process_rows, to_global
    from rmr1_jax.sampling.sampler import Sampler, SamplingParams
    from rmr1_jax.text import verdict
    from rmr1_jax.train.grpo import GRPOSpec, RolloutSource, prompt_stream

    n_proc, pid = jax.process_count(), jax.process_index()
    mesh = make_mesh((1, 8, 1))
    model, params = rj.load_hf(hf_dir, mesh=mesh)
    vocab = model.cfg.vocab_size
    prompts = [np.random.default_rng(200 + i).integers(1, vocab, size=3 + 4 * i % 11).tolist() for i in range(PROMPTS)]
    k = PROMPTS // n_proc
    mine = prompts[pid * k:(pid + 1) * k]
    out = {"placement": process_rows(to_global({"x": np.zeros((k, 1), np.int32)}, mesh)["x"]).tolist()}
    sampler = Sampler(model, eos_ids=[vocab], pad_id=0, mesh=mesh)
    g = sampler.generate(params, mine, SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, n=2))
    s = sampler.generate(params, mine, SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, n=2),
                         rng=jax.random.key(11))
    out.update(greedy_tokens=g.tokens.tolist(), greedy_logprobs=g.logprobs.tolist(),
               sampled_tokens=s.tokens.tolist(), sampled_logprobs=s.logprobs.tolist())
    # the generation engine on the same mesh: 3 slots for the 16 rows, so slots are refilled
    from rmr1_jax.sampling.engine import Engine, EngineConfig

    engine = Engine(model, eos_ids=[vocab], pad_id=0, mesh=mesh, config=EngineConfig(max_slots=3, page_size=4))
    eg = engine.generate(params, mine, SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, n=2))
    es = engine.generate(params, mine, SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, n=2),
                         rng=jax.random.key(11))
    out.update(engine_greedy_tokens=eg.tokens.tolist(), engine_greedy_logprobs=eg.logprobs.tolist(),
               engine_sampled_tokens=es.tokens.tolist(), engine_sampled_logprobs=es.logprobs.tolist())

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

        def encode(self, text):  # one id per character (the verdict probabilities' continuations)
            return [ord(c) % (vocab - 1) + 1 for c in text]

    # verdict probabilities of this process's judgments, each process its own (shared=False):
    # process 0's block has three verdicts, process 1's one, so their forward counts differ
    # unless agreed (batch_size 1: one judgment, two rows, a forward)
    from rmr1_jax.inference.verdict_prob import verdict_probabilities

    texts = [f"ok <answer>[[{'AB'[i % 2]}]]</answer>" if i in (0, 1, 3, 6) else "no verdict" for i in range(PROMPTS)]
    out["verdict_probs"] = verdict_probabilities(model, params, Tok(), mine, texts[pid * k:(pid + 1) * k],
                                                 batch_size=1, mesh=mesh, shared=False)

    # the rollout step: 8 prompts (one sampler call of the same shapes as above), 2 updates of 4
    recs = [{"input_ids": np.asarray(p, np.int32), "winner": "A"} for p in prompts]
    spec = GRPOSpec(n=2, max_prompt_tokens=16, max_response_tokens=MAX_NEW, prompts_per_step=PROMPTS,
                    minibatch_prompts=4, logprob_batch=2 * k, temperature=1.0,
                    old_logprobs="recompute")
    stream = prompt_stream(recs, seed=3, records_per_update=4, process_index=pid, process_count=n_proc)
    src = RolloutSource(model=model, ref_params=params, generator=_Finishing(sampler), tokenizer=Tok(),
                        prompts=CheckpointableIterator(stream.to_iter_dataset()), spec=spec, mesh=mesh,
                        per_host_prompts=k, per_host_minibatch_prompts=4 // n_proc, seed=5)
    real, verdict.judgment_reward = verdict.judgment_reward, _parity_reward  # looked up at each call
    try:
        src._rollout(params)
    finally:
        verdict.judgment_reward = real
    out["updates"] = [{key: np.asarray(b[key]).tolist() for key in ("input_ids", "attention_mask", "response_mask",
                                                                    "old_logp", "ref_logp", "advantages")}
                      for b in src.queue]
    out["metrics"] = {key: v for key, v in src.pop_metrics().items() if not key.startswith(("time_", "rollout_tokens"))}
    return out


def main():
    faulthandler.register(signal.SIGUSR1)  # the launcher asks for the stacks of a hung process
    if sys.argv[1] == "--reference":  # mp_worker.py --reference HF_DIR RESULT: one process's placement-free case
        with open(sys.argv[3], "w") as fh:
            json.dump(placement_free_case(sys.argv[2]), fh)
        return
    hf_dir, out_dir, result_path = sys.argv[1:4]
    from mp_launch import cache_on_every_process
    from rmr1_jax.parallel.mesh import initialize_distributed

    cache_on_every_process()
    initialize_distributed()
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    import rmr1_jax as rj
    from rmr1_jax.parallel import activation_sharding, make_mesh

    assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    mesh = make_mesh((2, 2, 2))
    model, params = rj.load_hf(hf_dir, mesh=mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.cfg.vocab_size, size=(4, 12)).astype(np.int32)
    f = jax.jit(lambda p, x: model.apply({"params": p}, x))
    with activation_sharding(mesh):
        logits = f(params, jnp.asarray(ids))
    full = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    rj.save_hf(model, params, out_dir, dtype="float32")
    multihost_utils.sync_global_devices("saved")
    if jax.process_index() == 0:
        with open(result_path, "w") as fh:
            json.dump({"ids": ids.tolist(), "logits": full.tolist()}, fh)

    # Generation: each process brings its own prompts (mixed lengths) and gets its own rows back.
    from rmr1_jax.sampling.sampler import Sampler, SamplingParams

    pid = jax.process_index()
    prng = np.random.default_rng(100 + pid)
    prompts = [prng.integers(1, model.cfg.vocab_size, size=int(n)).tolist() for n in (5, 9, 3, 7)]
    sampler = Sampler(model, eos_ids=[model.cfg.vocab_size], pad_id=0, mesh=mesh)
    g = sampler.generate(params, prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    # a mesh that is all tensor-parallel: the prompts cannot be split, so they are replicated
    mesh_tp = make_mesh((1, 1, 8))
    model_tp, params_tp = rj.load_hf(hf_dir, mesh=mesh_tp)
    g_tp = Sampler(model_tp, eos_ids=[model.cfg.vocab_size], pad_id=0, mesh=mesh_tp).generate(
        params_tp, prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    out = {"prompts": prompts, "tokens": g.tokens.tolist(), "logprobs": g.logprobs.tolist(),
           "lengths": g.lengths.tolist(), "tokens_tp": g_tp.tokens.tolist()}

    # A GRPO rollout step and its updates: rows from each process's own prompts, one global update.
    import optax

    from rmr1_jax.text import verdict
    from rmr1_jax.train.grpo import GRPOSpec, RolloutSource, grpo_loss_fn
    from rmr1_jax.train.loop import init_state, make_train_step, to_global

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    real_reward, verdict.judgment_reward = verdict.judgment_reward, _parity_reward
    recs = [{"input_ids": np.asarray(p, np.int32), "winner": "A"} for p in prompts]
    spec = GRPOSpec(n=2, max_prompt_tokens=16, max_response_tokens=6, prompts_per_step=4, minibatch_prompts=2,
                    logprob_batch=4, temperature=1.0, old_logprobs="recompute")
    src = RolloutSource(model=model, ref_params=params, generator=sampler, tokenizer=Tok(), prompts=iter(recs),
                        spec=spec, mesh=mesh, per_host_prompts=4, per_host_minibatch_prompts=2, seed=pid)
    src._rollout(params)
    opt = optax.sgd(0.1)
    step = make_train_step(grpo_loss_fn(model, spec), opt, lambda s: 0.1, 1, mesh)
    state = init_state(params, opt)
    losses = []
    for batch in src.queue:
        state, m = step(state, to_global(batch, mesh), jax.random.key(0))
        losses.append(float(m["loss"]))
    out.update(grpo_losses=losses, grpo_rows=[b["input_ids"].shape[0] for b in src.queue],
               grpo_row_prompts=[[int(t) for t, m in zip(r, mk) if m] for b in src.queue
                                 for r, mk in zip(b["input_ids"], b["attention_mask"])],
               grpo_param_sum=float(sum(float(np.sum(multihost_utils.process_allgather(x, tiled=True)))
                                        for x in jax.tree.leaves(state["params"]))))
    verdict.judgment_reward = real_reward
    with open(f"{result_path}.gen{pid}", "w") as fh:
        json.dump(out, fh)

    # The same process's rows on a mesh that interleaves the processes' devices (as a TPU
    # slice's may): placed elsewhere in the global batch, they must get the same samples.
    from mp_launch import interleave_devices

    interleave_devices()
    with open(f"{result_path}.interleaved{pid}", "w") as fh:
        json.dump(placement_free_case(hf_dir), fh)


if __name__ == "__main__":
    main()
