"""Learning, not shapes: bounded runs that fail when learning breaks.

The task: judge which of two replies follows "reply with one word in capital letters" (the
synthetic ``caps_word`` kind, whose right verdict a program checks), the judge's reply being the
verdict alone (``<answer>[[A]]</answer>``), so a small model learns it in a CPU-sized run.
Held out: another seed, and no pair whose question and two replies occur in training. Every
held-out pair is judged in both A/B orders, greedily; chance is 50%.

* Stage 1: distillation lifts held-out accuracy from chance to far above it.
* Stage 2: GRPO with the real verdict reward, on a task a briefly distilled judge (the answer
  format partly learned, both letters about equally likely) can learn in a few rollout steps:
  judge prompts whose right verdict is always A. The rollouts' mean reward must rise from
  about -0.3 to well above 0; a sign error in the advantages, a ratio taken against the wrong
  policy or updates that do not reach the parameters make it fall or stay flat.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from rmr1_jax.schema import CheckpointSpec, DataSpec, ModelSpec, OptimSpec, PromptSpec, TokenizerSpec, TrainSpec
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.inference.judge import judge_pairs
from rmr1_jax.inference.loading import LoadedJudge
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.text.prompts import build_judge_messages
from rmr1_jax.train.grpo import GRPOConfig, GRPOSpec, run_grpo
from rmr1_jax.train.sft import DistillConfig, run_distill

import verdict_task

KIND = verdict_task.KIND
MESH = MeshConfig(data=-1)


@dataclasses.dataclass
class Task:
    root: str
    traces: str
    rl_pairs: str
    held: list
    tok_dir: str
    tokenizer: object
    template: object
    prompt: PromptSpec


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Task:
    root = str(tmp_path_factory.mktemp("learning"))
    w = verdict_task.build(root)
    assert len(w.held) == 64
    paths = {"traces": os.path.join(root, "traces.jsonl"), "rl": os.path.join(root, "rl_pairs.jsonl")}
    synthetic.write_traces_jsonl(paths["traces"], w.traces)
    with open(paths["rl"], "w") as f:  # rendered judge prompts, the right verdict always A
        for p in w.pairs[1500:]:
            msgs = build_judge_messages(p.prompt, p.chosen, p.rejected, w.template)
            f.write(json.dumps({"context_messages": msgs, "winner": "model_a"}) + "\n")
    return Task(root, paths["traces"], paths["rl"], w.held, w.tok_dir, w.tokenizer, w.template, w.prompt)


def _model_spec(task, **kw):
    kw = {"preset": "demo", **kw}
    return ModelSpec(param_dtype="float32", dtype="float32", scan_layers=False, vocab_size=task.tokenizer.vocab_size,
                     **kw)


def distill(task: Task, name: str, steps: int):
    cfg = DistillConfig(
        model=_model_spec(task), mesh=MESH, tokenizer=TokenizerSpec(path=task.tok_dir), prompt=task.prompt,
        data=DataSpec(train=[task.traces], max_length=160, overlong="skip"),
        optim=OptimSpec(lr=3e-3, schedule="cosine", min_lr_ratio=0.1, warmup_ratio=0.05, b2=0.95, weight_decay=0.0),
        train=TrainSpec(run_dir=os.path.join(task.root, name), global_batch=16, max_steps=steps, progress=False,
                        peak_flops=1e12, log_every=10),
        checkpoint=CheckpointSpec(save_every=steps, keep=1))
    model, params, _, _ = run_distill(cfg, log=lambda *_: None)
    return model, params


def heldout_accuracy(task: Task, model, params) -> float:
    """Greedy verdicts on the held-out pairs in both A/B orders; no verdict counts as wrong."""
    judge = LoadedJudge(model, params, task.tokenizer, task.template, source="test")
    triples, winners = [], []
    for i, p in enumerate(task.held):
        a, b, w = (p.chosen, p.rejected, "A") if i % 2 == 0 else (p.rejected, p.chosen, "B")
        triples.append((p.prompt, a, b))
        winners.append(w)
    out = judge_pairs(judge, triples, both_orders=True, max_new_tokens=8, batch_size=64, mesh=make_mesh(MESH))
    return sum((r["verdict"] == w) + (r["verdict_swapped"] == w) for r, w in zip(out, winners)) / (2 * len(out))


def test_distillation_lifts_heldout_accuracy_far_above_chance(task):
    model, params = distill(task, "distill-full", steps=120)
    acc = heldout_accuracy(task, model, params)
    assert acc >= 0.85, f"held-out accuracy after distillation {acc:.3f} (chance 0.5)"


def test_grpo_lifts_the_mean_reward_on_a_task_learnable_in_a_few_rollouts(task):
    distill(task, "distill-brief", steps=30)
    cfg = GRPOConfig(
        model=_model_spec(task, preset=None, init_checkpoint=os.path.join(task.root, "distill-brief", "checkpoints")),
        mesh=MESH, tokenizer=TokenizerSpec(path=task.tok_dir), prompt=task.prompt,
        data=DataSpec(train=[task.rl_pairs], max_length=160),
        optim=OptimSpec(lr=1e-3, schedule="constant", warmup_ratio=0.0, b2=0.99, weight_decay=0.0),
        grpo=GRPOSpec(n=8, max_prompt_tokens=160, max_response_tokens=8, prompts_per_step=16, minibatch_prompts=8,
                      rollout_steps=ROLLOUTS, logprob_batch=64, kl_estimator="none", kl_coef=0.0),
        train=TrainSpec(run_dir=os.path.join(task.root, "grpo"), progress=False, peak_flops=1e12, log_every=1),
        checkpoint=CheckpointSpec(save_every=10**9, keep=1))
    run_grpo(cfg, log=lambda *_: None)
    with open(os.path.join(task.root, "grpo", "metrics.jsonl")) as f:
        rewards = [r["reward_mean"] for r in map(json.loads, f) if r.get("split") == "train" and "reward_mean" in r]
    print(f"rollout rewards {[round(x, 3) for x in rewards]}")
    assert len(rewards) == ROLLOUTS
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert first < 0.2 and last > 0.5, rewards


ROLLOUTS = 8
