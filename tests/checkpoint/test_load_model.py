"""``load_model``: presets, HF directories and Orbax checkpoints through one call; a reward
model started from a causal LM (trunk loaded, fresh seeded ``score`` head, no ``lm_head``); the
saved tree (not an assumed LM tree) restored from Orbax; heads that conflict with the source."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
import rmr1_jax as rj
from rmr1_jax.checkpoint.convert import checkpoint_metadata, hf_to_orbax, orbax_to_hf
from rmr1_jax.checkpoint.loading import FROM_SOURCE, load_model, source_kind
from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.checkpoint.reading import restore_params
from rmr1_jax.errors import CheckpointError, ConfigError
from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.models.params import init_head, unstack_layers
from rmr1_jax.parallel import MeshConfig, make_mesh

TRUNK = ("embed_tokens", "layers", "norm")


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))


def _trunk(params):
    return {k: v for k, v in params.items() if k not in ("lm_head", "score")}


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("lm") / "qwen2")
    hf_models.make_qwen2(d, seed=3)
    return d


@pytest.fixture(scope="module")
def lm_ckpt(lm_dir, tmp_path_factory):
    """The causal LM as an Orbax checkpoint, unrolled, as ``rmr1 convert hf-to-orbax`` writes it."""
    out = str(tmp_path_factory.mktemp("ck") / "lm")
    hf_to_orbax(lm_dir, out, scan_layers=False)
    return out


class _Tokenizer:
    vocab_size, bos_id, eos_id, pad_id = 600, 1, 2, 0


def test_preset_is_build_models_random_init(mesh):
    """What ``build_model`` does for a preset, bit for bit: the overrides, then
    ``init_params(DecoderLM(cfg), jax.random.key(seed), mesh)``."""
    exec_kw = dict(param_dtype="float32", dtype="bfloat16", scan_layers=False, remat_policy="full",
                   attention_impl=None)
    model, params = load_model("tiny", mesh=mesh, vocab_size=520, tokenizer=_Tokenizer(), seed=7, **exec_kw)
    cfg = preset("tiny", **exec_kw, vocab_size=600, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    assert model.cfg == cfg
    ref = init_params(DecoderLM(cfg), jax.random.key(7), mesh)
    _equal(params, ref)
    assert params["embed_tokens"].sharding.is_equivalent_to(ref["embed_tokens"].sharding, 2)
    m2, _ = load_model("tiny", mesh=None)
    assert m2.cfg == preset("tiny")
    with pytest.raises(ConfigError, match="not a known preset"):
        load_model("no-such", kind="preset", mesh=None)


def test_hf_dir_is_load_hf(lm_dir, mesh):
    kw = dict(scan_layers=False, remat_policy="dots", attention_impl="xla")
    model, params = load_model(lm_dir, mesh=mesh, param_dtype="bfloat16", dtype="float32", **kw)
    ref_model, ref = rj.load_hf(lm_dir, dtype="bfloat16", mesh=mesh, compute_dtype="float32", **kw)
    assert model.cfg == ref_model.cfg and model.cfg.head == "lm"
    _equal(params, ref)
    m2, p2 = load_model(lm_dir, mesh=None, param_dtype="bfloat16")
    assert m2.cfg == rj.load_hf(lm_dir, dtype="bfloat16")[0].cfg  # compute dtype follows, as in load_hf


def test_orbax_checkpoint(lm_dir, lm_ckpt, mesh):
    _, ref = rj.load_hf(lm_dir, mesh=mesh)
    model, params = load_model(lm_ckpt, mesh=mesh)  # as saved: unrolled, float32
    assert source_kind(lm_ckpt) == "orbax" and not model.cfg.scan_layers
    _equal(params, unstack_layers(ref, model.cfg.num_hidden_layers))
    model, params = load_model(lm_ckpt, mesh=mesh, scan_layers=True, param_dtype="bfloat16")
    assert model.cfg.param_dtype == "bfloat16" and model.cfg.dtype == "float32"  # compute dtype as saved
    _equal(params, jax.tree.map(lambda x: x.astype(jnp.bfloat16), ref))  # cast exactly as astype
    with pytest.raises(CheckpointError, match="step 4"):
        load_model(lm_ckpt, mesh=mesh, step=4)


def test_reward_model_from_a_causal_lm(lm_dir, lm_ckpt, mesh):
    """head="scalar" on a causal LM: its trunk, no lm_head, a score head from ``seed``."""
    _, lm = rj.load_hf(lm_dir, mesh=mesh)
    for source in (lm_dir, lm_ckpt):
        model, params = load_model(source, "scalar", mesh=mesh, scan_layers=True, seed=11)
        assert (model.cfg.head, model.cfg.num_labels) == ("scalar", 1)
        assert set(params) == {*TRUNK, "score"}
        _equal(_trunk(params), _trunk(lm))
        _equal(params["score"], init_head(model, jax.random.key(11), mesh)["score"])
        ids = jnp.asarray(np.random.default_rng(0).integers(4, hf_models.VOCAB, (2, 9)), jnp.int32)
        out = model.apply({"params": params}, ids, attention_mask=jnp.ones_like(ids))
        assert out.shape == (2, 1) and out.dtype == jnp.float32
    _, other = load_model(lm_dir, "scalar", mesh=mesh, seed=12)
    assert not np.array_equal(np.asarray(other["score"]), np.asarray(params["score"]))
    model, params = load_model(lm_ckpt, "multilabel", num_labels=4, mesh=None)
    assert params["score"].shape == (hf_models.HIDDEN, 4) and "lm_head" not in params
    with pytest.raises(CheckpointError, match="needs num_labels"):
        load_model(lm_dir, "multilabel", mesh=None)


@pytest.fixture(scope="module")
def rm(lm_dir, tmp_path_factory):
    """A reward model (trained head stand-in: a seeded one) as an HF directory and as an Orbax
    checkpoint saved through CheckpointManager with the trainer's metadata."""
    root = tmp_path_factory.mktemp("rm")
    model, params = load_model(lm_dir, "scalar", mesh=None, seed=5)
    model = model.clone(cfg=model.cfg.replace(pad_token_id=0))
    hf_dir = rj.save_hf(model, params, str(root / "hf"), dtype="float32")
    ckpt = str(root / "orbax")
    with CheckpointManager(ckpt, max_to_keep=None) as mgr:
        mgr.save(3, {"params": params}, metadata=checkpoint_metadata(model.cfg), force=True)
    return model, params, hf_dir, ckpt


