"""`rmr1 demo ramo --quick`: every stage of the RAMO pipeline runs end to end from an empty
working directory with the default, relative ``--out`` (synthetic world, tokenizer, judge SFT,
`rules score`, `rules label` for every strategy with diagnostics, Rule Adapter, `rules apply`,
reward models, plots, HF exports that transformers loads). The learning itself is measured by
the full demo (README); the world's structure is checked here against its definition."""

import json
import os
import random

import numpy as np
import pytest
import torch
import transformers

import cli_runs
from rmr1_jax import cli
from rmr1_jax.rules import synthetic
from rmr1_jax.rules.select import STRATEGIES, label_arrays


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
    assert 0.0 <= res["adapter_macro_f1"] <= 1.0
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


def test_rules_apply_cli_on_the_demo_adapter(ramo_dir, capsys, monkeypatch):
    """`rmr1 rules apply` as the README writes it, on the demo's outputs, relative paths."""
    monkeypatch.chdir(ramo_dir[0])
    o = "runs/demo-ramo"
    assert cli.main(["rules", "apply", "--adapter", f"{o}/adapter/checkpoints", "--scores", f"{o}/scores/responses.jsonl",
                     "--pairs", f"{o}/data/heldout_pairs.jsonl", "--rules", f"{o}/pool.jsonl",
                     "--out", f"{o}/applied.jsonl", "--k", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("adapter (k=3):") and "agreement with gold" in line
    with open(f"{o}/applied.jsonl") as f:
        assert all(len(json.loads(r)["rule_indices"]) == 3 for r in f)


def test_world_gold_is_decided_by_the_deciding_rules():
    """Against the world's definition: with the annotator's expected scores (Yes - No, and
    1 - P(Irrelevant)), top-5 discrepancy labels every pair by gold, all rules follow the tone
    whenever the tones differ and oppose gold, and the tone never decides gold."""
    w = synthetic.world()
    pairs = synthetic.generate(400, seed=3, w=w)
    r = len(w.rules)

    def expected(p, side):
        s, rel = np.zeros(r), np.zeros(r)
        for i in range(r):
            stance = p[f"stance_{side}"].get(str(i))
            if stance is not None:
                s[i], rel[i] = (1.0 if stance > 0 else -1.0), 1.0
            elif w.rules[i].category == "tone":
                y = synthetic.TONE_YES[p[f"tone_{side}"]]
                s[i], rel[i] = 2 * y - 1, 1.0
        return s, rel

    (sa, ra), (sb, rb) = ([np.stack(x) for x in zip(*[expected(p, side) for p in pairs])] for side in ("a", "b"))
    rel = (ra + rb) / 2  # a pair's relevance: the mean of its responses' (score_files.join_pairs)
    gold = np.array([p["winner"] == "A" for p in pairs])
    top = label_arrays(sa, sb, rel, "topk_discrepancy", 5)
    assert np.all((top.winner == 1) == gold)
    allr = label_arrays(sa, sb, rel, "all_rules", r)
    opposed = np.array([p["tone_a"] != p["tone_b"] and (p["tone_a"] == "warm") != (p["winner"] == "A") for p in pairs])
    assert opposed.mean() > 0.15
    assert np.all((allr.winner == 1)[opposed] != gold[opposed]) and np.all((allr.winner == 1)[~opposed] == gold[~opposed])
    # the annotator: deterministic on the deciding rules and on off-topic rules, noisy on tone
    p = pairs[0]
    rng = random.Random(0)
    d = p["deciding"][0]
    side = "a" if p["winner"] == "A" else "b"
    assert synthetic.annotate(w, p[f"tone_{side}"], p[f"stance_{side}"], d, rng) == "Yes"
    off = next(i for i in range(r) if w.rules[i].category not in (p["topic"], "tone"))
    assert synthetic.annotate(w, "warm", p["stance_a"], off, rng) == "Irrelevant"
    tone = w.tone_rules[0]
    yes = sum(synthetic.annotate(w, "warm", {}, tone, rng) == "Yes" for _ in range(4000)) / 4000
    assert abs(yes - synthetic.TONE_YES["warm"]) < 0.03
