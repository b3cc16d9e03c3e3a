"""Attention over a paged KV cache: the generation engine's attention.

A sequence owns a row of the page table (``[S, P]`` page ids); its token at position ``p``
lives in page ``table[p // page_size]`` at offset ``p % page_size``. Page 0 is the null page:
padding tokens and idle slots write there, and no real query ever reads it.

One call runs ``Q`` new tokens for each of ``S`` sequences (``[S, Q]``, right-padded; a decode
step is ``Q = 1``, a prefill chunk ``Q = C``). Token ``j`` of sequence ``s`` sits at position
``q_pos[s, j]`` and attends over that sequence's tokens at positions ``<= q_pos[s, j]``, the
new ones included. Padding tokens sit after the real ones, so no real token ever sees them.

Kernels (``impl``, resolved by :func:`resolve` for the platform a step compiles for), each
with the pool layout it reads best:

* ``"ragged"`` (TPU): JAX's Pallas ragged paged attention kernel
  (``jax.experimental.pallas.ops.tpu.ragged_paged_attention``) over its layout, one array
  ``[num_pages, page_size, 2K, H]`` per layer, keys and values interleaved along the head axis
  (key head ``k`` at ``2k``, its values at ``2k + 1``); the ``[S, Q]`` tokens go in as one ragged
  batch of ``S`` sequences of ``Q`` queries. ``"interpret"``: the same in Pallas' TPU interpret
  mode.
* ``"xla"`` (CPU, GPU; the reference): each sequence's pages gathered and attended with a
  position mask, over head-major pools ``(keys, values)``, each ``[K, num_pages, page_size, H]``:
  gathered by the page table they are ``[K, S, L, H]``, the operand layout XLA's dots read
  without a transpose (the kernel's interleaved layout costs 3-4x here on CPU).
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

    pages: object  # the layer's pool: [num_pages, page_size, 2K, H], or head-major (keys, values)
    page_table: jax.Array  # [S, P] int32
    write_at: jax.Array  # [S, Q] int32: flat cache slot (page * page_size + offset) of each new token
    q_pos: jax.Array  # [S, Q] int32: position of each new token (its rotary position too)
    impl: str = "auto"


class PagedCache(NamedTuple):
    """A paged forward's cache argument to :class:`rmr1_jax.models.decoder.DecoderLM`: one page
    pool per layer and the call's layout; the model returns it with the pools written."""

    pages: tuple  # one pool per layer (see PagedLayer)
    page_table: jax.Array
    write_at: jax.Array
    q_pos: jax.Array
    impl: str = "auto"

    def layer(self, i: int) -> PagedLayer:
        return PagedLayer(self.pages[i], self.page_table, self.write_at, self.q_pos, self.impl)


def init_pages(num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype,
               impl: str = "xla"):
    """``num_layers`` empty page pools in the layout of kernel ``impl`` (resolved)."""
    if impl == "xla":
        shape = (num_kv_heads, num_pages, page_size, head_dim)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(num_layers))
    shape = (num_pages, page_size, 2 * num_kv_heads, head_dim)
    return tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))


def copy_pages(pages, src, dst):
    """A layer's pool (either layout) with page ``dst[i]`` a copy of page ``src[i]``."""
    if isinstance(pages, tuple):
        return tuple(p.at[:, dst].set(p[:, src]) for p in pages)
    return pages.at[dst].set(pages[src])


def split_pages(pages):
    """The kernel's interleaved pool ``[num_pages, page_size, 2K, H]`` as the XLA path's
    head-major ``(keys, values)``, each ``[K, num_pages, page_size, H]``."""
    return pages[:, :, 0::2].transpose(2, 0, 1, 3), pages[:, :, 1::2].transpose(2, 0, 1, 3)


def page_bytes(num_layers: int, page_size: int, num_kv_heads: int, head_dim: int, dtype) -> int:
    """Bytes one page takes over every layer (keys and values)."""
    return num_layers * page_size * 2 * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def write_pages(pages, k_sqkh, v_sqkh, write_at_sq):
    """``pages`` (either layout) with the new keys and values [S, Q, K, H] written at their
    flat slots."""
    s, q = write_at_sq.shape
    at = write_at_sq.reshape(-1)
    if isinstance(pages, tuple):  # head-major (keys, values) [K, num_pages, page_size, H]
        def put(pool, x):
            k, n_pages, page_size, h = pool.shape
            new = x.reshape(s * q, k, h).transpose(1, 0, 2).astype(pool.dtype)
            return pool.reshape(k, n_pages * page_size, h).at[:, at].set(new, mode="drop").reshape(pool.shape)

        return put(pages[0], k_sqkh), put(pages[1], v_sqkh)
    n_pages, page_size, kk, h = pages.shape
    kv = jnp.stack([k_sqkh, v_sqkh], axis=3).reshape(s * q, kk, h).astype(pages.dtype)
    flat = pages.reshape(n_pages * page_size, kk, h)
    return flat.at[at].set(kv, mode="drop").reshape(pages.shape)


def attend_xla(q_sqnh, pages, page_table, q_pos, scale: float):
    """The reference, over head-major ``(keys, values)`` pools: each sequence's pages gathered
    (``[K, S, P * page_size, H]``), scores and softmax in float32, keys after a query's position
    masked."""
    s, q, n, h = q_sqnh.shape
    k_pool, v_pool = pages
    k = k_pool.shape[0]
    dt = q_sqnh.dtype
    keys = k_pool[:, page_table].reshape(k, s, -1, h).astype(dt)  # [K, S, L, H]
    values = v_pool[:, page_table].reshape(k, s, -1, h).astype(dt)
    qg = q_sqnh.reshape(s, q, k, n // k, h).transpose(2, 0, 3, 1, 4)  # [K, S, G, Q, H]
    scores = jnp.einsum("ksgqh,kslh->ksgql", qg, keys, preferred_element_type=jnp.float32) * scale
    key_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
    mask = key_pos[None, None, :] <= q_pos[:, :, None]  # [S, Q, L]
    scores = jnp.where(mask[None, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("ksgql,kslh->ksgqh", probs, values)
    return out.transpose(1, 3, 0, 2, 4).reshape(s, q, n, h)


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


def resolve(impl: str = "auto", head_dim: int | None = None, split_heads: bool = False) -> str:
    """The kernel ``impl`` means on the platform the step compiles for. The TPU kernel keeps
    per-head softmax statistics 128 lanes wide and needs a head dimension that is a multiple of
    128, and, a Mosaic kernel, cannot be split by the compiler: where ``head_dim`` is another or
    the mesh splits the heads (``split_heads``, a ``tensor`` axis), ``auto`` is the XLA path and
    ``ragged`` an error."""
    from rmr1_jax.models.attention import platform

    if impl not in IMPLS:
        raise ValueError(f"paged attention {impl!r}: expected one of {', '.join(IMPLS)}")
    lanes_ok = head_dim is None or head_dim % 128 == 0
    if impl == "auto":
        return "ragged" if platform() == "tpu" and lanes_ok and not split_heads else "xla"
    if impl in ("ragged", "interpret") and not lanes_ok:
        raise ValueError(f"paged attention {impl!r} needs a head dimension that is a multiple of 128, not "
                         f"{head_dim}; use sampling.attention=xla (or auto)")
    if impl in ("ragged", "interpret") and split_heads:
        raise ValueError(f"paged attention {impl!r} runs on whole heads: not under a mesh that splits tensor; use "
                         f"sampling.attention=xla (or auto)")
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