def test_classifier_sources_keep_their_head(rm, mesh):
    model, params, hf_dir, ckpt = rm
    for source in (hf_dir, ckpt):
        m, p = load_model(source, mesh=mesh)
        assert (m.cfg.head, m.cfg.num_labels) == ("scalar", 1) and set(p) == {*TRUNK, "score"}
        _equal(p, params)
    m, p = load_model(ckpt, "multilabel", mesh=mesh)  # same width: kept, relabelled
    assert m.cfg.head == "multilabel"
    _equal(p["score"], params["score"])


def test_conflicting_heads_are_one_line_errors(rm, lm_ckpt, mesh):
    model, _, hf_dir, ckpt = rm
    for source in (hf_dir, ckpt):
        with pytest.raises(CheckpointError) as e:
            load_model(source, "multilabel", num_labels=3, mesh=mesh)
        assert "\n" not in str(e.value) and source in str(e.value) and "num_labels=1" in str(e.value)
        with pytest.raises(CheckpointError, match="head='lm'"):
            load_model(source, "lm", mesh=mesh)
    # restore_params reads the saved tree: a model config with another head says so
    with pytest.raises(CheckpointError) as e:
        restore_params(ckpt, model.cfg.replace(head="lm"), mesh)
    assert "head parameters score" in str(e.value) and "'lm'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError) as e:
        restore_params(ckpt, model.cfg.replace(head="multilabel", num_labels=3), mesh)
    assert "params/score" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError) as e:
        restore_params(lm_ckpt, model.cfg.replace(scan_layers=False), mesh)
    assert "head parameters lm_head" in str(e.value) and "needs score" in str(e.value)


def test_convert_a_reward_model_both_ways(rm, tmp_path):
    from rmr1_jax.text.tokenizer import train_sentencepiece

    _, params, hf_dir, _ = rm
    ckpt = str(tmp_path / "orbax")
    hf_to_orbax(hf_dir, ckpt)
    # its source directory has no tokenizer files and nothing else names one: no export without one
    with pytest.raises(CheckpointError, match="no tokenizer to export") as e:
        orbax_to_hf(ckpt, str(tmp_path / "hf"), dtype="float32")
    assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "hf")
    tok_dir = str(tmp_path / "tok")
    train_sentencepiece(["a reward model both ways"] * 20, tok_dir, vocab_size=290)
    out = orbax_to_hf(ckpt, str(tmp_path / "hf"), dtype="float32", tokenizer_dir=tok_dir)
    m, p = rj.load_hf(out)
    assert m.cfg.head == "scalar"
    _equal(p, params)
    assert os.path.isfile(os.path.join(out, "tokenizer.model"))


def test_source_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nor a model preset"):
        load_model(str(tmp_path / "nope"), mesh=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as e:
        load_model(str(empty), mesh=None)
    assert "no config.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_model(str(empty), kind="hf", mesh=None)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(str(tmp_path / "nope"), kind="hf", mesh=None)
    with pytest.raises(CheckpointError, match="head="):
        load_model("tiny", "value", mesh=None)
    assert not os.listdir(empty)  # reading never writes
    assert repr(FROM_SOURCE) == "FROM_SOURCE"
