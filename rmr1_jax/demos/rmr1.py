"""``rmr1 demo``: the whole RM-R1 pipeline on the embedded default, on a laptop CPU.

1. Generate seeded synthetic judging tasks whose right verdict a program can check
   (:mod:`rmr1_jax.worlds.judging_tasks`).
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
    """The ``demo.yaml`` section: synthetic data, tokenizer and held-out evaluation (the
    training stages are ``distill.yaml`` and ``grpo.yaml``)."""

    out_dir: str = "runs/demo"
    seed: int = 0
    kinds: tuple[str, ...] = ("caps_word", "word_count")
    trace_style: str = "compact"
    n_distill: int = 12000
    n_rl: int = 3000
    n_eval: int = 256
    vocab_size: int = 1024
    max_new_tokens: int = 128
    eval_batch: int = 64


@dataclasses.dataclass
class DemoRecipe:
    """The demo's three recipe files, loaded, with the paths of ``out_dir`` filled in."""

    settings: DemoSettings
    distill: object  # DistillConfig
    grpo: object  # GRPOConfig


def load_demo_recipe(out_dir: str = "runs/demo", *, seed: int | None = None, quick: bool = False,
                     directory: str | None = None) -> DemoRecipe:
    """``demo.yaml``, ``distill.yaml`` and ``grpo.yaml`` from ``directory`` (default
    ``configs/demo``), with ``quick.yaml``'s overrides when ``quick``. Every path of the
    stages is set under ``out_dir``; ``seed`` (when given) replaces the data and both training
    seeds."""
    from rmr1_jax.config import load
    from rmr1_jax.demos.recipes import read_quick, recipe_dir
    from rmr1_jax.train.grpo import GRPOConfig
    from rmr1_jax.train.sft import DistillConfig

    directory = directory or recipe_dir()
    quick_over = read_quick(directory, ("demo", "distill", "grpo"), quick)
    seed_over = [] if seed is None else [f"seed={seed}"]
    settings = load(DemoSettings, os.path.join(directory, "demo.yaml"),
                    [f"out_dir={out_dir}", *quick_over.get("demo", []), *seed_over])
    o = lambda *parts: os.path.join(out_dir, *parts)  # noqa: E731
    shared = [f"tokenizer.path={o('tokenizer')}"] + [
        f"prompt.{name}_file={o('prompts', name + '.txt')}" for name in ("system", "user", "user_multiturn")]
    if seed is not None:
        shared.append(f"train.seed={seed}")
    stage = lambda n, data: [f"data.train=[{o('data', data)}]", f"train.run_dir={o(n)}",  # noqa: E731
                             f"checkpoint.dir={o(n, 'checkpoints')}"]
    distill = load(DistillConfig, os.path.join(directory, "distill.yaml"),
                   [*shared, *stage("stage1", "distill_traces.jsonl"), *quick_over.get("distill", [])])
    grpo = load(GRPOConfig, os.path.join(directory, "grpo.yaml"),
                [*shared, *stage("stage2", "rl_pairs.jsonl"), f"model.init_checkpoint={o('stage1', 'checkpoints')}",
                 *quick_over.get("grpo", [])])
    return DemoRecipe(settings, distill, grpo)


def _pair_key(p) -> tuple[str, frozenset]:
    reply = lambda r: r[-1]["content"]  # noqa: E731
    return p.prompt[-1]["content"], frozenset((reply(p.chosen), reply(p.rejected)))


def _kind(p) -> str:
    return p.id.rsplit("-", 1)[-1]


def write_demo_prompts(prompt_dir: str):
    """Write the demo's judge templates as text files in ``prompt_dir`` and load them like any
    user-supplied template. Returns ({"system"|"user"|"user_multiturn": path}, JudgeTemplate)."""
    from rmr1_jax.data.readers import atomic_write_text
    from rmr1_jax.text.prompts import JudgeTemplate

    os.makedirs(prompt_dir, exist_ok=True)
    files = {}
    for name, text in (("system", DEMO_SYSTEM), ("user", DEMO_USER), ("user_multiturn", DEMO_USER_MULTITURN)):
        files[name] = os.path.join(prompt_dir, f"{name}.txt")
        atomic_write_text(files[name], text + "\n")
    template = JudgeTemplate.from_files("instruct", system_file=files["system"], user_file=files["user"],
                                        user_multiturn_file=files["user_multiturn"])
    return files, template


