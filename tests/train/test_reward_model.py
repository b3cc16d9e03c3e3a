"""The Bradley-Terry reward model: the loss against its formula, pairs in the accepted layouts,
one-line errors for bad pairs, and learning measured on held-out pairs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.data.schemas import parse_pair
from rmr1_jax.errors import DataError
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import init_params
from rmr1_jax.models.presets import preset
from rmr1_jax.text.tokenizer import train_sentencepiece
from rmr1_jax.train import runner
from rmr1_jax.train.reward_model import bt_loss_fn, heldout_pairs


def _rows(pairs):
    return [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen[-1]["content"], "rejected": p.rejected[-1]["content"]}
            for p in pairs]


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Pairs whose preference a program checks: the chosen reply is the one word in capitals
    the prompt asks for, the rejected one the same word in mixed case. Held out: another seed,
    no training prompt-and-reply pair repeated."""
    root = tmp_path_factory.mktemp("rm")
    train = synthetic.generate_pairs(480, seed=11, kinds=("caps_word",))
    seen = {(p.prompt[-1]["content"], p.chosen[-1]["content"]) for p in train}
    held = [p for p in synthetic.generate_pairs(400, seed=12, kinds=("caps_word",))
            if (p.prompt[-1]["content"], p.chosen[-1]["content"]) not in seen][:96]
    texts = [m["content"] for p in train for m in p.prompt + p.chosen + p.rejected]
    tok_dir = str(root / "tok")
    train_sentencepiece(texts * 3, tok_dir, vocab_size=400)
    return root, _write(str(root / "train.jsonl"), _rows(train)), _write(str(root / "held.jsonl"), _rows(held)), tok_dir


def _recipe(root, name, train, held, tok_dir, **train_over):
    cfg = {"model": {"preset": "tiny", "dtype": "float32", "scan_layers": False},
           "mesh": {"data": -1}, "tokenizer": {"path": tok_dir},
           "data": {"train": [train], "eval": [held] if held else [], "max_length": 64},
           "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "cosine"},
           "train": {"run_dir": str(root / name), "global_batch": 16, "max_steps": 60, "progress": False,
                     "peak_flops": 1e12, "log_every": 10, **train_over},
           "checkpoint": {"save_every": 1000, "keep": 1, "async_save": False}}
    path = str(root / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def test_bt_loss_is_minus_log_sigmoid_of_the_reward_gap_with_margin():
    cfg = preset("tiny", dtype="float32", head="scalar")
    model = DecoderLM(cfg)
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (2, 4, 12)).astype(np.int32)
    masks = np.ones((2, 4, 12), np.int32)
    masks[0, 1, 7:] = 0  # a shorter chosen reply
    masks[1, 2, 3:] = 0
    masks[:, 3] = 0  # an empty filler pair: counted nowhere
    batch = {"chosen_ids": ids[0], "chosen_mask": masks[0], "rejected_ids": ids[1], "rejected_mask": masks[1]}
    apply = jax.jit(model.apply)  # compiled whole, as in training (op by op, each op compiles on its own)
    r_c = np.asarray(apply({"params": params}, ids[0], attention_mask=masks[0]))[:3, 0]
    r_r = np.asarray(apply({"params": params}, ids[1], attention_mask=masks[1]))[:3, 0]
    for margin in (0.0, 0.5):
        loss_fn = jax.jit(bt_loss_fn(model, margin))
        loss, (n, m) = loss_fn(params, {k: jnp.asarray(v) for k, v in batch.items()}, None)
        expect = np.sum(np.log1p(np.exp(-(r_c - r_r - margin))))
        np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
        assert float(n) == 3
        np.testing.assert_allclose(float(m["margin"][0]) / 3, np.mean(r_c - r_r), rtol=1e-5, atol=1e-6)
        assert float(m["accuracy"][0]) == np.sum(r_c > r_r)


