"""The name and layout table between Hugging Face tensors and our parameter tree (Qwen2 and
Llama, causal LMs and sequence classifiers), shared by import (:mod:`rmr1_jax.checkpoint.hf`)
and export (:mod:`rmr1_jax.checkpoint.hf_export`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_dtypes
import numpy as np

from rmr1_jax.models.config import ModelConfig

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and where it lives in our parameter tree."""

    hf_name: str
    path: tuple[str, ...]  # path in the unrolled-per-layer tree (layer leaves under "layers")
    layer: int | None
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_head
    ident = lambda x: x
    T = lambda x: x.T

    def in_heads(heads):  # [heads*h, d] <-> [d, heads, h]
        return (lambda w: w.T.reshape(d, heads, h), lambda w: w.reshape(d, heads * h).T)

    def bias(heads):
        return (lambda b: b.reshape(heads, h), lambda b: b.reshape(heads * h))

    specs = [TensorSpec("model.embed_tokens.weight", ("embed_tokens",), None, (v, d), ident, ident),
             TensorSpec("model.norm.weight", ("norm", "scale"), None, (d,), ident, ident)]
    if cfg.is_classifier:
        specs.append(TensorSpec("score.weight", ("score",), None, (cfg.num_labels, d), T, T))
    elif not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head",), None, (v, d), T, T))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        L = lambda *path: ("layers",) + path
        specs += [
            TensorSpec(p + "input_layernorm.weight", L("input_layernorm", "scale"), i, (d,), ident, ident),
            TensorSpec(p + "post_attention_layernorm.weight", L("post_attention_layernorm", "scale"), i, (d,),
                       ident, ident),
            TensorSpec(p + "self_attn.q_proj.weight", L("self_attn", "q_proj_kernel"), i, (n * h, d), *in_heads(n)),
            TensorSpec(p + "self_attn.k_proj.weight", L("self_attn", "k_proj_kernel"), i, (k * h, d), *in_heads(k)),
            TensorSpec(p + "self_attn.v_proj.weight", L("self_attn", "v_proj_kernel"), i, (k * h, d), *in_heads(k)),
            TensorSpec(p + "self_attn.o_proj.weight", L("self_attn", "o_proj_kernel"), i, (d, n * h),
                       lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T),
            TensorSpec(p + "mlp.gate_proj.weight", L("mlp", "gate_proj_kernel"), i, (f, d), T, T),
            TensorSpec(p + "mlp.up_proj.weight", L("mlp", "up_proj_kernel"), i, (f, d), T, T),
            TensorSpec(p + "mlp.down_proj.weight", L("mlp", "down_proj_kernel"), i, (d, f), T, T),
        ]
        if cfg.attention_bias:
            specs += [
                TensorSpec(p + "self_attn.q_proj.bias", L("self_attn", "q_proj_bias"), i, (n * h,), *bias(n)),
                TensorSpec(p + "self_attn.k_proj.bias", L("self_attn", "k_proj_bias"), i, (k * h,), *bias(k)),
                TensorSpec(p + "self_attn.v_proj.bias", L("self_attn", "v_proj_bias"), i, (k * h,), *bias(k)),
            ]
        if cfg.o_proj_bias:
            specs.append(TensorSpec(p + "self_attn.o_proj.bias", L("self_attn", "o_proj_bias"), i, (d,), ident, ident))
    return specs


def _tree_path(spec: TensorSpec, scanned: bool) -> tuple[str, ...]:
    if spec.layer is None or scanned:
        return spec.path
    return (f"layers_{spec.layer}",) + spec.path[1:]


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value
