"""``rmr1 demo ramo``: the whole RAMO pipeline on the embedded default, on a laptop CPU.

1. Generate the synthetic safety world (``world: easy``, :mod:`rmr1_jax.worlds.safety`: pairs
   whose gold preference three pair-specific rules decide, while eight tone rules score both
   responses noisily; ``world: hard``, :mod:`rmr1_jax.worlds.safety_hard`: style rules with
   large discrepancies unrelated to gold, mildly broken deciding rules, a rule that decides
   some pairs and is noise in others, per-rule annotator noise); split into judge-training,
   labeling, fit and held-out pairs.
2. Train a SentencePiece tokenizer, then a small rule-scoring judge (SFT) on the annotator's
   Yes / No / Irrelevant answers.
3. Score every response of the other splits against the 26-rule pool with that judge
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
import functools
import json
import os
import time

from rmr1_jax.data.readers import atomic_write_text
from rmr1_jax.demos.ramo_report import format_results, judge_summary, plot_results
from rmr1_jax.demos.recipes import read_quick, recipe_dir

JUDGE_TEMPLATE = ("Does the reply follow the rule? Answer Yes, No or Irrelevant.\n"
                  "[Conversation]\nUser: {prompt}\nAssistant: {response}\n[Rule]\n{rule}")
# single tokenizer pieces: the answer words and the section labels of the judge and adapter inputs
SYMBOLS = ("Yes", "No", "Irrelevant", "[Conversation]", "[Rule]", "[Response A]", "[Response B]", "\n")
SECTIONS = ("ramo", "judge", "adapter", "reward_model")
WORLDS = {"easy": "rmr1_jax.worlds.safety", "hard": "rmr1_jax.worlds.safety_hard"}


@dataclasses.dataclass
class RamoSettings:
    """The ``ramo.yaml`` section (see the file for what each field means)."""

    out_dir: str = "runs/demo-ramo"
    seed: int = 0
    world: str = "easy"
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

    def validate(self, where: str) -> None:
        from rmr1_jax.errors import ConfigError

        if self.world not in WORLDS:
            raise ConfigError(f"{where}: world={self.world!r}: choose {' or '.join(WORLDS)}")


@dataclasses.dataclass
class RamoRecipe:
    settings: RamoSettings
    judge: object  # DistillConfig
    adapter: object  # RuleAdapterConfig
    reward_model: object  # RewardConfig


def load_ramo_recipe(out_dir: str = "runs/demo-ramo", *, seed: int | None = None, quick: bool = False,
                     directory: str | None = None, world: str | None = None) -> RamoRecipe:
    """``ramo.yaml``, ``judge.yaml``, ``adapter.yaml`` and ``reward_model.yaml`` from
    ``directory`` (default ``configs/demo_ramo``), with ``hard.yaml``'s overrides when the
    world is ``hard`` (``world``, else ramo.yaml's ``world``), then ``quick.yaml``'s when
    ``quick``; every path is set under ``out_dir``; ``seed`` replaces every seed."""
    from rmr1_jax.config import load
    from rmr1_jax.train.runner import load_config

    directory = directory or recipe_dir("demo_ramo")
    quick_over = read_quick(directory, SECTIONS, quick)
    seed_over = [] if seed is None else [f"seed={seed}"]
    world_over = [] if world is None else [f"world={world}"]
    settings = load(RamoSettings, os.path.join(directory, "ramo.yaml"),
                    [f"out_dir={out_dir}", *quick_over.get("ramo", []), *seed_over, *world_over])
    if settings.world != "easy":  # the world's overrides of the models' recipes, before quick.yaml's
        world_file = read_quick(directory, SECTIONS[1:], True, f"{settings.world}.yaml")
        quick_over = {k: [*world_file.get(k, []), *quick_over.get(k, [])] for k in SECTIONS}
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


def world_module(name: str):
    """The world module of ``world: name`` (:data:`WORLDS`)."""
    import importlib

    return importlib.import_module(WORLDS[name])


def _splits(s: RamoSettings) -> dict[str, list[dict]]:
    """Disjoint splits of the world: each its own seed, and no labeling, fit or held-out pair
    whose prompt and two responses occur in an earlier split."""
    module = world_module(s.world)
    seen: set = set()
    out = {}
    for j, (name, n) in enumerate((("judge", s.n_judge), ("label", s.n_label), ("fit", s.n_fit), ("heldout", s.n_eval))):
        pairs = [p for p in module.generate(3 * n + 50, seed=1000 * s.seed + j) if _pair_key(p) not in seen][:n]
        seen |= {_pair_key(p) for p in pairs}
        out[name] = pairs
    return out


def _write_data(s: RamoSettings, splits, paths: dict, template: str, world, log) -> list[str]:
    """The pair files, the held-out gold pairs, the responses to score, the pool and the
    judge's annotations as SFT rows; returns texts for the tokenizer."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.rules.pool import write_pool
    from rmr1_jax.inference.rules import fill

    module = world_module(s.world)
    for d in ("data", "prompts", "labels", "selections", "scores"):
        os.makedirs(os.path.join(s.out_dir, d), exist_ok=True)
    write_pool(paths["pool"], list(world.rules))
    atomic_write_text(paths["template"], template)
    for name in ("label", "fit", "heldout"):
        write_jsonl(paths[name], ({k: p[k] for k in module.PAIR_FIELDS} for p in splits[name]))
    write_jsonl(paths["heldout_gold"], _gold_rows(splits["heldout"]))
    responses = list(dict.fromkeys((p["prompt"], p[side]) for name in ("label", "fit", "heldout")
                                   for p in splits[name] for side in ("a", "b")))
    write_jsonl(paths["responses"], ({"prompt": q, "response": r} for q, r in responses))
    notes = module.annotations(splits["judge"], s.seed, world)
    rows = [{"id": n["id"], "messages": [{"role": "user", "content": fill(template, n["rule"], n["prompt"], n["response"])},
                                         {"role": "assistant", "content": n["answer"]}]} for n in notes]
    write_jsonl(paths["annotations"], rows)
    counts = {a: sum(n["answer"] == a for n in notes) for a in module.ANSWERS}
    log(f"data: {len(splits['judge'])} judge pairs -> {len(rows)} annotations ({counts}), {len(splits['label'])} "
        f"labeling, {len(splits['fit'])} fit and {len(splits['heldout'])} held-out pairs; {len(responses)} responses "
        f"to score against {len(world.rules)} rules")
    texts = {n["response"] for n in notes} | {n["prompt"] for n in notes} | {r.text for r in world.rules}
    return [template] + sorted(texts) + [p[x] for p in splits["label"] for x in ("a", "b")]


def run_ramo_demo(recipe: RamoRecipe | None = None, log=print) -> dict:
    """The RAMO demo as ``recipe`` says (default :func:`load_ramo_recipe`), stage by stage as
    the module docstring lists them; returns the results (``ramo_results.json``)."""
    recipe = recipe or load_ramo_recipe()
    s = recipe.settings
    t0 = time.perf_counter()
    paths = _paths(s.out_dir)
    os.makedirs(s.out_dir, exist_ok=True)
    world = world_module(s.world).world()
    stamps = {}  # seconds since the start at the end of each stage
    splits = _data(recipe, paths, world, log)
    stamps["data"] = time.perf_counter() - t0
    _train_judge(recipe, log)
    stamps["judge"] = time.perf_counter() - t0
    _score(recipe, paths, log)
    stamps["score"] = time.perf_counter() - t0
    judge = judge_summary(paths["scores"], splits, world)
    log("judge on held-out responses (mean score / relevance): " + ", ".join(
        f"{g} {v['score']:+.2f} / {v['relevance']:.2f}" for g, v in judge.items()))
    diag = _label(s, paths, list(world.rules), log)
    stamps["label"] = time.perf_counter() - t0
    adapter, applied = _adapter(recipe, paths, list(world.rules), log)
    stamps["adapter"] = time.perf_counter() - t0
    rm_acc, rm_out = _reward_models(recipe, splits, log)
    stamps["reward_models"] = time.perf_counter() - t0

    results = _results(s, diag, adapter.result.eval_metrics, applied, rm_acc, judge, splits)
    exports = _export(recipe, adapter, rm_out)
    plots = plot_results(s.out_dir, results, recipe.adapter.train.run_dir)
    results["seconds"] = time.perf_counter() - t0
    results["stage_seconds"] = {k: round(v, 1) for k, v in stamps.items()}
    _report(s, results, plots, exports, log)
    return results


def _paths(out_dir: str) -> dict[str, str]:
    """The demo's fixed files under ``out_dir`` (the per-strategy labels, selections and runs
    are named where they are made)."""
    o = functools.partial(os.path.join, out_dir)
    return {"pool": o("pool.jsonl"), "template": o("prompts", "rule_judge.txt"),
            "label": o("data", "label_pairs.jsonl"), "fit": o("data", "fit_pairs.jsonl"),
            "heldout": o("data", "heldout_pairs.jsonl"), "heldout_gold": o("data", "heldout_gold.jsonl"),
            "responses": o("data", "responses.jsonl"), "annotations": o("data", "judge_annotations.jsonl"),
            "scores": o("scores", "responses.jsonl"), "diagnostics": o("diagnostics.json")}


def _data(recipe: RamoRecipe, paths: dict, world, log) -> dict[str, list[dict]]:
    """Data: the world's splits, their files and the tokenizer trained on them; returns the splits."""
    from rmr1_jax.text.tokenizer import train_sentencepiece

    s = recipe.settings
    splits = _splits(s)
    texts = _write_data(s, splits, paths, JUDGE_TEMPLATE, world, log)
    tokenizer = train_sentencepiece(texts, recipe.judge.tokenizer.path, vocab_size=s.vocab_size, seed=s.seed,
                                    extra_symbols=SYMBOLS)
    log(f"tokenizer: SentencePiece, {tokenizer.vocab_size} pieces")
    return splits


def _train_judge(recipe: RamoRecipe, log) -> None:
    """Judge: the rule-scoring judge, SFT on the annotator's answers."""
    from rmr1_jax.train.runner import run

    log("== rule-scoring judge (SFT on Yes / No / Irrelevant) ==")
    run(recipe.judge, "distill", log=log)


def _score(recipe: RamoRecipe, paths: dict, log) -> None:
    """Scoring: ``rules score`` of every response to score against the pool, with the judge."""
    from rmr1_jax.checkpoint.identity import checkpoint_identity
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.inference.rules import load_rule_scorer, score_file

    log("== rules score ==")
    ckpt = recipe.judge.checkpoint.dir
    scorer, rule_texts = load_rule_scorer(ckpt, make_mesh(), rules_path=paths["pool"],
                                          template_path=paths["template"], tokenizer_path=recipe.judge.tokenizer.path,
                                          batch_size=recipe.settings.score_batch)
    stats = score_file(scorer, rule_texts, paths["responses"], paths["scores"], model=checkpoint_identity(ckpt))
    print(f"rules score: {stats.written} rows scored, {stats.skipped} already done, against {len(rule_texts)} rules "
          f"-> {paths['scores']}")


def _label(s: RamoSettings, paths: dict, rules: list, log) -> list[dict]:
    """Labeling: ``rules label`` with every strategy, the held-out top-k selections the adapter
    is evaluated on, and the diagnostics against gold; returns the diagnostics rows."""
    from rmr1_jax.rules import diagnostics
    from rmr1_jax.rules.select import STRATEGIES, label_file, report, select_file

    log("== rules label ==")
    o = functools.partial(os.path.join, s.out_dir)
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
    return diag


def _adapter(recipe: RamoRecipe, paths: dict, rules: list, log):
    """Adapter: the Rule Adapter on the top-k selections, then ``rules apply`` on the held-out
    pairs; returns (the adapter's run output, the apply summary)."""
    from rmr1_jax.rules.apply import apply_file
    from rmr1_jax.rules.select import report
    from rmr1_jax.train.runner import run

    s = recipe.settings
    log("== rule adapter ==")
    adapter = run(recipe.adapter, "rule-adapter", log=log)
    out = os.path.join(s.out_dir, "labels", "heldout_adapter.jsonl")
    applied = apply_file(recipe.adapter.checkpoint.dir, paths["scores"], out, k=s.k, pairs_path=paths["heldout"],
                         rules=rules, ties=s.ties, tokenizer_path=recipe.adapter.tokenizer.path)
    report(applied, "held-out pairs labeled from the adapter's rules", out)
    return adapter, applied


def _reward_models(recipe: RamoRecipe, splits, log):
    """Reward models: one Bradley-Terry reward model per strategy of ``rm_strategies`` on its labels
    (``gold``: the labeling pairs' gold labels); returns ({strategy: held-out accuracy}, the
    top-k discrepancy model's run output or None)."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.train.runner import run

    o = functools.partial(os.path.join, recipe.settings.out_dir)
    rm = recipe.reward_model
    rm_acc, rm_out = {}, None
    write_jsonl(o("labels", "gold.jsonl"), _gold_rows(splits["label"]))
    for strategy in recipe.settings.rm_strategies:
        log(f"== reward model on {strategy} labels ==")
        cfg = dataclasses.replace(
            rm, data=dataclasses.replace(rm.data, train=[o("labels", f"{strategy}.jsonl")]),
            train=dataclasses.replace(rm.train, run_dir=o("rm", strategy)),
            checkpoint=dataclasses.replace(rm.checkpoint, dir=o("rm", strategy, "checkpoints")))
        out = run(cfg, "reward-model", log=log)
        rm_acc[strategy] = float(out.result.eval_metrics["accuracy"])
        if strategy == "topk_discrepancy":
            rm_out = out
    return rm_acc, rm_out


def _results(s: RamoSettings, diag: list[dict], ad_eval: dict, applied: dict, rm_acc: dict, judge: dict,
             splits) -> dict:
    """The report's numbers: per strategy the diagnostics at ``k`` (or over all rules), the
    adapter's held-out metrics and labels, the reward models' accuracies."""
    from rmr1_jax.rules.select import STRATEGIES

    by = {(r["strategy"], r["k"]): r for r in diag}
    pick = lambda st: by.get((st, s.k)) or by.get((st, None))  # noqa: E731
    return {
        "label_agreement": {st: pick(st)["agreement"] for st in STRATEGIES},
        "mutual_information": {st: {"bits": pick(st)["mutual_information"], "low": pick(st)["mi_low"],
                                    "high": pick(st)["mi_high"]} for st in STRATEGIES},
        "adapter_macro_f1": float(ad_eval.get("macro_f1_rules", float("nan"))),
        "adapter_macro_f1_seen_rules": float(ad_eval.get("macro_f1_seen_rules", float("nan"))),
        "adapter_f1_flattened_two_class": float(ad_eval.get("f1_flattened_two_class", float("nan"))),
        "adapter_topk_precision": float(ad_eval.get("topk_precision", float("nan"))),
        "adapter_label_agreement": applied.get("agreement"),
        "rm_heldout_accuracy": rm_acc, "k": s.k, "world": s.world, "judge": judge, "diagnostics": diag,
        "pairs": {name: len(v) for name, v in splits.items()},
    }


def _export(recipe: RamoRecipe, adapter, rm_out) -> list[str]:
    """The report's HF exports: the adapter, and the top-k reward model when one was trained;
    returns the directories written."""
    from rmr1_jax.checkpoint.hf import save_hf

    o = functools.partial(os.path.join, recipe.settings.out_dir)
    save_hf(adapter.model, adapter.params, o("adapter_hf"), dtype="float32",
            tokenizer_dir=recipe.adapter.tokenizer.path, overwrite=True)
    if rm_out is None:
        return [o("adapter_hf")]
    save_hf(rm_out.model, rm_out.params, o("reward_model_hf"), dtype="float32",
            tokenizer_dir=recipe.reward_model.tokenizer.path, overwrite=True)
    return [o("adapter_hf"), o("reward_model_hf")]


def _report(s: RamoSettings, results: dict, plots: list[str], exports: list[str], log) -> None:
    """Report: the table, the plots and exports written, and ``ramo_results.json``."""
    import numpy as np

    log(format_results(results))
    log(f"plots: {', '.join(plots)}; HF exports: {', '.join(exports)}")
    atomic_write_text(os.path.join(s.out_dir, "ramo_results.json"), json.dumps(
        results, indent=2, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))