def _files(s: DemoSettings, log):
    from rmr1_jax.worlds import judging_tasks

    data = os.path.join(s.out_dir, "data")
    os.makedirs(data, exist_ok=True)
    pairs = judging_tasks.generate_pairs(s.n_distill + s.n_rl, seed=s.seed, kinds=s.kinds)
    # Held out: a different seed, and no pair whose question and two replies occur in training
    # (in either order). Questions alone may repeat: for the instruction kinds the question
    # space is small, and a judge must still read the replies to place the verdict.
    seen = {_pair_key(p) for p in pairs}
    held = [p for p in judging_tasks.generate_pairs(4 * s.n_eval, seed=s.seed + 7919, kinds=s.kinds)
            if _pair_key(p) not in seen][: s.n_eval]
    files, template = write_demo_prompts(os.path.join(s.out_dir, "prompts"))
    traces = judging_tasks.make_distillation_examples(pairs[: s.n_distill], seed=s.seed, template=template,
                                                      style=s.trace_style)
    paths = {"distill": os.path.join(data, "distill_traces.jsonl"), "rl": os.path.join(data, "rl_pairs.jsonl"),
             "eval": os.path.join(data, "heldout_pairs.jsonl")}
    judging_tasks.write_traces_jsonl(paths["distill"], traces)
    judging_tasks.write_pairs_jsonl(paths["rl"], pairs[s.n_distill:])
    judging_tasks.write_pairs_jsonl(paths["eval"], held)
    log(f"data: {len(traces)} distillation traces, {s.n_rl} RL pairs, {len(held)} held-out pairs "
        f"(kinds: {', '.join(s.kinds)})")
    return paths, template, traces, held, files


def _evaluate(model, params, tokenizer, template, held, s: DemoSettings, mesh):
    """Held-out accuracy in the original A/B order and swapped, and position consistency.
    Held-out pair ``i`` shows its chosen reply at A first when ``i`` is even (alternating
    from 0), at B when odd."""
    from rmr1_jax import ab_positions
    from rmr1_jax.inference.judge import judge_pairs
    from rmr1_jax.inference.loading import LoadedJudge

    judge = LoadedJudge(model, params, tokenizer, template, source="demo")
    triples, winners = [], []
    for i, p in enumerate(held):
        a, b, w = ab_positions.place(p.chosen, p.rejected, ab_positions.alternate_at_a(i))
        triples.append((p.prompt, a, b))
        winners.append(w)
    out = judge_pairs(judge, triples, both_orders=True, max_new_tokens=s.max_new_tokens,
                      batch_size=s.eval_batch, mesh=mesh)
    m = ab_positions.both_orders_metrics(out, winners, groups=[_kind(p) for p in held])
    return {"accuracy": m["accuracy"], "no_verdict_rate": m["no_verdict_rate"],
            "position_consistency": m["position_consistency"], "by_kind": m["by_group"],
            "example": out[0]["judgment"]}


def run_demo(recipe: DemoRecipe | None = None, log=print) -> dict:
    """The demo as ``recipe`` says (default: :func:`load_demo_recipe`): data, tokenizer, the
    two stages, held-out judging after each, plots and an HF export. Returns the results."""
    from rmr1_jax.checkpoint.hf import save_hf
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.text.tokenizer import train_sentencepiece
    from rmr1_jax.train.grpo import run_grpo
    from rmr1_jax.train.metrics import plot_curves
    from rmr1_jax.train.sft import run_distill

    recipe = recipe or load_demo_recipe()
    s = recipe.settings
    t0 = time.perf_counter()
    os.makedirs(s.out_dir, exist_ok=True)
    _, template, traces, held, _ = _files(s, log)
    tok_dir = recipe.distill.tokenizer.path
    texts = []
    for ex in traces[:1500]:
        texts += [m["content"] for m in ex.messages] + [ex.target]
    tokenizer = train_sentencepiece(texts, tok_dir, vocab_size=s.vocab_size, seed=s.seed,
                                    extra_symbols=PROTOCOL_SYMBOLS)
    log(f"tokenizer: SentencePiece, {tokenizer.vocab_size} pieces, pad={tokenizer.pad_id}, eos={tokenizer.eos_id}")
    mesh = make_mesh(recipe.distill.mesh)
    d1, d2 = recipe.distill.train.run_dir, recipe.grpo.train.run_dir
    log("== stage 1: distillation ==")
    model, params, r1, _ = run_distill(recipe.distill, log=log)
    results = {"chance": {"accuracy": 0.5}}
    results["stage1"] = _evaluate(model, params, tokenizer, template, held, s, mesh)
    log(f"stage 1 held-out accuracy {results['stage1']['accuracy']:.3f}")
    log("== stage 2: GRPO ==")
    model, params, r2, _ = run_grpo(recipe.grpo, log=log)
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
    from rmr1_jax.data.readers import atomic_write_text

    atomic_write_text(os.path.join(s.out_dir, "results.json"), json.dumps(results, indent=2))
    return results


def _table(r: dict) -> str:
    rows = ["| judge | held-out accuracy | no verdict | position consistency |", "|---|---|---|---|",
            "| chance | 50.0% | - | - |"]
    for key, name in (("stage1", "after stage 1 (distillation)"), ("stage2", "after stage 2 (GRPO)")):
        x = r[key]
        rows.append(f"| {name} | {100 * x['accuracy']:.1f}% | {100 * x['no_verdict_rate']:.1f}% | "
                    f"{100 * x['position_consistency']:.1f}% |")
    return "\n".join(rows)
