"""The one training loop. Every objective plugs in a loss function

    loss_fn(params, batch, rng) -> (loss_sum, (count, {name: (sum, count)}))

returning *sums and counts*, never means, so gradient accumulation over micro-batches and
across devices is exact: the update uses sum(grad of loss_sum) / sum(count).

The loop owns: the jitted sharded step (state donated), AdamW via ``optim``, metrics to
TensorBoard and JSONL, a progress bar, periodic held-out evaluation, Orbax checkpoints every
N steps and on SIGTERM, exact resume (params, optimizer, data position; per-step RNG is
derived from the seed and the step), and a stop on a non-finite loss that never writes the
bad state.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rmr1_jax.errors import UserError
from rmr1_jax.parallel.hostlocal import to_global
from rmr1_jax.parallel.sharding import activation_sharding
from rmr1_jax.schema import TrainSpec
from rmr1_jax.train.metrics import MetricsLogger
from rmr1_jax.train.objective import BatchSource, LossFn


class TrainingDiverged(UserError):
    """Loss or gradient became NaN/inf; the last good checkpoint is kept."""


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, schedule, accum: int,
                    mesh: Mesh, state_shardings=None):
    """``run(state, batch, rng, frozen=None) -> (state, metrics)``, the jitted step under the
    mesh's activation shardings. ``batch`` rows are split into ``accum`` micro-batches, each
    spread over all data shards (rows i, i+accum, ...).

    ``run.jitted`` is the ``jax.jit`` object (``state`` donated), for ahead-of-time lowering
    under ``activation_sharding(mesh)``:

    * full fine-tuning: ``run.jitted(state, batch, rng)``, where ``state`` is
      ``{"params": params, "opt_state": optimizer.init(params), "step": int32 []}``;
    * LoRA: ``run.jitted(state, batch, rng, frozen)``, where ``state`` is the same dict built
      over the *trained part only*, ``trainable, frozen = rmr1_jax.models.lora.split_for(cfg,
      params)`` (the ``*_lora_a``/``*_lora_b`` leaves, plus ``score`` for a classification
      head), and ``frozen`` is the rest of the parameter tree (the base), sharded like the
      parameters (``param_shardings``) and not donated. The loss sees
      ``lora.combine(frozen, trainable)``; gradients and optimizer moments cover ``trainable``.

    ``batch`` is the objective's dict of global [rows, ...] arrays and ``rng`` a
    ``jax.random.key`` (typed key array, shape []). For ``jax.ShapeDtypeStruct`` arguments,
    ``abstract_like(tree, shardings)`` of :mod:`rmr1_jax.checkpoint.manager` gives the structs."""
    from rmr1_jax.models.lora import combine

    def step(state, batch, rng, frozen=None):
        trained = state["params"]

        def loss_of(t, mb, r):  # differentiated w.r.t. the trained part only
            return loss_fn(t if frozen is None else combine(frozen, t), mb, r)

        def split(x):
            micro = x.shape[0] // accum
            return x.reshape(micro, accum, *x.shape[1:]).swapaxes(0, 1)

        micro_batches = jax.tree.map(split, batch)

        def grad_of(mb, i):
            (loss, (count, metrics)), grads = jax.value_and_grad(loss_of, has_aux=True)(
                trained, mb, jax.random.fold_in(rng, i))
            return grads, loss, count, metrics

        if accum == 1:
            grads, loss, count, metrics = grad_of(jax.tree.map(lambda x: x[0], micro_batches), 0)
        else:
            first = jax.tree.map(lambda x: x[0], micro_batches)
            shapes = jax.eval_shape(grad_of, first, 0)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def body(carry, xs):
                mb, i = xs
                out = grad_of(mb, i)
                return jax.tree.map(jnp.add, carry, out), None

            (grads, loss, count, metrics), _ = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(accum)))
        denom = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], trained)
        new_params = optax.apply_updates(trained, updates)
        out = {"loss": loss / denom, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "loss_tokens": count.astype(jnp.float32)}
        for k, (s, n) in metrics.items():
            out[k] = s / jnp.maximum(n, 1)
        return {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}, out

    kwargs = {}
    if state_shardings is not None:
        kwargs = dict(out_shardings=(state_shardings, None))
    jitted = jax.jit(step, donate_argnums=(0,), **kwargs)

    def run(state, batch, rng, frozen=None):
        with activation_sharding(mesh):
            return jitted(state, batch, rng) if frozen is None else jitted(state, batch, rng, frozen)

    run.jitted = jitted  # for ahead-of-time lowering (rmr1 plan), under activation_sharding(mesh)
    return run


def init_state(params, optimizer: optax.GradientTransformation):
    """{"params", "opt_state", "step"}. Optimizer moments follow their parameters' shardings;
    scalars (step counts) are replicated over the parameters' mesh."""
    from rmr1_jax.train.optim import opt_state_shardings

    mesh = next((x.sharding.mesh for x in jax.tree.leaves(params) if isinstance(x.sharding, NamedSharding)), None)
    if mesh is None:
        return {"params": params, "opt_state": jax.jit(optimizer.init)(params), "step": jnp.zeros((), jnp.int32)}
    opt_state = jax.jit(optimizer.init, out_shardings=opt_state_shardings(optimizer, params))(params)
    state = {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
                        state)


