"""GRPO of a policy whose reward is a trained reward model (``rmr1 policy-grpo CONFIG``).

The policy trains as stage 2 trains a judge (the same rollout source, loss, checkpoints,
resume and preemption: :mod:`rmr1_jax.train.grpo`); what differs is the data and the reward.
The data rows are prompts for the policy to answer::

    {"prompt": "What is 7 * 8?", "reference": "7 * 8 equals 56.", "answer": "56"}

(``prompt`` a string or a message list; ``reference`` for a judge's ``reference`` scheme;
``answer`` for a program's check, the held-out accuracy, and the verifiable reward). The
reward (``policy_reward:``, :class:`~rmr1_jax.train.policy_rewards.PolicyRewardSpec`) is a
generative pairwise judge turned into per-sample rewards, a scalar reward model's score, the
check alone, or a model's reward with the check mixed in. The judge or reward model is loaded
once, on the job's own mesh, and stays frozen: its parameters are arguments of its own
compiled calls, never part of the training state, so no update donates or changes them.

Per rollout step the metrics split the time: ``time_rollout_s`` (the policy's samples),
``time_reward_s`` (judging or scoring), ``time_reference_s`` and ``time_old_logprobs_s`` (the
log-prob passes), and each optimizer step's ``time_update_s``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rmr1_jax.errors import ConfigError
from rmr1_jax.schema import TrainSpec
from rmr1_jax.train.grpo import GRPOConfig, GRPOObjective
from rmr1_jax.train.objective import Job, RecordSpec
from rmr1_jax.train.policy_rewards import PolicyReward, PolicyRewardSpec, check_answer, policy_target


@dataclasses.dataclass
class PolicyGRPOConfig(GRPOConfig):
    policy_reward: PolicyRewardSpec = dataclasses.field(default_factory=PolicyRewardSpec)

    def validate(self, where: str):
        super().validate(where)
        if self.grpo.both_orders:
            raise ConfigError(f"{where}: grpo.both_orders is for training a judge on pairs; a policy's prompts "
                              f"have one order (set grpo.both_orders=false)")


class PolicyGRPOObjective(GRPOObjective):
    """GRPO of a policy on ``{prompt, reference?, answer?}`` rows, rewarded by
    ``policy_reward``; held-out accuracy by ``policy_reward.check`` against the eval rows'
    ``answer``."""

    name = "policy-grpo"
    config_cls = PolicyGRPOConfig
    title = "policy GRPO"

    def records(self, cfg: PolicyGRPOConfig) -> RecordSpec:
        return RecordSpec("policy", cfg.grpo.max_prompt_tokens, "skip" if cfg.data.overlong != "error" else "error",
                          length_key="grpo.max_prompt_tokens")

    def reward(self, job: Job) -> PolicyReward:
        spec = job.cfg.policy_reward
        # a reward model reads the whole conversation: the prompt, the sample and the template's tokens
        longest = job.cfg.grpo.max_prompt_tokens + job.cfg.grpo.max_response_tokens + 64
        return PolicyReward(spec, job.cfg.grpo.n, load_reward_scorer(spec, job.mesh, job.log, max_length=longest))

    def reward_summary(self, cfg: PolicyGRPOConfig) -> str:
        r = cfg.policy_reward
        what = {"judge": f"the judge {r.ckpt}, {r.scheme} scheme (greedy, {r.max_new_tokens} tokens a judgment)",
                "scalar": f"the reward model {r.ckpt}", "check": f"the {r.check} check",
                "chance": f"a judge at chance (coin-flip verdicts), {r.scheme} scheme"}
        mix = f", plus {r.check_weight:g} x the {r.check} check" if r.kind != "check" and r.check_weight else ""
        return f"; reward: {what[r.kind]}{mix}"

    def evaluator(self, job: Job, engine, train: TrainSpec):
        """``evaluate(params, step)``: greedy answers to the held-out prompts (at most
        ``train.eval_limit``); ``accuracy`` by the check over the rows with an ``answer``,
        the share of answers cut off, their mean length."""
        from rmr1_jax.sampling.sampler import SamplingParams
        from rmr1_jax.train.rollouts import free_kv_pool

        cfg, src, tokenizer = job.cfg, job.sources["eval"], job.tokenizer
        check = cfg.policy_reward.check
        sp = SamplingParams(max_new_tokens=cfg.eval_max_new_tokens or cfg.grpo.max_response_tokens, temperature=0.0)

        def evaluate(p, step):
            del step
            n = len(src) if train.eval_limit is None else min(train.eval_limit, len(src))
            recs = [src[i] for i in range(n)]
            g = engine.generate(p, [np.asarray(r["input_ids"]).tolist() for r in recs], sp, tokenizer=tokenizer,
                                shared=True)
            free_kv_pool(engine)  # the updates that follow need the memory
            checked = [c for c in (check_answer(check, x, policy_target(r)) for r, x in zip(recs, g.texts))
                       if c is not None]
            out = {"truncated_rate": float(np.mean(~np.asarray(g.finished))) if n else 0.0,
                   "mean_tokens": float(np.mean(g.lengths)) if n else 0.0, "n": n}
            if checked:
                out["accuracy"] = sum(checked) / len(checked)
            return out

        return evaluate


OBJECTIVE = PolicyGRPOObjective()


def load_reward_scorer(spec: PolicyRewardSpec, mesh, log=print, max_length: int = 4096):
    """The frozen judge (:class:`~rmr1_jax.inference.loading.LoadedJudge`) or reward model
    (:class:`~rmr1_jax.inference.reward.RewardScorer`, rows of at most ``max_length`` tokens,
    a longer one cut from the front) that ``spec`` names, on ``mesh``; None for ``kind: check``
    and ``chance``."""
    if spec.kind in ("check", "chance"):
        return None
    if spec.kind == "judge":
        from rmr1_jax.inference.loading import load_judge

        judge = load_judge(spec.ckpt, mesh, tokenizer_path=spec.tokenizer, prompt_variant=spec.prompt_variant,
                           system_file=spec.system_file, user_file=spec.user_file)
        log(f"policy reward: judge {spec.ckpt} ({judge.model.cfg.num_params() / 1e6:.2f}M parameters), "
            f"{spec.scheme} scheme")
        return judge
    from rmr1_jax.inference.reward import load_reward_model

    scorer = load_reward_model(spec.ckpt, mesh, tokenizer_path=spec.tokenizer, batch_size=spec.batch_size,
                               max_length=max_length, truncate=True)
    log(f"policy reward: reward model {spec.ckpt} ({scorer.model.cfg.num_params() / 1e6:.2f}M parameters)")
    return scorer


def run_policy_grpo(cfg: PolicyGRPOConfig, log=print, eval_hook=None):
    """``run(cfg, "policy-grpo")``. Returns (model, params, TrainResult, tokenizer)."""
    from rmr1_jax.train.runner import run

    return run(cfg, OBJECTIVE, log=log, eval_hook=eval_hook)
