"""``rmr1 demo policy``: a trained judge used as the only reward of a policy's GRPO.

The demo's judges (``rmr1 demo``, run first) judge instruction-following tasks whose answer a
program can check (:mod:`rmr1_jax.worlds.judging_tasks`: one word in capitals, an exact word
count). This demo:

1. writes the policy's data from the same task generator under other seeds: SFT rows whose
   reply obeys the instruction ``base_obey`` of the time (the rest break it, as the rejected
   replies of the judges' pairs do), GRPO prompts with a reference reply, held-out prompts;
2. trains a base policy on the SFT rows (``base.yaml``);
3. from that base, one ``rmr1 policy-grpo`` run (``grpo.yaml``) per reward variant:
   ``stage2`` (the final judge of ``rmr1 demo``), ``stage1`` (its distilled judge), ``chance``
   (a judge whose verdicts are coin flips) and ``check`` (the program's own check, the
   ceiling); the judges use the ``reference`` scheme, each sample against the row's reference
   reply in both A/B orders;
4. measures each policy's held-out accuracy (greedy answers, the program's check), writes the
   table, ``results.json`` and a plot of accuracy over training.

A better judge should give a better policy; the table says what the run shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time

VARIANTS = ("stage2", "stage1", "chance", "check")
_NAMES = {"stage2": "judge after stage 2 (GRPO)", "stage1": "judge after stage 1 (distillation)",
          "chance": "judge at chance (coin flips)", "check": "the program's check (ceiling)"}


@dataclasses.dataclass
class PolicyDemoSettings:
    """The ``policy.yaml`` section (the training stages are ``base.yaml`` and ``grpo.yaml``)."""

    out_dir: str = "runs/demo-policy"
    seed: int = 0
    judges: str = "runs/demo"
    kinds: tuple[str, ...] = ("caps_word", "word_count")
    n_base: int = 4000
    base_obey: float = 0.35
    n_train: int = 2000
    n_eval: int = 200
    variants: tuple[str, ...] = VARIANTS


@dataclasses.dataclass
class PolicyDemoRecipe:
    settings: PolicyDemoSettings
    base: object  # DistillConfig
    grpo: object  # PolicyGRPOConfig, policy_reward set per variant (variant_config)
    grpo_source: tuple = ()  # (recipe path, overrides) grpo was loaded from


def load_policy_recipe(out_dir: str = "runs/demo-policy", *, seed: int | None = None, quick: bool = False,
                       directory: str | None = None, judges: str | None = None) -> PolicyDemoRecipe:
    """``policy.yaml``, ``base.yaml`` and ``grpo.yaml`` from ``directory`` (default
    ``configs/demo_policy``), with ``quick.yaml``'s overrides when ``quick``; every path under
    ``out_dir``, the tokenizer from ``judges`` (``rmr1 demo``'s output directory)."""
    from rmr1_jax.config import load
    from rmr1_jax.demos.recipes import read_quick, recipe_dir
    from rmr1_jax.errors import ConfigError
    from rmr1_jax.train.policy_grpo import PolicyGRPOConfig
    from rmr1_jax.train.sft import DistillConfig

    directory = directory or recipe_dir("demo_policy")
    quick_over = read_quick(directory, ("policy", "base", "grpo"), quick)
    over = [f"out_dir={out_dir}", *quick_over.get("policy", [])]
    over += [] if seed is None else [f"seed={seed}"]
    over += [] if judges is None else [f"judges={judges}"]
    s = load(PolicyDemoSettings, os.path.join(directory, "policy.yaml"), over)
    bad = [v for v in s.variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"{directory}/policy.yaml: variants has {bad[0]!r}; choose from {list(VARIANTS)}")
    o = lambda *parts: os.path.join(out_dir, *parts)  # noqa: E731
    shared = [f"tokenizer.path={os.path.join(s.judges, 'tokenizer')}"] + ([] if seed is None else
                                                                            [f"train.seed={seed}"])
    base = load(DistillConfig, os.path.join(directory, "base.yaml"),
                [*shared, f"data.train=[{o('data', 'base_sft.jsonl')}]", f"train.run_dir={o('base')}",
                 f"checkpoint.dir={o('base', 'checkpoints')}", *quick_over.get("base", [])])
    grpo_over = [*shared, f"data.train=[{o('data', 'train_prompts.jsonl')}]",
                 f"data.eval=[{o('data', 'heldout_prompts.jsonl')}]",
                 f"model.init_checkpoint={o('base', 'checkpoints')}", *quick_over.get("grpo", [])]
    grpo_path = os.path.join(directory, "grpo.yaml")
    return PolicyDemoRecipe(s, base, load(PolicyGRPOConfig, grpo_path, grpo_over), (grpo_path, grpo_over))


def _judge_paths(s: PolicyDemoSettings) -> dict[str, str]:
    """The judges ``rmr1 demo`` wrote, checked before anything trains: one line naming what is
    missing."""
    from rmr1_jax.errors import UserError

    j = lambda *parts: os.path.join(s.judges, *parts)  # noqa: E731
    paths = {"stage2": j("judge_hf"), "stage1": j("stage1", "checkpoints"), "tokenizer": j("tokenizer"),
             "system": j("prompts", "system.txt"), "user": j("prompts", "user.txt")}
    need = [k for k in ("tokenizer", "system", "user") + tuple(v for v in s.variants if v in ("stage1", "stage2"))]
    for k in need:
        if not os.path.exists(paths[k]):
            raise UserError(f"{paths[k]} not found: `rmr1 demo policy` rewards with the judges `rmr1 demo` trains; "
                            f"run `rmr1 demo` first (or point --judges at its output directory)")
    return paths


def write_policy_data(s: PolicyDemoSettings) -> dict[str, str]:
    """The base policy's SFT rows, the GRPO prompts and the held-out prompts (JSONL under
    ``out_dir/data``), from the task generator under seeds of their own."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.worlds.judging_tasks import generate_pairs

    d = os.path.join(s.out_dir, "data")
    os.makedirs(d, exist_ok=True)
    text = lambda msgs: msgs[-1]["content"]  # noqa: E731
    rng = random.Random(f"policy-base:{s.seed}")
    base = []
    for p in generate_pairs(s.n_base, seed=1000 + s.seed, kinds=s.kinds):
        reply = p.chosen if rng.random() < s.base_obey else p.rejected
        base.append({"messages": [*p.prompt, {"role": "assistant", "content": text(reply)}]})

    def prompts(n, seed):
        return [{"id": p.id, "prompt": text(p.prompt), "reference": text(p.chosen)}
                for p in generate_pairs(n, seed=seed, kinds=s.kinds)]

    files = {"base": os.path.join(d, "base_sft.jsonl"), "train": os.path.join(d, "train_prompts.jsonl"),
             "eval": os.path.join(d, "heldout_prompts.jsonl")}
    write_jsonl(files["base"], base)
    write_jsonl(files["train"], prompts(s.n_train, 2000 + s.seed))
    write_jsonl(files["eval"], prompts(s.n_eval, 3000 + s.seed))
    return files


def variant_config(recipe: PolicyDemoRecipe, variant: str, judges: dict[str, str]):
    """``grpo.yaml`` with the variant's reward and run directory."""
    from rmr1_jax.config import load
    from rmr1_jax.train.policy_grpo import PolicyGRPOConfig

    s = recipe.settings
    run = os.path.join(s.out_dir, variant)
    over = [f"train.run_dir={run}", f"checkpoint.dir={os.path.join(run, 'checkpoints')}",
            f"policy_reward.kind={'judge' if variant in ('stage1', 'stage2') else variant}"]
    if variant in ("stage1", "stage2"):
        over += [f"policy_reward.ckpt={judges[variant]}", f"policy_reward.system_file={judges['system']}",
                 f"policy_reward.user_file={judges['user']}", f"policy_reward.tokenizer={judges['tokenizer']}"]
    path, base_over = recipe.grpo_source
    return load(PolicyGRPOConfig, path, [*base_over, *over])


def base_accuracy(ckpt: str, prompts_file: str, max_new_tokens: int, mesh) -> float:
    """The held-out accuracy (greedy, the program's check) of the policy at ``ckpt``."""
    from rmr1_jax.data.readers import read_rows
    from rmr1_jax.inference.generate import load_generator
    from rmr1_jax.sampling.sampler import SamplingParams
    from rmr1_jax.worlds.oracle import oracle_check

    g = load_generator(ckpt, mesh)
    rows = [row for _, row in read_rows(prompts_file)]
    out = g.engine.generate(g.params, [g.prompt_ids(r["prompt"]) for r in rows],
                            SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0), tokenizer=g.tokenizer)
    return sum(oracle_check(r["prompt"], t) for r, t in zip(rows, out.texts)) / max(1, len(rows))


