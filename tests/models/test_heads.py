"""Classification heads (``scalar`` reward model, ``multilabel`` rule adapter) against
transformers' ``Qwen2ForSequenceClassification`` / ``LlamaForSequenceClassification``: import,
pooled scores for right- and left-padded batches, pooling by the mask when the pad id is the
end-of-sequence id, export that transformers reads back, and the parameter trees.

transformers pools at the last token that is not ``pad_token_id`` (from ``input_ids``); the
batches here draw real tokens from ids above every special id, so that token is the last real
one, except in the pad == eos test, which is about exactly that difference.
"""

from __future__ import annotations

import json
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_models
import rmr1_jax as rj
from rmr1_jax.errors import CheckpointError
from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.params import init_head

TOL = 1e-4
B, T = 3, 20
LENGTHS = np.array([20, 13, 6])
PAD = 0
FIRST_REAL = 4  # real tokens are drawn from [4, VOCAB): never a pad, bos or eos id


def make_classifier(path, kind: str, *, num_labels: int = 1, pad_token_id: int = PAD, seed: int = 0):
    """A random tiny transformers ``*ForSequenceClassification`` saved to ``path`` (safetensors:
    transformers 5 writes nothing else); biases and norm weights randomized."""
    config = {"qwen2": hf_models.qwen2_config, "llama3": hf_models.llama3_config}[kind]()
    config.num_labels = num_labels
    config.pad_token_id = pad_token_id
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    hf_models.randomize(model, seed)
    model.eval()
    model.save_pretrained(path)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    return model


def padded_batch(padding: str, seed: int = 0, pad: int = PAD):
    """ids, mask [B, T] with rows of LENGTHS real tokens, padded on the right or the left."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_REAL, hf_models.VOCAB, (B, T)).astype(np.int32)
    pos = np.arange(T)[None, :]
    mask = pos < LENGTHS[:, None] if padding == "right" else pos >= (T - LENGTHS)[:, None]
    return np.where(mask, ids, pad).astype(np.int32), mask.astype(np.int32)


def hf_scores(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long), use_cache=False)
    return out.logits.float().numpy()


def hf_scores_at(model, ids, mask, index):
    """transformers' per-position scores (its ``score`` on every hidden state), read at ``index``."""
    with torch.no_grad():
        hidden = model.model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                             attention_mask=torch.as_tensor(mask, dtype=torch.long)).last_hidden_state
        every = model.score(hidden).float().numpy()
    return every[np.arange(len(index)), index]


@partial(jax.jit, static_argnums=0)
def _fwd(model, params, ids, mask):
    return model.apply({"params": params}, ids, attention_mask=mask)


