"""``plan(objective, cfg, target)``: compile a training job's steps for a target ahead of time
and say whether the job fits, how much memory each phase takes, and how long a step takes.

Phases and what each holds per device (arguments and temporaries from XLA's compiled memory
analysis; what the job keeps alive meanwhile added as "held by the job"):

* distillation, reward model, rule adapter: the optimizer step (state donated);
* GRPO: the policy update, GRPO's reference / old-policy log-prob pass, the generation
  engine's prefill and decode calls (each data-parallel shard's page pool sized from the
  memory left free, :mod:`rmr1_jax.plan.rollout` pricing the step from the responses'
  lengths); the train state (and the reference weights when the loss has a KL term) stay
  resident through all of them.
"""

from __future__ import annotations

import dataclasses
import numpy as np

from rmr1_jax.errors import ConfigError
from rmr1_jax.plan import steps as S
from rmr1_jax.plan.topology import GIB, Target


@dataclasses.dataclass
class JobPlan:
    objective: str
    target: Target
    model_name: str
    model_cfg: object
    mesh_shape: dict
    phases: list  # [CompiledStep]
    step_time_s: float
    step_desc: str
    mfu: float
    notes: list = dataclasses.field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    hints: dict = dataclasses.field(default_factory=dict)  # the batch sizes a suggestion may change
    attention: str = "xla"  # the kernel model.attention_impl resolves to on the target

    def to_json(self) -> dict:
        t = self.target
        return {"objective": self.objective, "model": self.model_name, "topology": t.name, "devices": t.num_devices,
                "chips": t.chips, "mesh": self.mesh_shape, "remat_policy": self.model_cfg.remat_policy,
                "attention_impl": self.model_cfg.attention_impl, "attention": self.attention,
                "params": self.total_params,
                "trainable_params": self.trainable_params, "device_hbm_bytes": t.device_hbm_bytes,
                "fits": self.fits, "peak_phase": self.peak.name, "peak_bytes": self.peak.peak_bytes,
                "step_time_s": self.step_time_s, "mfu": self.mfu, "step": self.step_desc, "notes": self.notes,
                "phases": [{"name": ph.name, "parts": ph.parts, "temp_bytes": ph.temp_bytes,
                            "argument_bytes": ph.argument_bytes, "output_bytes": ph.output_bytes,
                            "alias_bytes": ph.alias_bytes, "resident_bytes": ph.resident_bytes,
                            "peak_bytes": ph.peak_bytes, "flops_per_device": ph.flops,
                            "xla_cost_analysis_flops": ph.xla_flops, "tokens": ph.tokens,
                            "compile_s": ph.compile_s} for ph in self.phases]}

    @property
    def peak(self):
        return max(self.phases, key=lambda p: p.peak_bytes)

    @property
    def fits(self) -> bool:
        return self.peak.peak_bytes <= self.target.device_hbm_bytes


def _s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.3g} s"


def _seconds(flops: float, target: Target, mfu: float) -> float:
    return flops / (target.device_peak_flops * mfu) if target.device_peak_flops else float("nan")


def plan(objective: str, cfg, target: Target, *, mfu: float = 0.4, log=print) -> JobPlan:
    from rmr1_jax.models.decoder import DecoderLM
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.parallel.sharding import axis_rules
    from rmr1_jax.train.runner import get_objective

    obj = get_objective(objective)
    mcfg, name = S.architecture(cfg.model, obj.head or "lm", cfg.model.num_labels, f"{objective} config")
    mesh = make_mesh(cfg.mesh, devices=list(target.devices))
    model = DecoderLM(mcfg)
    from rmr1_jax.models.attention import compile_platform

    from rmr1_jax.models.attention import resolve

    with axis_rules(cfg.mesh.axis_rules()), compile_platform(target.kind):
        builder = {"distill": _distill, "reward-model": _reward_model, "rule-adapter": _rule_adapter,
                   "grpo": _grpo, "policy-grpo": _grpo}[objective]
        phases, step_time, desc, notes = builder(cfg, model, mesh, target, mfu, log)
        if objective == "policy-grpo":  # the policy's phases; the judge or reward model runs beside them
            notes.append(f"the policy's phases only: the reward ({cfg.policy_reward.kind}"
                         f"{', ' + cfg.policy_reward.ckpt if cfg.policy_reward.ckpt else ''}) adds its weights, its "
                         f"engine's KV pages and its judging or scoring time, not priced here")
        grpo_like = objective in ("grpo", "policy-grpo")
        seq = cfg.grpo.max_prompt_tokens + cfg.grpo.max_response_tokens if grpo_like else cfg.data.max_length
        attention = resolve(mcfg.attention_impl, seq, mcfg.dtype)
    n = mcfg.num_params()
    trained = n
    if mcfg.lora_rank:
        from rmr1_jax.models.lora import adapter_count

        trained = adapter_count(mcfg) + (mcfg.hidden_size * mcfg.num_labels if mcfg.is_classifier else 0)
    return JobPlan(objective, target, name, mcfg, dict(mesh.shape), phases, step_time, desc, mfu, notes,
                   trainable_params=trained, total_params=n, hints=_hints(objective, cfg), attention=attention)


