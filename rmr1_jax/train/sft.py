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

from rmr1_jax.errors import ConfigError
from rmr1_jax.schema import DEFAULT_GLOBAL_BATCH, JobConfig
from rmr1_jax.models.logprobs import lm_head_kernel, next_token_targets, token_logprobs
from rmr1_jax.train.objective import IteratorSource, Job, Plan, RecordSpec


@dataclasses.dataclass
class DistillConfig(JobConfig):
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
    from rmr1_jax.parallel.hostlocal import to_global
    from rmr1_jax.parallel.sharding import activation_sharding

    loss_fn = loss_fn or sft_loss_fn(model)
    f = jax.jit(lambda p, b: loss_fn(p, b, None)[:2])
    total, count = 0.0, 0.0
    with activation_sharding(mesh):
        for b in batches:
            s, (c, _) = jax.device_get(f(params, to_global(b, mesh)))  # (loss sum, (count, metrics))
            total += float(s)
            count += float(c)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


class DistillObjective:
    """Stage 1: masked next-token loss on the judge's reply, over packed rows of
    ``train.global_batch`` (default 128) for ``train.max_steps`` or ``train.epochs``."""

    name = "distill"
    head = "lm"
    supports_lora = True  # model.lora_rank > 0 trains adapters on a frozen base
    config_cls = DistillConfig

    def records(self, cfg: DistillConfig) -> RecordSpec:
        return RecordSpec("sft", cfg.data.max_length, cfg.data.overlong)

    def plan(self, job: Job) -> Plan:
        from rmr1_jax.data.pipeline import CheckpointableIterator, eval_batches, sft_dataset

        cfg, sources = job.cfg, job.sources
        train = dataclasses.replace(cfg.train, global_batch=cfg.train.global_batch or DEFAULT_GLOBAL_BATCH)
        n_proc, p_idx = job.process_count, job.process_index
        if train.global_batch % n_proc:
            raise ConfigError(f"train.global_batch={train.global_batch} must be divisible by the {n_proc} processes")
        per_host = train.global_batch // n_proc
        pad_id = job.tokenizer.pad_id
        ds_kw = dict(batch_size=per_host, max_length=cfg.data.max_length, seed=train.seed, pad_id=pad_id,
                     pack=cfg.data.pack, process_index=p_idx, process_count=n_proc)
        if train.max_steps is not None:
            total_steps = train.max_steps
        else:
            per_epoch = sum(1 for _ in sft_dataset(sources["train"], epochs=1, **ds_kw))
            total_steps = max(1, math.ceil(per_epoch * train.epochs))
        epochs = None if train.max_steps is not None else max(1, math.ceil(train.epochs))
        batches = IteratorSource(CheckpointableIterator(sft_dataset(sources["train"], epochs=epochs, **ds_kw)))
        model, mesh = job.model, job.mesh
        loss_fn = sft_loss_fn(model)

        def evaluate(p, step):
            del step
            return heldout_loss(model, p, eval_batches(
                sources["eval"], batch_size=per_host, max_length=cfg.data.max_length, pad_id=pad_id,
                limit=train.eval_limit, process_index=p_idx, process_count=n_proc), mesh, loss_fn)

        return Plan(loss_fn=loss_fn, batches=batches, total_steps=total_steps, train=train,
                    seq_len=cfg.data.max_length, tokens_per_step=lambda b: float(np.sum(b["segment_ids"] > 0)),
                    evaluate=evaluate if "eval" in sources else None, sizes={"tokens per row": cfg.data.max_length})


OBJECTIVE = DistillObjective()


def run_distill(cfg: DistillConfig, log=print, eval_hook=None):
    """Stage 1 end to end: ``run(cfg, "distill")``. Returns (model, params, TrainResult, tokenizer)."""
    from rmr1_jax.train.runner import run

    return run(cfg, OBJECTIVE, log=log, eval_hook=eval_hook)


def load_distill_config(path: str | None, overrides: list[str] | None = None) -> DistillConfig:
    from rmr1_jax.config import load

    return load(DistillConfig, path, overrides)
