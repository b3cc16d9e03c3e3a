"""AdamW with warmup and a cosine / linear / constant schedule, and grad-norm clipping."""

from __future__ import annotations

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from rmr1_jax.schema import OptimSpec


def make_schedule(spec: OptimSpec, total_steps: int) -> optax.Schedule:
    warmup = spec.warmup_steps if spec.warmup_steps is not None else int(round(spec.warmup_ratio * total_steps))
    warmup = max(0, min(warmup, total_steps))
    decay_steps = max(1, total_steps - warmup)
    end = spec.lr * spec.min_lr_ratio
    if spec.schedule == "constant":
        main = optax.constant_schedule(spec.lr)
    elif spec.schedule == "linear":
        main = optax.linear_schedule(spec.lr, end, decay_steps)
    else:
        main = optax.cosine_decay_schedule(spec.lr, decay_steps, alpha=spec.min_lr_ratio)
    if warmup == 0:
        return main
    # Warmup starts at lr/warmup (not 0) so the first step already moves the weights.
    return optax.join_schedules([optax.linear_schedule(spec.lr / warmup, spec.lr, warmup), main], [warmup])


def make_optimizer(spec: OptimSpec, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(spec, total_steps)
    parts = []
    if spec.grad_clip and spec.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(spec.grad_clip))
    parts.append(optax.adamw(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay))
    return optax.chain(*parts), schedule


def opt_state_shardings(optimizer: optax.GradientTransformation, params):
    """Shardings of ``optimizer.init(params)`` for parameters (arrays or ShapeDtypeStructs)
    with NamedShardings: every part of the state shaped like the parameter tree (Adam's two
    moments) takes the parameters' shardings, everything else (step counts) is replicated.
    Left to the compiler, the moments come out replicated, since nothing in ``zeros_like``
    ties them to the parameters' layout: three full copies of the model on every device."""
    p_def = jax.tree.structure(params)
    p_sh = jax.tree.map(lambda x: x.sharding, params)
    mesh = next(s.mesh for s in jax.tree.leaves(p_sh) if isinstance(s, NamedSharding))
    replicated = NamedSharding(mesh, PartitionSpec())

    def like_params(x):
        return jax.tree.structure(x) == p_def

    return jax.tree.map(lambda sub: p_sh if like_params(sub) else replicated,
                        jax.eval_shape(optimizer.init, params), is_leaf=like_params)