def scores(model, params, ids, mask):
    out = _fwd(model.clone(cfg=model.cfg.replace(source_dir=None)), params, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(out)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """{name: (torch model, dir)}: scalar Qwen2 and Llama reward models, a 5-label Qwen2."""
    root = tmp_path_factory.mktemp("cls")
    spec = {"qwen2": ("qwen2", 1), "llama3": ("llama3", 1), "qwen2-5labels": ("qwen2", 5)}
    out = {}
    for seed, (name, (kind, n)) in enumerate(spec.items()):
        d = str(root / name)
        out[name] = (make_classifier(d, kind, num_labels=n, seed=seed), d)
    return out


@pytest.fixture(scope="module")
def loaded(classifiers):
    return {name: rj.load_hf(d) for name, (_, d) in classifiers.items()}


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("name", ["qwen2", "llama3", "qwen2-5labels"])
def test_scores_match_transformers(name, padding, classifiers, loaded):
    tm, _ = classifiers[name]
    model, params = loaded[name]
    n = tm.config.num_labels
    assert (model.cfg.head, model.cfg.num_labels) == ("scalar" if n == 1 else "multilabel", n)
    assert set(params) == {"embed_tokens", "layers", "norm", "score"}
    assert params["score"].shape == (hf_models.HIDDEN, n)
    ids, mask = padded_batch(padding)
    ref = hf_scores(tm, ids, mask)
    got = scores(model, params, ids, mask)
    assert got.shape == (B, n) and got.dtype == np.float32
    assert float(ref.std()) > 0.05  # rows really differ: a wrong pooled position would show
    err = float(np.abs(got - ref).max())
    assert err < TOL, f"{name}/{padding}: max-abs score error {err:.2e}"


@pytest.mark.parametrize("padding", ["right", "left"])
def test_pooling_uses_the_mask_when_pad_is_eos(padding, tmp_path):
    """pad == eos, and every real sequence ends with eos: transformers' id-based pooling lands
    on the token before the real eos; ours reads the last real token (the eos) by the mask."""
    eos = 2
    tm = make_classifier(str(tmp_path / "rm"), "qwen2", pad_token_id=eos, seed=5)
    model, params = rj.load_hf(str(tmp_path / "rm"))
    ids, mask = padded_batch(padding, seed=1, pad=eos)
    last = np.where(mask.astype(bool), np.arange(T)[None, :], -1).max(axis=-1)
    ids[np.arange(B), last] = eos
    got = scores(model, params, ids, mask)
    want = hf_scores_at(tm, ids, mask, last)
    assert float(np.abs(got - want).max()) < TOL
    id_pooled = hf_scores(tm, ids, mask)  # transformers' own pooling, at last - 1
    np.testing.assert_allclose(id_pooled, hf_scores_at(tm, ids, mask, last - 1), atol=TOL)
    assert float(np.abs(got - id_pooled).min()) > 1e-3


def _load_transformers(path):
    tm, info = transformers.AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(key), f"{path}: transformers reports {key}={info.get(key)}"
    return tm.eval()


@pytest.mark.parametrize("name", ["llama3", "qwen2-5labels"])
def test_export_roundtrip(name, classifiers, loaded, tmp_path):
    tm, _ = classifiers[name]
    model, params = loaded[name]
    out = rj.save_hf(model, params, str(tmp_path / "export"), dtype="float32")
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    n = tm.config.num_labels
    assert cfg["architectures"] == [type(tm).__name__]
    assert cfg["num_labels"] == n and cfg["pad_token_id"] == PAD
    back = _load_transformers(out)
    assert back.config.num_labels == n and back.config.pad_token_id == PAD
    ids, mask = padded_batch("right", seed=2)
    ref = hf_scores(tm, ids, mask)
    assert float(np.abs(hf_scores(back, ids, mask) - ref).max()) < TOL
    m2, p2 = rj.load_hf(out)
    assert (m2.cfg.head, m2.cfg.num_labels) == (model.cfg.head, n)
    assert float(np.abs(scores(m2, p2, ids, mask) - ref).max()) < TOL


def test_multilabel_head_of_one_label_survives_export(tmp_path):
    """A one-rule adapter stays ``multilabel`` (problem_type), not a reward model."""
    cfg = preset("tiny", head="multilabel", num_labels=1, pad_token_id=0)
    model = DecoderLM(cfg)
    out = rj.save_hf(model, init_params(model, jax.random.key(0)), str(tmp_path / "ra"), dtype="float32")
    assert transformers.AutoConfig.from_pretrained(out).problem_type == "multi_label_classification"
    m2, _ = rj.load_hf(out)
    assert (m2.cfg.head, m2.cfg.num_labels) == ("multilabel", 1)


def test_wrong_width_score_head_is_one_line(classifiers, tmp_path):
    _, src = classifiers["qwen2"]
    d = str(tmp_path / "wide")
    os.makedirs(d)
    for fn in os.listdir(src):
        with open(os.path.join(src, fn), "rb") as f, open(os.path.join(d, fn), "wb") as g:
            g.write(f.read())
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("id2label"), cfg.pop("label2id")
    cfg["num_labels"] = 3
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError) as e:
        rj.load_hf(d)
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors" in msg and "score.weight" in msg and "num_labels=3" in msg


# --- the model family itself ---------------------------------------------------------------------


