"""The Rule Adapter: the F1 figures against hand-worked numbers, and learning measured on
held-out pairs whose selected rules a program decides."""

import json

import numpy as np
import pytest
import yaml

from rmr1_jax.errors import DataError
from rmr1_jax.data.schemas import parse_rule_example
from rmr1_jax.text.tokenizer import train_sentencepiece
from rmr1_jax.train import runner
from rmr1_jax.train.rule_adapter import f1_scores

TOPICS = ["poison", "password", "weapon", "insult", "casino", "pirated", "stalking", "wildfire"]


def test_f1_figures_by_hand():
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    # rule 0: tp 1, fn 1 -> 2/3; rule 1: tp 1, fp 1 -> 2/3; rule 2 never occurs: 0 (every rule),
    # left out (seen rules only)
    # flattened: class 1 tp 2, fp 1, fn 1 -> 2/3; class 0 tp 5, fp 1, fn 1 -> 10/12
    out = f1_scores(pred, gold)
    assert out["macro_f1_rules"] == pytest.approx(4 / 9)
    assert out["macro_f1_seen_rules"] == pytest.approx(2 / 3)
    assert out["f1_flattened_two_class"] == pytest.approx((2 / 3 + 10 / 12) / 2)


def test_macro_f1_rules_is_scikit_learns_macro_f1_over_every_rule():
    """The primary figure against scikit-learn on multi-label indicator arrays where some rules
    never occur (neither gold nor predicted), some only in the predictions, some only in gold."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for trial in range(20):
        n, r = int(rng.integers(1, 40)), int(rng.integers(2, 12))
        gold = rng.random((n, r)) < rng.uniform(0.05, 0.5)
        pred = rng.random((n, r)) < rng.uniform(0.05, 0.5)
        never = rng.random(r) < 0.3  # rules absent from the held-out data and never predicted
        gold[:, never], pred[:, never] = False, False
        if trial % 4 == 0:
            gold[:, 0], pred[:, 0] = False, rng.random(n) < 0.5  # only predicted
        want = f1_score(gold.astype(int), pred.astype(int), average="macro", zero_division=0)
        got = f1_scores(pred.astype(int), gold.astype(int))
        assert got["macro_f1_rules"] == pytest.approx(want, abs=1e-12), (trial, n, r)
        seen = gold.any(0) | pred.any(0)
        if seen.any():
            want_seen = f1_score(gold.astype(int), pred.astype(int), average="macro", zero_division=0,
                                 labels=np.flatnonzero(seen))
            assert got["macro_f1_seen_rules"] == pytest.approx(want_seen, abs=1e-12)


def test_rule_examples_name_their_errors():
    row = {"prompt": "p", "a": "x", "b": "y", "rule_indices": [0, 2]}
    assert parse_rule_example(row, "f:1", 3).labels.tolist() == [1, 0, 1]
    assert parse_rule_example({"prompt": "p", "a": "x", "b": "y", "labels": [0, 1, 0]},
                              "f:1", 3).labels.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="outside the pool of 3 rules"):
        parse_rule_example({**row, "rule_indices": [3]}, "f:1", 3)
    with pytest.raises(DataError, match="missing field 'b'"):
        parse_rule_example({"prompt": "p", "a": "x", "rule_indices": [0]}, "f:1", 3)
    with pytest.raises(DataError, match="field 'labels' has 2 values .* model.num_labels=3"):
        parse_rule_example({"prompt": "p", "a": "x", "b": "y", "labels": [1, 0]}, "f:1", 3)


def test_rule_adapter_rows_that_disagree_with_the_head_or_themselves_are_one_line_errors():
    """Each of these passed silently before: ``labels`` beside ``rule_indices`` was never read."""
    sel = {"prompt": "p", "a": "x", "b": "y", "rule_indices": [2, 0], "labels": [1, 0, 1]}  # a select row
    assert parse_rule_example(sel, "f:1", 3).labels.tolist() == [1, 0, 1]
    # the rows were selected from a 3-rule pool: a head of 5 outputs is wider than the pool
    with pytest.raises(DataError, match=r"^field 'labels' has 3 values \(one per rule of the pool .*\), but the "
                                        r"adapter head has model.num_labels=5 outputs"):
        parse_rule_example(sel, "f:1", 5)
    with pytest.raises(DataError, match="field 'labels' has 4 values"):
        parse_rule_example({**sel, "labels": [1, 0, 1, 0]}, "f:1", 3)
    with pytest.raises(DataError, match=r"^fields 'labels' and 'rule_indices' disagree: 'labels' marks rules \[1\], "
                                        r"'rule_indices' \[0, 2\]$"):
        parse_rule_example({**sel, "labels": [0, 1, 0]}, "f:1", 3)
    bare = {"prompt": "p", "a": "x", "b": "y"}
    assert parse_rule_example({**bare, "labels": [True, False, True]}, "f:1", 3).labels.tolist() == [1, 0, 1]
    assert parse_rule_example({**bare, "labels": [1.0, 0.0, 1]}, "f:1", 3).labels.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match=r"^field 'labels' mixes booleans with numbers"):
        parse_rule_example({**bare, "labels": [True, 0.0, 1.0]}, "f:1", 3)
    with pytest.raises(DataError, match=r"'labels'\[1\] is 0.5"):
        parse_rule_example({**bare, "labels": [1, 0.5, 0]}, "f:1", 3)


def _examples(n, seed):
    """Each pair mentions two or three topics; the selected rules are those topics' rules."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        picks = sorted(rng.choice(len(TOPICS), size=int(rng.integers(2, 4)), replace=False).tolist())
        words = [TOPICS[j] for j in picks]
        rows.append({"id": f"{seed}-{i}", "prompt": "Help me.", "a": "Sure.",
                     "b": f"Not on {' or '.join(words)}.", "rule_indices": picks})
    return rows


