"""GRPO building blocks as small registered functions: advantage estimators, KL estimators,
the clipped policy loss and loss aggregations. Every choice is a config field (see
``GRPOSpec``) whose default is RM-R1's: group-normalized advantages with the unbiased std
and epsilon 1e-6, PPO clip 0.2, k3 KL to the reference (coefficient 0.001, clamped), token-mean aggregation,
no entropy bonus.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

ADVANTAGES: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
AGGREGATIONS: dict[str, Callable] = {}


def _register(table):
    """Register ``adv_x`` / ``kl_x`` / ``agg_x`` under the config name ``x``."""

    def deco(fn):
        table[fn.__name__.split("_", 1)[1]] = fn
        return fn

    return deco


# --- advantages (host side, numpy: rewards [P, n] -> advantages [P, n]) -------------------


def _centered(rewards: np.ndarray) -> np.ndarray:
    """r - group mean in float64, exactly 0 for a group whose rewards are all equal (whatever
    the values: in float32, seven rewards of 0.7 have a mean that is not 0.7)."""
    r = np.asarray(rewards, np.float64)
    centered = r - r.mean(axis=1, keepdims=True)
    same = np.all(r == r[:, :1], axis=1, keepdims=True)
    return np.where(same, 0.0, centered)


@_register(ADVANTAGES)
def adv_group_norm(rewards: np.ndarray, eps: float, std: str = "unbiased") -> np.ndarray:
    """(r - group mean) / (group std + eps). ``std="unbiased"`` divides the squared deviations
    by n - 1 (``torch.std``, as RM-R1's verl and TRL do), ``"population"`` by n. A group whose
    rewards are all equal gets exactly 0."""
    if std not in STD_ESTIMATORS:
        raise ValueError(f"std estimator {std!r} is not one of {STD_ESTIMATORS}")
    ddof = 1 if std == "unbiased" else 0
    sd = np.asarray(rewards, np.float64).std(axis=1, ddof=ddof, keepdims=True)
    return (_centered(rewards) / (sd + eps)).astype(np.float32)


@_register(ADVANTAGES)
def adv_group_center(rewards: np.ndarray, eps: float, std: str = "unbiased") -> np.ndarray:
    """r - group mean (no std division); exactly 0 for a group of equal rewards."""
    del eps, std
    return _centered(rewards).astype(np.float32)


STD_ESTIMATORS = ("unbiased", "population")


# --- KL estimators (per token; logp = policy, ref = reference log-prob) ------------------


@_register(KL_ESTIMATORS)
def kl_k1(logp, ref, log_ratio_clamp: float = 20.0):
    del log_ratio_clamp  # no exp: nothing to overflow
    return logp - ref


@_register(KL_ESTIMATORS)
def kl_k2(logp, ref, log_ratio_clamp: float = 20.0):
    del log_ratio_clamp
    return 0.5 * (logp - ref) ** 2


@_register(KL_ESTIMATORS)
def kl_k3(logp, ref, log_ratio_clamp: float = 20.0):
    """exp(d) - d - 1 with d = ref - logp clamped to +/- ``log_ratio_clamp`` before the exp (as
    verl does): unbiased, non-negative, low variance, and finite (with its gradient) for any
    gap; exp(100) would overflow float32 and turn the gradient into NaN."""
    d = jnp.clip(ref - logp, -log_ratio_clamp, log_ratio_clamp)
    return jnp.exp(d) - d - 1.0


def clipped_policy_loss(logp, old_logp, adv, clip_low: float, clip_high: float, log_ratio_clamp: float):
    """Per-token PPO loss max(-A r, -A clip(r, 1-low, 1+high)) and whether it was clipped. The
    log ratio is clamped before the exp; callers zero masked positions first."""
    log_ratio = jnp.clip(logp - old_logp, -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return jnp.maximum(unclipped, clipped), (clipped > unclipped)


# --- aggregations: per-token values [R, L] and mask -> (sum, count) for exact accumulation ---


@_register(AGGREGATIONS)
def agg_token_mean(values, mask):
    """Mean over all response tokens of the batch: sum / token count."""
    return jnp.sum(values * mask), jnp.sum(mask)


@_register(AGGREGATIONS)
def agg_seq_mean_token_mean(values, mask):
    """Mean over sequences of each sequence's token mean."""
    per_seq = jnp.sum(values * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    has = (jnp.sum(mask, axis=1) > 0).astype(values.dtype)
    return jnp.sum(per_seq * has), jnp.sum(has)


@_register(AGGREGATIONS)
def agg_seq_mean_token_sum(values, mask):
    """Mean over sequences of each sequence's token sum."""
    has = (jnp.sum(mask, axis=1) > 0).astype(values.dtype)
    return jnp.sum(values * mask), jnp.sum(has)


# The quantiles of a rollout step's response lengths a GRPO run logs (``rmr1 plan`` reads them
# back: ``grpo.expected_response_tokens: runs/.../metrics.jsonl``, :mod:`rmr1_jax.plan.rollout`).
QUANTILES = (("response_length_min", 0.0), ("response_length_p10", 0.1), ("response_length_p50", 0.5),
             ("response_length_p90", 0.9), ("response_length_max", 1.0))


def length_quantiles(lengths) -> dict:
    """``{name: quantile}`` of :data:`QUANTILES` over ``lengths`` (empty for no lengths)."""
    v = np.asarray(lengths, float)
    return {k: float(np.quantile(v, q)) for k, q in QUANTILES} if v.size else {}