def test_pairs_in_the_skywork_layout_split_their_shared_prompt():
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a fruit."}]
    p = parse_pair({"chosen": conv + [{"role": "assistant", "content": "APPLE"}],
                    "rejected": conv + [{"role": "assistant", "content": "Apple"}]}, "x")
    assert p.prompt == conv and p.chosen == [{"role": "assistant", "content": "APPLE"}]
    assert p.rejected[0]["content"] == "Apple"
    with pytest.raises(DataError, match="do not share the conversation"):
        parse_pair({"chosen": conv + [{"role": "assistant", "content": "A"}],
                    "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "B"}]}, "x")


def test_a_pair_with_a_missing_side_is_one_error_naming_file_and_line(task):
    root, train, _, tok_dir = task
    bad = _write(str(root / "bad.jsonl"), [json.loads(open(train).readline()),
                                           {"prompt": "Name a fruit.", "chosen": "APPLE"}])
    cfg = runner.load_config("reward-model", _recipe(root, "bad", bad, None, tok_dir))
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'rejected'"):
        runner.run(cfg, "reward-model", log=lambda *_: None)


def test_a_tiny_reward_model_learns_the_preference_on_held_out_pairs(task):
    root, train, held, tok_dir = task
    cfg = runner.load_config("reward-model", _recipe(root, "learn", train, held, tok_dir))
    logs = []
    out = runner.run(cfg, "reward-model", log=logs.append)
    assert out.model.cfg.head == "scalar" and "score" in out.params and "lm_head" not in out.params
    assert "rows per step 16 pairs (32 sequences)" in "\n".join(logs)
    ev = out.result.eval_metrics
    assert ev["pairs"] == sum(1 for _ in open(held)) >= 40
    # before training: a random head ranks the pairs at about chance
    from rmr1_jax.data.pipeline import pair_eval_batches
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.text.tokenizer import load_tokenizer

    mesh = make_mesh()
    model0, params0 = load_model("tiny", "scalar", mesh=mesh, dtype="float32", scan_layers=False,
                                 tokenizer=load_tokenizer(tok_dir), seed=0)
    held_src = _held_source(root, "learn")
    before = heldout_pairs(bt_loss_fn(model0), params0, pair_eval_batches(
        held_src, batch_size=16, max_length=64, pad_id=load_tokenizer(tok_dir).pad_id), mesh)
    assert before["accuracy"] < 0.75, before
    assert ev["accuracy"] >= 0.95 and ev["margin"] > 1.0, ev
    train_m = out.result.last_metrics
    assert {"accuracy", "margin", "reward_mean", "reward_std", "loss"} <= set(train_m)
    with open(os.path.join(root, "learn", "config.yaml")) as f:
        assert yaml.safe_load(f)["train"]["global_batch"] == 16


def _held_source(root, name):
    """The held-out records the run built (reused from its cache)."""
    import glob

    from rmr1_jax.data.records import _builder_cls

    (data_dir,) = glob.glob(os.path.join(root, name, "data", "records-pair-*"))
    return _builder_cls("pair")(data_dir=data_dir, file_format="array_record").as_data_source()["eval"]


def test_the_ramo_recipe_pins_the_published_hyperparameters():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = runner.load_config("reward-model", os.path.join(root, "configs", "reward_model",
                                                          "ramo-skywork-llama3.1-8b.yaml"),
                             ["model.hf_dir=/ckpt/Skywork-Reward-Llama-3.1-8B-v0.2", "data.train=[x.jsonl]"])
    assert (cfg.optim.lr, cfg.train.epochs, cfg.train.global_batch, cfg.optim.warmup_steps,
            cfg.data.max_length) == (2e-5, 2.0, 32, 10, 1024)
    assert cfg.reward.margin == 0.0 and cfg.model.dtype == "bfloat16"
    for name, over in (("tiny", []), ("qwen2.5-7b-instruct-bt", ["model.hf_dir=/ckpt/Qwen2.5-7B-Instruct"])):
        runner.load_config("reward-model", os.path.join(root, "configs", "reward_model", f"{name}.yaml"),
                           ["data.train=[x.jsonl]", *over])
