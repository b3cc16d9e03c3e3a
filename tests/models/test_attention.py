"""The CPU blocked causal attention equals full attention, with padding and packed segments."""

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.models.layers import blocked_causal_attention


def test_blocked_equals_full_attention():
    rng = np.random.default_rng(0)
    b, t, n, k, h = 2, 300, 4, 2, 16
    q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    kk = jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
    seg = np.ones((b, t), np.int32)
    seg[0, 120:] = 2  # two packed documents in row 0
    seg[1, 250:] = 0  # right padding in row 1
    seg = jnp.asarray(seg)
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    mask = causal & (seg[:, None, :, None] == seg[:, None, None, :]) & (seg > 0)[:, None, None, :]
    full = jax.jit(lambda *a: jax.nn.dot_product_attention(*a[:3], mask=a[3], scale=0.25))(q, kk, v, mask)
    blocked = jax.jit(lambda *a: blocked_causal_attention(*a, 0.25, block=64))(q, kk, v, mask)
    valid = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(blocked)[valid], np.asarray(full)[valid], atol=1e-5)


def test_model_uses_same_logits_blocked_or_not():
    cfg = preset("tiny", scan_layers=False)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 290)), jnp.int32)
    seg = np.ones((2, 290), np.int32)
    seg[1, 100:] = 2
    params = init_params(DecoderLM(cfg), jax.random.key(0))
    seg = jnp.asarray(seg)
    run = lambda c: jax.jit(lambda p, i, s: DecoderLM(c).apply({"params": p}, i, segment_ids=s))(params, ids, seg)
    auto = run(cfg)  # blocked on CPU
    full = run(cfg.replace(attention_impl="xla"))
    np.testing.assert_allclose(np.asarray(auto), np.asarray(full), atol=1e-5)
