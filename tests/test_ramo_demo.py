"""`rmr1 demo ramo --quick`: every stage of the RAMO pipeline runs end to end from an empty
working directory with the default, relative ``--out`` (synthetic world, tokenizer, judge SFT,
`rules score`, `rules label` for every strategy with diagnostics, Rule Adapter, `rules apply`,
reward models, plots, HF exports that transformers loads). The quick run's judge trains for 4
steps and scores every rule alike, so every strategy gives it the same labels: the ordering the
demo exists to show (README "The RAMO demo": top-k discrepancy labels agree with gold far more
than k random rules or all rules) is asserted on the quick run's own pairs and pool with the
world's annotator in the judge's place, through the same `rules label` stage. The learning
itself is measured by the full demo (README); the world's definition is checked in
tests/worlds/test_safety.py."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

import cli_runs
from rmr1_jax import cli
from rmr1_jax.rules.select import STRATEGIES
from rmr1_jax.worlds import safety


@pytest.fixture(scope="module")
def ramo_dir(tmp_path_factory):
    yield from cli_runs.run_in_empty_dir(tmp_path_factory, "ramo_user", ["demo", "ramo", "--quick"])


def test_quick_ramo_demo_end_to_end(ramo_dir):
    work, text = ramo_dir
    out = os.path.join(work, "runs", "demo-ramo")
    assert "| topk_discrepancy |" in text and "Rule Adapter: macro-F1 over rules" in text
    with open(os.path.join(out, "ramo_results.json")) as f:
        res = json.load(f)
    for st in ("topk_discrepancy", "random_k", "all_rules", "fitted_linear"):
        assert 0.0 <= res["label_agreement"][st] <= 1.0
        mi = res["mutual_information"][st]
        assert 0.0 <= mi["low"] <= mi["high"] <= 1.0 + 1e-9
    assert set(res["rm_heldout_accuracy"]) == {"topk_discrepancy", "random_k"}  # quick.yaml's list
    keyed = {(d["strategy"], d["k"]): d for d in res["diagnostics"]}
    assert res["label_agreement"]["topk_discrepancy"] == keyed[("topk_discrepancy", 5)]["agreement"]
    assert res["label_agreement"]["all_rules"] == keyed[("all_rules", None)]["agreement"]
    assert {d["k"] for d in res["diagnostics"] if d["strategy"] == "topk_discrepancy"} == {3, 5, 8}
    for f in ("ramo_strategies.png", "adapter_curves.png", "diagnostics.json", "pool.jsonl"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    for st in STRATEGIES:
        assert os.path.getsize(os.path.join(out, "labels", f"{st}.jsonl")) > 0
    with open(os.path.join(out, "labels", "heldout_adapter.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(r["strategy"] == "adapter" and len(r["rule_indices"]) == 5 for r in rows)

    adapter = transformers.AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "adapter_hf"))
    assert adapter.config.num_labels == 26 and adapter.config.problem_type == "multi_label_classification"
    rm = transformers.AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "reward_model_hf"))
    assert rm.config.num_labels == 1
    with torch.no_grad():
        assert np.isfinite(adapter(input_ids=torch.tensor([[5, 6, 7]])).logits.numpy()).all()


def test_the_reported_adapter_macro_f1_is_scikit_learns_on_the_held_out_selections(ramo_dir):
    """``adapter_macro_f1``: scikit-learn's macro-F1 over all 26 rules of the exported adapter's
    predictions (sigmoid > 0.5, transformers' logits) on the held-out selections it was
    evaluated on (the quick run evaluates its final parameters, which are the export)."""
    from sklearn.metrics import f1_score

    from rmr1_jax.rules.apply import adapter_inputs
    from rmr1_jax.text.tokenizer import load_tokenizer

    out = os.path.join(ramo_dir[0], "runs", "demo-ramo")
    with open(os.path.join(out, "selections", "heldout_topk_discrepancy.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    ids = adapter_inputs(load_tokenizer(os.path.join(out, "tokenizer")),
                         [{k: r[k] for k in ("prompt", "a", "b")} for r in rows], 26, max_length=128,
                         overlong="truncate")  # adapter.yaml's max_length and overlong
    adapter = transformers.AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "adapter_hf")).eval()
    batch = np.full((len(ids), max(map(len, ids))), adapter.config.pad_token_id)
    mask = np.zeros_like(batch)
    for i, x in enumerate(ids):
        batch[i, :len(x)], mask[i, :len(x)] = x, 1
    with torch.no_grad():  # the head reads each row's last real token
        logits = adapter(input_ids=torch.tensor(batch), attention_mask=torch.tensor(mask)).logits.numpy()
    gold = np.array([r["labels"] for r in rows])
    assert gold.shape == (30, 26) and not gold.any(0).all()  # some rules never occur in the held-out sets
    with open(os.path.join(out, "ramo_results.json")) as f:
        reported = json.load(f)["adapter_macro_f1"]
    want = f1_score(gold, (logits > 0).astype(int), average="macro", zero_division=0)
    assert reported == pytest.approx(want, abs=1e-9)


def _annotator_scores(pairs: list[dict], w) -> list[dict]:
    """Per-response rule scores of the world's annotator in expectation (Yes - No, and
    1 - P(Irrelevant)): the judge the full demo trains approaches these."""
    out = {}
    for p in pairs:
        for side in ("a", "b"):
            follows = (side == "a") == (p["winner"] == "A")
            s, rel = np.zeros(len(w.rules)), np.zeros(len(w.rules))
            for i, rule in enumerate(w.rules):
                if i in p["deciding"]:
                    s[i], rel[i] = (1.0 if follows else -1.0), 1.0
                elif rule.category == "tone":
                    s[i], rel[i] = 2 * safety.TONE_YES[p[f"tone_{side}"]] - 1, 1.0
            out[(p["prompt"], p[side])] = {"prompt": p["prompt"], "response": p[side], "scores": s.tolist(),
                                           "relevance": rel.tolist()}
    return list(out.values())


def test_the_demo_pairs_show_the_strategy_ordering_with_a_judge_that_knows_the_rules(ramo_dir, tmp_path):
    """`rules label --diagnostics` as the demo runs it (its labeling pairs, fit pairs and pool),
    with the annotator's expected scores: top-k discrepancy (k = 5) labels every pair by gold,
    k random rules and all rules fall well short (all rules lose every pair whose tones oppose
    gold), k = 8 lets the tone rules back in, and the mutual-information intervals separate."""
    from rmr1_jax.data.readers import write_jsonl

    o = os.path.join(ramo_dir[0], "runs", "demo-ramo")
    pairs = []
    for split in ("label_pairs", "fit_pairs"):
        with open(os.path.join(o, "data", f"{split}.jsonl")) as f:
            pairs += [json.loads(line) for line in f]
    scores = str(tmp_path / "annotator_scores.jsonl")
    write_jsonl(scores, _annotator_scores(pairs, safety.world()))
    diag_path = str(tmp_path / "diagnostics.json")
    assert cli.main(["rules", "label", "--scores", scores, "--pairs", os.path.join(o, "data", "label_pairs.jsonl"),
                     "--rules", os.path.join(o, "pool.jsonl"), "--out", str(tmp_path / "labels.jsonl"),
                     "--fit-scores", scores, "--fit-pairs", os.path.join(o, "data", "fit_pairs.jsonl"),
                     "--diagnostics", diag_path, "--ks", "3", "5", "8", "--n-boot", "200"]) == 0
    with open(diag_path) as f:
        d = {(r["strategy"], r["k"]): r for r in json.load(f)}
    top, rnd, all_ = d[("topk_discrepancy", 5)], d[("random_k", 5)], d[("all_rules", None)]
    assert top["agreement"] == 1.0 and top["coverage"] == 1.0 and d[("fitted_linear", None)]["agreement"] == 1.0
    assert top["agreement"] > rnd["agreement"] + 0.1 and top["agreement"] > all_["agreement"] + 0.1
    assert d[("topk_discrepancy", 8)]["agreement"] < top["agreement"]
    assert top["mi_low"] > max(rnd["mi_high"], all_["mi_high"])


def test_rules_apply_cli_on_the_demo_adapter(ramo_dir, capsys, monkeypatch):
    """`rmr1 rules apply` as the README writes it, on the demo's outputs, relative paths."""
    monkeypatch.chdir(ramo_dir[0])
    o = "runs/demo-ramo"
    assert cli.main(["rules", "apply", "--ckpt", f"{o}/adapter/checkpoints", "--scores", f"{o}/scores/responses.jsonl",
                     "--pairs", f"{o}/data/heldout_pairs.jsonl", "--rules", f"{o}/pool.jsonl",
                     "--out", f"{o}/applied.jsonl", "--k", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("adapter (k=3):") and "agreement with gold" in line
    with open(f"{o}/applied.jsonl") as f:
        assert all(len(json.loads(r)["rule_indices"]) == 3 for r in f)


# `--world hard`: a quick run of the hard world costs as long again as the easy one (~100 s on
# two cores, nearly all of it compiling the same models), so the hard world is tested up to
# its data stage (recipe, splits, files, tokenizer, lengths) here, its definition in
# tests/worlds/test_safety_hard.py, and its learning by the full run (docs/demo-ramo.md).


def test_world_hard_recipe_takes_hard_yaml_before_quick_yaml_and_the_flag_over_ramo_yaml(tmp_path):
    from rmr1_jax.demos.ramo import load_ramo_recipe
    from rmr1_jax.demos.recipes import recipe_dir
    from rmr1_jax.errors import ConfigError

    easy = load_ramo_recipe(str(tmp_path))
    hard = load_ramo_recipe(str(tmp_path), world="hard")
    assert easy.settings.world == "easy" and hard.settings.world == "hard"
    assert (easy.adapter.data.max_length, easy.reward_model.data.max_length) == (128, 64)
    assert (hard.adapter.data.max_length, hard.reward_model.data.max_length) == (160, 96)
    assert hard.judge == easy.judge and hard.settings.n_label == easy.settings.n_label
    quick = load_ramo_recipe(str(tmp_path), world="hard", quick=True)
    assert quick.adapter.data.max_length == 160 and quick.adapter.train.max_steps == 4
    recipes = tmp_path / "recipes"
    shutil.copytree(recipe_dir("demo_ramo"), recipes)
    text = (recipes / "ramo.yaml").read_text()
    (recipes / "ramo.yaml").write_text(text.replace("world: easy", "world: hard"))
    assert load_ramo_recipe(str(tmp_path), directory=str(recipes)).settings.world == "hard"
    assert load_ramo_recipe(str(tmp_path), directory=str(recipes), world="easy").adapter.data.max_length == 128
    (recipes / "ramo.yaml").write_text(text.replace("world: easy", "world: medium"))
    with pytest.raises(ConfigError, match="world='medium': choose easy or hard"):
        load_ramo_recipe(str(tmp_path), directory=str(recipes))


def test_world_is_an_option_of_demo_ramo_only(capsys):
    assert cli.build_parser().parse_args(["demo", "ramo", "--world", "hard"]).world == "hard"
    assert cli.build_parser().parse_args(["demo", "ramo"]).world is None
    for which in ("rm-r1", "policy"):
        assert cli.main(["demo", which, "--world", "hard", "--out-dir", "unused"]) == 2
        err = capsys.readouterr().err
        assert f"--world is an option of `rmr1 demo ramo`, not of `rmr1 demo {which}`" in err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "ramo", "--world", "medium"])


