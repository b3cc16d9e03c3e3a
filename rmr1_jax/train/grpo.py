"""Stage 2 of RM-R1: GRPO with the verifiable judgment reward.

Each rollout step samples ``n`` judgments per prompt from the current policy (through the
generation engine, every prompt of the step in one call; ``sampling:`` sizes it), rewards each
with :func:`rmr1_jax.judgment_reward` (+1 right verdict, -1 otherwise; a truncated judgment
gets the failure reward; with ``grpo.reward: consistency`` +1 only when the pair's other A/B
order is right too: :class:`~rmr1_jax.train.rollouts.VerdictReward`), normalizes rewards within
each prompt's group, computes reference (and old-policy) log-probs, and feeds mini-batches to
the one training loop, where the clipped-ratio loss plus the k3 KL term is minimized. All loss
choices are fields of :class:`GRPOSpec`, printed with the resolved config at start.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.errors import ConfigError
from rmr1_jax.sampling.engine import EngineConfig
from rmr1_jax.schema import JobConfig, OptimSpec, TrainSpec
from rmr1_jax.train import grpo_math
from rmr1_jax.models.logprobs import response_logprobs
from rmr1_jax.train.objective import Job, Plan, RecordSpec
from rmr1_jax.train.rollouts import RolloutSource, free_kv_pool


@dataclasses.dataclass
class GRPOSpec:
    n: int = 7  # rollouts per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_prompt_tokens: int = 4096
    max_response_tokens: int = 8192
    # What `rmr1 plan` prices a rollout step's responses at: None (every response at the
    # budget), a mean (a long-tailed log-normal around it), a list of lengths seen, or a
    # previous run's metrics.jsonl (the length quantiles its rollout steps logged)
    expected_response_tokens: float | list[float] | str | None = None
    prompts_per_step: int = 1024  # prompts per rollout step
    minibatch_prompts: int = 128  # prompts per optimizer update (8 updates per step)
    ppo_epochs: int = 1  # passes over each rollout batch
    rollout_steps: int | None = None  # None: one pass over the prompts
    # Judge every drawn pair in both A/B orders in the same rollout step (prompts_per_step
    # counts both). The reward then cannot be gained by leaning towards one letter: any shift
    # of the verdict prior helps one order and hurts the other, so the update follows the
    # content. Needs prompt/chosen/rejected pairs (not already rendered judge prompts).
    both_orders: bool = False
    # What a judgment earns reward_correct for (reward_wrong otherwise). "verdict": its own
    # verdict is right. "consistency" (J1's; needs both_orders): its verdict is right AND the
    # same pair's judgment in the other A/B order is right too (sample k of one order paired
    # with sample k of the other), so a judgment right only because of its position earns
    # nothing. Either way the rollouts log consistent_right_rate (the share of such sample
    # pairs right in both orders) when both_orders is on.
    reward: Literal["verdict", "consistency"] = "verdict"
    advantage: Literal["group_norm", "group_center"] = "group_norm"
    adv_eps: float = 1e-6
    # The group std of group_norm: "unbiased" divides by n - 1 (torch.std, as RM-R1's verl and
    # TRL do); "population" by n.
    adv_std: Literal["unbiased", "population"] = "unbiased"
    clip_low: float = 0.2
    clip_high: float = 0.2
    log_ratio_clamp: float = 20.0
    kl_estimator: Literal["k1", "k2", "k3", "none"] = "k3"
    kl_coef: float = 0.001
    kl_clamp: float = 10.0
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = "token_mean"
    entropy_coef: float = 0.0
    reward_correct: float = 1.0
    reward_wrong: float = -1.0  # also for no verdict and truncated output
    old_logprobs: Literal["recompute", "sampler"] = "recompute"
    # Deprecated and ignored: a rollout step's prompts go to the generation engine in one call,
    # so a slot freed by a short judgment takes the next waiting sample of the whole step;
    # sampling.max_slots sets how many sequences decode at once.
    rollout_batch: int | None = None
    # Sample rollouts with the weights cast to this dtype (e.g. bfloat16; None: as trained).
    # Old-policy log-probs must then be recomputed in the training dtype.
    rollout_dtype: str | None = None
    logprob_batch: int = 32  # rows per reference/old log-prob forward
    logprob_buckets: int = 8  # a log-prob forward's response columns: a multiple of 1/this of the budget
    # Rows whose advantage is 0 (every sample of the prompt rewarded alike) add nothing to the
    # clipped policy loss's gradient. Without a KL or entropy term they are left out of the
    # update's forward and backward passes (and of the old/reference log-prob passes), and still
    # counted in its aggregation denominator, so each update is the one over all rows. An update
    # keeps a quarter, half, three quarters or all of its rows, so few shapes are compiled.
    skip_zero_advantage: bool = True

    def uses_reference(self) -> bool:
        """Whether the loss has a KL term, and so needs the frozen reference policy."""
        return self.kl_estimator != "none" and self.kl_coef != 0.0

    def skips_zero_advantage(self) -> bool:
        """Whether zero-advantage rows are left out of the updates (exactly: no KL, no entropy term)."""
        return self.skip_zero_advantage and not self.uses_reference() and self.entropy_coef == 0.0

    def validate(self, where: str):
        if self.prompts_per_step % self.minibatch_prompts:
            raise ConfigError(f"{where}: grpo.minibatch_prompts must divide grpo.prompts_per_step")
        if self.n < 2:
            raise ConfigError(f"{where}: grpo.n must be at least 2 (advantages compare samples of one prompt)")
        for name in ("logprob_batch", "logprob_buckets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: grpo.{name} must be at least 1, not {getattr(self, name)}")
        if self.rollout_dtype is not None:
            try:
                if not jnp.issubdtype(jnp.dtype(self.rollout_dtype), jnp.floating):
                    raise TypeError
            except TypeError:
                raise ConfigError(f"{where}: grpo.rollout_dtype={self.rollout_dtype!r} is not a floating-point "
                                  f"dtype (e.g. bfloat16, float32)") from None
        if self.rollout_dtype is not None and self.old_logprobs == "sampler":
            raise ConfigError(f"{where}: grpo.rollout_dtype={self.rollout_dtype} samples with cast weights, so "
                              f"grpo.old_logprobs must be 'recompute' (the sampler's log-probs are the cast model's)")
        if self.both_orders and (self.prompts_per_step % 2 or self.minibatch_prompts % 2):
            raise ConfigError(f"{where}: grpo.both_orders needs even grpo.prompts_per_step and "
                              f"grpo.minibatch_prompts (each pair is judged in both orders)")
        if self.reward == "consistency" and not self.both_orders:
            raise ConfigError(f"{where}: grpo.reward=consistency needs grpo.both_orders=true")
        if self.rollout_batch is not None:
            warnings.warn(f"{where}: grpo.rollout_batch is deprecated and ignored: the generation engine takes a "
                          f"rollout step's prompts in one call; sampling.max_slots sets the sequences decoding at "
                          f"once (the static sampler decoded grpo.rollout_batch x grpo.n a process)", FutureWarning,
                          stacklevel=2)


@dataclasses.dataclass
class GRPOConfig(JobConfig):
    # RM-R1's stage-2 optimizer: constant 1e-6, no warmup, no weight decay
    optim: OptimSpec = dataclasses.field(default_factory=lambda: OptimSpec(lr=1e-6, schedule="constant",
                                                                            warmup_ratio=0.0, weight_decay=0.0))
    grpo: GRPOSpec = dataclasses.field(default_factory=GRPOSpec)
    # the generation engine's sizes, for the rollouts and held-out judging (max_slots,
    # page_size, kv_pages, prefill_chunk, ...: rmr1_jax.sampling.engine.EngineConfig)
    sampling: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    eval_max_new_tokens: int | None = None  # held-out judging budget (default: grpo.max_response_tokens)

    def validate(self, where: str):
        """One optimizer update consumes grpo.minibatch_prompts x grpo.n rollouts: that is the
        update's global batch, derived, never overwritten; a train.global_batch set to anything
        else is an error."""
        rows = self.grpo.minibatch_prompts * self.grpo.n
        if self.train.global_batch is not None and self.train.global_batch != rows:
            raise ConfigError(f"{where}: train.global_batch={self.train.global_batch} conflicts with the GRPO update "
                              f"size grpo.minibatch_prompts x grpo.n = {rows}; leave train.global_batch unset")
        self.train.check_micro_batch(where, rows, "grpo.minibatch_prompts x grpo.n")


def grpo_loss_fn(model, spec: GRPOSpec):
    agg = grpo_math.AGGREGATIONS[spec.loss_agg]

    def loss_fn(params, batch, rng):
        del rng
        mask = batch["response_mask"].astype(jnp.float32)
        real = mask > 0
        logp, ent = response_logprobs(model, params, batch, with_entropy=True, temperature=spec.temperature)
        # masked before any exp: whatever padded or left-out positions hold (garbage, inf) never
        # reaches a ratio or a KL term, where x 0 would still turn inf into NaN
        logp = jnp.where(real, logp, 0.0)
        old_logp = jnp.where(real, batch["old_logp"], 0.0)
        adv = jnp.where(real, batch["advantages"][:, None], 0.0)
        pg, clipped = grpo_math.clipped_policy_loss(logp, old_logp, adv, spec.clip_low, spec.clip_high,
                                                    spec.log_ratio_clamp)
        per_token = pg
        if spec.uses_reference():
            ref_logp = jnp.where(real, batch["ref_logp"], 0.0)
            kl = grpo_math.KL_ESTIMATORS[spec.kl_estimator](logp, ref_logp, log_ratio_clamp=spec.log_ratio_clamp)
            kl = jnp.clip(kl, -spec.kl_clamp, spec.kl_clamp)
            per_token = per_token + spec.kl_coef * kl
        else:
            kl = jnp.zeros_like(logp)
        if spec.entropy_coef:
            per_token = per_token - spec.entropy_coef * ent
        loss_sum, count = agg(per_token, mask)
        if "count_share" in batch:  # rows with zero advantage were left out; count them all
            count = jnp.sum(batch["count_share"])
        ntok = jnp.sum(mask)
        metrics = {"kl": (jnp.sum(kl * mask), ntok), "clip_fraction": (jnp.sum(clipped * mask), ntok),
                   "entropy": (jnp.sum(ent * mask), ntok), "policy_loss": (jnp.sum(pg * mask), ntok)}
        return loss_sum, (count, metrics)

    return loss_fn


class GRPOObjective:
    """Stage 2: rollouts of the current policy rewarded by the verdict rule, group advantages,
    the clipped-ratio loss (plus a KL term when set); an update trains on
    ``grpo.minibatch_prompts x grpo.n`` rollouts."""

    name = "grpo"
    head = "lm"
    supports_lora = True  # model.lora_rank > 0 trains adapters on a frozen base
    config_cls = GRPOConfig

    def records(self, cfg: GRPOConfig) -> RecordSpec:
        return RecordSpec("prompt", cfg.grpo.max_prompt_tokens, "skip" if cfg.data.overlong != "error" else "error",
                          both_orders=cfg.grpo.both_orders, length_key="grpo.max_prompt_tokens")

    def plan(self, job: Job) -> Plan:
        from rmr1_jax.data.pipeline import CheckpointableIterator
        from rmr1_jax.sampling.engine import Engine

        cfg, spec, sources, model, mesh, tokenizer = (job.cfg, job.cfg.grpo, job.sources, job.model, job.mesh,
                                                      job.tokenizer)
        ref_params = reference_params(spec, job.params, model.cfg)
        n_proc, p_idx = job.process_count, job.process_index
        for name, v in (("grpo.prompts_per_step", spec.prompts_per_step),
                        ("grpo.minibatch_prompts", spec.minibatch_prompts)):
            per = 2 * n_proc if spec.both_orders else n_proc
            if v % per:
                raise ConfigError(f"{name}={v} must be divisible by {per} ({n_proc} processes"
                                  f"{', both A/B orders' if spec.both_orders else ''})")
        n_prompts = len(sources["train"]) * (2 if spec.both_orders else 1)
        rollout_steps = spec.rollout_steps or max(1, n_prompts // spec.prompts_per_step)
        updates = (spec.prompts_per_step // spec.minibatch_prompts) * spec.ppo_epochs
        train = dataclasses.replace(cfg.train, global_batch=spec.minibatch_prompts * spec.n)  # derived, cfg untouched
        # shuffled globally, then each update's mini-batch of prompts dealt to the processes
        prompts = CheckpointableIterator(prompt_stream(
            sources["train"], seed=train.seed, records_per_update=spec.minibatch_prompts // (2 if spec.both_orders else 1),
            process_index=p_idx, process_count=n_proc).to_iter_dataset())
        eos = tuple(getattr(tokenizer, "eos_ids", ()) or (tokenizer.eos_id,))
        generator = Engine(model, eos_ids=eos, pad_id=tokenizer.pad_id, mesh=mesh, config=cfg.sampling,
                           weights_dtype=spec.rollout_dtype)
        source = RolloutSource(model=model, ref_params=ref_params, ref_model=reference_model(model),
                               generator=generator, tokenizer=tokenizer,
                               prompts=prompts, spec=spec, mesh=mesh, per_host_prompts=spec.prompts_per_step // n_proc,
                               per_host_minibatch_prompts=spec.minibatch_prompts // n_proc, seed=train.seed,
                               row_multiple=_row_multiple(train, mesh), reward=self.reward(job))
        # held-out generation uses the weights as trained, whatever the rollout dtype
        held_out = generator if spec.rollout_dtype is None else Engine(model, eos_ids=eos, pad_id=tokenizer.pad_id,
                                                                       mesh=mesh, config=cfg.sampling)
        save_every = cfg.checkpoint.save_every
        if save_every % updates:
            # periodic saves at rollout boundaries (a save inside a rollout, on SIGTERM, also keeps
            # the rollout's remaining mini-batches)
            save_every = max(updates, save_every // updates * updates)
        summary = (
            f"{self.title}: {spec.prompts_per_step} prompts x {spec.n} samples per rollout"
            f"{' (each pair in both A/B orders)' if spec.both_orders else ''}; loss: {spec.loss_agg}, "
            f"KL {spec.kl_estimator} x {spec.kl_coef} (clamp {spec.kl_clamp}), clip {spec.clip_low}/{spec.clip_high}, "
            f"advantage {spec.advantage} ({spec.adv_std} std, eps {spec.adv_eps}), entropy coef {spec.entropy_coef}"
            f"{'; rows with zero advantage left out of the updates' if spec.skips_zero_advantage() else ''}; "
            f"rollouts through the generation engine ({cfg.sampling.max_slots} slots a data-parallel shard, "
            f"pages of {cfg.sampling.page_size} tokens){self.reward_summary(cfg)}")
        return Plan(loss_fn=grpo_loss_fn(model, spec), batches=source, total_steps=rollout_steps * updates,
                    train=train, seq_len=spec.max_prompt_tokens + spec.max_response_tokens,
                    tokens_per_step=lambda b: float(np.sum(b["attention_mask"])),
                    evaluate=self.evaluator(job, held_out, train) if "eval" in sources else None,
                    save_every=save_every, summary=summary,
                    sizes={"rows per step": f"{train.global_batch} (grpo.minibatch_prompts x grpo.n)",
                           "rollout steps": rollout_steps, "updates per rollout": updates})


    # -- what a GRPO variant changes (rmr1_jax.train.policy_grpo) ---------------------------

    title = "GRPO"

    def reward(self, job: Job):
        """The rollout source's reward (None: the verdict reward,
        :class:`~rmr1_jax.train.rollouts.VerdictReward`)."""
        del job

    def reward_summary(self, cfg) -> str:
        spec = cfg.grpo
        what = {"verdict": "its verdict right",
                "consistency": "its verdict right and the pair's other A/B order's too, sample k with sample k"}
        return f"; reward: {spec.reward} ({spec.reward_correct:g} for {what[spec.reward]}, else {spec.reward_wrong:g})"

    def evaluator(self, job: Job, engine, train: TrainSpec):
        """``evaluate(params, step)``: the held-out judges' verdict accuracy, greedy through
        ``engine``."""
        cfg, spec, tokenizer, src = job.cfg, job.cfg.grpo, job.tokenizer, job.sources["eval"]

        def evaluate(p, step):
            from rmr1_jax.inference.judge import judge_prompts, verdict_accuracy

            del step
            n = len(src) if train.eval_limit is None else min(train.eval_limit, len(src))
            recs = [src[i] for i in range(n)]
            js = judge_prompts(engine, p, [np.asarray(r["input_ids"]).tolist() for r in recs], tokenizer,
                               batch_size=cfg.sampling.max_slots,
                               max_new_tokens=cfg.eval_max_new_tokens or spec.max_response_tokens)
            free_kv_pool(engine)  # the updates that follow need the memory
            return verdict_accuracy(js, [r["winner"].decode() if isinstance(r["winner"], bytes) else r["winner"]
                                         for r in recs])

        return evaluate


OBJECTIVE = GRPOObjective()


def prompt_stream(source, *, seed: int, records_per_update: int, process_index: int = 0, process_count: int = 1):
    """This process's GRPO prompt records: an endless grain MapDataset (its iterator's state
    gives exact resume). The records are shuffled globally (``seed``; reshuffled each epoch),
    as one process draws them, then dealt: of the ``u``-th block of ``records_per_update``
    records (``M``; the records of one optimizer update's mini-batch, a rollout step being a
    whole number of them), process ``p`` takes the rows ``[u * M + p * m, u * M + (p + 1) *
    m)``, ``m = M / process_count``. The processes' blocks, concatenated in process order, are
    then the one-process stream's, as the training pipelines' host batches are (see
    :mod:`rmr1_jax.data.pipeline`): a run's rollout steps draw the same prompts, and its
    updates train on the same prompts, on any process count. (The rollout keys each prompt's
    samples by its index in the one-process step, so they are the same too.)"""
    import sys

    import grain

    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    if process_count == 1:
        return ds
    if records_per_update % process_count:
        raise ConfigError(f"{records_per_update} prompt records per GRPO update do not divide over "
                          f"{process_count} processes")
    m = records_per_update // process_count
    offset = process_index * m

    def record(i):
        block, j = divmod(int(i), m)
        return ds[block * records_per_update + offset + j]

    return grain.MapDataset.range(sys.maxsize // process_count).map(record)


def run_grpo(cfg: GRPOConfig, log=print, eval_hook=None):
    """Stage 2 end to end: ``run(cfg, "grpo")``. Returns (model, params, TrainResult, tokenizer)."""
    from rmr1_jax.train.runner import run

    return run(cfg, OBJECTIVE, log=log, eval_hook=eval_hook)


def reference_params(spec: GRPOSpec, params, model_cfg=None):
    """The frozen reference policy when the loss has a KL term, ``None`` otherwise (no reference
    pass). Full fine-tuning: a copy of the initial policy, sharded like it. LoRA
    (``model_cfg.lora_rank > 0``): the frozen base itself, the same arrays with the adapters
    left out (no second copy of the weights), applied by :func:`reference_model`."""
    if not spec.uses_reference():
        return None
    if model_cfg is not None and model_cfg.lora_rank:
        from rmr1_jax.models.lora import split_params

        return split_params(params)[1]
    return jax.tree.map(lambda x: x.copy(), params)


def reference_model(model):
    """The module the reference params go with: with LoRA, the model without adapters."""
    if not model.cfg.lora_rank:
        return model
    from rmr1_jax.models.lora import base_config

    return model.clone(cfg=base_config(model.cfg))


def _row_multiple(train_spec: TrainSpec, mesh) -> int:
    """Host-local rows an update's row count must be a multiple of: the micro-batch count
    times this host's share of the (data, fsdp) shards."""
    shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    return train_spec.accum_steps() * max(1, shards // jax.process_count())


def load_grpo_config(path: str | None, overrides: list[str] | None = None) -> GRPOConfig:
    from rmr1_jax.config import load

    return load(GRPOConfig, path, overrides)
