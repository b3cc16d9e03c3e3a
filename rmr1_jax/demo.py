"""``rmr1 demo``: the whole RM-R1 pipeline on the embedded default, on a laptop CPU.

1. Generate seeded synthetic judging tasks whose right verdict a program can check.
2. Train a SentencePiece tokenizer on them.
3. Stage 1: distill a small judge on oracle Chain-of-Rubrics traces (a deliberately small
   budget, so stage 2 has room to improve).
4. Stage 2: GRPO with the +1/-1 verdict reward, each pair judged in both A/B orders.
5. Judge held-out pairs in both A/B orders after each stage; print the accuracy table, draw
   the curves, and export the final judge as a Hugging Face directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from rmr1_jax.config import CheckpointSpec, ModelSpec
from rmr1_jax.parallel.mesh import MeshConfig
from rmr1_jax.train.loop import TrainSpec
from rmr1_jax.train.optim import OptimSpec
from rmr1_jax.train.setup import DataSpec, PromptSpec, TokenizerSpec

_TAGS = ("type", "rubric", "justify", "solution", "eval", "quote_A", "summary_A", "quote_B", "summary_B", "answer")

# A compact judge protocol for the demo's small model (the built-in instruct protocol is
# longer); it is written to a file and loaded like any user-supplied template.
DEMO_SYSTEM = """\
Judge which reply is better: type, solution or rubric, eval, then <answer>[[A]]</answer> or \
<answer>[[B]]</answer>."""
DEMO_USER = """Question: {question}
[A]
{response_a}
[B]
{response_b}"""
DEMO_USER_MULTITURN = """[A]
{conversation_a}
[B]
{conversation_b}"""

# The demo tokenizer keeps the judge protocol's tags, the reply labels and the line break as
# single pieces. Tags then cost one token each (a compact trace is ~60 tokens instead of ~95),
# and a reply starts on its own line, so the trace's quote of it is the same token sequence
# as the reply in the prompt: copying it is exact, not a re-segmentation of the first word.
PROTOCOL_SYMBOLS = tuple(
    [f"<{t}>" for t in _TAGS] + [f"</{t}>" for t in _TAGS] + ["[[A]]", "[[B]]", "[A]", "[B]", "\n"])


@dataclasses.dataclass
class DemoSettings:
    out_dir: str = "runs/demo"
    seed: int = 0
    # Instruction-following tasks whose check a ~1M-parameter model learns in a few hundred
    # CPU steps. It does not learn arithmetic, letter counting or number comparison that fast
    # (``compare`` stays at chance after 600 steps), nor the first-word check of
    # ``starts_with`` (57% after 450 steps, and GRPO does not move it); any kind can be chosen.
    kinds: tuple[str, ...] = ("caps_word", "word_count")
    trace_style: str = "compact"
    n_distill: int = 12000
    n_rl: int = 3000
    n_eval: int = 256
    vocab_size: int = 1024
    max_length: int = 160  # one compact trace (120-152 tokens) per row
    distill_steps: int = 600
    distill_batch: int = 10
    distill_lr: float = 3e-3
    grpo_rollouts: int = 36
    grpo_prompts: int = 24  # 12 pairs, each judged in both A/B orders
    grpo_n: int = 8
    grpo_lr: float = 1e-4
    max_new_tokens: int = 128
    eval_batch: int = 64


def _pair_key(p) -> tuple[str, frozenset]:
    reply = lambda r: r[-1]["content"]  # noqa: E731
    return p.prompt[-1]["content"], frozenset((reply(p.chosen), reply(p.rejected)))


def _kind(p) -> str:
    return p.id.rsplit("-", 1)[-1]


def write_demo_prompts(prompt_dir: str):
    """Write the demo's judge templates as text files in ``prompt_dir`` and load them like any
    user-supplied template. Returns ({"system"|"user"|"user_multiturn": path}, JudgeTemplate)."""
    from rmr1_jax.text.prompts import JudgeTemplate

    os.makedirs(prompt_dir, exist_ok=True)
    files = {}
    for name, text in (("system", DEMO_SYSTEM), ("user", DEMO_USER), ("user_multiturn", DEMO_USER_MULTITURN)):
        files[name] = os.path.join(prompt_dir, f"{name}.txt")
        with open(files[name], "w") as f:
            f.write(text + "\n")
    template = JudgeTemplate.from_files("instruct", system_file=files["system"], user_file=files["user"],
                                        user_multiturn_file=files["user_multiturn"])
    return files, template


def _files(s: DemoSettings, log):
    from rmr1_jax.data import synthetic

    data = os.path.join(s.out_dir, "data")
    os.makedirs(data, exist_ok=True)
    pairs = synthetic.generate_pairs(s.n_distill + s.n_rl, seed=s.seed, kinds=s.kinds)
    # Held out: a different seed, and no pair whose question and two replies occur in training
    # (in either order). Questions alone may repeat: for the instruction kinds the question
    # space is small, and a judge must still read the replies to place the verdict.
    seen = {_pair_key(p) for p in pairs}
    held = [p for p in synthetic.generate_pairs(4 * s.n_eval, seed=s.seed + 7919, kinds=s.kinds)
            if _pair_key(p) not in seen][: s.n_eval]
    files, template = write_demo_prompts(os.path.join(s.out_dir, "prompts"))
    traces = synthetic.make_distillation_examples(pairs[: s.n_distill], seed=s.seed, template=template,
                                                  style=s.trace_style)
    paths = {"distill": os.path.join(data, "distill_traces.jsonl"), "rl": os.path.join(data, "rl_pairs.jsonl"),
             "eval": os.path.join(data, "heldout_pairs.jsonl")}
    synthetic.write_traces_jsonl(paths["distill"], traces)
    synthetic.write_pairs_jsonl(paths["rl"], pairs[s.n_distill:])
    synthetic.write_pairs_jsonl(paths["eval"], held)
    log(f"data: {len(traces)} distillation traces, {s.n_rl} RL pairs, {len(held)} held-out pairs "
        f"(kinds: {', '.join(s.kinds)})")
    return paths, template, traces, held, files


def _evaluate(model, params, tokenizer, template, held, s: DemoSettings, mesh):
    """Held-out accuracy in the original A/B order and swapped, and position consistency."""
    from rmr1_jax.judging import judge_pairs
    from rmr1_jax.eval.loading import LoadedJudge

    judge = LoadedJudge(model, params, tokenizer, template, source="demo")
    triples, winners = [], []
    for i, p in enumerate(held):
        a, b, w = (p.chosen, p.rejected, "A") if i % 2 == 0 else (p.rejected, p.chosen, "B")
        triples.append((p.prompt, a, b))
        winners.append(w)
    out = judge_pairs(judge, triples, both_orders=True, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch,
                      mesh=mesh)
    n = max(len(out), 1)
    verdicts = [v for r in out for v in (r["verdict"], r["verdict_swapped"])]
    scores = [(r["verdict"] == w) + (r["verdict_swapped"] == w) for r, w in zip(out, winners)]
    by_kind: dict[str, list[int]] = {}
    for p, sc in zip(held, scores):
        by_kind.setdefault(_kind(p), []).append(sc)
    return {"accuracy": sum(scores) / (2 * n), "no_verdict_rate": sum(v is None for v in verdicts) / (2 * n),
            "position_consistency": sum(r["consistent"] for r in out) / n,
            "by_kind": {k: sum(v) / (2 * len(v)) for k, v in sorted(by_kind.items())},
            "example": out[0]["judgment"]}


def run_demo(s: DemoSettings | None = None, log=print) -> dict:
    from rmr1_jax.checkpoint.hf import save_hf
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.text.tokenizer import train_sentencepiece
    from rmr1_jax.train.grpo import GRPOConfig, GRPOSpec, run_grpo
    from rmr1_jax.train.metrics import plot_curves
    from rmr1_jax.train.sft import DistillConfig, run_distill

    s = s or DemoSettings()
    t0 = time.perf_counter()
    os.makedirs(s.out_dir, exist_ok=True)
    paths, template, traces, held, prompt_files = _files(s, log)
    tok_dir = os.path.join(s.out_dir, "tokenizer")
    texts = []
    for ex in traces[:1500]:
        texts += [m["content"] for m in ex.messages] + [ex.target]
    tokenizer = train_sentencepiece(texts, tok_dir, vocab_size=s.vocab_size, seed=s.seed,
                                    extra_symbols=PROTOCOL_SYMBOLS)
    log(f"tokenizer: SentencePiece, {tokenizer.vocab_size} pieces, pad={tokenizer.pad_id}, eos={tokenizer.eos_id}")
    mesh_cfg = MeshConfig(data=-1)
    mesh = make_mesh(mesh_cfg)
    # Unrolled layers: on CPU the backward pass of a scanned stack is slower for a model this small.
    model_spec = ModelSpec(preset="demo", param_dtype="float32", dtype="float32", vocab_size=tokenizer.vocab_size,
                           scan_layers=False)
    prompt = PromptSpec(variant="instruct", system_file=prompt_files["system"], user_file=prompt_files["user"],
                        user_multiturn_file=prompt_files["user_multiturn"])
    d1 = os.path.join(s.out_dir, "stage1")
    distill_cfg = DistillConfig(
        model=model_spec, mesh=mesh_cfg, tokenizer=TokenizerSpec(path=tok_dir), prompt=prompt,
        data=DataSpec(train=[paths["distill"]], max_length=s.max_length, overlong="skip"),
        optim=OptimSpec(lr=s.distill_lr, schedule="cosine", min_lr_ratio=0.1, warmup_ratio=0.05, b2=0.95,
                        weight_decay=0.0, grad_clip=1.0),
        train=TrainSpec(run_dir=d1, global_batch=s.distill_batch, max_steps=s.distill_steps, seed=s.seed,
                        log_every=5, progress=True),
        checkpoint=CheckpointSpec(dir=os.path.join(d1, "checkpoints"), save_every=s.distill_steps, keep=1))
    log("== stage 1: distillation ==")
    model, params, r1, _ = run_distill(distill_cfg, log=log)
    results = {"chance": {"accuracy": 0.5}}
    results["stage1"] = _evaluate(model, params, tokenizer, template, held, s, mesh)
    log(f"stage 1 held-out accuracy {results['stage1']['accuracy']:.3f}")
    d2 = os.path.join(s.out_dir, "stage2")
    grpo_cfg = GRPOConfig(
        model=dataclasses.replace(model_spec, preset=None, init_checkpoint=os.path.join(d1, "checkpoints")),
        mesh=mesh_cfg, tokenizer=TokenizerSpec(path=tok_dir), prompt=prompt,
        data=DataSpec(train=[paths["rl"]], max_length=s.max_length),
        optim=OptimSpec(lr=s.grpo_lr, schedule="constant", warmup_ratio=0.0, b2=0.99, weight_decay=0.0,
                        grad_clip=1.0),
        grpo=GRPOSpec(n=s.grpo_n, max_prompt_tokens=s.max_length, max_response_tokens=s.max_new_tokens,
                      prompts_per_step=s.grpo_prompts, minibatch_prompts=s.grpo_prompts // 4,
                      rollout_steps=s.grpo_rollouts, rollout_batch=s.grpo_prompts, logprob_batch=48,
                      # without it the verdict letter drifts with each batch's A/B label imbalance
                      both_orders=True,
                      # float32 end to end: the sampler's log-probs are the teacher-forced ones
                      old_logprobs="sampler",
                      # no KL term: at RM-R1's 0.001 it is inert over 36 steps (KL < 0.02 per
                      # token), and the reference forward would cost a fifth of each step
                      kl_estimator="none", kl_coef=0.0),
        train=TrainSpec(run_dir=d2, seed=s.seed, log_every=1, progress=True),
        checkpoint=CheckpointSpec(dir=os.path.join(d2, "checkpoints"), save_every=10**9, keep=1))
    log("== stage 2: GRPO ==")
    model, params, r2, _ = run_grpo(grpo_cfg, log=log)
    results["stage2"] = _evaluate(model, params, tokenizer, template, held, s, mesh)
    log(f"stage 2 held-out accuracy {results['stage2']['accuracy']:.3f}")
    plot_curves(os.path.join(d1, "metrics.jsonl"), os.path.join(s.out_dir, "stage1_loss.png"),
                [("train", "loss", "stage 1 loss")], "Distillation")
    plot_curves(os.path.join(d2, "metrics.jsonl"), os.path.join(s.out_dir, "stage2_curves.png"),
                [("train", "reward_mean", "reward (mean)"), ("train", "verdict_accuracy", "rollout accuracy"),
                 ("train", "response_length", "response tokens")], "GRPO")
    export = os.path.join(s.out_dir, "judge_hf")
    save_hf(model, params, export, dtype="float32", tokenizer_dir=tok_dir, overwrite=True)
    results["seconds"] = time.perf_counter() - t0
    table = _table(results)
    log(table)
    log(f"example judgment:\n{results['stage2']['example']}")
    log(f"plots: {s.out_dir}/stage1_loss.png, {s.out_dir}/stage2_curves.png; TensorBoard: {d1}/tb, {d2}/tb; "
        f"HF export: {export}")
    with open(os.path.join(s.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _table(r: dict) -> str:
    rows = ["| judge | held-out accuracy | no verdict | position consistency |", "|---|---|---|---|",
            "| chance | 50.0% | - | - |"]
    for key, name in (("stage1", "after stage 1 (distillation)"), ("stage2", "after stage 2 (GRPO)")):
        x = r[key]
        rows.append(f"| {name} | {100 * x['accuracy']:.1f}% | {100 * x['no_verdict_rate']:.1f}% | "
                    f"{100 * x['position_consistency']:.1f}% |")
    return "\n".join(rows)
