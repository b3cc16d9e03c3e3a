"""Stage 1 of RM-R1: distillation of Chain-of-Rubrics traces by supervised fine-tuning.

The loss is the next-token negative log-likelihood on the judge's reply only (the assistant
turn; the prompt and the responses being judged are context), summed over tokens and
divided by the token count of the whole global batch (exact under accumulation).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.config import CheckpointSpec, ModelSpec, load, to_dict
from rmr1_jax.parallel.mesh import MeshConfig
from rmr1_jax.train.losses import lm_head_kernel, next_token_targets, token_logprobs
from rmr1_jax.train.optim import OptimSpec
from rmr1_jax.train.setup import DataSpec, PromptSpec, TokenizerSpec
from rmr1_jax.train.loop import DEFAULT_GLOBAL_BATCH, TrainSpec


@dataclasses.dataclass
class DistillConfig:
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    tokenizer: TokenizerSpec = dataclasses.field(default_factory=TokenizerSpec)
    prompt: PromptSpec = dataclasses.field(default_factory=PromptSpec)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    optim: OptimSpec = dataclasses.field(default_factory=OptimSpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    checkpoint: CheckpointSpec = dataclasses.field(default_factory=CheckpointSpec)

    def validate(self, where: str):
        if self.train.global_batch is None:
            self.train.check_micro_batch(where, DEFAULT_GLOBAL_BATCH, "the default train.global_batch")


def sft_loss_fn(model, loss_chunk: int = 512):
    cfg = model.cfg

    def loss_fn(params, batch, rng):
        del rng
        hidden = model.apply({"params": params}, batch["input_ids"], segment_ids=batch["segment_ids"],
                             positions=batch["positions"], return_hidden=True)
        targets, mask = next_token_targets(batch)
        lp = token_logprobs(hidden, lm_head_kernel(params, cfg), targets, chunk=loss_chunk)
        maskf = mask.astype(jnp.float32)
        count = jnp.sum(maskf)
        return -jnp.sum(lp * maskf), (count, {"nll_per_token": (-jnp.sum(lp * maskf), count)})

    return loss_fn


def heldout_loss(model, params, batches, mesh, loss_fn=None) -> dict:
    """Mean next-token loss over held-out batches (sum / count over the whole set)."""
    from rmr1_jax.parallel.sharding import activation_sharding
    from rmr1_jax.train.loop import to_global

    loss_fn = loss_fn or sft_loss_fn(model)
    f = jax.jit(lambda p, b: loss_fn(p, b, None)[:2])
    total, count = 0.0, 0.0
    with activation_sharding(mesh):
        for b in batches:
            s, c = jax.device_get(f(params, to_global(b, mesh)))
            total += float(s)
            count += float(c)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def run_distill(cfg: DistillConfig, log=print, eval_hook=None):
    """Stage 1 end to end. Returns (model, params, TrainResult)."""
    from rmr1_jax.paths import resolve_paths

    cfg = resolve_paths(cfg)  # local paths relative to the current directory, made absolute once
    from rmr1_jax.checkpoint.convert import checkpoint_metadata
    from rmr1_jax.data.pipeline import CheckpointableIterator, eval_batches, sft_dataset
    from rmr1_jax.train import setup
    from rmr1_jax.train.flops import train_flops_per_token
    from rmr1_jax.train.loop import init_state, train
    from rmr1_jax.train.optim import make_optimizer

    run_dir = cfg.train.run_dir
    mesh, tokenizer, _, sources = setup.prepare_job(cfg, "sft", cfg.data.max_length, cfg.data.overlong, log)
    if cfg.train.global_batch is None:  # the saved config keeps what the user wrote (nothing)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, global_batch=DEFAULT_GLOBAL_BATCH))
    model, params = setup.build_model(cfg.model, mesh, tokenizer, seed=cfg.train.seed)
    n_proc, p_idx = jax.process_count(), jax.process_index()
    if cfg.train.global_batch % n_proc:
        from rmr1_jax.errors import ConfigError

        raise ConfigError(f"train.global_batch={cfg.train.global_batch} must be divisible by the "
                          f"{n_proc} processes")
    per_host = cfg.train.global_batch // n_proc
    ds_kw = dict(batch_size=per_host, max_length=cfg.data.max_length, seed=cfg.train.seed,
                 pad_id=tokenizer.pad_id, pack=cfg.data.pack, process_index=p_idx, process_count=n_proc)
    if cfg.train.max_steps is not None:
        total_steps = cfg.train.max_steps
    else:
        per_epoch = sum(1 for _ in sft_dataset(sources["train"], epochs=1, **ds_kw))
        total_steps = max(1, math.ceil(per_epoch * cfg.train.epochs))
    epochs = None if cfg.train.max_steps is not None else max(1, math.ceil(cfg.train.epochs))
    batches = CheckpointableIterator(sft_dataset(sources["train"], epochs=epochs, **ds_kw))
    optimizer, schedule = make_optimizer(cfg.optim, total_steps)
    state = init_state(params, optimizer)
    loss_fn = sft_loss_fn(model)
    log(f"model: {model.cfg.model_type}, {model.cfg.num_params() / 1e6:.2f}M parameters; mesh "
        f"{dict(mesh.shape)}; {total_steps} steps of {cfg.train.global_batch} rows x {cfg.data.max_length} tokens")

    def eval_fn(p, step):
        out = {}
        if "eval" in sources:
            out.update(heldout_loss(model, p, eval_batches(
                sources["eval"], batch_size=per_host, max_length=cfg.data.max_length, pad_id=tokenizer.pad_id,
                limit=cfg.train.eval_limit, process_index=p_idx, process_count=n_proc), mesh, loss_fn))
        if eval_hook is not None:
            out.update(eval_hook(model, p, step))
        return out

    ckpt = setup.checkpoint_manager(cfg.checkpoint, run_dir)
    try:
        state, result = train(
            state=state, loss_fn=loss_fn, optimizer=optimizer, schedule=schedule, mesh=mesh, batches=batches,
            total_steps=total_steps, spec=cfg.train, ckpt=ckpt,
            tokens_per_step_fn=lambda b: float(np.sum(b["segment_ids"] > 0)),
            flops_per_token=train_flops_per_token(model.cfg, cfg.data.max_length),
            eval_fn=eval_fn if ("eval" in sources or eval_hook) else None,
            config_dict=to_dict(cfg), metadata=checkpoint_metadata(model.cfg),
            save_every=cfg.checkpoint.save_every, log=log)
    finally:
        ckpt.close()
    return model, state["params"], result, tokenizer


def load_distill_config(path: str | None, overrides: list[str] | None = None) -> DistillConfig:
    return load(DistillConfig, path, overrides)
