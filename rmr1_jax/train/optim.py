"""AdamW with warmup and a cosine / linear / constant schedule, and grad-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Literal

import optax

from rmr1_jax.errors import ConfigError


@dataclasses.dataclass
class OptimSpec:
    lr: float = 5e-6
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    warmup_ratio: float = 0.03  # of the total steps (ignored when warmup_steps is set)
    warmup_steps: int | None = None
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global-norm clip; 0 disables

    def validate(self, where: str):
        if self.lr <= 0:
            raise ConfigError(f"{where}: optim.lr must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}: optim.min_lr_ratio must be in [0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{where}: optim.warmup_ratio must be in [0, 1)")


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