def default_rows(objective: str, cfg) -> int:
    """Rows (reward model: pairs) of one optimizer step, as the objective's training fills in
    an unset ``train.global_batch``."""
    from rmr1_jax.schema import DEFAULT_GLOBAL_BATCH
    from rmr1_jax.train.reward_model import DEFAULT_PAIRS_PER_STEP
    from rmr1_jax.train.rule_adapter import DEFAULT_ROWS_PER_STEP as RULE_ADAPTER_ROWS

    if objective in ("grpo", "policy-grpo"):
        return cfg.grpo.minibatch_prompts * cfg.grpo.n
    default = {"reward-model": DEFAULT_PAIRS_PER_STEP, "rule-adapter": RULE_ADAPTER_ROWS}.get(objective,
                                                                                            DEFAULT_GLOBAL_BATCH)
    return cfg.train.global_batch or default


def _hints(objective: str, cfg) -> dict:
    rows = default_rows(objective, cfg)
    if objective in ("grpo", "policy-grpo"):
        return {"rows": rows, "micro_batch": cfg.train.micro_batch or rows, "max_slots": cfg.sampling.max_slots,
                "kv_pages": cfg.sampling.kv_pages,
                "logprob_batch": cfg.grpo.logprob_batch}
    return {"rows": rows, "micro_batch": cfg.train.micro_batch or rows}


def _optimizer(cfg, steps: int = 1000):
    from rmr1_jax.train.optim import make_optimizer

    return make_optimizer(cfg.optim, steps)


def _accum(train, rows: int, what: str) -> int:
    mb = train.micro_batch or rows
    if rows % mb:
        raise ConfigError(f"train.micro_batch={mb} must divide {what}={rows}")
    return rows // mb


def _single(name, cfg, model, mesh, target, mfu, log, loss_fn, rows, shapes, tokens, unit):
    """The one phase of an objective without rollouts: its optimizer step over ``rows`` ``unit``."""
    opt, sched = _optimizer(cfg)
    step, _ = S.train_step(name, model, loss_fn, opt, sched, mesh, shapes,
                           _accum(cfg.train, rows, "train.global_batch"), tokens, log=log)
    return [step], _seconds(step.flops, target, mfu), f"one optimizer step of {rows} {unit}", []


def _distill(cfg, model, mesh, target, mfu, log):
    import jax.numpy as jnp

    from rmr1_jax.train.sft import sft_loss_fn

    rows, length = default_rows("distill", cfg), cfg.data.max_length
    shapes = {k: ((rows, length), jnp.int32) for k in ("input_ids", "segment_ids", "positions", "loss_mask")}
    return _single("SFT step", cfg, model, mesh, target, mfu, log, sft_loss_fn(model), rows, shapes,
                   rows * length, f"rows of {length} tokens")


