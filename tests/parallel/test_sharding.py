"""Sharded import and execution on the 8 simulated CPU devices: the same transformers model gives
the same logits on every mesh, and every parameter lands where the rules table says."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hf_models  # noqa: E402

import rmr1_jax as rj  # noqa: E402
from rmr1_jax.errors import ConfigError  # noqa: E402
from rmr1_jax.models import DecoderLM, init_params, preset  # noqa: E402
from rmr1_jax.models.params import PARAM_AXES  # noqa: E402
from rmr1_jax.parallel import MeshConfig, activation_sharding, logical_to_spec, make_mesh  # noqa: E402

MESHES = [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 2, 4)]
B, T = 8, 16  # batch divisible by every data*fsdp product above


def _mesh(shape):
    devices = jax.devices()[:1] if shape == (1, 1, 1) else None
    return make_mesh(shape, devices=devices)


def _spec(leaf) -> tuple:
    """A leaf's PartitionSpec as a tuple padded to its rank."""
    spec = tuple(leaf.sharding.spec)
    return spec + (None,) * (leaf.ndim - len(spec))


def _pad(spec: P, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


def _expected_spec(path, leaf, mesh) -> tuple:
    """PARAM_AXES of the leaf's name, with the leading 'layers' axis for stacked layers."""
    keys = [str(getattr(p, "key", p)) for p in path]
    axes = PARAM_AXES[keys[-1]]
    if keys[0] == "layers":
        axes = ("layers",) + axes
    assert len(axes) == leaf.ndim, keys
    return _pad(logical_to_spec(axes, leaf.shape, mesh), leaf.ndim)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hf") / "qwen2")
    tm = hf_models.make_qwen2(d, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, hf_models.VOCAB, (B, T)).astype(np.int32)
    lengths = rng.integers(4, T + 1, B)
    lengths[0] = T
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    return tm, d, ids, mask


@pytest.fixture(scope="module")
def runs(hf):
    """{mesh shape: (mesh, params, logits)} for the same checkpoint on every mesh."""
    _, d, ids, mask = hf
    out = {}
    for shape in MESHES:
        mesh = _mesh(shape)
        model, params = rj.load_hf(d, mesh=mesh)

        def fwd(params, ids, mask, model=model, mesh=mesh):
            with activation_sharding(mesh):
                return model.apply({"params": params}, ids, attention_mask=mask)

        batch = NamedSharding(mesh, P(("data", "fsdp")))
        logits = jax.jit(fwd)(params, jax.device_put(ids, batch), jax.device_put(mask, batch))
        out[shape] = (mesh, params, logits)
    return out


def test_single_device_matches_transformers(hf, runs):
    tm, _, ids, mask = hf
    ref = hf_models.hf_logits(tm, ids, mask)
    valid = mask.astype(bool)
    got = np.asarray(runs[(1, 1, 1)][2])
    err = float(np.abs(got - ref)[valid].max())
    assert err < 1e-4, f"max-abs logit error vs transformers {err:.2e}"


@pytest.mark.parametrize("shape", MESHES[1:])
def test_same_logits_on_every_mesh(shape, hf, runs):
    mask = hf[3].astype(bool)
    base = np.asarray(runs[(1, 1, 1)][2])
    mesh, params, logits = runs[shape]
    assert len(set(mesh.devices.flat)) == int(np.prod(shape))
    err = float(np.abs(np.asarray(logits) - base)[mask].max())
    assert err < 1e-5, f"mesh {shape}: max-abs logit difference {err:.2e}"


def test_logits_follow_activation_rules(runs):
    mesh, _, logits = runs[(2, 2, 2)]
    assert isinstance(logits.sharding, NamedSharding)
    assert _spec(logits) == (("data", "fsdp"), None, "tensor")


@pytest.mark.parametrize("shape", MESHES)
def test_every_param_follows_rules_table(shape, runs):
    mesh, params, _ = runs[shape]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf.sharding, NamedSharding), name
        assert leaf.sharding.mesh.shape == mesh.shape, name
        assert _spec(leaf) == _expected_spec(path, leaf, mesh), name
        # every device holds exactly its block, never the whole array (unless replicated)
        want = leaf.sharding.shard_shape(leaf.shape)
        for shard in leaf.addressable_shards:
            assert shard.data.shape == want, name


