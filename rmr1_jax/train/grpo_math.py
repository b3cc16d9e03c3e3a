"""GRPO building blocks as small registered functions: advantage estimators, KL estimators,
the clipped policy loss and loss aggregations. Every choice is a config field (see
``GRPOSpec``) whose default is RM-R1's: group-normalized advantages with std epsilon 1e-6,
PPO clip 0.2, k3 KL to the reference (coefficient 0.001, clamped), token-mean aggregation,
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


@_register(ADVANTAGES)
def adv_group_norm(rewards: np.ndarray, eps: float) -> np.ndarray:
    """(r - group mean) / (group std + eps); std is the population std (ddof=0)."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + eps)


@_register(ADVANTAGES)
def adv_group_center(rewards: np.ndarray, eps: float) -> np.ndarray:
    """r - group mean (no std division)."""
    del eps
    return rewards - rewards.mean(axis=1, keepdims=True)


# --- KL estimators (per token; logp = policy, ref = reference log-prob) ------------------


@_register(KL_ESTIMATORS)
def kl_k1(logp, ref):
    return logp - ref


@_register(KL_ESTIMATORS)
def kl_k2(logp, ref):
    return 0.5 * (logp - ref) ** 2


@_register(KL_ESTIMATORS)
def kl_k3(logp, ref):
    """exp(ref - logp) - (ref - logp) - 1: unbiased, non-negative, low variance."""
    d = ref - logp
    return jnp.exp(d) - d - 1.0


def clipped_policy_loss(logp, old_logp, adv, clip_low: float, clip_high: float, log_ratio_clamp: float):
    """Per-token PPO loss max(-A r, -A clip(r, 1-low, 1+high)) and whether it was clipped."""
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
