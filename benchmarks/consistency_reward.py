"""The consistency reward against the plain verdict reward on the RM-R1 demo.

From one stage-1 checkpoint of ``rmr1 demo`` (``--demo``, the demo's ``--out-dir``), runs the
demo's stage 2 (``configs/demo/grpo.yaml`` with the paths and overrides ``rmr1 demo`` applies:
:func:`rmr1_jax.demos.rmr1.load_demo_recipe`) once per reward and seed, with
``grpo.reward=verdict`` (a judgment earns +1 when its own verdict is right) and
``grpo.reward=consistency`` (J1's: +1 only when the same pair's judgment in the other A/B
order, the same sample index, is right too), ``train.seed=SEED`` (the prompt order and the
rollouts' draws; the stage-1 weights are the same for every run). Each run's judge then judges
the demo's held-out pairs in both orders, greedy, as the demo's own evaluation does
(``_evaluate``: held-out accuracy over both orders, position consistency, no-verdict rate). The
stage-1 judge is judged the same way once, as the starting point.

Printed: one row per run (reward, seed, held-out accuracy, position consistency, no verdict,
the rollouts' verdict accuracy and consistent_right_rate averaged over the last 6 rollout
steps, minutes of GRPO), then the mean over seeds per reward.
Each run's directory is ``--out/<reward>-s<seed>`` (its metrics.jsonl, run log and
``heldout.json``); a run whose ``heldout.json`` exists is read back, not rerun, so an
interrupted sweep resumes.

A stage-2 run is 36 rollout steps (the demo's); ``--rollout-steps`` shortens every run alike
(``grpo.rollout_steps``) when the sweep must fit a time budget.

    python benchmarks/consistency_reward.py --out runs/consistency [--demo runs/demo]
        [--seeds 0 1] [--rewards verdict consistency] [--rollout-steps 36] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_json, machine_info, table  # noqa: E402


def held_out_pairs(path: str):
    from rmr1_jax.data.schemas import parse_pair

    with open(path) as f:
        return [parse_pair(json.loads(line), str(i)) for i, line in enumerate(f) if line.strip()]


def stage2_config(demo: str, run_dir: str, reward: str, seed: int, rollout_steps: int | None):
    """The demo's stage-2 config (paths under ``demo``), its run written to ``run_dir``."""
    from rmr1_jax.config import validate
    from rmr1_jax.demos.rmr1 import load_demo_recipe

    recipe = load_demo_recipe(demo)
    cfg = recipe.grpo
    cfg.train.seed = seed
    cfg.train.run_dir = run_dir
    cfg.checkpoint.dir = os.path.join(run_dir, "checkpoints")
    cfg.grpo.reward = reward
    if rollout_steps is not None:
        cfg.grpo.rollout_steps = rollout_steps
    validate(cfg, "benchmarks/consistency_reward.py")
    return recipe.settings, cfg


def evaluate(model, params, tokenizer, settings, held, mesh, prompt_cfg) -> dict:
    from rmr1_jax.demos.rmr1 import _evaluate
    from rmr1_jax.text.prompts import JudgeTemplate

    template = JudgeTemplate.from_files(prompt_cfg.variant, system_file=prompt_cfg.system_file,
                                        user_file=prompt_cfg.user_file,
                                        user_multiturn_file=prompt_cfg.user_multiturn_file)
    r = _evaluate(model, params, tokenizer, template, held, settings, mesh)
    r.pop("example", None)
    return r


def rollout_trend(metrics_path: str, last: int = 6) -> dict:
    """The rollout metrics averaged over the run's last ``last`` rollout steps (one step's are
    noisy: 12 pairs x 8 samples)."""
    rows = []
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            if "verdict_accuracy" in row:
                rows.append(row)
    rows = rows[-last:]
    return {"rollout_steps_averaged": len(rows),
            **{k: statistics.mean(r[k] for r in rows) if rows and k in rows[0] else None
               for k in ("reward_mean", "verdict_accuracy", "consistent_right_rate", "zero_advantage_rate")}}


