"""The steps a training job runs, lowered and compiled ahead of time on abstract arrays.

Nothing here allocates a model: parameters, optimizer state and batches are
``jax.ShapeDtypeStruct``s carrying the shardings the job would give them on the target's
devices, and each step is the job's own jitted function (``make_train_step`` with the
objective's loss, the generation engine's prefill and decode calls, GRPO's log-prob pass), so what
compiles here is what would run there.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from rmr1_jax.errors import ConfigError
from rmr1_jax.plan.flops import step_flops


@dataclasses.dataclass
class CompiledStep:
    """One compiled step. Bytes are per device."""

    name: str
    parts: dict  # what its arguments hold: {"parameters": bytes, "optimizer state": ..., ...}
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments
    temp_bytes: int  # activations and temporaries
    flops: float  # per device, from the jaxpr (matmuls, loops by their trip counts)
    xla_flops: float | None  # per device, XLA's cost analysis (loop bodies counted once)
    tokens: int  # tokens the step processes (global)
    compile_s: float
    resident_bytes: int = 0  # arrays the job holds during this step that are not its arguments
    over_hbm: bool = False  # the compiler refused it: temporaries alone exceed the HBM (temp_bytes: its figure)
    output_shardings: Any = dataclasses.field(default=None, repr=False)

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.resident_bytes


def device_bytes(tree) -> int:
    """Bytes of ``tree``'s arrays on one device (the largest shard of each, by its sharding)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


def abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def rows_abstract(mesh, shapes: dict[str, tuple[tuple, Any]]) -> dict:
    """Global batch arrays {name: (shape, dtype)} with rows over (data, fsdp), as ``to_global``
    places them."""
    from rmr1_jax.parallel.hostlocal import batch_sharding

    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(mesh, shape))
            for k, (shape, dt) in shapes.items()}


def abstract_params(model, mesh, rules):
    from rmr1_jax.models.params import abstract_params as shapes, param_shardings

    p = shapes(model)
    return abstract(p, param_shardings(p, mesh, rules))


def abstract_state(params, optimizer, mesh):
    from rmr1_jax.train.optim import opt_state_shardings

    opt = abstract(jax.eval_shape(optimizer.init, params), opt_state_shardings(optimizer, params))
    return {"params": params, "opt_state": opt, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))}


def rng_abstract(mesh):
    return jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(mesh))