def _reward_model(cfg, model, mesh, target, mfu, log):
    import jax.numpy as jnp

    from rmr1_jax.train.reward_model import bt_loss_fn

    pairs, length = default_rows("reward-model", cfg), cfg.data.max_length
    shapes = {k: ((pairs, length), jnp.int32) for k in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
    return _single("Bradley-Terry step", cfg, model, mesh, target, mfu, log, bt_loss_fn(model, cfg.reward.margin),
                   pairs, shapes, 2 * pairs * length, f"pairs of 2 x {length} tokens")


def _rule_adapter(cfg, model, mesh, target, mfu, log):
    import jax.numpy as jnp

    from rmr1_jax.train.rule_adapter import adapter_loss_fn

    rows, length = default_rows("rule-adapter", cfg), cfg.data.max_length
    shapes = {"input_ids": ((rows, length), jnp.int32), "attention_mask": ((rows, length), jnp.int32),
              "labels": ((rows, model.cfg.num_labels), jnp.float32)}
    return _single("rule-adapter step", cfg, model, mesh, target, mfu, log, adapter_loss_fn(model, cfg.adapter.k),
                   rows, shapes, rows * length, f"rows of {length} tokens")


def _grpo(cfg, model, mesh, target, mfu, log):
    import jax.numpy as jnp

    from rmr1_jax.train.grpo import grpo_loss_fn
    from rmr1_jax.models.logprobs import response_logprobs

    spec = cfg.grpo
    rows = spec.minibatch_prompts * spec.n
    length = spec.max_prompt_tokens + spec.max_response_tokens
    f32, i32 = jnp.float32, jnp.int32
    shapes = {"input_ids": ((rows, length), i32), "attention_mask": ((rows, length), i32),
              "response_mask": ((rows, length), i32), "old_logp": ((rows, length), f32),
              "ref_logp": ((rows, length), f32), "advantages": ((rows,), f32)}
    opt, sched = _optimizer(cfg)
    update, state = S.train_step("policy update", model, grpo_loss_fn(model, spec), opt, sched, mesh, shapes,
                                 _accum(cfg.train, rows, "grpo.minibatch_prompts x grpo.n"), rows * length, log=log)
    params_b = update.parts["parameters"] + update.parts.get("trained parameters (LoRA)", 0)
    opt_b = update.parts["optimizer state"]
    # the reference is a second copy of the weights, except with LoRA: the frozen base itself
    ref_b = update.parts["parameters"] if spec.uses_reference() and not model.cfg.lora_rank else 0
    update.resident_bytes = ref_b
    if ref_b:
        update.parts["reference weights (held)"] = ref_b
    notes = []
    lp_rows = spec.logprob_batch * target.hosts
    lp = S.forward_pass("log-prob pass", lambda p, b: response_logprobs(model, p, b, temperature=spec.temperature),
                        S.model_params(state), mesh, {"input_ids": ((lp_rows, length), i32),
                                                "attention_mask": ((lp_rows, length), i32)}, lp_rows * length, log=log)
    lp.resident_bytes = params_b + opt_b + ref_b - lp.parts["parameters"]
    lp.parts["train state and reference (held)"] = lp.resident_bytes
    pre, dec, t_roll, roll_notes = _engine_rollout(cfg, model, mesh, target, mfu, S.model_params(state),
                                                   params_b + opt_b + ref_b, update.parts["parameters"], log)
    notes += roll_notes
    # one rollout step: the engine's rollout, the log-prob passes, and the updates over its
    # mini-batches
    passes = int(spec.uses_reference()) + int(spec.old_logprobs == "recompute")
    # the forwards run shortest responses first, each cut after its longest response: priced
    # from the full-width forward in proportion to their columns (attention's quadratic part
    # makes that an upper bound)
    from rmr1_jax.plan.rollout import logprob_widths, response_lengths

    widths = logprob_widths(response_lengths(spec.expected_response_tokens, spec.max_response_tokens,
                                             spec.prompts_per_step * spec.n),
                            spec.logprob_batch, spec.max_response_tokens, spec.logprob_buckets, target.hosts)
    t_lp = passes * _seconds(lp.flops, target, mfu) * float(np.sum((spec.max_prompt_tokens + widths) / length))
    if passes:
        notes.append(f"log-prob forwards: {len(widths)} a pass, shortest responses first, each cut after its "
                     f"longest (grpo.logprob_buckets={spec.logprob_buckets}): {np.mean(widths):.0f} response "
                     f"columns on average of {spec.max_response_tokens}")
    n_updates = spec.prompts_per_step // spec.minibatch_prompts * spec.ppo_epochs
    t_upd = n_updates * _seconds(update.flops, target, mfu)
    total = t_roll + t_lp + t_upd
    notes.append(f"one rollout step ({spec.prompts_per_step} prompts x {spec.n}): rollout {_s(t_roll)}, "
                 f"log-prob passes {_s(t_lp)}, {n_updates} updates {_s(t_upd)}")
    return [update, lp, pre, dec], total, "one GRPO rollout step (rollouts, log-probs, updates)", notes


def _engine_rollout(cfg, model, mesh, target, mfu, params, held_bytes: int, param_bytes: int, log):
    """The engine's compiled prefill and decode for the target (its page pool sized from the
    memory the train state leaves free), the rollout step's seconds on it
    (:func:`rmr1_jax.plan.rollout.price_rollout`) and the notes that say how."""
    from rmr1_jax.plan.rollout import pool_pages, price_rollout
    from rmr1_jax.sampling.engine import Engine
    from rmr1_jax.sampling.pages import pages_for
    from rmr1_jax.sampling.sampler import SamplingParams

    spec, sampling, mcfg = cfg.grpo, cfg.sampling, model.cfg
    engine = Engine(model, eos_ids=(0,), pad_id=0, mesh=mesh, config=sampling, weights_dtype=spec.rollout_dtype)
    sp = SamplingParams(max_new_tokens=spec.max_response_tokens, temperature=spec.temperature, top_p=spec.top_p,
                        top_k=spec.top_k, n=spec.n)
    per_page = engine.device_page_bytes()  # a page on each device
    width = pages_for(spec.max_prompt_tokens + spec.max_response_tokens, sampling.page_size)
    # the pool takes its share of what the train state, a decode-layout copy of the weights (cast
    # or unstacked) and a margin for the decode's temporaries (a tenth of the memory) leave
    # free, as the engine sizes it at the call
    import jax.numpy as jnp

    copy = 0.0
    if spec.rollout_dtype is not None or mcfg.scan_layers:
        copy = param_bytes * jnp.dtype(spec.rollout_dtype or mcfg.param_dtype).itemsize / \
            jnp.dtype(mcfg.param_dtype).itemsize
    free = 0.9 * target.device_hbm_bytes - held_bytes - copy
    num_pages = pool_pages(sampling, free, per_page, 1 + (sampling.max_slots + sampling.prefill_rows) * width)
    pre, dec, copy_b = S.engine_steps(engine, params, mesh, spec.max_prompt_tokens, spec.max_response_tokens,
                                      num_pages, sp, log=log)
    for ph in (pre, dec):
        ph.resident_bytes = held_bytes - (0 if copy_b else ph.parts["parameters (decode layout)"])
        ph.parts["train state and reference (held)"] = ph.resident_bytes
    notes = []
    if copy_b:
        notes.append(f"the engine decodes from a second, per-layer copy of the weights ({copy_b / GIB:.2f} GiB a "
                     f"device; scan_layers=true or grpo.rollout_dtype set)")
    shards = engine.shards
    # a decode step reads the weights gathered over fsdp (split over tensor only) once, and the
    # keys and values of its shard's live sequences (the pool is not split over tensor)
    weight_bytes = dec.parts["parameters (decode layout)"] * mesh.shape.get("fsdp", 1)
    r = price_rollout(spec, sampling, shards=shards, num_pages=num_pages, step_flops=dec.flops,
                      prefill_flops=pre.flops, prefill_tokens=pre.tokens, weight_bytes=weight_bytes,
                      kv_bytes_per_token=per_page / sampling.page_size, peak_flops=target.device_peak_flops * mfu,
                      bandwidth=target.device_bandwidth)
    lengths = ("every response at the budget" if spec.expected_response_tokens is None else
               f"responses drawn from grpo.expected_response_tokens: mean {r['mean']:.0f}, p90 {r['p90']:.0f}, "
               f"longest {r['max']}")
    bound = f" (the pool holds {r['slots']} of sampling.max_slots={sampling.max_slots})" if r["pool_bound"] else ""
    notes.append(f"rollout on the generation engine: {_s(r['seconds'])} ({lengths}; {r['slots']} slots a shard x "
                 f"{shards} shards{bound}, pools of {num_pages} pages of {sampling.page_size} tokens, "
                 f"{num_pages * per_page / GIB:.2f} GiB a device, attention {engine.impl}; prefill "
                 f"{_s(r['prefill_seconds'])}); the same "
                 f"sequences in static batches of {sampling.max_slots * shards}: {_s(r['static_seconds'])} "
                 f"({r['static_seconds'] / max(r['seconds'], 1e-12):.2f}x)")
    return pre, dec, r["seconds"], notes


__all__ = ["JobPlan", "plan"]
