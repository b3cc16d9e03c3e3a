"""The reward model and Hugging Face: a trained model exports to a directory that
``AutoModelForSequenceClassification`` loads with the same scores, fine-tuning an HF reward
model keeps (and saves) its score head, and a run resumes bit for bit."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
import yaml

from rmr1_jax.checkpoint.convert import orbax_to_hf
from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.parallel.mesh import make_mesh
from rmr1_jax.text.tokenizer import load_tokenizer, train_sentencepiece
from rmr1_jax.train import runner

import hf_models


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_hf")
    pairs = synthetic.generate_pairs(64, seed=21, kinds=("caps_word", "word_count"))
    path = str(root / "pairs.jsonl")
    synthetic.write_pairs_jsonl(path, pairs)
    tok_dir = str(root / "tok")
    train_sentencepiece([m["content"] for p in pairs for m in p.prompt + p.chosen + p.rejected] * 4, tok_dir,
                        vocab_size=400)
    return root, path, tok_dir


def _recipe(root, name, data, tok_dir, model, **train):
    cfg = {"model": {"dtype": "float32", "scan_layers": False, **model}, "mesh": {"data": -1},
           "tokenizer": {"path": tok_dir}, "data": {"train": [data], "max_length": 64},
           "optim": {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0},
           "train": {"run_dir": str(root / name), "global_batch": 8, "progress": False, "peak_flops": 1e12,
                     "log_every": 1, **train},
           "checkpoint": {"save_every": 2, "keep": 3, "async_save": False}}
    path = str(root / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return runner.load_config("reward-model", path)


def _rows(tok_dir, n=4, length=24, seed=0):
    """Right-padded rows of real token ids (never the pad id), and their mask."""
    tok = load_tokenizer(tok_dir)
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, tok.vocab_size, (n, length)).astype(np.int64)
    ids[ids == tok.pad_id] = 5
    lengths = np.array([length, 17, 9, 3])[:n]
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return np.where(mask > 0, ids, tok.pad_id), mask


def _ours(source, ids, mask):
    model, params = load_model(source, mesh=make_mesh(devices=jax.devices()[:1]), dtype="float32")
    return np.asarray(model.apply({"params": params}, ids.astype(np.int32), attention_mask=mask.astype(np.int32)))


def test_a_trained_reward_model_exports_to_transformers_with_the_same_scores(files):
    root, data, tok_dir = files
    out = runner.run(_recipe(root, "export", data, tok_dir, {"preset": "tiny"}, max_steps=4), "reward-model",
                     log=lambda *_: None)
    assert out.result.step == 4
    hf_dir = orbax_to_hf(os.path.join(root, "export", "checkpoints"), str(root / "export_hf"), dtype="float32")
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and config["num_labels"] == 1
    assert config["pad_token_id"] == load_tokenizer(tok_dir).pad_id
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids, mask = _rows(tok_dir)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = _ours(os.path.join(root, "export", "checkpoints"), ids, mask)
    assert theirs.shape == ours.shape == (4, 1)
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(scale, 1.0))
    # the exported directory reads back into the same scores too
    np.testing.assert_allclose(_ours(hf_dir, ids, mask), ours, atol=1e-5 * max(scale, 1.0))


def test_fine_tuning_an_hf_reward_model_keeps_and_saves_its_score_head(files):
    root, data, tok_dir = files
    tok = load_tokenizer(tok_dir)
    config = hf_models.qwen2_config()
    config.vocab_size, config.num_labels, config.pad_token_id = 512, 1, tok.pad_id
    torch.manual_seed(3)
    hf = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    hf_models.randomize(hf, 3)
    hf_dir = str(root / "skywork_like")
    hf.save_pretrained(hf_dir)
    head = hf.score.weight.detach().numpy().T  # [D, 1]
    # lr ~ 0: one step leaves the weights where they were, so a re-initialized head would show
    cfg = _recipe(root, "finetune", data, tok_dir, {"preset": None, "hf_dir": hf_dir}, max_steps=1)
    cfg.optim.lr = 1e-12
    out = runner.run(cfg, "reward-model", log=lambda *_: None)
    np.testing.assert_allclose(np.asarray(out.params["score"]), head, atol=1e-6)
    ids, mask = _rows(tok_dir)
    with torch.no_grad():
        theirs = hf.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    # the checkpoint written by the run holds the head: its scores are the HF model's
    np.testing.assert_allclose(_ours(os.path.join(root, "finetune", "checkpoints"), ids, mask), theirs, atol=1e-4)


def test_a_reward_model_run_resumes_bit_for_bit(files):
    root, data, tok_dir = files
    straight = runner.run(_recipe(root, "straight", data, tok_dir, {"preset": "tiny"}, max_steps=4), "reward-model",
                          log=lambda *_: None)
    runner.run(_recipe(root, "resumed", data, tok_dir, {"preset": "tiny"}, max_steps=2), "reward-model",
               log=lambda *_: None)
    logs = []
    resumed = runner.run(_recipe(root, "resumed", data, tok_dir, {"preset": "tiny"}, max_steps=4), "reward-model",
                         log=logs.append)
    assert any("resumed from" in line and "at step 2" in line for line in logs)
    assert resumed.result.step == 4
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_score_rm_scores_preference_rows_as_training_tokenizes_them(files):
    """score-rm on the training file's {prompt, chosen, rejected} rows: each side scored on the
    exact token ids the training records hold (one chat-template rendering for both)."""
    from rmr1_jax.data.records import pair_token_ids
    from rmr1_jax.data.schemas import parse_pair
    from rmr1_jax.inference.reward import load_reward_model, score_file

    root, data, tok_dir = files
    ckpt = os.path.join(root, "straight", "checkpoints")  # written by the resume test's straight run
    if not os.path.isdir(ckpt):
        runner.run(_recipe(root, "straight", data, tok_dir, {"preset": "tiny"}, max_steps=4), "reward-model",
                   log=lambda *_: None)
    mesh = make_mesh(devices=jax.devices()[:1])
    scorer = load_reward_model(ckpt, mesh, tokenizer_path=tok_dir, max_length=256)
    out = str(root / "scores.jsonl")
    score_file(scorer, data, out, batch_size=8)
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == sum(1 for _ in open(data))
    tok = load_tokenizer(tok_dir)
    model, params = load_model(ckpt, mesh=mesh, dtype="float32")
    # one compiled program per length (the model run op by op compiles each op at each length)
    score = jax.jit(lambda p, ids: model.apply({"params": p}, ids, attention_mask=jax.numpy.ones_like(ids)))
    for row in rows[:6]:
        pair = parse_pair(row, "x")
        for side in ("chosen", "rejected"):
            ids = pair_token_ids(tok, pair.prompt, getattr(pair, side))[None, :]
            want = float(score(params, ids)[0, 0])
            assert abs(row[f"score_{side}"] - want) < 1e-4 * max(1.0, abs(want)), (side, row)
        assert row["preferred"] == ("chosen" if row["score_chosen"] > row["score_rejected"] else "rejected")