@dataclasses.dataclass
class TrainResult:
    step: int
    stopped_early: bool
    last_metrics: dict
    eval_metrics: dict


class _StopFlag:
    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum

    def agreed(self) -> bool:
        """Whether any process has been told to stop. Every process calls this after the same
        step, so all of them stop, and save, at the same step: a SIGTERM seen by one host at
        step s and by another at s + 1 would otherwise send one into the collective save and
        the other into the next step, and both would hang."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(jnp.asarray([int(local)], jnp.int32))
        return bool(jax.device_get(flags).max())


def train(*, state, loss_fn: LossFn, optimizer, schedule, mesh: Mesh, batches: BatchSource, total_steps: int,
          spec: TrainSpec, ckpt, tokens_per_step_fn: Callable[[dict], float] | None = None,
          flops_per_token: float | None = None, eval_fn: Callable[[Any, int], dict] | None = None,
          config_dict: dict | None = None, metadata: dict | None = None, save_every: int = 0,
          derive_metrics: Callable[[dict], dict] | None = None, frozen=None,
          log: Callable[[str], None] = print) -> tuple[Any, TrainResult]:
    """Run (or resume) training to ``total_steps``. ``ckpt`` is a CheckpointManager or None;
    ``batches`` a :class:`~rmr1_jax.train.objective.BatchSource` of host-local numpy batches.

    ``frozen``: with LoRA, the frozen base; ``state["params"]`` is then the trained part only
    (what the optimizer updates and the checkpoints hold), and the batch source, the
    evaluation and the loss see ``lora.combine(frozen, state["params"])``.

    A source that holds arrays between steps (GRPO's mini-batches of a rollout not yet trained
    on) has them saved with each checkpoint and handed back on resume, so a save inside a
    rollout loses nothing."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = make_train_step(loss_fn, optimizer, schedule, spec.accum_steps(), mesh, state_shardings)
    run = _Run(state=state, step_fn=step_fn, batches=batches, mesh=mesh, spec=spec, ckpt=ckpt,
               total_steps=total_steps, frozen=frozen, eval_fn=eval_fn, tokens_per_step_fn=tokens_per_step_fn,
               flops_per_token=flops_per_token, derive_metrics=derive_metrics, config_dict=config_dict,
               metadata=metadata, save_every=save_every, log=log)
    try:
        while run.step < total_steps:
            try:
                # sources that generate data with the current policy (GRPO rollouts) see it
                local = batches.next_batch(run.model_params())
            except StopIteration:
                log(f"data exhausted at step {run.step}")
                break
            run.train_step(local)
            if run.bookkeeping():
                break
        if not run.stopped_early:
            run.finish()
    finally:
        run.close()
    return run.state, TrainResult(run.step, run.stopped_early, run.metrics, run.eval_metrics)


