"""``rmr1 demo ramo``: the whole RAMO pipeline on the embedded default, on a laptop CPU.

1. Generate the synthetic safety world (:mod:`rmr1_jax.rules.synthetic`): pairs whose gold
   preference two pair-specific rules decide, while six tone rules score both responses
   noisily; split into judge-training, labeling, fit and held-out pairs.
2. Train a SentencePiece tokenizer, then a small rule-scoring judge (SFT) on the annotator's
   Yes / No / Irrelevant answers.
3. Score every response of the other splits against the 24-rule pool with that judge
   (``rmr1 rules score``: P(Yes) - P(No), relevance 1 - P(Irrelevant), prefixes shared).
4. Select rules and label the labeling pairs with every strategy (``rmr1 rules label``),
   with the diagnostics against gold (agreement, mutual information with a bootstrap
   interval, per strategy and k).
5. Train the Rule Adapter on the top-k discrepancy selections, evaluate it on the held-out
   selections (macro-F1 over rules), and label the held-out pairs from the rules it selects
   (``rmr1 rules apply``).
6. Train one Bradley-Terry reward model per strategy on that strategy's labels, and one on
   the gold labels (the ceiling); measure each on the held-out gold pairs.
7. Print the table, write ``ramo_results.json`` and the plots, and export the adapter and the
   top-k reward model as Hugging Face directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from rmr1_jax.data.readers import atomic_write_text
from rmr1_jax.demo import read_quick, recipe_dir

JUDGE_TEMPLATE = ("Does the reply follow the rule? Answer Yes, No or Irrelevant.\n"
                  "[Conversation]\nUser: {prompt}\nAssistant: {response}\n[Rule]\n{rule}")
# single tokenizer pieces: the answer words and the section labels of the judge and adapter inputs
SYMBOLS = ("Yes", "No", "Irrelevant", "[Conversation]", "[Rule]", "[Response A]", "[Response B]", "\n")
SECTIONS = ("ramo", "judge", "adapter", "reward_model")


@dataclasses.dataclass
class RamoSettings:
    """The ``ramo.yaml`` section (see the file for what each field means)."""

    out_dir: str = "runs/demo-ramo"
    seed: int = 0
    n_judge: int = 1500
    n_label: int = 1000
    n_fit: int = 200
    n_eval: int = 300
    vocab_size: int = 1024
    k: int = 5
    ks: tuple[int, ...] = (3, 5, 8)
    ties: str = "skip"
    n_boot: int = 1000
    score_batch: int = 96
    rm_strategies: tuple[str, ...] = ("topk_discrepancy", "random_k", "all_rules", "fitted_linear", "gold")


@dataclasses.dataclass
class RamoRecipe:
    settings: RamoSettings
    judge: object  # DistillConfig
    adapter: object  # RuleAdapterConfig
    reward_model: object  # RewardConfig


def load_ramo_recipe(out_dir: str = "runs/demo-ramo", *, seed: int | None = None, quick: bool = False,
                     directory: str | None = None) -> RamoRecipe:
    """``ramo.yaml``, ``judge.yaml``, ``adapter.yaml`` and ``reward_model.yaml`` from
    ``directory`` (default ``configs/demo_ramo``), with ``quick.yaml``'s overrides when
    ``quick``; every path is set under ``out_dir``; ``seed`` replaces every seed."""
    from rmr1_jax.config import load
    from rmr1_jax.train.runner import load_config

    directory = directory or recipe_dir("demo_ramo")
    quick_over = read_quick(directory, SECTIONS, quick)
    seed_over = [] if seed is None else [f"seed={seed}"]
    settings = load(RamoSettings, os.path.join(directory, "ramo.yaml"),
                    [f"out_dir={out_dir}", *quick_over.get("ramo", []), *seed_over])
    o = lambda *parts: os.path.join(out_dir, *parts)  # noqa: E731
    shared = [f"tokenizer.path={o('tokenizer')}"] + ([] if seed is None else [f"train.seed={seed}"])
    run = lambda *d: [f"train.run_dir={o(*d)}", f"checkpoint.dir={o(*d, 'checkpoints')}"]  # noqa: E731
    judge = load_config("distill", os.path.join(directory, "judge.yaml"),
                        [*shared, *run("judge"), f"data.train=[{o('data', 'judge_annotations.jsonl')}]",
                         *quick_over.get("judge", [])])
    adapter = load_config("rule-adapter", os.path.join(directory, "adapter.yaml"),
                          [*shared, *run("adapter"), f"data.train=[{o('labels', 'topk_discrepancy.jsonl')}]",
                           f"data.eval=[{o('selections', 'heldout_topk_discrepancy.jsonl')}]",
                           f"adapter.k={settings.k}", *quick_over.get("adapter", [])])
    rm = load_config("reward-model", os.path.join(directory, "reward_model.yaml"),
                     [*shared, f"data.eval=[{o('data', 'heldout_gold.jsonl')}]", *quick_over.get("reward_model", [])])
    return RamoRecipe(settings, judge, adapter, rm)


def _gold_rows(pairs: list[dict]):
    """``{id, prompt, chosen, rejected}`` by each pair's gold winner (the train-rm layout)."""
    for p in pairs:
        a_wins = p["winner"] == "A"
        yield {"id": p["id"], "prompt": p["prompt"], "chosen": p["a" if a_wins else "b"],
               "rejected": p["b" if a_wins else "a"]}