def _write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_a_tiny_rule_adapter_learns_the_selected_rules_on_held_out_pairs(tmp_path):
    train, held = _examples(320, 1), _examples(64, 2)
    tok_dir = str(tmp_path / "tok")
    train_sentencepiece([r[k] for r in train for k in ("prompt", "a", "b")] * 3, tok_dir, vocab_size=300)
    cfg = {"model": {"preset": "tiny", "dtype": "float32", "scan_layers": False, "num_labels": len(TOPICS)},
           "mesh": {"data": -1}, "tokenizer": {"path": tok_dir},
           "data": {"train": [_write(str(tmp_path / "train.jsonl"), train)],
                    "eval": [_write(str(tmp_path / "held.jsonl"), held)], "max_length": 96},
           "optim": {"lr": 3e-3, "warmup_steps": 5}, "adapter": {"k": 3},
           "train": {"run_dir": str(tmp_path / "run"), "global_batch": 16, "max_steps": 120, "progress": False,
                     "peak_flops": 1e12, "eval_every": 60},
           "checkpoint": {"save_every": 1000, "keep": 1, "async_save": False}}
    path = str(tmp_path / "adapter.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    out = runner.run(runner.load_config("rule-adapter", path), "rule-adapter", log=lambda *_: None)
    assert out.model.cfg.head == "multilabel" and out.params["score"].shape == (64, len(TOPICS))
    ev = out.result.eval_metrics
    assert ev["examples"] == 64
    assert ev["macro_f1_rules"] > 0.85 and ev["topk_recall"] > 0.9, ev
    best = json.load(open(tmp_path / "run" / "best.json"))
    assert best["step"] in (60, 120) and best["macro_f1_rules"] >= ev["macro_f1_rules"] - 1e-9
    # the multi-label export: transformers' AutoModelForSequenceClassification gives the same logits
    import os

    import jax
    import torch
    import transformers

    from rmr1_jax.checkpoint.convert import orbax_to_hf
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel.mesh import make_mesh

    hf_dir = orbax_to_hf(str(tmp_path / "run" / "checkpoints"), str(tmp_path / "adapter_hf"), dtype="float32")
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    assert config["num_labels"] == len(TOPICS) and config["problem_type"] == "multi_label_classification"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 300, (3, 20))
    ids[ids == config["pad_token_id"]] = 5
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    ids = np.where(mask > 0, ids, config["pad_token_id"])
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model, params = load_model(str(tmp_path / "run" / "checkpoints"), mesh=make_mesh(devices=jax.devices()[:1]))
    ours = np.asarray(jax.jit(model.apply)({"params": params}, ids.astype(np.int32),  # one program, not op by op
                                           attention_mask=mask.astype(np.int32)))
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(1.0, float(np.abs(theirs).max())))