class _Run:
    """One call of :func:`train`, step by step: set-up (``__init__``: resume, metrics logger,
    SIGTERM handler, progress bar), :meth:`train_step`, the :meth:`bookkeeping` after each step
    (metrics, evaluation, checkpoints, the agreed stop), :meth:`finish` (the final evaluation
    and save) and :meth:`close` (what set-up took, given back)."""

    def __init__(self, *, state, step_fn, batches: BatchSource, mesh: Mesh, spec: TrainSpec, ckpt,
                 total_steps: int, frozen, eval_fn, tokens_per_step_fn, flops_per_token, derive_metrics,
                 config_dict, metadata, save_every: int, log: Callable[[str], None]):
        self.step_fn, self.batches, self.mesh, self.spec, self.ckpt = step_fn, batches, mesh, spec, ckpt
        self.total_steps, self.frozen, self.eval_fn, self.log = total_steps, frozen, eval_fn, log
        self.tokens_per_step_fn, self.flops_per_token = tokens_per_step_fn, flops_per_token
        self.derive_metrics, self.config_dict, self.metadata = derive_metrics, config_dict, metadata
        self.save_every = save_every
        self.state, self.start = self._resume(state)
        self.logger = MetricsLogger(spec.run_dir)
        self.base_rng = jax.random.key(spec.seed)
        self.peak = _peak_flops(spec, flops_per_token)
        self.stop = _StopFlag()
        self.old_handler = signal.signal(signal.SIGTERM, self.stop) if _main_thread() else None
        self.bar = _progress(spec, total_steps, self.start)
        self.metrics: dict = {}
        self.eval_metrics: dict = {}
        self.stopped_early = False
        self.step = self.start
        self.t_last = time.perf_counter()

    def _resume(self, state) -> tuple[Any, int]:
        """``(state, step)``: the latest checkpoint's when there is one (with the batch source's
        position and held arrays), else ``(state, 0)``."""
        from rmr1_jax.checkpoint.trees import abstract_like
        from rmr1_jax.parallel.hostlocal import batch_sharding, fetch, process_rows

        ckpt, batches, mesh = self.ckpt, self.batches, self.mesh
        if ckpt is None or ckpt.latest_step() is None:
            return state, 0
        restored = ckpt.restore(target=abstract_like(state))
        if restored.extra and "data" in restored.extra:
            batches.restore(restored.extra["data"])
        if batches.holds_arrays:
            held = ckpt.restore_source(restored.step, lambda shape: batch_sharding(mesh, shape))
            own = lambda x: fetch(x)[process_rows(x)]  # this process's rows of each global array
            batches.restore_held(jax.tree.map(own, held) if held is not None else {})
        self.log(f"resumed from {ckpt.directory} at step {restored.step}")
        return restored.state, restored.step

    def model_params(self):
        """The whole parameter tree the model applies (with LoRA: the base and the adapters)."""
        from rmr1_jax.models.lora import combine

        return self.state["params"] if self.frozen is None else combine(self.frozen, self.state["params"])

    def train_step(self, local: dict) -> None:
        """One optimizer step on the host-local batch ``local``; its metrics (with throughput
        and the source's own) become ``self.metrics``. A non-finite loss or gradient norm stops
        the run before anything is saved."""
        t0 = time.perf_counter()
        batch = to_global(local, self.mesh)
        rng = jax.random.fold_in(self.base_rng, self.step)
        self.state, m = self.step_fn(self.state, batch, rng, self.frozen)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        now = time.perf_counter()
        m["time_update_s"] = now - t0  # the optimizer step alone (step_time_s also counts the batch's making)
        dt, self.t_last = now - self.t_last, now
        self.step += 1
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            raise TrainingDiverged(
                f"non-finite loss at step {self.step} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
                f"lr={m['lr']:.3g}); stopped without saving, the last good checkpoint is kept")
        tokens = self.tokens_per_step_fn(local) * jax.process_count() if self.tokens_per_step_fn else None
        if tokens:
            m["tokens_per_s"] = tokens / dt
            if self.flops_per_token and self.peak:
                m["mfu"] = tokens * self.flops_per_token / dt / self.peak
        m["step_time_s"] = dt
        if self.derive_metrics is not None:
            m.update(self.derive_metrics(m))
        m.update(self.batches.pop_metrics())
        self.metrics = m

    def bookkeeping(self) -> bool:
        """After a step: its metrics to the log and the bar, the periodic evaluation and save,
        and the stop every process agrees on. True: stop now (the step saved)."""
        step, spec, m = self.step, self.spec, self.metrics
        if step % spec.log_every == 0 or step == self.total_steps or step == self.start + 1:
            self.logger.write(step, m, "train")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}",
                                 **({"tok/s": f"{m['tokens_per_s']:.0f}"} if "tokens_per_s" in m else {}))
        if self.eval_fn is not None and spec.eval_every and step % spec.eval_every == 0 and step < self.total_steps:
            self._evaluate()
            self.t_last = time.perf_counter()  # the evaluation's time is no step's
        if self.ckpt is not None and self.save_every and step % self.save_every == 0:
            self._save(step)
        if not self.stop.agreed():
            return False
        self.log(f"received signal {self.stop.signal or 'SIGTERM (on another process)'}: saving step {step} "
                 f"and stopping")
        if self.ckpt is not None and step not in self.ckpt.all_steps():
            self._save(step, force=True)
        self.stopped_early = True
        return True

    def finish(self) -> None:
        """The final evaluation, and a save of the last step unless a checkpoint holds it (or
        no step ran)."""
        if self.eval_fn is not None:
            self._evaluate()
        if self.ckpt is not None and self.step > self.start and self.step not in self.ckpt.all_steps():
            self._save(self.step, force=True)

    def close(self) -> None:
        """The progress bar closed, pending saves written, the logger closed, the SIGTERM
        handler put back."""
        if self.bar is not None:
            self.bar.close()
        if self.ckpt is not None:
            self.ckpt.wait_until_finished()
        self.logger.close()
        if self.old_handler is not None:
            signal.signal(signal.SIGTERM, self.old_handler)

    def _evaluate(self) -> None:
        self.eval_metrics = self.eval_fn(self.model_params(), self.step)
        self.logger.write(self.step, self.eval_metrics, "eval")

    def _save(self, step: int, force: bool = False) -> None:
        """Save ``step``, with the batch source's held arrays (as global arrays) when it has any."""
        held = self.batches.held_arrays()
        extra = {"data": self.batches.state()}
        source = {k: to_global(v, self.mesh) for k, v in held.items()} if held else None
        self.ckpt.save(step, self.state, config=self.config_dict, extra=extra, metadata=self.metadata,
                       source=source, force=force)


def _peak_flops(spec: TrainSpec, flops_per_token: float | None) -> float | None:
    """The device's peak FLOP/s for MFU: ``spec.peak_flops``, else measured when MFU is wanted."""
    if spec.peak_flops is None and flops_per_token:
        from rmr1_jax.train.flops import measure_matmul_peak

        return measure_matmul_peak(size=1024 if jax.default_backend() == "cpu" else 4096)
    return spec.peak_flops


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(spec: TrainSpec, total: int, start: int):
    if not spec.progress or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                file=sys.stderr, mininterval=1.0)
