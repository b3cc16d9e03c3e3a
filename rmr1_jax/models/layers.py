"""Building blocks shared by every decoder family: RMSNorm, rotary embeddings, grouped-query
attention with an optional KV cache, and the SwiGLU MLP.

Dimension letters in names: B batch, T query length, S key length (cache slots), D hidden,
N query heads, K key/value heads, H head dim, F MLP width, V vocab.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmr1_jax.models.attention import platform
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.paged_attention import PagedLayer, paged_attention
from rmr1_jax.parallel.sharding import constrain

default_init = nn.initializers.normal(stddev=0.02)


def dtype_of(name: str):
    return jnp.dtype(name)


class RMSNorm(nn.Module):
    eps: float
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x_btd):
        scale = self.param("scale", nn.initializers.ones, (x_btd.shape[-1],), dtype_of(self.param_dtype))
        x = x_btd.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * scale.astype(jnp.float32)).astype(dtype_of(self.dtype))


def rope_inv_freq(cfg: ModelConfig) -> jnp.ndarray:
    """Inverse frequencies [H/2], with Llama 3 frequency-dependent scaling when configured."""
    h = cfg.dim_head
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    sc = cfg.rope_scaling_dict
    if sc and sc.get("rope_type") == "llama3":
        factor = sc["factor"]
        low, high = sc["low_freq_factor"], sc["high_freq_factor"]
        old_ctx = sc["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = jnp.where(medium, smoothed, scaled)
    return inv


def rope_cos_sin(cfg: ModelConfig, positions_bt: jnp.ndarray):
    """cos, sin of shape [B, T, H] in HF's rotate-half layout (frequencies repeated twice)."""
    freqs = positions_bt.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_btnh, cos_bth, sin_bth):
    half = x_btnh.shape[-1] // 2
    x1, x2 = x_btnh[..., :half], x_btnh[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
    out = x_btnh.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
    return out.astype(x_btnh.dtype)


CPU_ATTN_BLOCK = 128


def blocked_causal_attention(q_btnh, k_bsnh, v_bsnh, mask_b1ts, scale: float, block: int = CPU_ATTN_BLOCK):
    """Causal self-attention computed per block of queries against only the keys up to the
    block's end: about half the work of the full [T, T] scores. On CPU, XLA has no fused
    attention kernel, and this is the difference between ~4x and ~2x torch's time."""
    t = q_btnh.shape[1]
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        outs.append(jax.nn.dot_product_attention(
            q_btnh[:, start:end], k_bsnh[:, :end], v_bsnh[:, :end], mask=mask_b1ts[:, :, start:end, :end],
            scale=scale))
    return jnp.concatenate(outs, axis=1)


def self_attention(q_btnh, k_btnh, v_btnh, mask_b1tt, scale: float, implementation: str | None,
                   segments_bt=None):
    """Attention of T queries over the same T keys (training forward passes and prefills), by
    the kernel :func:`rmr1_jax.models.attention.resolve` picks for ``implementation``:
    ``"splash"`` (TPU; from ``segments_bt``, no dense mask), ``"cudnn"`` (NVIDIA GPUs), or
    plain XLA (on CPU for T >= 256 the blocked causal form). The others take the dense mask."""
    from rmr1_jax.models.attention import resolve, splash_attention

    t = q_btnh.shape[1]
    impl = resolve(implementation, t, q_btnh.dtype)
    if impl == "splash":
        return splash_attention(q_btnh, k_btnh, v_btnh, segments_bt, scale)
    auto = implementation in (None, "auto")
    if impl == "xla" and auto and t >= 2 * CPU_ATTN_BLOCK and platform() == "cpu":
        return blocked_causal_attention(q_btnh, k_btnh, v_btnh, mask_b1tt, scale)
    if impl == "cudnn" and auto:
        try:  # cuDNN refuses some shapes and masks at trace time: XLA's attention then
            return jax.nn.dot_product_attention(q_btnh, k_btnh, v_btnh, mask=mask_b1tt, scale=scale,
                                                implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError):
            impl = "xla"
    return jax.nn.dot_product_attention(q_btnh, k_btnh, v_btnh, mask=mask_b1tt, scale=scale,
                                        implementation=None if impl == "xla" else impl)


def cached_attention(q_btnh, k_bkhs, v_bksh, mask_b1ts, scale: float):
    """Attention of T queries over a KV cache of keys [B, K, H, S] and values [B, K, S, H]
    (grouped-query: N = K * G query heads), without moving the cache. Scores and softmax in
    float32."""
    b, t, n, h = q_btnh.shape
    k = k_bkhs.shape[1]
    # both dots in dot_general's natural order (batch dims, then lhs free, then rhs free): an
    # output permuted inside the dot sends XLA:CPU to a slow path (6x on the decode step's PV)
    q = q_btnh.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgth,bkhs->bkgts", q, k_bkhs, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_b1ts[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, v_bksh)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def dense(spec: str, x, kernel, dt):
    """A projection in compute dtype ``dt``: inputs cast to ``dt``, accumulated in float32
    (:func:`matmul_f32`), the result cast back to ``dt``."""
    return matmul_f32(spec, x.astype(dt), kernel.astype(dt)).astype(dt)


def matmul_f32(spec: str, x, kernel):
    """``einsum(spec, x, kernel)`` accumulated and returned in float32, for specs whose
    contracted dims are the trailing dims of ``x`` and the leading dims of ``kernel``. For bf16
    this is the MXU/tensor-core contract; on CPU, bf16 operands go through
    :func:`cpu_bf16_matmul` (one 2-D matmul) so forward and backward take the AMX path."""
    lhs, rhs = spec.split("->")[0].split(",")
    k = len([c for c in lhs if c in rhs])
    if lhs[len(lhs) - k:] != rhs[:k]:
        return jnp.einsum(spec, x, kernel, preferred_element_type=jnp.float32)
    # one 2-D matmul over the flattened contracted dims: einsum may order several contracted
    # dims differently from their layout (o_proj's "nh"), and XLA then transposes the kernel,
    # a full weight copy on every call (every decode step)
    m, n = x.shape[: x.ndim - k], kernel.shape[k:]
    kk = math.prod(kernel.shape[:k])
    x2, w2 = x.reshape(-1, kk), kernel.reshape(kk, -1)
    if use_cpu_bf16(x.dtype) and kernel.dtype == x.dtype:
        return cpu_bf16_matmul(x2, w2).reshape(*m, *n)
    return jnp.dot(x2, w2, preferred_element_type=jnp.float32).reshape(*m, *n)


def use_cpu_bf16(dt) -> bool:
    # the platform compiled for: an ahead-of-time TPU compile on a CPU host takes the TPU path
    return jnp.dtype(dt) == jnp.bfloat16 and platform() == "cpu"


def _transposed_copy(a):
    """``a.T`` materialized row-major. Left as a plain transpose, XLA folds it into the dot as a
    transposed operand, and XLA:CPU sends such dots to its slow generic path."""
    return jax.lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[1], a.shape[0])


