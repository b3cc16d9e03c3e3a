"""Splash attention (the TPU Pallas kernel, run here in interpret mode) against the plain XLA
attention that matches transformers: causal, padding and packed-segment masks, grouped-query
heads, forward and gradients, alone and inside the model on an 8-device mesh; and which
kernel `model.attention_impl` resolves to on each platform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmr1_jax.models.attention import compile_platform, resolve, splash_attention
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.layers import self_attention
from rmr1_jax.models.presets import preset
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.parallel.sharding import activation_sharding


def _segments(b, t):
    seg = np.ones((b, t), np.int32)
    seg[0, 100:200], seg[0, 200:] = 2, 0  # two packed segments, then padding
    seg[1, :30] = 0  # left padding (a prefill)
    return jnp.asarray(seg)


def _dense_mask(seg):
    t = seg.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    return causal & (seg[:, None, :, None] == seg[:, None, None, :]) & (seg > 0)[:, None, None, :]


def test_kernel_matches_xla_attention_forward_and_gradients():
    b, t, n, k, h = 2, 256, 4, 2, 64
    r = np.random.default_rng(0)
    q, kk, v = (jnp.asarray(r.normal(size=s), jnp.float32) for s in ((b, t, n, h), (b, t, k, h), (b, t, k, h)))
    seg = _segments(b, t)
    mask, real = _dense_mask(seg), np.asarray(seg > 0)[..., None, None]
    ref = self_attention(q, kk, v, mask, 0.125, "xla")
    out = splash_attention(q, kk, v, seg, 0.125)
    np.testing.assert_allclose(np.asarray(out) * real, np.asarray(ref) * real, atol=2e-6)
    w = jnp.asarray(r.normal(size=(b, t, n, h)), jnp.float32) * real  # a loss over real tokens only

    def loss(fn):
        return lambda q, kk, v: jnp.sum(fn(q, kk, v) * w)

    g_ref = jax.grad(loss(lambda *a: self_attention(*a, mask, 0.125, "xla")), argnums=(0, 1, 2))(q, kk, v)
    g_out = jax.grad(loss(lambda *a: splash_attention(*a, seg, 0.125)), argnums=(0, 1, 2))(q, kk, v)
    for a, e in zip(g_out, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=5e-6)


def test_model_with_splash_matches_xla_on_a_sharded_mesh():
    cfg = preset("tiny", dtype="float32", scan_layers=True)
    ids = jnp.asarray(np.random.default_rng(1).integers(1, cfg.vocab_size, (4, 256)), jnp.int32)
    seg = jnp.concatenate([_segments(2, 256), _segments(2, 256)[::-1]], axis=0)
    params = DecoderLM(cfg).init(jax.random.key(0), ids[:, :8])["params"]
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    outs = {}
    for impl in ("xla", "splash"):
        model = DecoderLM(cfg.replace(attention_impl=impl))
        with activation_sharding(mesh):
            outs[impl] = jax.jit(lambda p, i, s: model.apply({"params": p}, i, segment_ids=s))(params, ids, seg)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(outs["splash"])[real], np.asarray(outs["xla"])[real], atol=2e-5)


@pytest.mark.parametrize("platform,t,dtype,expected", [
    ("cpu", 256, jnp.bfloat16, "xla"), ("tpu", 256, jnp.bfloat16, "splash"), ("tpu", 200, jnp.bfloat16, "xla"),
    ("gpu", 256, jnp.bfloat16, "cudnn"), ("gpu", 256, jnp.float32, "xla")])
def test_auto_picks_the_backends_kernel(platform, t, dtype, expected):
    with compile_platform(platform):
        assert resolve(None, t, dtype) == expected and resolve("auto", t, dtype) == expected
        assert resolve("xla", t, dtype) == "xla"