def run_one(args, reward: str, seed: int, held, log) -> dict:
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.train.grpo import run_grpo

    run_dir = os.path.join(args.out, f"{reward}-s{seed}")
    done = os.path.join(run_dir, "heldout.json")
    if os.path.exists(done):
        with open(done) as f:
            r = json.load(f)
        r["last_rollouts"] = rollout_trend(os.path.join(run_dir, "metrics.jsonl"))
        return r
    os.makedirs(run_dir, exist_ok=True)
    settings, cfg = stage2_config(args.demo, run_dir, reward, seed, args.rollout_steps)
    t0 = time.perf_counter()
    with open(os.path.join(run_dir, "run.log"), "a") as f:
        model, params, _, tokenizer = run_grpo(cfg, log=lambda m: print(m, file=f, flush=True))
    minutes = (time.perf_counter() - t0) / 60
    r = evaluate(model, params, tokenizer, settings, held, make_mesh(cfg.mesh), cfg.prompt)
    r.update(reward=reward, seed=seed, rollout_steps=cfg.grpo.rollout_steps, minutes=minutes,
             total_minutes=(time.perf_counter() - t0) / 60,
             last_rollouts=rollout_trend(os.path.join(run_dir, "metrics.jsonl")))
    with open(done, "w") as f:
        json.dump(r, f, indent=2)
    log(f"{reward} seed {seed}: held-out accuracy {r['accuracy']:.4f}, position consistency "
        f"{r['position_consistency']:.4f} ({minutes:.1f} min GRPO)")
    return r


def stage1(args, held, log) -> dict:
    done = os.path.join(args.out, "stage1-heldout.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    from rmr1_jax.inference.loading import load_lm
    from rmr1_jax.parallel.mesh import make_mesh

    settings, cfg = stage2_config(args.demo, os.path.join(args.out, "unused"), "verdict", 0, None)
    mesh = make_mesh(cfg.mesh)
    model, params, tokenizer, _ = load_lm(cfg.model.init_checkpoint, mesh, tokenizer_path=cfg.tokenizer.path)
    r = evaluate(model, params, tokenizer, settings, held, mesh, cfg.prompt)
    os.makedirs(args.out, exist_ok=True)
    with open(done, "w") as f:
        json.dump(r, f, indent=2)
    log(f"stage 1: held-out accuracy {r['accuracy']:.4f}, position consistency {r['position_consistency']:.4f}")
    return r


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory of the runs (one subdirectory each)")
    ap.add_argument("--demo", default="runs/demo", help="an `rmr1 demo` output directory (its stage-1 checkpoint, "
                                                        "tokenizer, prompts and data)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rewards", nargs="+", default=["verdict", "consistency"], choices=["verdict", "consistency"])
    ap.add_argument("--rollout-steps", type=int, default=None,
                    help="grpo.rollout_steps of every run (default: the demo recipe's, 36)")
    ap.add_argument("--json", default=None, help="append the results as one JSON line")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    held = held_out_pairs(os.path.join(args.demo, "data", "heldout_pairs.jsonl"))
    log(f"{len(held)} held-out pairs, judged in both A/B orders; stage 1 from {args.demo}/stage1/checkpoints")
    t0 = time.perf_counter()
    base = stage1(args, held, log)
    runs = [run_one(args, reward, seed, held, log) for seed in args.seeds for reward in args.rewards]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    rows = [("stage 1 (start)", "-", pct(base["accuracy"]), pct(base["position_consistency"]),
             pct(base["no_verdict_rate"]), "-", "-", "-")]
    for r in runs:
        rows.append((r["reward"], r["seed"], pct(r["accuracy"]), pct(r["position_consistency"]),
                     pct(r["no_verdict_rate"]), pct(r["last_rollouts"]["verdict_accuracy"]),
                     pct(r["last_rollouts"]["consistent_right_rate"]),
                     f"{r['minutes']:.1f}"))
    means = {}
    for reward in args.rewards:
        rs = [r for r in runs if r["reward"] == reward]
        means[reward] = {k: statistics.mean(r[k] for r in rs) for k in ("accuracy", "position_consistency",
                                                                          "no_verdict_rate")}
        rows.append((f"{reward}, mean of {len(rs)}", "-", pct(means[reward]["accuracy"]),
                     pct(means[reward]["position_consistency"]), pct(means[reward]["no_verdict_rate"]), "-", "-", "-"))
    steps = runs[0]["rollout_steps"] if runs else None
    log(f"\nstage 2: {steps} rollout steps a run (percent; held-out: {len(held)} pairs in both orders, greedy; "
        f"rollout: the last 6 rollout steps' verdict accuracy and consistent_right_rate, the share of sample "
        f"twins right in both orders)")
    log(table(rows, ("reward", "seed", "held-out acc", "pos. consist.", "no verdict", "rollout acc",
                     "rollout both-right", "GRPO min"), (22, 6, 14, 15, 12, 13, 20, 10)))
    log(f"wall {(time.perf_counter() - t0) / 60:.1f} min")
    result = {"benchmark": "consistency_reward", "demo": args.demo, "rollout_steps": steps, "stage1": base,
              "runs": runs, "means": means, "machine": machine_info()}
    append_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
