"""FLOPs of a step, counted from its jaxpr.

XLA's compiled cost analysis counts the body of every while loop once, whatever its trip
count: a step over ``nn.scan``-ed layers, accumulated micro-batches or a chunked loss is
undercounted by the loops' lengths (a 28-layer SFT step reads as about two layers). The
jaxpr still knows each ``scan``'s length, and the backward pass of a rematerialized layer
holds its recomputed forward, so counting matmuls there gives the whole step, recomputation
included. Only matrix products are counted (``dot_general``: 2 x M x N x K; convolutions
likewise); elementwise work is a few percent of a transformer step and is left out, as in
the usual 6 x parameters x tokens accounting.

The count is of the whole (global) program, which the plan divides by the devices once: a
``shard_map`` body (Splash attention under a mesh) is traced at one device's shapes, so it
counts once per device it runs on. Where its operands are split over every device that is the
count at global shapes; where a body repeats the same shard on several devices (rows that do
not divide over the mesh), the repeats count too, as the work each of those devices does.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jcore


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contract = math.prod(lhs.shape[d] for d in lc)
    batch = math.prod(lhs.shape[d] for d in lb)
    lhs_free = math.prod(s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb)
    rhs_free = math.prod(s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb)
    return 2.0 * batch * lhs_free * rhs_free * contract


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(x, jcore.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jcore.Jaxpr):
                yield x


# Splash attention's Pallas kernels, by name: the matmuls each runs over its (causal: about
# half of the) score blocks. Forward: S = QK^T, PV; dK/dV: S, dP = dO V^T, dV = P^T dO,
# dK = dS^T Q; dQ: S, dP, dQ = dS K.
_SPLASH_MATMULS = (("dkv", 4), ("dq", 3), ("fwd", 2))


def _pallas_flops(eqn) -> float:
    name = str(eqn.params.get("name", ""))
    if "splash" not in name:
        return 0.0
    matmuls = next(n for key, n in _SPLASH_MATMULS if key in name)
    q = next(v.aval for v in eqn.invars if getattr(v.aval, "ndim", 0) >= 3
             and jax.numpy.issubdtype(v.aval.dtype, jax.numpy.floating))
    t = q.shape[-2]
    return matmuls * 2.0 * math.prod(q.shape) * t * 0.5


def _shard_devices(eqn) -> int:
    """How many devices run a ``shard_map`` body: the product of the sizes of its manual mesh
    axes (the body's shapes are one device's along those axes, global along the others)."""
    p = eqn.params
    sizes = dict(p["mesh"].shape)
    manual = next((p[k] for k in ("newly_manual_axes", "manual_axes", "axis_names") if p.get(k)), None)
    return math.prod(sizes[a] for a in (manual if manual is not None else sizes))


def jaxpr_flops(jaxpr, custom: dict | None = None) -> float:
    """Matmul FLOPs of ``jaxpr`` (a Jaxpr or ClosedJaxpr), scans multiplied by their length.
    ``custom`` maps a primitive name to a function ``eqn -> FLOPs`` for opaque kernels
    (a Pallas attention kernel counts its own work). A ``shard_map`` counts its body once per
    device it runs on: the global count, like every other equation."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if custom and name in custom:
            total += custom[name](eqn)
        elif name == "pallas_call":
            total += _pallas_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "while":
            # fori_loops with a static trip count are scans by the time they get here; a true
            # while loop (decode until done) has no length: its body is counted once
            total += jaxpr_flops(eqn.params["body_jaxpr"], custom)
        elif name == "cond":
            total += max(jaxpr_flops(b, custom) for b in eqn.params["branches"])
        elif name == "shard_map":
            # its body is at one device's shapes: once per device is the global count
            total += jaxpr_flops(eqn.params["jaxpr"], custom) * _shard_devices(eqn)
        else:
            inner = sum(jaxpr_flops(j, custom) for j in _sub_jaxprs(eqn))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def step_flops(fn, *args, custom: dict | None = None, **kwargs) -> float:
    """FLOPs of one call of ``fn`` (a jitted function or a plain one) on ``args``, which may
    be ``jax.ShapeDtypeStruct``s."""
    import functools

    # keyword arguments are bound as Python values (the static arguments of a jitted step)
    return jaxpr_flops(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args), custom)