def _pair_key(p: dict) -> tuple:
    return p["prompt"], frozenset((p["a"], p["b"]))


def _splits(s: RamoSettings) -> dict[str, list[dict]]:
    """Disjoint splits of the world: each its own seed, and no labeling, fit or held-out pair
    whose prompt and two responses occur in an earlier split."""
    from rmr1_jax.rules import synthetic

    seen: set = set()
    out = {}
    for j, (name, n) in enumerate((("judge", s.n_judge), ("label", s.n_label), ("fit", s.n_fit), ("heldout", s.n_eval))):
        pairs = [p for p in synthetic.generate(3 * n + 50, seed=1000 * s.seed + j) if _pair_key(p) not in seen][:n]
        seen |= {_pair_key(p) for p in pairs}
        out[name] = pairs
    return out


def _write_data(s: RamoSettings, splits, paths: dict, template: str, log) -> list[str]:
    """The pair files, the held-out gold pairs, the responses to score, the pool and the
    judge's annotations as SFT rows; returns texts for the tokenizer."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.rules import synthetic
    from rmr1_jax.rules.pool import write_pool
    from rmr1_jax.rules.scoring import fill

    for d in ("data", "prompts", "labels", "selections", "scores"):
        os.makedirs(os.path.join(s.out_dir, d), exist_ok=True)
    world = synthetic.world()
    write_pool(paths["pool"], list(world.rules))
    atomic_write_text(paths["template"], template)
    keep = ("id", "prompt", "a", "b", "winner", "topic", "deciding", "tone_a", "tone_b")
    for name in ("label", "fit", "heldout"):
        write_jsonl(paths[name], ({k: p[k] for k in keep} for p in splits[name]))
    write_jsonl(paths["heldout_gold"], _gold_rows(splits["heldout"]))
    responses = list(dict.fromkeys((p["prompt"], p[side]) for name in ("label", "fit", "heldout")
                                   for p in splits[name] for side in ("a", "b")))
    write_jsonl(paths["responses"], ({"prompt": q, "response": r} for q, r in responses))
    notes = synthetic.annotations(splits["judge"], s.seed, world)
    rows = [{"id": n["id"], "messages": [{"role": "user", "content": fill(template, n["rule"], n["prompt"], n["response"])},
                                         {"role": "assistant", "content": n["answer"]}]} for n in notes]
    write_jsonl(paths["annotations"], rows)
    counts = {a: sum(n["answer"] == a for n in notes) for a in synthetic.ANSWERS}
    log(f"data: {len(splits['judge'])} judge pairs -> {len(rows)} annotations ({counts}), {len(splits['label'])} "
        f"labeling, {len(splits['fit'])} fit and {len(splits['heldout'])} held-out pairs; {len(responses)} responses "
        f"to score against {len(world.rules)} rules")
    texts = {n["response"] for n in notes} | {n["prompt"] for n in notes} | {r.text for r in world.rules}
    return [template] + sorted(texts) + [p[x] for p in splits["label"] for x in ("a", "b")]


def _judge_summary(scores_path: str, splits, world) -> dict:
    """Mean judge score and relevance of the held-out responses by what the rule is to them."""
    import numpy as np

    from rmr1_jax.rules.score_files import read_scores

    sc = read_scores(scores_path, len(world.rules))
    index = {(r["prompt"], r["response"]): i for i, r in enumerate(sc.rows)}
    groups: dict[str, list[tuple[float, float]]] = {}
    for p in splits["heldout"]:
        for side in ("a", "b"):
            i = index[(p["prompt"], p[side])]
            chosen = (side == "a") == (p["winner"] == "A")
            for r in range(len(world.rules)):
                if r in p["deciding"]:
                    g = "follows" if chosen else "breaks"
                elif world.rules[r].category == "tone":
                    g = f"tone_{p['tone_' + side]}"
                else:
                    g = "other"
                groups.setdefault(g, []).append((sc.scores[i, r], sc.relevance[i, r]))
    return {g: {"score": float(np.mean([v[0] for v in vs])), "relevance": float(np.mean([v[1] for v in vs])),
                "n": len(vs)} for g, vs in sorted(groups.items())}


def run_ramo_demo(recipe: RamoRecipe | None = None, log=print) -> dict:
    """The RAMO demo as ``recipe`` says (default :func:`load_ramo_recipe`); returns the results."""
    import numpy as np

    from rmr1_jax.checkpoint.hf import save_hf
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.rules import diagnostics, synthetic
    from rmr1_jax.rules.apply import apply_file
    from rmr1_jax.checkpoint.identity import checkpoint_identity
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.rules.scoring import load_rule_scorer, score_file
    from rmr1_jax.rules.select import STRATEGIES, label_file, report, select_file
    from rmr1_jax.text.tokenizer import train_sentencepiece
    from rmr1_jax.train.runner import run

    recipe = recipe or load_ramo_recipe()
    s = recipe.settings
    t0 = time.perf_counter()
    o = lambda *parts: os.path.join(s.out_dir, *parts)  # noqa: E731
    paths = {"pool": o("pool.jsonl"), "template": o("prompts", "rule_judge.txt"),
             "label": o("data", "label_pairs.jsonl"), "fit": o("data", "fit_pairs.jsonl"),
             "heldout": o("data", "heldout_pairs.jsonl"), "heldout_gold": o("data", "heldout_gold.jsonl"),
             "responses": o("data", "responses.jsonl"), "annotations": o("data", "judge_annotations.jsonl"),
             "scores": o("scores", "responses.jsonl"), "diagnostics": o("diagnostics.json")}
    os.makedirs(s.out_dir, exist_ok=True)
    world = synthetic.world()
    splits = _splits(s)
    texts = _write_data(s, splits, paths, JUDGE_TEMPLATE, log)
    tokenizer = train_sentencepiece(texts, recipe.judge.tokenizer.path, vocab_size=s.vocab_size, seed=s.seed,
                                    extra_symbols=SYMBOLS)
    log(f"tokenizer: SentencePiece, {tokenizer.vocab_size} pieces")
    stamps = {"data": time.perf_counter() - t0}

    log("== rule-scoring judge (SFT on Yes / No / Irrelevant) ==")
    run(recipe.judge, "distill", log=log)
    stamps["judge"] = time.perf_counter() - t0
    log("== rules score ==")
    scorer, rule_texts = load_rule_scorer(recipe.judge.checkpoint.dir, make_mesh(), rules_path=paths["pool"],
                                          template_path=paths["template"], tokenizer_path=recipe.judge.tokenizer.path,
                                          batch_size=s.score_batch)
    stats = score_file(scorer, rule_texts, paths["responses"], paths["scores"],
                       model=checkpoint_identity(recipe.judge.checkpoint.dir))
    print(f"rules score: {stats.written} rows scored, {stats.skipped} already done, against {len(rule_texts)} rules "
          f"-> {paths['scores']}")
    stamps["score"] = time.perf_counter() - t0
    judge = _judge_summary(paths["scores"], splits, world)
    log("judge on held-out responses (mean score / relevance): " + ", ".join(
        f"{g} {v['score']:+.2f} / {v['relevance']:.2f}" for g, v in judge.items()))

    log("== rules label ==")
    rules = list(world.rules)
    common = dict(pairs_path=paths["label"], rules=rules, seed=s.seed, fit_scores_path=paths["scores"],
                  fit_pairs_path=paths["fit"])
    for strategy in STRATEGIES:
        report(label_file(paths["scores"], o("labels", f"{strategy}.jsonl"), strategy, s.k, ties=s.ties, **common),
                "labeled pairs", o("labels", f"{strategy}.jsonl"))
    select_file(paths["scores"], o("selections", "heldout_topk_discrepancy.jsonl"), "topk_discrepancy", s.k,
                pairs_path=paths["heldout"], rules=rules, seed=s.seed)
    diag = diagnostics.diagnose_file(paths["scores"], paths["diagnostics"], rules=rules, ks=list(s.ks), ties=s.ties,
                                     n_boot=s.n_boot, **{k: v for k, v in common.items() if k != "rules"})
    log(diagnostics.format_table(diag))
    stamps["label"] = time.perf_counter() - t0

    log("== rule adapter ==")
    adapter = run(recipe.adapter, "rule-adapter", log=log)
    ad_eval = adapter.result.eval_metrics
    applied = apply_file(recipe.adapter.checkpoint.dir, paths["scores"], o("labels", "heldout_adapter.jsonl"),
                         k=s.k, pairs_path=paths["heldout"], rules=rules, ties=s.ties,
                         tokenizer_path=recipe.adapter.tokenizer.path)
    report(applied, "held-out pairs labeled from the adapter's rules", o("labels", "heldout_adapter.jsonl"))
    stamps["adapter"] = time.perf_counter() - t0

    rm_acc = {}
    rm_out = None
    write_jsonl(o("labels", "gold.jsonl"), _gold_rows(splits["label"]))
    for strategy in s.rm_strategies:
        log(f"== reward model on {strategy} labels ==")
        cfg = dataclasses.replace(
            recipe.reward_model, data=dataclasses.replace(recipe.reward_model.data, train=[o("labels", f"{strategy}.jsonl")]),
            train=dataclasses.replace(recipe.reward_model.train, run_dir=o("rm", strategy)),
            checkpoint=dataclasses.replace(recipe.reward_model.checkpoint, dir=o("rm", strategy, "checkpoints")))
        out = run(cfg, "reward-model", log=log)
        rm_acc[strategy] = float(out.result.eval_metrics["accuracy"])
        if strategy == "topk_discrepancy":
            rm_out = out
    stamps["reward_models"] = time.perf_counter() - t0

    by = {(r["strategy"], r["k"]): r for r in diag}
    pick = lambda st: by.get((st, s.k)) or by.get((st, None))  # noqa: E731
    results = {
        "label_agreement": {st: pick(st)["agreement"] for st in STRATEGIES},
        "mutual_information": {st: {"bits": pick(st)["mutual_information"], "low": pick(st)["mi_low"],
                                    "high": pick(st)["mi_high"]} for st in STRATEGIES},
        "adapter_macro_f1": float(ad_eval.get("macro_f1_rules", float("nan"))),
        "adapter_macro_f1_seen_rules": float(ad_eval.get("macro_f1_seen_rules", float("nan"))),
        "adapter_f1_flattened_two_class": float(ad_eval.get("f1_flattened_two_class", float("nan"))),
        "adapter_topk_precision": float(ad_eval.get("topk_precision", float("nan"))),
        "adapter_label_agreement": applied.get("agreement"),
        "rm_heldout_accuracy": rm_acc, "k": s.k, "judge": judge, "diagnostics": diag,
        "pairs": {name: len(v) for name, v in splits.items()},
    }
    exports = {"adapter": o("adapter_hf"), "reward_model": o("reward_model_hf")}
    save_hf(adapter.model, adapter.params, exports["adapter"], dtype="float32",
            tokenizer_dir=recipe.adapter.tokenizer.path, overwrite=True)
    if rm_out is not None:
        save_hf(rm_out.model, rm_out.params, exports["reward_model"], dtype="float32",
                tokenizer_dir=recipe.reward_model.tokenizer.path, overwrite=True)
    plots = _plots(s, results, recipe.adapter.train.run_dir)
    results["seconds"] = time.perf_counter() - t0
    results["stage_seconds"] = {k: round(v, 1) for k, v in stamps.items()}
    log(format_results(results))
    log(f"plots: {', '.join(plots)}; HF exports: {exports['adapter']}"
        + (f", {exports['reward_model']}" if rm_out is not None else ""))
    atomic_write_text(o("ramo_results.json"), json.dumps(
        results, indent=2, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))
    return results


def format_results(r: dict) -> str:
    """The demo's table: per strategy, label agreement and MI at k (or all rules), and the
    held-out accuracy of the reward model its labels trained."""
    rows = [f"| labels | agreement with gold (k={r['k']}) | mutual information, bits [95% CI] | "
            "reward model held-out accuracy |", "|---|---|---|---|"]
    for st, agree in r["label_agreement"].items():
        mi = r["mutual_information"][st]
        acc = r["rm_heldout_accuracy"].get(st)
        rows.append(f"| {st} | {'-' if agree is None else f'{100 * agree:.1f}%'} | {mi['bits']:.3f} "
                    f"[{mi['low']:.3f}, {mi['high']:.3f}] | {'-' if acc is None else f'{100 * acc:.1f}%'} |")
    if "gold" in r["rm_heldout_accuracy"]:
        rows.append(f"| gold (ceiling) | 100% | 1.000 | {100 * r['rm_heldout_accuracy']['gold']:.1f}% |")
    agree = r["adapter_label_agreement"]
    rows.append(f"Rule Adapter: macro-F1 over rules {r['adapter_macro_f1']:.3f} (flattened two-class F1 "
                f"{r['adapter_f1_flattened_two_class']:.3f}), top-{r['k']} precision {r['adapter_topk_precision']:.3f}; "
                f"held-out labels from its rules agree with gold "
                f"{'-' if agree is None else f'{100 * agree:.1f}%'}")
    return "\n".join(rows)


def _plots(s: RamoSettings, r: dict, adapter_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmr1_jax.figures import save_figure
    from rmr1_jax.train.metrics import plot_curves

    out = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    names = list(r["label_agreement"])
    axes[0].bar(names, [r["label_agreement"][n] or 0 for n in names], color="tab:blue")
    axes[0].set_title(f"label agreement with gold (k={s.k})")
    rm = r["rm_heldout_accuracy"]
    axes[1].bar(list(rm), list(rm.values()), color="tab:green")
    axes[1].set_title("reward model: held-out gold accuracy")
    for st in ("topk_discrepancy", "max_discrepancy", "random_k"):
        pts = sorted((d["k"], d["mutual_information"]) for d in r["diagnostics"] if d["strategy"] == st)
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=st)
    for st in ("all_rules", "fitted_linear"):
        mi = r["mutual_information"][st]["bits"]
        axes[2].axhline(mi, ls="--", lw=1, label=st, color="gray" if st == "all_rules" else "black")
    axes[2].set_xlabel("k")
    axes[2].set_title("mutual information with gold (bits)")
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_ylim(0.4, 1.0)
        ax.tick_params(axis="x", labelrotation=25, labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    out.append(save_figure(fig, os.path.join(s.out_dir, "ramo_strategies.png")))
    out.append(plot_curves(os.path.join(adapter_dir, "metrics.jsonl"), os.path.join(s.out_dir, "adapter_curves.png"),
                           [("train", "loss", "BCE loss"), ("train", "topk_precision", "top-k precision"),
                            ("eval", "macro_f1_rules", "held-out macro-F1 (rules)")], "Rule Adapter"))
    return out