def test_the_ramo_adapter_recipe_pins_the_published_hyperparameters():
    import os

    from rmr1_jax.rules.pool import load_pool

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = runner.load_config("rule-adapter", os.path.join(root, "configs", "rule_adapter", "ramo-llama3.2-3b.yaml"),
                             ["model.hf_dir=/ckpt/Llama-3.2-3B", "data.train=[x.jsonl]"])
    assert (cfg.optim.lr, cfg.train.epochs, cfg.train.global_batch, cfg.optim.weight_decay, cfg.data.max_length) \
        == (2e-5, 3.0, 8, 0.01, 1024)
    assert cfg.model.num_labels == len(load_pool()) == 100
    runner.load_config("rule-adapter", os.path.join(root, "configs", "rule_adapter", "tiny.yaml"),
                       ["data.train=[x.jsonl]"])



def test_the_best_checkpoint_by_macro_f1_survives_rotation_and_loads(tmp_path, monkeypatch):
    """Scripted macro_f1_rules per evaluation (the real F1 is checked above): steps 2, 4, 6, 8
    score 0.3, 0.7, 0.7 (a tie does not replace), 0.4, so the best is step 4, whose regular
    checkpoint ``keep: 1`` rotates away when step 8 is saved."""
    import jax

    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.checkpoint.manager import CheckpointManager
    from rmr1_jax.checkpoint.reading import read_config
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.train import rule_adapter

    scores = iter([0.3, 0.7, 0.7, 0.4])
    real_f1 = rule_adapter.f1_scores
    monkeypatch.setattr(rule_adapter, "f1_scores", lambda p, g: {**real_f1(p, g), "macro_f1_rules": next(scores)})
    train, held = _examples(64, 1), _examples(16, 2)
    tok_dir = str(tmp_path / "tok")
    train_sentencepiece([r[k] for r in train for k in ("prompt", "a", "b")] * 3, tok_dir, vocab_size=300)
    run_dir, best_dir = tmp_path / "run", str(tmp_path / "run" / "best")
    cfg = {"model": {"preset": "tiny", "dtype": "float32", "scan_layers": False, "num_labels": len(TOPICS)},
           "mesh": {"data": -1}, "tokenizer": {"path": tok_dir},
           "data": {"train": [_write(str(tmp_path / "train.jsonl"), train)],
                    "eval": [_write(str(tmp_path / "held.jsonl"), held)], "max_length": 96},
           "optim": {"lr": 3e-3, "warmup_steps": 2}, "adapter": {"k": 3},
           "train": {"run_dir": str(run_dir), "global_batch": 8, "max_steps": 8, "progress": False,
                     "peak_flops": 1e12, "eval_every": 2},
           "checkpoint": {"save_every": 4, "keep": 1, "async_save": False}}
    path = str(tmp_path / "adapter.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    seen, named = {}, {}

    def hook(model, p, step):  # runs after the objective's evaluation (and best save) of ``step``
        seen[step] = jax.device_get(p)
        named[step] = json.load(open(run_dir / "best.json"))["step"]
        return {}

    runner.run(runner.load_config("rule-adapter", path), "rule-adapter", log=lambda *_: None, eval_hook=hook)
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    evals = [(r["step"], r["macro_f1_rules"]) for r in rows if r["split"] == "eval"]
    assert evals == [(2, 0.3), (4, 0.7), (6, 0.7), (8, 0.4)]
    first_max = max(evals, key=lambda e: e[1])  # max() keeps the first of equal keys
    assert json.load(open(run_dir / "best.json")) == {"step": first_max[0], "macro_f1_rules": 0.7, "dir": best_dir}
    assert named == {2: 2, 4: 4, 6: 4, 8: 4}
    with CheckpointManager(str(run_dir / "checkpoints"), read_only=True) as mgr:
        assert mgr.all_steps() == [8]  # the regular checkpoint of step 4 was rotated away
    with CheckpointManager(best_dir, read_only=True) as mgr:
        assert mgr.all_steps() == [4]
    assert read_config(best_dir)["data"]["max_length"] == 96  # what `rmr1 rules apply` reads
    model, params = load_model(best_dir, "multilabel", mesh=make_mesh(devices=jax.devices()[:1]))
    assert (model.cfg.head, model.cfg.num_labels) == ("multilabel", len(TOPICS))
    flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t)}
    got, want, last = flat(params), flat(seen[4]), flat(seen[8])
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert any(not np.array_equal(want[k], last[k]) for k in want)  # step 4 is not the final model
    ids = np.random.default_rng(0).integers(4, 300, (2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    logits = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask))  # one compile, not one per op
    np.testing.assert_array_equal(np.asarray(logits(params)), np.asarray(logits(seen[4])))