def test_world_hard_data_stage_files_pool_annotations_and_lengths_within_the_recipes(tmp_path):
    """The demo's data stage on the hard world at full size: the pool is the hard world's, the
    pair files carry its fields, the judge's annotations hold its four kinds of rows, and with
    the tokenizer trained on them every judge annotation, reward-model conversation and adapter
    input fits its recipe's max_length (hard.yaml's overrides)."""
    from rmr1_jax.data.records import pair_token_ids
    from rmr1_jax.demos import ramo
    from rmr1_jax.rules.apply import adapter_inputs
    from rmr1_jax.rules.pool import load_pool
    from rmr1_jax.text.tokenizer import load_tokenizer
    from rmr1_jax.worlds import safety_hard

    recipe = ramo.load_ramo_recipe(str(tmp_path), world="hard")
    paths = ramo._paths(str(tmp_path))
    w = safety_hard.world()
    splits = ramo._data(recipe, paths, w, lambda *_: None)
    assert [len(splits[k]) for k in ("judge", "label", "fit", "heldout")] == [1500, 1000, 200, 300]
    assert [r.id for r in load_pool(paths["pool"])] == [r.id for r in w.rules]
    with open(paths["label"]) as f:
        rows = [json.loads(line) for line in f]
    assert list(rows[0]) == list(safety_hard.PAIR_FIELDS) and {r["group"] for r in rows} == {"decides", "noise"}
    assert {r["break"] for r in rows} == {"all", "one", "mild", "referral"}
    tok = load_tokenizer(recipe.judge.tokenizer.path)
    with open(paths["annotations"]) as f:
        notes = [json.loads(line) for line in f]
    assert len(notes) == 1500 * 2 * 9
    assert max(len(tok.encode(tok.apply_chat_template(n["messages"]))) for n in notes) <= recipe.judge.data.max_length
    pairs = splits["label"] + splits["heldout"]
    rm = max(len(pair_token_ids(tok, [{"role": "user", "content": p["prompt"]}], [{"role": "assistant", "content": p[s]}]))
             for p in pairs for s in ("a", "b"))
    assert rm <= recipe.reward_model.data.max_length
    ids = adapter_inputs(tok, [{k: p[k] for k in ("prompt", "a", "b")} for p in pairs], 26, max_length=4096,
                         overlong="truncate")
    assert max(map(len, ids)) <= recipe.adapter.data.max_length