def run_policy_demo(recipe: PolicyDemoRecipe | None = None, log=print) -> dict:
    """The demo as ``recipe`` says (default: :func:`load_policy_recipe`). Returns the results."""
    from rmr1_jax.data.readers import atomic_write_text
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.train.policy_grpo import run_policy_grpo
    from rmr1_jax.train.sft import run_distill

    recipe = recipe or load_policy_recipe()
    s = recipe.settings
    t0 = time.perf_counter()
    judges = _judge_paths(s)
    os.makedirs(s.out_dir, exist_ok=True)
    files = write_policy_data(s)
    log(f"== base policy: SFT on {s.n_base} replies, {100 * s.base_obey:.0f}% of them obeying ==")
    _finished(run_distill(recipe.base, log=log).result, "the base policy's SFT")
    mesh = make_mesh(recipe.base.mesh)
    budget = recipe.grpo.eval_max_new_tokens or recipe.grpo.grpo.max_response_tokens
    results = {"base": {"accuracy": base_accuracy(recipe.base.checkpoint.dir, files["eval"], budget, mesh)}}
    log(f"base policy held-out accuracy {results['base']['accuracy']:.3f}")
    for variant in s.variants:
        log(f"== policy GRPO, reward: {_NAMES[variant]} ==")
        cfg = variant_config(recipe, variant, judges)
        r = _finished(run_policy_grpo(cfg, log=log).result, f"the {variant} run")
        results[variant] = {"accuracy": r.eval_metrics["accuracy"], "run_dir": cfg.train.run_dir,
                            **_reward_stats(os.path.join(cfg.train.run_dir, "metrics.jsonl"))}
        log(f"{variant}: held-out accuracy {results[variant]['accuracy']:.3f}")
    results["seconds"] = time.perf_counter() - t0
    plot = os.path.join(s.out_dir, "policy_accuracy.png")
    _plot(results, s, plot)
    table = policy_table(results)
    log(table)
    log(f"plot: {plot}")
    atomic_write_text(os.path.join(s.out_dir, "results.json"), json.dumps(results, indent=2))
    return results


