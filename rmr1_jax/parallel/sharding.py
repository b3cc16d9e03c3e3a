"""Logical axis names and the one table that maps them onto the device mesh.

Parameters and activations are annotated with *logical* axis names (``embed``, ``mlp``,
``heads`` ...). :data:`DEFAULT_RULES` maps each name to zero, one or several mesh axes of the
``(data, fsdp, tensor)`` mesh. Changing the parallelism strategy is an edit of this table, never
of the model. A recipe may override entries (``mesh.rules``, see :func:`merge_rules`); a job
runs inside :func:`axis_rules` with its table, which every function here uses when it is not
given one.

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

from rmr1_jax.errors import ConfigError

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
    ("lora", None),  # the rank of a LoRA adapter (rmr1_jax.models.lora)
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

_RULES = threading.local()


def current_rules() -> Rules:
    """The table of the enclosing :func:`axis_rules` context, else :data:`DEFAULT_RULES`."""
    return getattr(_RULES, "value", None) or DEFAULT_RULES


@contextlib.contextmanager
def axis_rules(rules: Rules | None):
    """Use ``rules`` (``None``: the default table) for every sharding decided inside."""
    prev = getattr(_RULES, "value", None)
    _RULES.value = tuple(rules) if rules is not None else None
    try:
        yield
    finally:
        _RULES.value = prev


def merge_rules(overrides: dict | None, where: str = "mesh.rules") -> Rules:
    """:data:`DEFAULT_RULES` with the entries of ``overrides`` (``{logical name: mesh axes}``,
    an axis name, a list of them, or null for replicated) replaced. An unknown logical name or
    mesh axis is a :class:`ConfigError` naming the key."""
    if not overrides:
        return DEFAULT_RULES
    known = [k for k, _ in DEFAULT_RULES]
    table = dict(DEFAULT_RULES)
    for name, axes in overrides.items():
        if name not in table:
            raise ConfigError(f"{where}.{name}: unknown logical axis (known: {', '.join(known)})")
        if axes is not None:
            axes = [axes] if isinstance(axes, str) else axes
            bad = [a for a in axes if a not in MESH_AXES] if isinstance(axes, (list, tuple)) else [axes]
            if bad:
                raise ConfigError(f"{where}.{name}: {bad[0]!r} is not a mesh axis ({', '.join(MESH_AXES)}) "
                                  f"or a list of them")
            axes = tuple(axes) or None
        table[name] = axes
    return tuple((k, table[k]) for k in known)


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
    rules: Rules | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry ``logical_axes``.

    When ``shape`` and ``mesh`` are given, mesh axes that do not divide a dimension, that have
    size 1, or that an earlier dimension already uses are dropped for that dimension.
    """
    rules = rules or current_rules()
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
    mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int], rules: Rules | None = None
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


# --- activation constraints -------------------------------------------------------------
# The model calls ``constrain(x, names)``; it is a no-op unless a mesh is active via
# ``activation_sharding(mesh)``. This keeps the model code free of mesh plumbing.

_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules | None = None):
    """Within this context (at trace time), model activations get sharding constraints."""
    prev = getattr(_ACTIVE, "value", None)
    _ACTIVE.value = (mesh, rules or current_rules()) if mesh is not None else None
    try:
        yield
    finally:
        _ACTIVE.value = prev


def active_mesh():
    """``(mesh, rules)`` of the enclosing :func:`activation_sharding`, else ``(None, None)``."""
    return getattr(_ACTIVE, "value", None) or (None, None)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    active = getattr(_ACTIVE, "value", None)
    if active is None:
        return x
    mesh, rules = active
    if mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical_axes, x.shape, rules))


def tree_shardings(mesh: Mesh, logical_tree, shape_tree, rules: Rules | None = None):
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