def compile_step(name: str, jitted, args: tuple, *, mesh, parts: dict, tokens: int, kwargs: dict | None = None,
                 flops_fn: Callable | None = None, log=print, activations: bool = True) -> CompiledStep:
    """Lower and compile ``jitted(*args, **kwargs)`` under the job's activation shardings
    (``activations=False``: without, as the generation engine's per-shard programs run)."""
    import contextlib
    import time

    from rmr1_jax.parallel.sharding import activation_sharding

    kwargs = kwargs or {}
    log(f"plan: compiling {name} ...")
    t = time.perf_counter()
    with activation_sharding(mesh) if activations else contextlib.nullcontext():
        lowered = jitted.lower(*args, **kwargs)
        # the jaxpr's global count (a shard_map body once per device it runs on) over the devices
        flops = (flops_fn or (lambda: step_flops(jitted, *args, **kwargs)))() / mesh.size
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # the TPU compiler refuses a program whose temporaries exceed the device's HBM,
            # and says by how much
            over = _hbm_overflow(str(e))
            if over is None:
                raise
            dt = time.perf_counter() - t
            return CompiledStep(name, parts, sum(parts.values()), 0, 0, over, flops, None, tokens, dt,
                                over_hbm=True)
    dt = time.perf_counter() - t
    m = compiled.memory_analysis()
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        xla_flops = float(ca.get("flops")) if ca and ca.get("flops") is not None else None
    except Exception:  # a backend without cost analysis
        xla_flops = None
    return CompiledStep(name, parts, m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                        m.temp_size_in_bytes, flops, xla_flops, tokens, dt,
                        output_shardings=compiled.output_shardings)


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _hbm_overflow(message: str) -> int | None:
    """Bytes of temporaries from XLA:TPU's "Ran out of memory in memory space hbm" error."""
    import re

    if "RESOURCE_EXHAUSTED" not in message:
        return None
    m = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", message) or \
        re.search(r"[Uu]sed ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm", message)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def train_step(name, model, loss_fn, optimizer, schedule, mesh, batch_shapes: dict, accum: int, tokens: int,
               extra_parts: dict | None = None, log=print) -> tuple[CompiledStep, dict]:
    """The objective's optimizer step (``make_train_step``: micro-batch accumulation, AdamW,
    donated state) on a global batch of ``batch_shapes``."""
    from rmr1_jax.parallel.sharding import current_rules
    from rmr1_jax.train.loop import make_train_step

    params = abstract_params(model, mesh, current_rules())
    frozen = None
    if model.cfg.lora_rank:  # LoRA: the optimizer sees the adapters; the base goes in frozen
        from rmr1_jax.models.lora import split_for

        params, frozen = split_for(model.cfg, params)
    state = abstract_state(params, optimizer, mesh)
    batch = rows_abstract(mesh, batch_shapes)
    step = make_train_step(loss_fn, optimizer, schedule, accum, mesh, jax.tree.map(lambda x: x.sharding, state))
    if frozen is None:
        parts = {"parameters": device_bytes(params)}
    else:
        parts = {"parameters": device_bytes(frozen), "trained parameters (LoRA)": device_bytes(params)}
    parts.update({"optimizer state": device_bytes(state["opt_state"]), "batch": device_bytes(batch),
                  **(extra_parts or {})})
    args = (state, batch, rng_abstract(mesh)) + (() if frozen is None else (frozen,))
    return compile_step(name, step.jitted, args, mesh=mesh, parts=parts, tokens=tokens, log=log), \
        dict(state, frozen=frozen)


def model_params(state):
    """The whole parameter tree of a :func:`train_step` state (the base and adapters with LoRA)."""
    if state.get("frozen") is None:
        return state["params"]
    from rmr1_jax.models.lora import combine

    return combine(state["frozen"], state["params"])


def forward_pass(name, fn, params, mesh, batch_shapes: dict, tokens: int, log=print) -> CompiledStep:
    """A jitted ``fn(params, batch)`` forward (GRPO's reference and old-policy log-probs)."""
    batch = rows_abstract(mesh, batch_shapes)
    return compile_step(name, jax.jit(fn), (params, batch), mesh=mesh, tokens=tokens,
                        parts={"parameters": device_bytes(params), "batch": device_bytes(batch)}, log=log)