def test_param_specs_on_2x2x2(runs):
    mesh, p, _ = runs[(2, 2, 2)]
    attn, mlp = p["layers"]["self_attn"], p["layers"]["mlp"]
    assert attn["q_proj_kernel"].shape == (2, 64, 4, 16)  # [L, D, N, H]
    assert _spec(attn["q_proj_kernel"]) == (None, "fsdp", "tensor", None)
    assert _spec(attn["k_proj_kernel"]) == (None, "fsdp", "tensor", None)  # 2 KV heads on tensor=2
    assert _spec(attn["o_proj_kernel"]) == (None, "tensor", None, "fsdp")
    assert _spec(attn["q_proj_bias"]) == (None, "tensor", None)
    assert _spec(p["embed_tokens"]) == ("tensor", "fsdp")
    assert _spec(p["lm_head"]) == ("fsdp", "tensor")
    assert _spec(mlp["gate_proj_kernel"]) == (None, "fsdp", "tensor")
    assert _spec(mlp["down_proj_kernel"]) == (None, "tensor", "fsdp")
    assert _spec(p["norm"]["scale"]) == (None,)
    assert p["embed_tokens"].addressable_shards[0].data.shape == (150, 32)
    assert attn["q_proj_kernel"].addressable_shards[0].data.shape == (2, 32, 2, 16)


def test_indivisible_dim_is_replicated(runs):
    """kv_heads=2 on tensor=4: that dim is replicated instead of failing; the rest still shards."""
    mesh, p, _ = runs[(1, 2, 4)]
    attn = p["layers"]["self_attn"]
    assert attn["k_proj_kernel"].shape[2] == 2
    assert _spec(attn["k_proj_kernel"]) == (None, "fsdp", None, None)
    assert _spec(attn["v_proj_bias"]) == (None, None, None)
    assert attn["k_proj_kernel"].addressable_shards[0].data.shape == (2, 32, 2, 16)
    assert _spec(attn["q_proj_kernel"]) == (None, "fsdp", "tensor", None)  # 4 heads on tensor=4
    assert _spec(p["embed_tokens"]) == ("tensor", "fsdp")  # 300 % 4 == 0


def test_pure_data_parallel_replicates_params(runs):
    mesh, p, _ = runs[(8, 1, 1)]
    for path, leaf in jax.tree_util.tree_leaves_with_path(p):
        assert all(s is None for s in _spec(leaf)), jax.tree_util.keystr(path)
        assert leaf.addressable_shards[0].data.shape == leaf.shape


def test_init_params_is_born_sharded():
    model = DecoderLM(preset("tiny"))
    mesh = make_mesh((2, 2, 2))
    key = jax.random.key(0)
    params = init_params(model, key, mesh)
    emb = params["embed_tokens"]
    assert emb.shape == (512, 64)
    assert _spec(emb) == ("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (256, 32)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        assert _spec(leaf) == _expected_spec(path, leaf, mesh), name
        want = leaf.sharding.shard_shape(leaf.shape)
        assert all(s.data.shape == want for s in leaf.addressable_shards), name
    # really random: the embedding has the initializer's spread on every shard
    for shard in emb.addressable_shards:
        assert 0.015 < float(jnp.std(shard.data)) < 0.025


# --- make_mesh ------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, want", [
    ((-1, 2, 2), (2, 2, 2)),
    ((2, -1, 1), (2, 4, 1)),
    ((1, 2, -1), (1, 2, 4)),
    (MeshConfig(), (8, 1, 1)),
    (None, (8, 1, 1)),
])
def test_make_mesh_infers_minus_one(cfg, want):
    mesh = make_mesh(cfg)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape[a] for a in mesh.axis_names) == want
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_with_device_subset():
    mesh = make_mesh((-1, 2, 1), devices=jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("cfg, words", [
    ((0, 1, 8), ["mesh.data=0"]),
    ((1, -2, 8), ["mesh.fsdp=-2"]),
    ((1, 8, -3), ["mesh.tensor=-3"]),
    ((-1, 3, 1), ["fsdp=3", "8 devices"]),
    ((-1, -1, 2), ["-1"]),
    ((3, 1, 1), ["data", "8 devices"]),
    ((2, 2, 4), ["16", "8 devices"]),
    (MeshConfig(data=2, fsdp=2, tensor=2, dcn_data=3), ["dcn_data=3"]),
])
def test_make_mesh_bad_shapes(cfg, words):
    with pytest.raises(ConfigError) as e:
        make_mesh(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
