"""The Bradley-Terry reward model (``rmr1 train-rm``): a scalar head on the decoder, read at
each conversation's last real token, trained on preference pairs with

    loss = -log sigmoid(r_chosen - r_rejected - margin)

summed over pairs and divided by the pair count of the whole global batch (exact under
accumulation). Each row of a batch is one pair; the loss stacks its two sides into
interleaved rows (chosen_0, rejected_0, chosen_1, ...) of one forward pass, so both sides of
a pair always share a micro-batch and a device. Both sides are the whole conversation
rendered through the checkpoint's chat template, in training and in evaluation alike.

The model starts from an HF sequence-classification checkpoint (its ``score`` head kept), a
causal LM (the trunk loaded, a fresh seeded ``score`` head) or a preset.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.schema import JobConfig
from rmr1_jax.train.objective import IteratorSource, Job, Plan, RecordSpec, row_steps

# pairs per optimizer step when train.global_batch is unset (RAMO's reward model: 32)
DEFAULT_PAIRS_PER_STEP = 32


@dataclasses.dataclass
class RewardSpec:
    # the loss asks r_chosen to exceed r_rejected by this much (0: the plain Bradley-Terry loss)
    margin: float = 0.0


@dataclasses.dataclass
class RewardConfig(JobConfig):
    reward: RewardSpec = dataclasses.field(default_factory=RewardSpec)

    def validate(self, where: str):
        pairs = self.train.global_batch or DEFAULT_PAIRS_PER_STEP
        self.train.check_micro_batch(where, pairs, "train.global_batch (pairs per step)")


def interleave(a_pt, b_pt):
    """[P, ...] and [P, ...] -> [2P, ...] rows a_0, b_0, a_1, b_1, ..."""
    return jnp.stack([a_pt, b_pt], axis=1).reshape(-1, *a_pt.shape[1:])


def bt_loss_fn(model, margin: float = 0.0):
    """loss_fn(params, batch, rng) -> (loss_sum, (pairs, metrics)) over a batch of pairs
    (``chosen_ids``/``chosen_mask``/``rejected_ids``/``rejected_mask`` [P, T]). A pair with an
    empty side (evaluation filler) counts nowhere."""

    def loss_fn(params, batch, rng):
        del rng
        ids = interleave(batch["chosen_ids"], batch["rejected_ids"])
        mask = interleave(batch["chosen_mask"], batch["rejected_mask"])
        r = model.apply({"params": params}, ids, attention_mask=mask)[:, 0].reshape(-1, 2)
        rc, rr = r[:, 0], r[:, 1]
        w = ((jnp.sum(batch["chosen_mask"], -1) > 0) & (jnp.sum(batch["rejected_mask"], -1) > 0)).astype(jnp.float32)
        diff = rc - rr
        loss = -jax.nn.log_sigmoid(diff - margin)
        n = jnp.sum(w)
        metrics = {"accuracy": (jnp.sum((diff > 0) * w), n), "margin": (jnp.sum(diff * w), n),
                   "reward_chosen": (jnp.sum(rc * w), n), "reward_rejected": (jnp.sum(rr * w), n),
                   "reward_mean": (jnp.sum((rc + rr) * w), 2 * n),
                   "reward_sq": (jnp.sum((rc * rc + rr * rr) * w), 2 * n)}
        return jnp.sum(loss * w), (n, metrics)

    return loss_fn


def reward_spread(m: dict) -> dict:
    """The standard deviation of the rewards, from their mean and mean square."""
    if "reward_sq" not in m or "reward_mean" not in m:
        return {}
    return {"reward_std": math.sqrt(max(m["reward_sq"] - m["reward_mean"] ** 2, 0.0))}


def heldout_pairs(loss_fn, params, batches, mesh, step=None) -> dict:
    """Pairwise accuracy, mean margin, loss and reward statistics over held-out pair batches
    (sums over the whole set, then divided). ``step``: ``jax.jit`` of ``loss_fn`` without an
    rng, made once by a caller that evaluates repeatedly (compiled once)."""
    from rmr1_jax.parallel.hostlocal import to_global
    from rmr1_jax.parallel.sharding import activation_sharding

    f = step or jax.jit(lambda p, b: loss_fn(p, b, None))
    loss, pairs, sums = 0.0, 0.0, {}
    with activation_sharding(mesh):
        for b in batches:
            s, (c, metrics) = jax.device_get(f(params, to_global(b, mesh)))
            loss, pairs = loss + float(s), pairs + float(c)
            for k, (ms, mn) in metrics.items():
                prev = sums.get(k, (0.0, 0.0))
                sums[k] = (prev[0] + float(ms), prev[1] + float(mn))
    out = {"loss": loss / max(pairs, 1.0), "pairs": pairs}
    out.update({k: s / max(n, 1.0) for k, (s, n) in sums.items()})
    out.update(reward_spread(out))
    return out


class RewardModelObjective:
    """Bradley-Terry training of a scalar reward model on preference pairs; a step trains on
    ``train.global_batch`` pairs (default 32), ``2 x`` that many sequences."""

    name = "reward-model"
    config_cls = RewardConfig
    head = "scalar"
    supports_lora = True  # model.lora_rank > 0 trains adapters on a frozen base

    def records(self, cfg: RewardConfig) -> RecordSpec:
        return RecordSpec("pair", cfg.data.max_length, cfg.data.overlong)

    def plan(self, job: Job) -> Plan:
        from rmr1_jax.data.pipeline import CheckpointableIterator, pair_dataset, pair_eval_batches

        cfg, sources, mesh, model = job.cfg, job.sources, job.mesh, job.model
        train = dataclasses.replace(cfg.train, global_batch=cfg.train.global_batch or DEFAULT_PAIRS_PER_STEP)
        n_proc, p_idx = job.process_count, job.process_index
        per_host, total_steps, epochs = row_steps(job, train, "pairs")
        pad_id, max_len = job.tokenizer.pad_id, cfg.data.max_length
        ds_kw = dict(batch_size=per_host, max_length=max_len, seed=train.seed, pad_id=pad_id,
                     process_index=p_idx, process_count=n_proc)
        batches = IteratorSource(CheckpointableIterator(pair_dataset(sources["train"], epochs=epochs, **ds_kw)))
        loss_fn = bt_loss_fn(model, cfg.reward.margin)
        eval_step = jax.jit(lambda p, b: loss_fn(p, b, None))  # compiled once for every evaluation

        def evaluate(p, step):
            del step
            return heldout_pairs(loss_fn, p, pair_eval_batches(
                sources["eval"], batch_size=per_host, max_length=max_len, pad_id=pad_id, limit=train.eval_limit,
                process_index=p_idx, process_count=n_proc), mesh, step=eval_step)

        return Plan(loss_fn=loss_fn, batches=batches, total_steps=total_steps, train=train, seq_len=max_len,
                    tokens_per_step=lambda b: float(np.sum(b["chosen_mask"]) + np.sum(b["rejected_mask"])),
                    evaluate=evaluate if "eval" in sources else None, derive_metrics=reward_spread,
                    sizes={"rows per step": f"{train.global_batch} pairs ({2 * train.global_batch} sequences)",
                           "tokens per sequence": max_len},
                    summary=f"reward model: Bradley-Terry loss (margin {cfg.reward.margin}), the scalar head read "
                            f"at each conversation's last real token")


OBJECTIVE = RewardModelObjective()


def run_reward_model(cfg: RewardConfig, log=print, eval_hook=None):
    """``run(cfg, "reward-model")``. Returns (model, params, TrainResult, tokenizer)."""
    from rmr1_jax.train.runner import run

    return run(cfg, OBJECTIVE, log=log, eval_hook=eval_hook)