def _finished(result, what: str):
    """``result``, unless the run was stopped (a SIGTERM): then one line saying how to go on.
    Every stage resumes from its checkpoints, so the same command picks up where it stopped."""
    if result.stopped_early:
        from rmr1_jax.errors import UserError

        raise UserError(f"stopped during {what} (saved at step {result.step}); run the same command again to "
                        f"resume: finished stages are kept, the stopped one goes on from its checkpoint")
    return result


def _reward_stats(metrics_path: str) -> dict:
    """A run's mean judge time and calls per rollout step, its rollouts' check accuracy first
    and last, and its held-out accuracy curve."""
    rows = [json.loads(line) for line in open(metrics_path)]
    train = [r for r in rows if "time_reward_s" in r]
    # by step: a resumed run evaluates its last step again
    curve = sorted({r["step"]: r["accuracy"] for r in rows if r.get("split") == "eval" and "accuracy" in r}.items())
    return {"time_reward_s": sum(r["time_reward_s"] for r in train) / max(1, len(train)),
            "time_rollout_s": sum(r["time_rollout_s"] for r in train) / max(1, len(train)),
            "rollout_check_first": train[0]["check_accuracy"] if train else None,
            "rollout_check_last": train[-1]["check_accuracy"] if train else None,
            "judge_inconsistent_rate": sum(r.get("judge_inconsistent_rate", 0.0) for r in train) / max(1, len(train)),
            "curve": curve}


def policy_table(r: dict) -> str:
    rows = ["| policy's reward | held-out accuracy | judge position-inconsistent | reward s / rollout step |",
            "|---|---|---|---|", f"| (base policy, before GRPO) | {100 * r['base']['accuracy']:.1f}% | - | - |"]
    for v in VARIANTS:
        if v in r:
            x = r[v]
            judged = v in ("stage1", "stage2", "chance")
            tie = f"{100 * x['judge_inconsistent_rate']:.1f}%" if judged else "-"
            rows.append(f"| {_NAMES[v]} | {100 * x['accuracy']:.1f}% | {tie} | {x['time_reward_s']:.1f} |")
    return "\n".join(rows)


def _plot(r: dict, s: PolicyDemoSettings, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in s.variants:
        steps, acc = zip(*([(0, r["base"]["accuracy"])] + [tuple(p) for p in r[v]["curve"]]))
        ax.plot(steps, acc, marker="o", label=_NAMES[v])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Policy GRPO: the reward decides the policy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
