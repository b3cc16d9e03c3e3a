"""Logical axis names and the one table that maps them onto the device mesh.

Parameters and activations are annotated with *logical* axis names (``embed``, ``mlp``,
``heads`` ...). :data:`DEFAULT_RULES` maps each name to zero, one or several mesh axes of the
``(data, fsdp, tensor)`` mesh. Changing the parallelism strategy is an edit of this table, never
of the model.

A dimension whose size is not divisible by the mesh axes it maps to is replicated instead (for
example 2 KV heads on a tensor axis of 4): the result is always a valid sharding.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (tuple) or None (replicated)
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", None),
    ("mlp", ("tensor",)),
    ("layers", None),
    ("norm", None),
    ("classes", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", ("tensor",)),
    ("act_kv_heads", ("tensor",)),
    ("act_head_dim", None),
    ("act_mlp", ("tensor",)),
    ("act_vocab", ("tensor",)),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
)

Rules = Sequence[tuple[str, "tuple[str, ...] | None"]]


def _lookup(rules: Rules, name: str | None):
    if name is None:
        return None
    for key, axes in rules:
        if key == name:
            return axes
    raise KeyError(f"logical axis {name!r} has no entry in the sharding rules table")


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry ``logical_axes``.

    When ``shape`` and ``mesh`` are given, mesh axes that do not divide a dimension, that have
    size 1, or that an earlier dimension already uses are dropped for that dimension.
    """
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical_axes):
        axes = _lookup(rules, name)
        if not axes:
            out.append(None)
            continue
        keep = []
        for ax in axes:
            if ax in used:
                continue
            if mesh is not None:
                size = mesh.shape.get(ax, 1)
                if size == 1:
                    continue
                if shape is not None:
                    already = math.prod(mesh.shape[a] for a in keep)
                    if shape[i] % (already * size) != 0:
                        continue
            keep.append(ax)
        used.update(keep)
        if not keep:
            out.append(None)
        elif len(keep) == 1:
            out.append(keep[0])
        else:
            out.append(tuple(keep))
    return PartitionSpec(*out)


def named_sharding(
    mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int], rules: Rules = DEFAULT_RULES
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


# --- activation constraints -------------------------------------------------------------
# The model calls ``constrain(x, names)``; it is a no-op unless a mesh is active via
# ``activation_sharding(mesh)``. This keeps the model code free of mesh plumbing.

_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules = DEFAULT_RULES):
    """Within this context (at trace time), model activations get sharding constraints."""
    prev = getattr(_ACTIVE, "value", None)
    _ACTIVE.value = (mesh, rules) if mesh is not None else None
    try:
        yield
    finally:
        _ACTIVE.value = prev


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    active = getattr(_ACTIVE, "value", None)
    if active is None:
        return x
    mesh, rules = active
    if mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical_axes, x.shape, rules))


def tree_shardings(mesh: Mesh, logical_tree, shape_tree, rules: Rules = DEFAULT_RULES):
    """Map a pytree of logical-axis tuples and a matching pytree of shapes to NamedShardings."""
    return jax.tree.map(
        lambda names, s: named_sharding(mesh, names, s.shape, rules),
        logical_tree,
        shape_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x),
    )


def describe(tree_of_arrays) -> dict[str, str]:
    """``{'path': 'PartitionSpec(...)'}`` for every array leaf, for logs and tests."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree_of_arrays):
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        sh = getattr(leaf, "sharding", None)
        out[key] = str(getattr(sh, "spec", sh))
    return out
