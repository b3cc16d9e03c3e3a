"""Attention over a paged KV cache: the generation engine's attention.

The cache of one layer is a pool of fixed-size pages, ``[num_pages, page_size, 2K, H]``, keys
and values interleaved along the head axis (key head ``k`` at ``2k``, its values at ``2k + 1``),
the layout of JAX's Pallas ragged paged attention kernel. A sequence owns a row of the page
table (``[S, P]`` page ids); its token at position ``p`` lives in page ``table[p // page_size]``
at offset ``p % page_size``. Page 0 is the null page: padding tokens and idle slots write there,
and no real query ever reads it.

One call runs ``Q`` new tokens for each of ``S`` sequences (``[S, Q]``, right-padded; a decode
step is ``Q = 1``, a prefill chunk ``Q = C``). Token ``j`` of sequence ``s`` sits at position
``q_pos[s, j]`` and attends over that sequence's tokens at positions ``<= q_pos[s, j]``, the
new ones included. Padding tokens sit after the real ones, so no real token ever sees them.

Kernels (``platform()``): on TPU, the ragged paged attention kernel
(``jax.experimental.pallas.ops.tpu.ragged_paged_attention``), the ``[S, Q]`` tokens flattened
into one ragged batch of ``S`` sequences of ``Q`` queries each; elsewhere the XLA form, each
sequence's pages gathered and attended with a position mask: the reference. ``"interpret"``
runs the TPU kernel in Pallas' TPU interpret mode (slow; for tests on CPU).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NULL_PAGE = 0
IMPLS = ("auto", "xla", "ragged", "interpret")


class PagedLayer(NamedTuple):
    """One layer's view of a paged forward: its page pool and the call's layout (shared by
    every layer)."""

    pages: jax.Array  # [num_pages, page_size, 2K, H]
    page_table: jax.Array  # [S, P] int32
    write_at: jax.Array  # [S, Q] int32: flat cache slot (page * page_size + offset) of each new token
    q_pos: jax.Array  # [S, Q] int32: position of each new token (its rotary position too)
    impl: str = "auto"


class PagedCache(NamedTuple):
    """A paged forward's cache argument to :class:`rmr1_jax.models.decoder.DecoderLM`: one page
    pool per layer and the call's layout; the model returns it with the pools written."""

    pages: tuple  # L arrays [num_pages, page_size, 2K, H]
    page_table: jax.Array
    write_at: jax.Array
    q_pos: jax.Array
    impl: str = "auto"

    def layer(self, i: int) -> PagedLayer:
        return PagedLayer(self.pages[i], self.page_table, self.write_at, self.q_pos, self.impl)


def init_pages(num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype):
    """``num_layers`` empty page pools."""
    shape = (num_pages, page_size, 2 * num_kv_heads, head_dim)
    return tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))


def page_bytes(num_layers: int, page_size: int, num_kv_heads: int, head_dim: int, dtype) -> int:
    """Bytes one page takes over every layer (keys and values)."""
    return num_layers * page_size * 2 * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def write_pages(pages, k_sqkh, v_sqkh, write_at_sq):
    """``pages`` with the new keys and values [S, Q, K, H] written at their flat slots."""
    n_pages, page_size, kk, h = pages.shape
    s, q = write_at_sq.shape
    kv = jnp.stack([k_sqkh, v_sqkh], axis=3).reshape(s * q, kk, h).astype(pages.dtype)
    flat = pages.reshape(n_pages * page_size, kk, h)
    return flat.at[write_at_sq.reshape(-1)].set(kv, mode="drop").reshape(pages.shape)


def attend_xla(q_sqnh, pages, page_table, q_pos, scale: float):
    """The reference: each sequence's pages gathered ([S, P * page_size] keys), scores and
    softmax in float32, keys after a query's position masked."""
    s, q, n, h = q_sqnh.shape
    _, page_size, kk, _ = pages.shape
    k = kk // 2
    g = pages[page_table].reshape(s, -1, kk, h)  # [S, L, 2K, H]
    keys, values = g[:, :, 0::2], g[:, :, 1::2]  # [S, L, K, H]
    qg = q_sqnh.reshape(s, q, k, n // k, h)
    scores = jnp.einsum("sqkgh,slkh->skgql", qg, keys.astype(q_sqnh.dtype),
                        preferred_element_type=jnp.float32) * scale
    key_pos = jnp.arange(keys.shape[1], dtype=jnp.int32)
    mask = key_pos[None, None, :] <= q_pos[:, :, None]  # [S, Q, L]
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q_sqnh.dtype)
    out = jnp.einsum("skgql,slkh->sqkgh", probs, values.astype(q_sqnh.dtype))
    return out.reshape(s, q, n, h)


def attend_ragged(q_sqnh, pages, page_table, q_pos, scale: float, interpret: bool = False):
    """The TPU kernel over the [S, Q] tokens as S ragged sequences of Q queries: sequence s's
    keys are its first ``q_pos[s, -1] + 1`` positions (its padding queries, last, see keys no
    real query sees)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    s, q, n, h = q_sqnh.shape
    kv_lens = (q_pos[:, -1] + 1).astype(jnp.int32)
    cu_q_lens = (jnp.arange(s + 1, dtype=jnp.int32) * q)
    num_seqs = jnp.array([s], jnp.int32)
    # the kernel reads in the pages' dtype
    queries = q_sqnh.reshape(s * q, n, h).astype(pages.dtype)

    blocks = {}
    if jax.devices()[0].platform != "tpu":
        # the kernel looks its block sizes up by the TPU it runs on; with none here (interpret
        # mode, or compiling for a TPU slice from a CPU host) they are given: the table's default
        # of 32 queries, and kv blocks of about 512 tokens
        blocks = dict(num_kv_pages_per_block=min(page_table.shape[1], max(1, 512 // pages.shape[1])),
                      num_queries_per_block=min(s * q, 32))

    def call():
        return ragged_paged_attention(queries, pages, kv_lens, page_table.astype(jnp.int32), cu_q_lens,
                                      num_seqs, sm_scale=scale, **blocks)

    if interpret:
        from jax.experimental.pallas import tpu as pltpu

        with pltpu.force_tpu_interpret_mode():
            out = call()
    else:
        out = call()
    return out.reshape(s, q, n, h).astype(q_sqnh.dtype)


def resolve(impl: str) -> str:
    """The kernel ``impl`` means on the platform the step compiles for."""
    from rmr1_jax.models.attention import platform

    if impl not in IMPLS:
        raise ValueError(f"paged attention {impl!r}: expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        return "ragged" if platform() == "tpu" else "xla"
    return impl


def paged_attention(q_sqnh, k_sqkh, v_sqkh, layer: PagedLayer, scale: float):
    """Write the new keys and values into the layer's pages, then attend: ``(out [S, Q, N, H],
    new pages)``."""
    pages = write_pages(layer.pages, k_sqkh, v_sqkh, layer.write_at)
    impl = resolve(layer.impl)
    if impl == "xla":
        out = attend_xla(q_sqnh, pages, layer.page_table, layer.q_pos, scale)
    else:
        out = attend_ragged(q_sqnh, pages, layer.page_table, layer.q_pos, scale, interpret=impl == "interpret")
    return out, pages
