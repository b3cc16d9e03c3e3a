"""The bf16 projection path on CPU (``cpu_bf16_matmul`` with its hand-written backward) against
plain autodiff of the same einsum in float32 on the bf16-rounded inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmr1_jax.models.layers import cpu_bf16_matmul, dense, matmul_f32
from rmr1_jax.models.logprobs import token_logprobs

SPECS = {  # the model's projections: spec, x shape, kernel shape
    "qkv": ("btd,dnh->btnh", (3, 5, 16), (16, 4, 8)),
    "o": ("btnh,nhd->btd", (3, 5, 4, 8), (4, 8, 16)),
    "mlp": ("btd,df->btf", (3, 5, 16), (16, 24)),
}


def _rounded(shape, seed):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32)  # exactly representable in bf16


@pytest.mark.parametrize("name", sorted(SPECS) + ["non_trailing"])
def test_matmul_f32_float32_equals_numpy(name):
    """float32 projections (one 2-D matmul over the flattened contracted dims) and their
    gradients against NumPy's float64 einsum; a spec whose contracted dims are not the trailing
    ones of x keeps the einsum path."""
    spec, xs, ws = SPECS.get(name, ("bdt,dnh->btnh", (3, 16, 5), (16, 4, 8)))
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=xs).astype(np.float32), rng.normal(size=ws).astype(np.float32)
    want = np.einsum(spec, x.astype(np.float64), w.astype(np.float64))
    g = rng.normal(size=want.shape)
    y = jax.jit(lambda a, b: matmul_f32(spec, a, b))(x, w)
    assert y.dtype == jnp.float32 and y.shape == want.shape
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-4)
    dx, dw = jax.grad(lambda a, b: jnp.sum(matmul_f32(spec, a, b) * g), argnums=(0, 1))(x, w)
    lhs, rhs_out = spec.split(",")
    rhs, out = rhs_out.split("->")
    want_dx = np.einsum(f"{out},{rhs}->{lhs}", g, w.astype(np.float64))
    want_dw = np.einsum(f"{lhs},{out}->{rhs}", x.astype(np.float64), g)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), want_dw, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_dense_bf16_value_and_gradients(name):
    spec, xs, ws = SPECS[name]
    x, w = _rounded(xs, 0), _rounded(ws, 1)
    g = _rounded(jnp.einsum(spec, x, w).shape, 2)  # a fixed cotangent

    def ours(x, w):
        return jnp.sum(dense(spec, x, w, jnp.bfloat16).astype(jnp.float32) * g)

    def plain(x, w):
        return jnp.sum(jnp.einsum(spec, x, w, precision="highest") * g)

    y = dense(spec, x, w, jnp.bfloat16)
    want = jnp.einsum(spec, x, w, precision="highest")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-2, atol=1e-2)
    got_dx, got_dw = jax.jit(jax.grad(ours, argnums=(0, 1)))(x, w)
    want_dx, want_dw = jax.grad(plain, argnums=(0, 1))(x, w)
    for got, want in ((got_dx, want_dx), (got_dw, want_dw)):
        scale = float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got - want))) < 2e-2 * scale


def test_cpu_bf16_matmul_backward_is_the_transposed_products():
    x, w = _rounded((6, 16), 3).astype(jnp.bfloat16), _rounded((16, 10), 4).astype(jnp.bfloat16)
    g = _rounded((6, 10), 5).astype(jnp.bfloat16)
    y, vjp = jax.vjp(cpu_bf16_matmul, x, w)
    assert y.dtype == jnp.float32
    dx, dw = vjp(g.astype(jnp.float32))
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    np.testing.assert_allclose(f(dx), f(g) @ f(w).T, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(f(dw), f(x).T @ f(g), rtol=1e-2, atol=1e-2)


def test_token_logprobs_bf16_matches_float32():
    h, head = _rounded((2, 12, 16), 6), _rounded((16, 40), 7)
    targets = jnp.asarray(np.random.default_rng(8).integers(0, 40, (2, 12)), jnp.int32)

    def loss(h, head, dt):
        return -jnp.sum(token_logprobs(h.astype(dt), head, targets, chunk=4))

    want, (wdh, wdw) = jax.value_and_grad(loss, argnums=(0, 1))(h, head, jnp.float32)
    got, (gdh, gdw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(h, head, jnp.bfloat16)
    assert abs(float(got) - float(want)) < 1e-2 * abs(float(want))
    for a, b in ((gdh, wdh), (gdw, wdw)):
        assert float(jnp.max(jnp.abs(a.astype(jnp.float32) - b))) < 3e-2 * float(jnp.max(jnp.abs(b)))
