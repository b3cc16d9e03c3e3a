"""The decoder LM: embeddings, a stack of :class:`DecoderLayer` (``nn.scan``-ed or unrolled),
final norm and the head ``cfg.head`` names, with an optional KV cache for prefill and decode.

Heads (parameters at the top of the tree): ``"lm"``, the LM head ``lm_head`` [D, V] (none when
the embeddings are tied); ``"scalar"`` / ``"multilabel"``, a classification head ``score``
[D, num_labels] (no bias, no ``lm_head``) read at each row's last real token, as transformers'
``*ForSequenceClassification`` models do.

Usage::

    logits = model.apply({"params": params}, input_ids, attention_mask=mask)          # [B, T, V]
    logits, cache = model.apply({"params": params}, ids, attention_mask=m,
                                cache=cache, cache_index=i)                            # decoding
    scores = rm.apply({"params": params}, input_ids, attention_mask=mask)             # [B, num_labels]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmr1_jax.models.attention import resolve as resolve_attention
from rmr1_jax.models.config import REMAT_POLICIES, ModelConfig
from rmr1_jax.models.layers import DecoderLayer, RMSNorm, default_init, dtype_of, matmul_f32, rope_cos_sin
from rmr1_jax.models.paged_attention import PagedCache
from rmr1_jax.parallel.sharding import constrain



def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> dict[str, Any]:
    """An empty KV cache and ``valid`` [B, S] (slots holding real tokens). Keys are stored
    [B, K, H, S] and values [B, K, S, H], the layouts in which both attention matmuls (q k^T and
    p v) read the cache as plain, untransposed operands: one array per layer (tuples of L arrays,
    each updated in place) for unrolled layers, stacked with a leading L for ``nn.scan``."""
    dt = dtype_of(dtype or cfg.dtype)
    k_shape = (batch, cfg.num_key_value_heads, cfg.dim_head, max_len)
    v_shape = (batch, cfg.num_key_value_heads, max_len, cfg.dim_head)
    if cfg.scan_layers:
        k = jnp.zeros((cfg.num_hidden_layers, *k_shape), dt)
        v = jnp.zeros((cfg.num_hidden_layers, *v_shape), dt)
    else:
        k = tuple(jnp.zeros(k_shape, dt) for _ in range(cfg.num_hidden_layers))
        v = tuple(jnp.zeros(v_shape, dt) for _ in range(cfg.num_hidden_layers))
    return {"k": k, "v": v, "valid": jnp.zeros((batch, max_len), bool)}


def _positions_from_mask(mask_bt):
    return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def last_real_index(mask_bt):
    """[B] index of each row's last real token (0 for a row without any). Taken from the mask,
    not from token ids: correct for left and right padding, and when the pad id is also the
    end-of-sequence id that ends every real sequence."""
    t = mask_bt.shape[-1]
    return jnp.max(jnp.where(mask_bt, jnp.arange(t)[None, :], 0), axis=-1)


def _segment_positions(segment_ids_bt):
    """Position of each token within its packed segment."""
    t = segment_ids_bt.shape[-1]
    idx = jnp.arange(t)[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids_bt[:, :1], bool), segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=-1
    )
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx


class _Attention(NamedTuple):
    """What the layers of one call attend by."""

    positions: jax.Array  # [B, T] rotary positions
    mask: jax.Array | None  # [B, 1, T, S] bool, S = T without a cache (None: the splash kernel's segments)
    segments: jax.Array | None  # [B, T] segment ids for the splash kernel (None: the dense mask)
    cache_index: Any  # where the layers write K/V (None: a prefill, from slot 0 over the new tokens only)
    valid: jax.Array | None  # [B, S] the cache's new ``valid`` (None without a cache)


def _attend_cached(cache, cache_index, attention_mask, positions, segment_ids) -> _Attention:
    """A decode step: the T new tokens, written at slots [cache_index, cache_index + T), attend
    over the cache's real tokens up to their own slot."""
    if segment_ids is not None:
        raise ValueError("segment_ids cannot be combined with a KV cache")
    t = attention_mask.shape[1]
    s = cache["valid"].shape[1]
    cache_index = jnp.asarray(cache_index, jnp.int32)
    slots = jnp.arange(s)
    prior = jnp.sum(cache["valid"] & (slots[None, :] < cache_index), axis=-1, dtype=jnp.int32)
    if positions is None:
        positions = prior[:, None] + _positions_from_mask(attention_mask)
    valid = jax.lax.dynamic_update_slice(cache["valid"], attention_mask, (0, cache_index))
    q_slot = cache_index + jnp.arange(t)
    mask = valid[:, None, None, :] & (slots[None, None, None, :] <= q_slot[None, None, :, None])
    return _Attention(positions, mask, None, cache_index, valid)


