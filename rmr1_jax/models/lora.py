"""Low-rank adapters (LoRA) on the attention and MLP projections: the parameter-tree side.

With ``cfg.lora_rank = r > 0`` every projection named in ``cfg.lora_targets`` (q/k/v/o,
gate/up/down) computes ``y = x W + (alpha / r) (x A) B`` (:func:`rmr1_jax.models.layers.lora_delta`;
``W + A B`` is never formed in the forward pass), with two parameters beside its kernel:

* ``<name>_lora_a`` [in..., r]: PEFT's Kaiming-uniform init (o_proj: [N, H, r]);
* ``<name>_lora_b`` [r, out...]: zeros, so a fresh adapter leaves the model's output unchanged.

Training updates the adapters (plus a classification ``score`` head, which a reward model
starts fresh: ``split_params(..., head=True)``) while the base weights stay frozen. The
helpers here split a parameter tree into the trained part and the frozen base, put them back
together, initialize fresh adapters, fold them into the kernels (:func:`merge`, for export
and for reading a LoRA checkpoint as a plain model) and fingerprint a base, so that adapters
are never silently applied to another base than the one they were trained on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.models.config import LORA_TARGETS, ModelConfig
from rmr1_jax.models.params import num_params, param_shardings

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
HEAD = "score"  # trained with the adapters when ``head=True`` (a classification head)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name.startswith("lora_")}


def is_adapter(name: str) -> bool:
    return str(name).endswith(ADAPTER_SUFFIXES)


def base_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` without LoRA (rank 0, the other LoRA fields at their defaults)."""
    return cfg.replace(**_DEFAULTS)


def with_lora(cfg: ModelConfig, rank: int, alpha: float = 16.0, targets=LORA_TARGETS) -> ModelConfig:
    return cfg.replace(lora_rank=rank, lora_alpha=float(alpha), lora_targets=tuple(targets)) if rank \
        else base_config(cfg)


def _partition(tree, keep, top=True):
    """(kept, rest): nested dicts of the leaves ``keep(name, top)`` selects and of the others,
    empty dicts dropped."""
    kept, rest = {}, {}
    for k, v in tree.items():
        if isinstance(v, dict):
            a, b = _partition(v, keep, top=False)
            if a:
                kept[k] = a
            if b:
                rest[k] = b
        elif keep(k, top):
            kept[k] = v
        else:
            rest[k] = v
    return kept, rest


def split_params(params: dict, *, head: bool = False) -> tuple[dict, dict]:
    """``(adapters, base)``: the ``*_lora_a`` / ``*_lora_b`` leaves (and, with ``head``, the
    top-level ``score`` head) in the tree's own nesting, and everything else. Neither part is
    a copy: both hold the same arrays (or ShapeDtypeStructs) as ``params``."""
    return _partition(params, lambda name, top: is_adapter(name) or (head and top and name == HEAD))


def split_for(cfg: ModelConfig, params: dict) -> tuple[dict, dict]:
    """:func:`split_params` as training uses it: a classification head is trained too."""
    return split_params(params, head=cfg.is_classifier)


def combine(base: dict, adapters: dict) -> dict:
    """The one tree of ``base`` and ``adapters`` (the inverse of :func:`split_params`); no
    array is copied."""
    out = dict(base)
    for k, v in adapters.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = combine(out[k], v)
        elif k in out:
            raise ValueError(f"combine: {k!r} is in both the base and the adapters")
        else:
            out[k] = v
    return out


def has_adapters(params: dict) -> bool:
    return any(is_adapter(getattr(p[-1], "key", p[-1])) for p, _ in jax.tree_util.tree_leaves_with_path(params))


def trainable_count(params: dict, *, head: bool = False) -> int:
    """Parameters training updates: the adapters (and ``score`` with ``head``) when the tree has
    adapters, else all of them (full fine-tuning)."""
    return num_params(split_params(params, head=head)[0]) if has_adapters(params) else num_params(params)


def adapter_count(cfg: ModelConfig) -> int:
    """``r x (in + out)`` per adapted projection per layer: the adapters' parameter count."""
    if not cfg.lora_rank:
        return 0
    d, f = cfg.hidden_size, cfg.intermediate_size
    n, k = cfg.num_attention_heads * cfg.dim_head, cfg.num_key_value_heads * cfg.dim_head
    sizes = {"q_proj": d + n, "k_proj": d + k, "v_proj": d + k, "o_proj": n + d,
             "gate_proj": d + f, "up_proj": d + f, "down_proj": f + d}
    return cfg.num_hidden_layers * cfg.lora_rank * sum(sizes[t] for t in cfg.lora_targets)


