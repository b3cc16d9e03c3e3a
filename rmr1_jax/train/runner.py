"""The one runner: ``run(cfg, objective)`` owns a training job from config to checkpoints.

In order: local paths made absolute, the config checked, the run directory and resolved
config written, the mesh, tokenizer, judge template and tokenized records built, the model
loaded (preset, HF directory or Orbax checkpoint), then the objective's :class:`Plan` (loss,
batch source, step count, evaluation, derived sizes), the optimizer and state, and the loop
(:func:`rmr1_jax.train.loop.train`: metrics, held-out evaluation, checkpoints, resume,
preemption). Objectives are found by name::

    from rmr1_jax.train.runner import load_config, run
    cfg = load_config("grpo", "configs/grpo/tiny.yaml", ["optim.lr=2e-6"])
    model, params, result, tokenizer = run(cfg, "grpo")
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from rmr1_jax.errors import ConfigError
from rmr1_jax.train.objective import Job, Objective

# built-in objectives: name -> module defining OBJECTIVE (imported on first use)
_BUILTIN = {"distill": "rmr1_jax.train.sft", "grpo": "rmr1_jax.train.grpo",
            "policy-grpo": "rmr1_jax.train.policy_grpo", "reward-model": "rmr1_jax.train.reward_model", "rule-adapter": "rmr1_jax.train.rule_adapter"}
_REGISTRY: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Make ``objective`` runnable by its name (``run(cfg, name)``, ``load_config(name, ...)``)."""
    _REGISTRY[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    if name not in _REGISTRY and name in _BUILTIN:
        register_objective(importlib.import_module(_BUILTIN[name]).OBJECTIVE)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown objective {name!r} (known: {', '.join(objective_names())})")
    return _REGISTRY[name]


def objective_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def load_config(objective: str | Objective, path: str | None, overrides: list[str] | None = None):
    """The objective's config from a YAML recipe plus ``key=value`` overrides, checked."""
    from rmr1_jax.config import load

    obj = get_objective(objective) if isinstance(objective, str) else objective
    return load(obj.config_cls, path, overrides)


class RunOutput(NamedTuple):
    model: Any
    params: Any  # with LoRA: the base and the trained adapters in one tree (not merged)
    result: Any  # rmr1_jax.train.loop.TrainResult
    tokenizer: Any


def run(cfg, objective: str | Objective, *, log: Callable[[str], None] = print,
        eval_hook: Callable[[Any, Any, int], dict] | None = None) -> RunOutput:
    """Train ``objective`` as ``cfg`` says (or resume it from the run's checkpoints).

    ``eval_hook(model, params, step)`` adds metrics to each held-out evaluation. The job runs
    with the logical-axis table of ``mesh.rules``."""
    from rmr1_jax.config import validate
    from rmr1_jax.parallel.sharding import axis_rules
    from rmr1_jax.paths import resolve_paths

    obj = get_objective(objective) if isinstance(objective, str) else objective
    cfg = resolve_paths(cfg)  # local paths relative to the current directory, made absolute once
    validate(cfg, f"{obj.name} config")
    with axis_rules(cfg.mesh.axis_rules()):
        return _run(cfg, obj, log, eval_hook)


def _run(cfg, obj: Objective, log, eval_hook) -> RunOutput:
    from rmr1_jax.checkpoint.convert import checkpoint_metadata
    from rmr1_jax.config import to_dict
    from rmr1_jax.models.lora import combine
    from rmr1_jax.models.params import num_params
    from rmr1_jax.train import setup
    from rmr1_jax.train.flops import train_flops_per_token
    from rmr1_jax.train.loop import init_state, train
    from rmr1_jax.train.optim import make_optimizer

    cfg = setup.resolve_model_source(cfg)  # the printed and saved config names what decides the model
    if cfg.model.lora_rank and not getattr(obj, "supports_lora", False):
        raise ConfigError(f"{obj.name} config: model.lora_rank={cfg.model.lora_rank}: the {obj.name!r} objective "
                          f"does not train LoRA adapters (set model.lora_rank=0)")
    mesh, tokenizer, template, sources = setup.prepare_job(cfg, obj.records(cfg), log)
    model, params = setup.build_model(cfg.model, mesh, tokenizer, seed=cfg.train.seed, head=obj.head)
    job = Job(cfg=cfg, mesh=mesh, tokenizer=tokenizer, template=template, sources=sources, model=model,
              params=params, log=log)
    plan = obj.plan(job)
    optimizer, schedule = make_optimizer(cfg.optim, plan.total_steps)
    # LoRA: the state (optimizer, gradients, checkpoints) covers the trained part only; the
    # frozen base goes to every step as an argument of its own
    trainable, frozen = setup.split_trainable(model.cfg, params)
    state = init_state(trainable, optimizer)
    metadata = checkpoint_metadata(model.cfg, chat_template=setup.chat_template_of(tokenizer))
    if frozen is not None:
        metadata.update(setup.lora_base_metadata(cfg.model, cfg.train.seed, frozen))
    del params, trainable, job  # the state (and the frozen base) own the parameters now
    sizes = {"optimizer steps": plan.total_steps, "rows per step": plan.train.global_batch,
             "micro-batches per step": plan.train.accum_steps(), **plan.sizes}
    log(f"{obj.name}: model {model.cfg.model_type}, {model.cfg.num_params() / 1e6:.2f}M parameters; mesh "
        f"{dict(mesh.shape)}; " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if frozen is not None:
        n_train = num_params(state["params"])
        c = model.cfg
        log(f"LoRA rank {c.lora_rank} (alpha {c.lora_alpha:g}) on {', '.join(c.lora_targets)}: {n_train:,} trainable "
            f"parameters ({100 * n_train / (n_train + num_params(frozen)):.3f}%), the base frozen")
    if plan.summary:
        log(plan.summary)

    def with_hook(p, step):
        out = plan.evaluate(p, step) if plan.evaluate is not None else {}
        out.update(eval_hook(model, p, step))
        return out

    evaluate = plan.evaluate if eval_hook is None else with_hook
    ckpt = setup.checkpoint_manager(cfg.checkpoint, cfg.train.run_dir)
    try:
        if frozen is not None:  # a resume must find the base its adapters were trained on
            setup.check_resumed_lora_base(ckpt, metadata["lora_base"])
        state, result = train(
            state=state, loss_fn=plan.loss_fn, optimizer=optimizer, schedule=schedule, mesh=mesh,
            batches=plan.batches, total_steps=plan.total_steps, spec=plan.train, ckpt=ckpt,
            tokens_per_step_fn=plan.tokens_per_step,
            flops_per_token=train_flops_per_token(model.cfg, plan.seq_len), eval_fn=evaluate,
            derive_metrics=plan.derive_metrics,
            config_dict=to_dict(cfg), metadata=metadata, frozen=frozen,
            save_every=cfg.checkpoint.save_every if plan.save_every is None else plan.save_every, log=log)
    finally:
        ckpt.close()
    params = state["params"] if frozen is None else combine(frozen, state["params"])
    return RunOutput(model, params, result, tokenizer)
