"""Parameter-tree utilities: logical axis names per parameter, sharded initialization, and
conversion between the scanned (stacked [L, ...]) and unrolled (``layers_i``) layouts."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rmr1_jax.models.config import ModelConfig
from rmr1_jax.parallel.sharding import named_sharding

# leaf name -> logical axes of the (unstacked) parameter
PARAM_AXES: dict[str, tuple[str | None, ...]] = {
    "embed_tokens": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "scale": ("norm",),
    "q_proj_kernel": ("embed", "heads", "head_dim"),
    "k_proj_kernel": ("embed", "kv_heads", "head_dim"),
    "v_proj_kernel": ("embed", "kv_heads", "head_dim"),
    "q_proj_bias": ("heads", "head_dim"),
    "k_proj_bias": ("kv_heads", "head_dim"),
    "v_proj_bias": ("kv_heads", "head_dim"),
    "o_proj_kernel": ("heads", "head_dim", "embed"),
    "o_proj_bias": ("norm",),  # [D], replicated like the norm scales
    "gate_proj_kernel": ("embed", "mlp"),
    "up_proj_kernel": ("embed", "mlp"),
    "down_proj_kernel": ("mlp", "embed"),
    "score": ("embed", "classes"),
    "score_bias": ("classes",),
    # LoRA adapters (rmr1_jax.models.lora): A [in..., r] and B [r, out...] keep their kernel's
    # in and out axes; the rank axis is "lora" (replicated by the default rules)
    "q_proj_lora_a": ("embed", "lora"),
    "q_proj_lora_b": ("lora", "heads", "head_dim"),
    "k_proj_lora_a": ("embed", "lora"),
    "k_proj_lora_b": ("lora", "kv_heads", "head_dim"),
    "v_proj_lora_a": ("embed", "lora"),
    "v_proj_lora_b": ("lora", "kv_heads", "head_dim"),
    "o_proj_lora_a": ("heads", "head_dim", "lora"),
    "o_proj_lora_b": ("lora", "embed"),
    "gate_proj_lora_a": ("embed", "lora"),
    "gate_proj_lora_b": ("lora", "mlp"),
    "up_proj_lora_a": ("embed", "lora"),
    "up_proj_lora_b": ("lora", "mlp"),
    "down_proj_lora_a": ("mlp", "lora"),
    "down_proj_lora_b": ("lora", "embed"),
}
# top-level parameters that belong to the head, not the trunk (embeddings, layers, final norm)
HEAD_PARAMS = ("lm_head", "score")


def _path_keys(path) -> list[str]:
    return [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]


def logical_axes_for(path_keys: list[str], ndim: int) -> tuple[str | None, ...]:
    name = path_keys[-1]
    if name not in PARAM_AXES:
        raise KeyError(f"no logical axes known for parameter {'/'.join(path_keys)}")
    axes = PARAM_AXES[name]
    if len(axes) == ndim - 1 and "layers" in path_keys:
        axes = ("layers",) + axes
    if len(axes) != ndim:
        raise ValueError(f"parameter {'/'.join(path_keys)} has {ndim} dims, expected {len(axes)}")
    return axes


def param_logical_axes(params):
    """Pytree (matching ``params``) of logical-axis tuples."""
    return jax.tree_util.tree_map_with_path(lambda p, x: logical_axes_for(_path_keys(p), len(x.shape)), params)


def param_shardings(params_or_shapes, mesh: Mesh, rules=None):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: named_sharding(mesh, logical_axes_for(_path_keys(p), len(x.shape)), x.shape, rules),
        params_or_shapes,
    )


def abstract_params(model, cfg: ModelConfig | None = None):
    """ShapeDtypeStructs of the parameters (no memory is allocated)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda r: model.init(r, ids), jax.random.key(0))["params"]
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), shapes)


def init_params(model, rng, mesh: Mesh | None = None, rules=None):
    """Random parameters created directly in their shardings (never whole on one device)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    init_fn = lambda r: model.init(r, ids)["params"]
    if mesh is None:
        return jax.jit(init_fn)(rng)
    shardings = param_shardings(abstract_params(model), mesh, rules)
    return jax.jit(init_fn, out_shardings=shardings)(rng)


def init_head(model, rng, mesh: Mesh | None = None, rules=None) -> dict:
    """The head entries of ``init_params(model, rng, mesh)``, bit for bit (``{"score": [D, N]}``,
    ``{"lm_head": [D, V]}``, or ``{}`` for a tied LM head), for a head started fresh on a trunk
    loaded from elsewhere. Nothing else is materialized: XLA drops the unused initializers."""
    ids = jnp.zeros((1, 8), jnp.int32)
    init_fn = lambda r: {k: v for k, v in model.init(r, ids)["params"].items() if k in HEAD_PARAMS}
    if mesh is None:
        return jax.jit(init_fn)(rng)
    shapes = {k: v for k, v in abstract_params(model).items() if k in HEAD_PARAMS}
    return jax.jit(init_fn, out_shardings=param_shardings(shapes, mesh, rules))(rng)


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


_LAYER_RE = re.compile(r"layers_(\d+)$")


def unstack_layers(params, num_layers: int):
    """Scanned layout ({'layers': stacked}) -> unrolled ({'layers_0': ..., ...})."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
    return out


def stack_layers(params):
    """Unrolled layout -> scanned layout."""
    idx = sorted(int(m.group(1)) for k in params if (m := _LAYER_RE.match(k)))
    out = {k: v for k, v in params.items() if not _LAYER_RE.match(k)}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in idx])
    return out


def is_scanned(params) -> bool:
    return "layers" in params