def init_adapters(model, rng, mesh=None, rules=None) -> dict:
    """The adapter entries of ``model.init(rng)`` (``model.cfg`` has LoRA: A Kaiming-uniform,
    B zeros, so the adapted model starts as the base), created in their shardings; XLA drops
    the other initializers."""
    ids = jnp.zeros((1, 8), jnp.int32)
    init_fn = lambda r: split_params(model.init(r, ids)["params"])[0]  # noqa: E731
    if mesh is None:
        return jax.jit(init_fn)(rng)
    shapes = jax.eval_shape(init_fn, rng)
    return jax.jit(init_fn, out_shardings=param_shardings(shapes, mesh, rules))(rng)


def _merged_kernel(w, a, b, scale: float):
    """``w + scale * a @ b`` in float32 (cast back to ``w``'s dtype) for a kernel [lead..., in...,
    out...], ``a`` [lead..., in..., r], ``b`` [lead..., r, out...] (lead: stacked layers)."""
    lead = a.ndim + b.ndim - 2 - w.ndim
    ls, r = w.shape[:lead], a.shape[-1]
    a2 = a.astype(jnp.float32).reshape(*ls, -1, r)
    b2 = b.astype(jnp.float32).reshape(*ls, r, -1)
    delta = jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST).reshape(w.shape)
    return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)


def _merge_tree(tree: dict, scale: float) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = _merge_tree(v, scale)
        elif not is_adapter(k):
            name = k[: -len("_kernel")] if k.endswith("_kernel") else None
            if name is not None and f"{name}_lora_a" in tree:
                v = _merged_kernel(v, tree[f"{name}_lora_a"], tree[f"{name}_lora_b"], scale)
            out[k] = v
    return out


def merge(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """``(cfg without LoRA, params)`` with every adapter folded into its kernel,
    ``W + (alpha / r) A B`` (float32 arithmetic), the adapters removed: the plain model the
    adapted one computes, for export and as a LoRA checkpoint's model. Sharded kernels keep
    their shardings."""
    if not cfg.lora_rank:
        return cfg, params
    leaves = jax.tree.leaves(params)
    out_sh = None
    if leaves and all(isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding) for x in leaves):
        out_sh = jax.tree.map(lambda x: x.sharding, split_params(params)[1])  # the merged tree's structure
    merged = jax.jit(lambda p: _merge_tree(p, cfg.lora_scale), out_shardings=out_sh)(params)
    return base_config(cfg), merged


# --- fingerprints of a base --------------------------------------------------------------


def _leaf_print(x):
    """[signed projection, L2 norm] of one array, in float32: a random +-1 projection (a
    fixed integer hash of the element index) tells two different weight sets apart, the norm
    gives the scale of the tolerance."""
    v = x.astype(jnp.float32).reshape(-1)
    i = jnp.arange(v.shape[0], dtype=jnp.uint32)
    sign = jnp.where(((i * jnp.uint32(0x9E3779B1)) >> 16) & 1, 1.0, -1.0)
    return jnp.stack([jnp.sum(v * sign), jnp.sqrt(jnp.sum(v * v))])


def _print_leaf(path, x):
    if str(getattr(path[0], "key", path[0])) == "layers":  # stacked [L, ...]: one print per layer
        return jax.vmap(_leaf_print)(x)
    return _leaf_print(x)


_prints = jax.jit(lambda params: jax.tree_util.tree_map_with_path(_print_leaf, params))


def fingerprint(params: dict) -> dict[str, list[float]]:
    """``{path: [projection, norm]}`` per leaf, the same for the scanned and the unrolled layout
    of the same weights (stacked layers are printed per layer, as ``layers_<i>/...``)."""
    out = {}
    for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(_prints(params))):
        keys = [str(getattr(p, "key", p)) for p in path]
        v = np.asarray(v, np.float64)
        if keys[0] == "layers":
            for i, row in enumerate(v):
                out["/".join([f"layers_{i}"] + keys[1:])] = [float(row[0]), float(row[1])]
        else:
            out["/".join(keys)] = [float(v[0]), float(v[1])]
    return out


def fingerprint_mismatch(expected: dict, actual: dict, rtol: float = 1e-3) -> str | None:
    """The first leaf whose print differs beyond ``rtol`` of its norm (or that one side
    lacks), or ``None`` when the two prints agree."""
    for key in sorted(set(expected) | set(actual)):
        if key not in expected or key not in actual:
            return key
        (p1, n1), (p2, n2) = expected[key], actual[key]
        tol = rtol * max(n1, n2) + 1e-6
        if abs(p1 - p2) > tol or abs(n1 - n2) > tol:
            return key
    return None