@jax.custom_vjp
def cpu_bf16_matmul(x_mk, w_kn):
    """[M, K] @ [K, N] bf16 -> float32, in the form XLA:CPU runs on its AMX/YNNPACK kernels
    (bf16 x bf16 -> f32, row-major, untransposed operands), forward and backward: the
    backward casts the cotangent to bf16 (as mixed-precision autocast does) and feeds the
    transposed operands as materialized copies. Other bf16 dots on XLA:CPU are converted to
    float32 and run at float32 speed."""
    return jnp.dot(x_mk, w_kn, preferred_element_type=jnp.float32)


def _cpu_bf16_matmul_fwd(x_mk, w_kn):
    return cpu_bf16_matmul(x_mk, w_kn), (x_mk, w_kn)


def _cpu_bf16_matmul_bwd(res, g_mn):
    x_mk, w_kn = res
    g = g_mn.astype(jnp.bfloat16)
    dx = jnp.dot(g, _transposed_copy(w_kn), preferred_element_type=jnp.float32).astype(x_mk.dtype)
    dw = jnp.dot(_transposed_copy(x_mk), g, preferred_element_type=jnp.float32).astype(w_kn.dtype)
    return dx, dw


cpu_bf16_matmul.defvjp(_cpu_bf16_matmul_fwd, _cpu_bf16_matmul_bwd)

# PEFT's LoRA A init (Kaiming-uniform, a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def lora_delta(module: nn.Module, name: str, spec: str, x, kernel_shape):
    """``(alpha / r) (x A) B``, the low-rank update of projection ``name``, whose kernel of
    ``kernel_shape`` computes ``einsum(spec, x, kernel)``: A = ``<name>_lora_a`` [in..., r],
    B = ``<name>_lora_b`` [r, out...] (zeros: a fresh adapter changes nothing). W + A B is never
    formed; two thin matmuls in compute dtype (see :mod:`rmr1_jax.models.lora`)."""
    cfg = module.cfg
    lhs, out = spec.split("->")
    xs, ks = lhs.split(",")
    n_in = len([c for c in ks if c in xs])
    pdt, dt = dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
    a = module.param(name + "_lora_a", lora_a_init, (*kernel_shape[:n_in], cfg.lora_rank), pdt)
    b = module.param(name + "_lora_b", nn.initializers.zeros, (cfg.lora_rank, *kernel_shape[n_in:]), pdt)
    rows = xs[: len(xs) - n_in]
    xa = dense(f"{xs},{ks[:n_in]}r->{rows}r", x, a, dt) * jnp.asarray(cfg.lora_scale, dt)
    return dense(f"{rows}r,r{ks[n_in:]}->{out}", xa, b, dt)