def _attend_new(cfg: ModelConfig, cache, cache_index, attention_mask, positions, segment_ids) -> _Attention:
    """A forward pass, or a prefill (a cache filled from slot 0): the T tokens attend causally
    over each other only (and within their segment), never over other cache slots; a prefill
    then writes them to the cache. Scores over every slot (prompt + generation budget) would be
    [B, K, G, T, S] float32."""
    t = attention_mask.shape[1]
    valid = None
    if cache is not None:  # a prefill
        if segment_ids is not None:
            raise ValueError("segment_ids cannot be combined with a KV cache")
        valid = jax.lax.dynamic_update_slice(cache["valid"], attention_mask, (0, 0))
        cache_index = None  # to the layers: write from slot 0, attend over the new tokens
    segments = None
    if resolve_attention(cfg.attention_impl, t, dtype_of(cfg.dtype)) == "splash":
        # the kernel masks by segment (padding: segment 0); no [T, T] mask is formed
        segments = segment_ids if segment_ids is not None else attention_mask.astype(jnp.int32)
        mask = None
    else:
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        mask = causal & attention_mask[:, None, None, :]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    if segment_ids is not None and positions is None:
        positions = _segment_positions(segment_ids)
    if positions is None:
        positions = _positions_from_mask(attention_mask)
    return _Attention(positions, mask, segments, cache_index, valid)


