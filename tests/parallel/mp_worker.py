"""One process of the two-process test (run by test_multiprocess.py, not by pytest)."""

import json
import sys

import numpy as np


def main():
    hf_dir, out_dir, result_path = sys.argv[1:4]
    from rmr1_jax.parallel.mesh import initialize_distributed

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
    g2 = sampler.generate(params, prompts, SamplingParams(max_new_tokens=6, temperature=0.0, n=2))
    # a mesh that is all tensor-parallel: the prompts cannot be split, so they are replicated
    mesh_tp = make_mesh((1, 1, 8))
    model_tp, params_tp = rj.load_hf(hf_dir, mesh=mesh_tp)
    g_tp = Sampler(model_tp, eos_ids=[model.cfg.vocab_size], pad_id=0, mesh=mesh_tp).generate(
        params_tp, prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    out = {"prompts": prompts, "tokens": g.tokens.tolist(), "logprobs": g.logprobs.tolist(),
           "lengths": g.lengths.tolist(), "tokens_n2": g2.tokens.tolist(), "tokens_tp": g_tp.tokens.tolist()}

    # A GRPO rollout step and its updates: rows from each process's own prompts, one global update.
    import optax

    from rmr1_jax.text import verdict
    from rmr1_jax.train.grpo import GRPOSpec, RolloutSource, grpo_loss_fn
    from rmr1_jax.train.loop import init_state, make_train_step, to_global

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    verdict.judgment_reward = lambda text, winner: 1.0 if sum(map(int, text.split())) % 2 else -1.0
    recs = [{"input_ids": np.asarray(p, np.int32), "winner": "A"} for p in prompts]
    spec = GRPOSpec(n=2, max_prompt_tokens=16, max_response_tokens=6, prompts_per_step=4, minibatch_prompts=2,
                    rollout_batch=4, logprob_batch=4, temperature=1.0, old_logprobs="recompute")
    src = RolloutSource(model=model, ref_params=params, sampler=sampler, tokenizer=Tok(), prompts=iter(recs),
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
    with open(f"{result_path}.gen{pid}", "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