def test_a_resumed_run_replaces_the_best_checkpoint_only_when_beaten(tmp_path):
    """:func:`best_saver` keeps no state but best.json, so a fresh one is a resumed run."""
    import jax.numpy as jnp

    from rmr1_jax.checkpoint.manager import CheckpointManager
    from rmr1_jax.train.rule_adapter import best_saver

    directory, record = str(tmp_path / "best"), str(tmp_path / "best.json")
    saver = lambda: best_saver(directory, record, config={"data": {"max_length": 7}},
                               metadata={"model_config": {"head": "multilabel"}})

    def on_disk():
        with CheckpointManager(directory, read_only=True) as mgr:
            r = mgr.restore()
        return r.step, np.asarray(r.state["params"]["w"]).tolist(), r.config, r.extra, json.load(open(record))

    save = saver()
    assert save({"w": jnp.full(2, 1.0)}, 10, 0.5)
    assert not save({"w": jnp.full(2, 2.0)}, 20, 0.5)  # a tie keeps the first
    assert on_disk() == (10, [1.0, 1.0], {"data": {"max_length": 7}}, {"best": {"step": 10, "macro_f1_rules": 0.5}},
                         {"step": 10, "macro_f1_rules": 0.5, "dir": directory})
    # resumed from an earlier regular checkpoint: step 8 must beat 0.5, and replaces step 10
    save = saver()
    assert not save({"w": jnp.full(2, 3.0)}, 8, 0.4)
    assert save({"w": jnp.full(2, 4.0)}, 8, 0.6)
    assert on_disk()[:2] == (8, [4.0, 4.0]) and on_disk()[4]["step"] == 8
    with CheckpointManager(directory, read_only=True) as mgr:
        assert mgr.all_steps() == [8]
    # a run that stopped after the save of step 8 committed but before best.json named it
    with open(record, "w") as f:
        json.dump({"step": 6, "macro_f1_rules": 0.2, "dir": directory}, f)
    assert saver()({"w": jnp.full(2, 4.0)}, 8, 0.6)
    assert on_disk()[:2] == (8, [4.0, 4.0]) and on_disk()[4] == {"step": 8, "macro_f1_rules": 0.6, "dir": directory}