class Attention(nn.Module):
    cfg: ModelConfig

    def _proj(self, name, x_btd, heads):
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        kernel = self.param(name + "_kernel", default_init, (cfg.hidden_size, heads, cfg.dim_head),
                            dtype_of(cfg.param_dtype))
        y = dense("btd,dnh->btnh", x_btd, kernel, dt)
        if cfg.attention_bias:
            bias = self.param(name + "_bias", nn.initializers.zeros, (heads, cfg.dim_head),
                              dtype_of(cfg.param_dtype))
            y = y + bias.astype(dt)
        if cfg.lora_on(name):
            y = y + lora_delta(self, name, "btd,dnh->btnh", x_btd, kernel.shape)
        return y

    @nn.compact
    def __call__(self, x_btd, cos, sin, mask_b1ts, kv_cache=None, cache_index=None, segments_bt=None):
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        n, k = cfg.num_attention_heads, cfg.num_key_value_heads
        q = constrain(self._proj("q_proj", x_btd, n), ("act_batch", "act_length", "act_heads", "act_head_dim"))
        kk = constrain(self._proj("k_proj", x_btd, k), ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        v = constrain(self._proj("v_proj", x_btd, k), ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        q = apply_rope(q, cos, sin)
        kk = apply_rope(kk, cos, sin)
        new_cache = None
        scale = 1.0 / math.sqrt(cfg.dim_head)
        if isinstance(kv_cache, PagedLayer):  # the generation engine: [S, Q] tokens over pages
            out, new_cache = paged_attention(q, kk, v, kv_cache, scale)
        elif kv_cache is not None:
            # keys [B, K, H, S], values [B, K, S, H]: write the new slots in place; a decode step
            # attends over every slot, a prefill (cache_index None: slots from 0) over its own
            # tokens only
            k_cache, v_cache = kv_cache
            start = 0 if cache_index is None else cache_index
            k_cache = jax.lax.dynamic_update_slice(k_cache, kk.transpose(0, 2, 3, 1).astype(k_cache.dtype),
                                                   (0, 0, 0, start))
            v_cache = jax.lax.dynamic_update_slice(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype),
                                                   (0, 0, start, 0))
            new_cache = (k_cache, v_cache)
            if cache_index is None:
                out = self_attention(q, kk, v, mask_b1ts, scale, cfg.attention_impl, segments_bt)
            else:
                out = cached_attention(q, k_cache.astype(dt), v_cache.astype(dt), mask_b1ts, scale)
        else:
            out = self_attention(q, kk, v, mask_b1ts, scale, cfg.attention_impl, segments_bt)
        out = constrain(out, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        o_kernel = self.param("o_proj_kernel", default_init, (n, cfg.dim_head, cfg.hidden_size),
                              dtype_of(cfg.param_dtype))
        y = dense("btnh,nhd->btd", out, o_kernel, dt)
        if cfg.o_proj_bias:
            y = y + self.param("o_proj_bias", nn.initializers.zeros, (cfg.hidden_size,),
                               dtype_of(cfg.param_dtype)).astype(dt)
        if cfg.lora_on("o_proj"):
            y = y + lora_delta(self, "o_proj", "btnh,nhd->btd", out, o_kernel.shape)
        return y, new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        d, f = cfg.hidden_size, cfg.intermediate_size
        gate = self.param("gate_proj_kernel", default_init, (d, f), pdt)
        up = self.param("up_proj_kernel", default_init, (d, f), pdt)
        down = self.param("down_proj_kernel", default_init, (f, d), pdt)
        g = dense("btd,df->btf", x_btd, gate, dt)
        u = dense("btd,df->btf", x_btd, up, dt)
        if cfg.lora_on("gate_proj"):
            g = g + lora_delta(self, "gate_proj", "btd,df->btf", x_btd, gate.shape)
        if cfg.lora_on("up_proj"):
            u = u + lora_delta(self, "up_proj", "btd,df->btf", x_btd, up.shape)
        h = constrain(nn.silu(g) * u, ("act_batch", "act_length", "act_mlp"))
        y = dense("btf,fd->btd", h, down, dt)
        if cfg.lora_on("down_proj"):
            y = y + lora_delta(self, "down_proj", "btf,fd->btd", h, down.shape)
        return y


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x)). Returns (x, new_kv_cache)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd, kv_cache, cos, sin, mask_b1ts, cache_index, segments_bt=None):
        cfg = self.cfg
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name=name)
        h, new_cache = Attention(cfg, name="self_attn")(norm("input_layernorm")(x_btd), cos, sin, mask_b1ts,
                                                         kv_cache, cache_index, segments_bt)
        x_btd = x_btd + h
        x_btd = x_btd + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(x_btd))
        x_btd = constrain(x_btd, ("act_batch", "act_length", "act_embed"))
        return x_btd, new_cache