def test_param_trees_and_fresh_head():
    """An LM keeps its tree (names, no score); a classifier has ``score`` [D, N] and no
    ``lm_head``, and its trunk is the LM's for the same seed; :func:`init_head` gives exactly
    the head of a whole-model init."""
    lm_cfg = preset("tiny")
    key = jax.random.key(4)
    lm = init_params(DecoderLM(lm_cfg), key)
    assert set(lm) == {"embed_tokens", "layers", "norm", "lm_head"}
    cls_cfg = lm_cfg.replace(head="multilabel", num_labels=5)
    cls = init_params(DecoderLM(cls_cfg), key)
    assert set(cls) == {"embed_tokens", "layers", "norm", "score"}
    assert cls["score"].shape == (lm_cfg.hidden_size, 5)
    for a, b in zip(jax.tree.leaves({k: v for k, v in lm.items() if k != "lm_head"}),
                    jax.tree.leaves({k: v for k, v in cls.items() if k != "score"})):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    head = init_head(DecoderLM(cls_cfg), key, rj.make_mesh())
    assert set(head) == {"score"}
    np.testing.assert_array_equal(np.asarray(head["score"]), np.asarray(cls["score"]))
    assert cls_cfg.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(cls))
    assert lm_cfg.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lm))


def test_packed_row_scores_its_last_segment():
    """With ``segment_ids`` (no mask), a row scores its last segment, as if run alone."""
    cfg = preset("tiny", head="scalar", scan_layers=False)
    model = DecoderLM(cfg)
    params = init_params(model, jax.random.key(1))
    rng = np.random.default_rng(3)
    ids = rng.integers(FIRST_REAL, cfg.vocab_size, (1, 12)).astype(np.int32)
    seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]], np.int32)
    packed = model.apply({"params": params}, jnp.asarray(ids), segment_ids=jnp.asarray(seg))
    alone = model.apply({"params": params}, jnp.asarray(ids[:, 5:9]))
    np.testing.assert_allclose(np.asarray(packed), np.asarray(alone), atol=1e-5)
    assert packed.shape == (1, 1)


def test_classifier_refuses_a_cache_and_hidden_states_stay_available():
    from rmr1_jax.models import init_cache

    cfg = preset("tiny", head="scalar")
    model = DecoderLM(cfg)
    params = init_params(model, jax.random.key(0))
    ids = jnp.ones((2, 8), jnp.int32)
    assert model.apply({"params": params}, ids, return_hidden=True).shape == (2, 8, cfg.hidden_size)
    with pytest.raises(ValueError, match="scores whole sequences"):
        model.apply({"params": params}, ids, cache=init_cache(cfg, 2, 8), cache_index=0)


def test_head_config_fields():
    """``head`` / ``num_labels`` in to_dict/from_dict and the HF config translation."""
    cfg = preset("tiny", head="multilabel", num_labels=7, pad_token_id=0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("head", "num_labels")}
    assert ModelConfig.from_dict(old).head == "lm"  # metadata written before heads existed
    hf = cfg.to_hf_dict()
    assert hf["architectures"] == ["Qwen2ForSequenceClassification"] and hf["num_labels"] == 7
    assert preset("tiny").to_hf_dict()["architectures"] == ["Qwen2ForCausalLM"]
    assert "num_labels" not in preset("tiny").to_hf_dict()
    base = {k: v for k, v in hf.items() if k not in ("num_labels", "problem_type")}
    from_ids = ModelConfig.from_hf_dict({**base, "id2label": {str(i): f"r{i}" for i in range(4)}})
    assert (from_ids.head, from_ids.num_labels) == ("multilabel", 4)
    scalar = ModelConfig.from_hf_dict({**base, "architectures": ["LlamaForSequenceClassification"],
                                       "model_type": None, "num_labels": 1, "attention_bias": False})
    assert (scalar.model_type, scalar.head, scalar.num_labels) == ("llama", "scalar", 1)
    lm = ModelConfig.from_hf_dict({**preset("tiny").to_hf_dict(), "id2label": {"0": "a", "1": "b"}})
    assert (lm.head, lm.num_labels) == ("lm", 1)
    with pytest.raises(CheckpointError, match="num_labels"):
        ModelConfig.from_hf_dict({**base, "num_labels": 0}, source="x/config.json")
    with pytest.raises(CheckpointError, match="multilabel"):
        preset("tiny", head="scalar", num_labels=2)
    with pytest.raises(CheckpointError, match="head"):
        preset("tiny", head="value")