class DecoderLM(nn.Module):
    cfg: ModelConfig

    def _layer_cls(self):
        cls = DecoderLayer
        if self.cfg.remat_policy != "none":
            cls = nn.remat(cls, policy=REMAT_POLICIES[self.cfg.remat_policy], prevent_cse=not self.cfg.scan_layers)
        return cls

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: dict[str, Any] | None = None,
        cache_index: jax.Array | int | None = None,
        return_hidden: bool = False,
    ):
        """
        Args:
          input_ids: [B, T] int tokens.
          attention_mask: [B, T], 1 for real tokens, 0 for padding (default all ones).
          positions: [B, T] rotary positions. Default: count of real tokens before each one
            (within its segment when ``segment_ids`` is given; including cached ones).
          segment_ids: [B, T] packed-sequence ids; tokens attend only inside their segment.
            0 marks padding.
          cache, cache_index: decode with a KV cache from :func:`init_cache`; the T new tokens
            are written at slots [cache_index, cache_index + T). With ``cache_index=0`` (a
            Python int: a prefill) the tokens attend only over each other, never over the
            cache's other slots.
          return_hidden: return the final-norm hidden states [B, T, D] instead of the head's output.
          A :class:`rmr1_jax.models.paged_attention.PagedCache` as ``cache``: the generation
            engine's forward of [S, Q] tokens over pages, at the cache's positions.
        Returns:
          "lm" head: logits [B, T, V] float32, and the new cache when one was given.
          "scalar" / "multilabel" head: scores [B, num_labels] float32, the ``score`` head at
          each row's last real token (by ``attention_mask``, else ``segment_ids > 0``: a packed
          row gives the score of its last segment). No cache.
          With ``return_hidden``: the hidden states in place of either.
        """
        cfg = self.cfg
        b, t = input_ids.shape
        if cache is not None and cfg.is_classifier:
            raise ValueError(f"a KV cache is for decoding; a {cfg.head!r} head scores whole sequences")
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool) if segment_ids is None else segment_ids > 0
        attention_mask = attention_mask.astype(bool)
        if isinstance(cache, PagedCache):
            return self._paged(input_ids, cache, return_hidden)
        # a prefill fills the cache from slot 0 (cache_index a Python 0)
        prefill = cache is not None and isinstance(cache_index, int) and cache_index == 0
        if cache is not None and not prefill:
            att = _attend_cached(cache, cache_index, attention_mask, positions, segment_ids)
        else:
            att = _attend_new(cfg, cache, cache_index, attention_mask, positions, segment_ids)

        embedding, x = self._embed(input_ids)
        cos, sin = rope_cos_sin(cfg, att.positions)
        kv = (cache["k"], cache["v"]) if cache is not None else None
        x, new_kv = self._layer_stack(x, kv, cos, sin, att)
        x = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="norm")(x)
        out = x if return_hidden else self._head(x, embedding, attention_mask)
        if cache is not None:
            return out, {"k": new_kv[0], "v": new_kv[1], "valid": att.valid}
        return out

    def _paged(self, input_ids, cache: PagedCache, return_hidden: bool):
        """A forward of [S, Q] new tokens over a paged KV cache (the generation engine's; see
        :mod:`rmr1_jax.models.paged_attention`): ``(logits or hidden, cache with the pages
        written)``. Unrolled layers only."""
        cfg = self.cfg
        if cfg.scan_layers:
            raise ValueError("a paged KV cache runs unrolled layers (scan_layers: false)")
        embedding, x = self._embed(input_ids)
        cos, sin = rope_cos_sin(cfg, cache.q_pos)
        layer_cls = self._layer_cls()
        pages = []
        for i in range(cfg.num_hidden_layers):
            x, p = layer_cls(cfg, name=f"layers_{i}")(x, cache.layer(i), cos, sin, None, None, None)
            pages.append(p)
        x = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="norm")(x)
        out = x if return_hidden else self._head(x, embedding, None)
        return out, cache._replace(pages=tuple(pages))

    def _embed(self, input_ids):
        """``(embed_tokens [V, D] param_dtype, x [B, T, D] compute dtype)``."""
        cfg = self.cfg
        embedding = self.param("embed_tokens", default_init, (cfg.vocab_size, cfg.hidden_size),
                               dtype_of(cfg.param_dtype))
        x = jnp.take(embedding, input_ids, axis=0).astype(dtype_of(cfg.dtype))
        return embedding, constrain(x, ("act_batch", "act_length", "act_embed"))

    def _layer_stack(self, x, kv, cos, sin, att: _Attention):
        """``(x, new (k, v) or None)`` after the L layers: one ``nn.scan`` over stacked
        parameters ("layers", leading axis L) with ``scan_layers``, else unrolled ("layers_i")."""
        cfg = self.cfg
        layer_cls = self._layer_cls()
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
            return stack(x, kv, cos, sin, att.mask, att.cache_index, att.segments)
        ks, vs = [], []
        for i in range(cfg.num_hidden_layers):
            layer_kv = (kv[0][i], kv[1][i]) if kv is not None else None
            x, c = layer_cls(cfg, name=f"layers_{i}")(x, layer_kv, cos, sin, att.mask, att.cache_index, att.segments)
            if c is not None:
                ks.append(c[0])
                vs.append(c[1])
        return x, ((tuple(ks), tuple(vs)) if kv is not None else None)

    def _head(self, x, embedding, attention_mask):
        """The head ``cfg.head`` on the final-norm hidden states x [B, T, D]: logits [B, T, V]
        ("lm"; ``embedding`` transposed when tied), or scores [B, num_labels] at each row's last
        real token; float32 either way."""
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        if cfg.is_classifier:
            score = self.param("score", default_init, (cfg.hidden_size, cfg.num_labels), dtype_of(cfg.param_dtype))
            # pooling before the head is transformers' score-every-position-then-pool, at 1/T the work
            pooled_bd = jnp.take_along_axis(x, last_real_index(attention_mask)[:, None, None], axis=1)[:, 0]
            return matmul_f32("bd,dn->bn", pooled_bd, score.astype(dt))
        if cfg.tie_word_embeddings:
            head = embedding.T
        else:
            head = self.param("lm_head", default_init, (cfg.hidden_size, cfg.vocab_size), dtype_of(cfg.param_dtype))
        out = matmul_f32("btd,dv->btv", x, head.astype(dt))
        return constrain(out, ("act_batch", "act_length", "act_vocab"))
