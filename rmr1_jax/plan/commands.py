"""``rmr1 plan CONFIG --topology NAME [key=value ...]``."""

from __future__ import annotations

import json
import os

from rmr1_jax.errors import ConfigError, UserError

# a recipe's own section names its objective
_SECTIONS = (("policy_reward", "policy-grpo"), ("grpo", "grpo"), ("reward", "reward-model"),
             ("adapter", "rule-adapter"))


class DoesNotFit(UserError):
    """The planned job needs more memory than the target's devices have."""


def objective_of(path: str) -> str:
    from rmr1_jax.config import load_yaml

    data = load_yaml(path) or {}
    return next((obj for key, obj in _SECTIONS if key in data), "distill")


def load_plan_config(objective: str, path: str, overrides):
    """The recipe with its overrides, checked where a plan depends on it (model execution
    choices, mesh, batch sizes, the objective's section); data files are not needed."""
    from rmr1_jax.config import apply_overrides, from_dict, load_yaml
    from rmr1_jax.config import validate as validate_all
    from rmr1_jax.train.runner import get_objective

    cls = get_objective(objective).config_cls
    data = load_yaml(path) or {}
    source = path + (" (with overrides)" if overrides else "")
    if overrides:
        data = apply_overrides(data, overrides)
    cfg = from_dict(cls, data, source)
    for name in ("mesh", "optim", "train", "grpo", "policy_reward", "reward", "adapter"):
        section = getattr(cfg, name, None)
        if section is not None:
            validate_all(section, source)
    if hasattr(cls, "validate"):
        cls.validate(cfg, source)
    from rmr1_jax.models.config import REMAT_POLICIES

    if cfg.model.remat_policy not in REMAT_POLICIES:
        raise ConfigError(f"{source}: model.remat_policy={cfg.model.remat_policy!r} is not one of "
                          f"{list(REMAT_POLICIES)}")
    return cfg


def cmd_plan(args) -> None:
    from rmr1_jax.plan.topology import parse

    gen, dims = parse(args.topology)
    if gen == "cpu":
        from rmr1_jax.plan.steps import ensure_host_devices

        ensure_host_devices(dims[0])
    if not os.path.isfile(args.config):
        raise ConfigError(f"{args.config}: no such recipe file")
    if not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu {args.mfu}: must be in (0, 1]")
    objective = args.objective or objective_of(args.config)
    cfg = load_plan_config(objective, args.config, args.overrides)
    from rmr1_jax.plan.job import plan
    from rmr1_jax.plan.report import remat_table, table, verdict
    from rmr1_jax.plan.topology import resolve

    target = resolve(args.topology)
    if args.hbm_gib is not None:
        if args.hbm_gib <= 0:
            raise ConfigError(f"--hbm-gib {args.hbm_gib}: must be positive")
        import dataclasses

        target = dataclasses.replace(target, device_hbm_bytes=int(args.hbm_gib * 2**30))
    log = lambda m: print(m, flush=True)
    if args.remat:
        from rmr1_jax.models.config import REMAT_POLICIES

        names = list(REMAT_POLICIES) if args.remat == "all" else [r.strip() for r in args.remat.split(",")]
        bad = [r for r in names if r not in REMAT_POLICIES]
        if bad:
            raise ConfigError(f"--remat: {bad[0]!r} is not one of {list(REMAT_POLICIES)}")
        plans = []
        for r in names:
            cfg.model.remat_policy = r
            plans.append(plan(objective, cfg, target, mfu=args.mfu, log=log))
        print(remat_table(plans))
        _write_json(args.json, [p.to_json() for p in plans])
        return
    p = plan(objective, cfg, target, mfu=args.mfu, log=log)
    print(table(p))
    _write_json(args.json, p.to_json())
    line = verdict(p)
    if not p.fits:
        raise DoesNotFit(line)
    print(line)


def _write_json(path, obj) -> None:
    if not path:
        return
    from rmr1_jax.data.readers import atomic_write_text

    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