def engine_steps(engine, params, mesh, prompt_len: int, max_new: int, num_pages: int, sp, log=print):
    """The generation engine's compiled calls for a rollout on ``mesh``: one prefill call
    (``prefill_rows`` prompts of up to ``prefill_chunk`` tokens a shard) and one decode call of
    ``max_slots`` slots a shard, each shard's pool ``num_pages`` pages. Returns (prefill,
    decode, bytes of a second, decode-layout copy of the weights or 0). The decode's FLOPs are
    one step's (its loop's body counted once)."""
    import functools

    from rmr1_jax.models.params import param_shardings
    from rmr1_jax.parallel.sharding import current_rules
    from rmr1_jax.sampling.pages import pages_for
    from rmr1_jax.sampling.sampler import default_chunk

    c, d = engine.config, engine.shards
    width = -(-pages_for(prompt_len + max_new, c.page_size) // 8) * 8
    prepared = params
    if engine.weights_dtype is not None or engine.model.cfg.scan_layers:
        shapes = jax.eval_shape(engine._prepare, params)
        prepared = abstract(shapes, param_shardings(shapes, mesh, current_rules()))
    pool_sh = engine.pages_sharding()
    pages = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=pool_sh),
                         engine.pool_shapes(num_pages))
    sh, rep = engine.shard_sharding(), replicated(mesh)

    def per_shard(*shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct((d, *shape), dtype, sharding=sh)

    rows = c.prefill_rows
    chunk = min(c.prefill_chunk, max(16, 1 << max(0, prompt_len - 1).bit_length()))
    pre_args = (prepared, pages, per_shard(rows, chunk), per_shard(rows, chunk), per_shard(rows, chunk),
                per_shard(rows, width))
    weights = {"parameters (decode layout)": device_bytes(prepared), "KV page pool": device_bytes(pages)}
    pre = compile_step("engine prefill", engine._prefill, pre_args, mesh=mesh, tokens=d * rows * chunk,
                       parts={**weights, "batch": device_bytes(pre_args[2:])}, log=log, activations=False)
    slots = c.max_slots
    steps = c.decode_steps or default_chunk(max_new)
    key = jax.random.key_data(jax.random.key(0))
    dec_args = (prepared, pages, per_shard(slots, width), *(per_shard(slots) for _ in range(4)),
                per_shard(slots, dtype=jnp.bool_), per_shard(slots),
                jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep), per_shard())
    kw = dict(steps=steps, greedy=sp.temperature == 0.0, temperature=float(sp.temperature), top_k=int(sp.top_k),
              top_p=float(sp.top_p))
    dec = compile_step(f"engine decode ({steps} steps a call)", engine.decode_fn(slots), dec_args, mesh=mesh,
                       kwargs=kw, tokens=d * slots, parts={**weights, "batch": device_bytes(dec_args[2:])}, log=log,
                       activations=False, flops_fn=functools.partial(step_flops, engine.decode_fn(slots, tuned=False),
                                                                     *dec_args, **kw))
    return pre, dec, device_bytes(prepared) if prepared is not params else 0


def architecture(spec, head: str, num_labels: int | None, where: str):
    """The ModelConfig a job would train: its HF directory's or Orbax checkpoint's own config
    when they are at hand, else ``model.preset``, else ``model.architecture`` (the preset a
    recipe plans with when its weights are not given)."""
    from rmr1_jax.checkpoint.loading import with_head
    from rmr1_jax.models.config import ModelConfig
    from rmr1_jax.models.presets import preset

    exec_kw = dict(param_dtype=spec.param_dtype, dtype=spec.dtype, scan_layers=spec.scan_layers,
                   remat_policy=spec.remat_policy, attention_impl=spec.attention_impl,
                   lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_targets=tuple(spec.lora_targets))
    if spec.hf_dir and os.path.isfile(os.path.join(spec.hf_dir, "config.json")):
        src, name = ModelConfig.from_hf_dir(spec.hf_dir, **exec_kw), spec.hf_dir
    elif spec.init_checkpoint and os.path.isdir(spec.init_checkpoint):
        from rmr1_jax.checkpoint.manager import CheckpointManager

        with CheckpointManager(spec.init_checkpoint, read_only=True) as mgr:
            meta = mgr.read_metadata(mgr.resolve_step(None))
        src = ModelConfig.from_dict(meta["model_config"], source=f"{spec.init_checkpoint} metadata").replace(**exec_kw)
        name = spec.init_checkpoint
    elif spec.preset or getattr(spec, "architecture", None):
        name = spec.preset or spec.architecture
        src = preset(name, **exec_kw, **({"vocab_size": spec.vocab_size} if spec.vocab_size else {}))
    else:
        raise ConfigError(f"{where}: nothing describes the model: set model.architecture (a preset name), "
                          f"model.preset or model.hf_dir")
    return with_head(src, head, num_labels if head == "multilabel" else None, name), name


def ensure_host_devices(n: int) -> None:
    """Ask XLA for ``n`` host CPU devices, when JAX has not started yet."""
    import sys

    if "jax" in sys.modules and getattr(sys.modules["jax"], "_src", None) is not None:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


__all__ = ["CompiledStep", "train_step", "forward_pass", "engine_steps", "architecture", "device_bytes",
           "ensure_host_devices"]
