"""FLOP counts for MFU, and the measured matmul peak of the devices at hand."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.models.config import ModelConfig


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """6 x (non-embedding-lookup) parameters + attention (12 x layers x heads x head_dim x
    context), the usual accounting (forward + backward, no causal discount, no remat). Tied
    embeddings of an LM head are also its output matmul; a classification head's own few
    weights are counted at every token, a slight overcount. With LoRA the frozen weights get
    no weight gradient (4 x instead of 6 x)."""
    lookup_only = cfg.is_classifier or not cfg.tie_word_embeddings
    n = cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (1 if lookup_only else 0)
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.dim_head * seq_len
    if cfg.lora_rank:  # a frozen weight costs no weight gradient: 4 x base + 6 x adapters
        from rmr1_jax.models.lora import adapter_count

        return 4.0 * n + 6.0 * adapter_count(cfg) + attn
    return 6.0 * n + attn


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    if cfg.lora_rank:
        from rmr1_jax.models.lora import adapter_count, base_config

        return train_flops_per_token(base_config(cfg), seq_len) / 3.0 + 2.0 * adapter_count(cfg)
    return train_flops_per_token(cfg, seq_len) / 3.0


def measure_matmul_peak(size: int = 2048, dtype=jnp.bfloat16, repeats: int = 5, devices=None) -> float:
    """FLOP/s of a jitted [size, size] @ [size, size] matmul (bf16 inputs, f32 accumulation),
    run on every given device at once; the best of ``repeats`` timings."""
    devices = devices or jax.devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    k = len(devices)
    a = jax.device_put(jnp.ones((k, size, size), dtype), sh)
    b = jax.device_put(jnp.ones((k, size, size), dtype), sh)
    f = jax.jit(lambda x, y: jnp.einsum("kij,kjl->kil", x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * k * size**3 / best
