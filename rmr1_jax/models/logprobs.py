"""Token log-probabilities of an LM head and the masked next-token loss, computed in sequence chunks so the
[B, T, V] logits never exist at once (V is 152K for Qwen2.5; T up to 12K)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmr1_jax.models.layers import matmul_f32


def lm_head_kernel(params, cfg):
    """[D, V] output projection (the embedding table, transposed, when tied)."""
    return params["embed_tokens"].T if cfg.tie_word_embeddings else params["lm_head"]


def token_logprobs(hidden_btd, head_dv, targets_bt, chunk: int = 512, temperature: float = 1.0,
                   with_entropy: bool = False):
    """log p(targets) [B, T] (and entropy [B, T]) from final hidden states, chunk by chunk.

    Each chunk's logits are recomputed in the backward pass (``jax.checkpoint``) instead of
    being kept, so memory is O(B x chunk x V)."""
    b, t, d = hidden_btd.shape
    chunk = min(chunk, t)
    pad = (-t) % chunk
    if pad:
        hidden_btd = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0)))
        targets_bt = jnp.pad(targets_bt, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    h = hidden_btd.reshape(b, n, chunk, d).swapaxes(0, 1)
    y = targets_bt.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h_bcd, y_bc):
        logits = matmul_f32("bcd,dv->bcv", h_bcd, head_dv.astype(h_bcd.dtype))
        if temperature != 1.0:
            logits = logits / temperature
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y_bc[..., None], axis=-1)[..., 0]
        lp = picked - logz
        if with_entropy:
            p = jnp.exp(logits - logz[..., None])
            ent = logz - jnp.sum(p * logits, axis=-1)
            return lp, ent
        return lp, jnp.zeros_like(lp)

    lp, ent = jax.lax.map(lambda xs: one(*xs), (h, y))
    lp = lp.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    ent = ent.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    return (lp, ent) if with_entropy else lp


def next_token_targets(batch):
    """Targets and loss mask for predicting token t+1 at position t, inside packed segments."""
    ids, seg, lm = batch["input_ids"], batch["segment_ids"], batch["loss_mask"]
    targets = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    same = jnp.concatenate([(seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0), jnp.zeros_like(seg[:, :1], bool)], 1)
    learn = jnp.concatenate([lm[:, 1:] > 0, jnp.zeros_like(lm[:, :1], bool)], axis=1)
    return targets, same & learn


def response_logprobs(model, params, batch, chunk: int = 512, with_entropy: bool = False,
                      temperature: float = 1.0):
    """log p of each next token [R, T] (position t scores token t+1) over prompt+response rows,
    under ``softmax(logits / temperature)``: the distribution the rollouts were sampled from,
    so the old, reference and training log-probs all refer to the sampled policy."""
    hidden = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
                         return_hidden=True)
    targets = jnp.concatenate([batch["input_ids"][:, 1:], jnp.zeros_like(batch["input_ids"][:, :1])], axis=1)
    return token_logprobs(hidden, lm_head_kernel(params, model.cfg), targets, chunk=chunk, with_entropy=with_entropy,
                          temperature=_logprob_temperature(temperature))


def _logprob_temperature(temperature: float) -> float:
    """The temperature log-probs are taken at: the sampling one (1 for greedy sampling)."""
    return 1.0 if temperature == 0.0 else float(temperature)
