"""LoRA adapters against the outside reference: a fresh adapter changes nothing, a trained one
computes exactly the merged model, and the merged export (plain HF, no PEFT) gives transformers
the same logits. Random tiny Qwen2 (q/k/v biases) and Llama (GQA, Llama-3 rope scaling,
attention biases including o_proj) models are built offline with transformers."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec as P

import hf_models
from rmr1_jax.checkpoint.convert import checkpoint_metadata, orbax_to_hf
from rmr1_jax.checkpoint.hf import save_hf
from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.checkpoint.lora_base import base_record
from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.errors import CheckpointError, ConfigError
from rmr1_jax.models import lora
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import abstract_params, init_params, num_params
from rmr1_jax.models.presets import preset
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.text.tokenizer import train_sentencepiece

TOL = 1e-4
B, T = 3, 20
LENGTHS = np.array([20, 13, 7])
RANK, ALPHA = 4, 8.0


def _batch():
    rng = np.random.default_rng(0)
    mask = (np.arange(T)[None, :] < LENGTHS[:, None]).astype(np.int32)
    ids = np.where(mask > 0, rng.integers(0, hf_models.VOCAB, (B, T)), 0).astype(np.int32)
    return ids, mask


IDS, MASK = _batch()
VALID = MASK.astype(bool)


def logits(model, params, ids=IDS, mask=MASK):
    return np.asarray(jax.jit(lambda p: model.apply({"params": p}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))(
        params), np.float32)


def max_err(a, b):
    return float(np.abs(a - b)[VALID].max())


def randomize_adapters(params, seed: int, std: float = 0.1):
    """Nonzero A and B (a trained adapter), each kept in its sharding."""
    adapters, base = lora.split_params(params)
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [jax.device_put(std * jax.random.normal(k, x.shape, x.dtype), x.sharding) for k, x in zip(keys, leaves)]
    return lora.combine(base, jax.tree.unflatten(treedef, new))


# variant -> (maker kwargs, mesh, scan_layers)
VARIANTS = {
    "qwen2-bias": (hf_models.make_qwen2, {}, MeshConfig(data=2, fsdp=2, tensor=2), True),
    "llama3-bias": (hf_models.make_llama3, {"attention_bias": True}, MeshConfig(data=2, fsdp=4), False),
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-hf")
    out = {}
    for seed, (name, (maker, kw, _, _)) in enumerate(VARIANTS.items()):
        d = str(root / name)
        out[name] = (maker(d, seed=seed, **kw), d)
    return out


def _load(name, d, **kw):
    _, _, mesh_cfg, scan = VARIANTS[name]
    mesh = make_mesh(mesh_cfg)
    return mesh, load_model(d, kind="hf", mesh=mesh, scan_layers=scan, **kw)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fresh_adapters_leave_the_logits_bit_identical(name, hf_dirs):
    torch_model, d = hf_dirs[name]
    _, (base_model, base) = _load(name, d)
    _, (model, params) = _load(name, d, lora_rank=RANK, lora_alpha=ALPHA)
    assert model.cfg.lora_rank == RANK and model.cfg.lora_scale == ALPHA / RANK
    adapters, frozen = lora.split_params(params)
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(frozen), jax.tree_util.tree_leaves_with_path(base)):
        assert pa == pb and np.array_equal(np.asarray(a), np.asarray(b))
    a_leaves = [x for p, x in jax.tree_util.tree_leaves_with_path(adapters) if str(p[-1].key).endswith("_lora_a")]
    b_leaves = [x for p, x in jax.tree_util.tree_leaves_with_path(adapters) if str(p[-1].key).endswith("_lora_b")]
    assert len(a_leaves) == len(b_leaves) == 7 * (1 if model.cfg.scan_layers else model.cfg.num_hidden_layers)
    assert all(float(jnp.abs(x).max()) > 0 for x in a_leaves) and all(float(jnp.abs(x).max()) == 0 for x in b_leaves)
    ours = logits(model, params)
    assert np.array_equal(ours, logits(base_model, base))
    assert max_err(ours, hf_models.hf_logits(torch_model, IDS, MASK)) < TOL


@pytest.mark.parametrize("name", list(VARIANTS))
def test_trained_adapters_equal_the_merged_model_and_its_hf_export(name, hf_dirs, tmp_path):
    torch_model, d = hf_dirs[name]
    _, (model, params) = _load(name, d, lora_rank=RANK, lora_alpha=ALPHA)
    params = randomize_adapters(params, seed=1)
    ours = logits(model, params)
    base_ref = hf_models.hf_logits(torch_model, IDS, MASK)
    assert max_err(ours, base_ref) > 0.1  # the adapters change the model: the comparisons below mean something
    merged_cfg, merged = lora.merge(model.cfg, params)
    assert merged_cfg.lora_rank == 0 and not lora.has_adapters(merged)
    err_merged = max_err(ours, logits(DecoderLM(merged_cfg), merged))
    assert err_merged < 1e-5, f"LoRA forward vs merged kernels: {err_merged:.2e}"
    out = str(tmp_path / "export")
    save_hf(model, params, out, dtype="float32")  # merges: a plain HF model
    with open(os.path.join(out, "config.json")) as f:
        assert not [k for k in json.load(f) if "lora" in k]
    tm, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    err_hf = max_err(ours, hf_models.hf_logits(tm.eval(), IDS, MASK))
    print(f"{name}: LoRA vs merged {err_merged:.2e}, LoRA vs transformers(merged export) {err_hf:.2e}")
    assert err_hf < TOL, f"{name}: merged export in transformers, max-abs logit error {err_hf:.2e}"


def _write_lora_checkpoint(directory, model, params, base_dir, seed=0):
    """A checkpoint as a LoRA run writes it: the adapters only, the base named in the metadata."""
    adapters, base = lora.split_for(model.cfg, params)
    meta = {**checkpoint_metadata(model.cfg), "lora_base": base_record("hf", base_dir, seed, base)}
    with CheckpointManager(directory, async_save=False) as mgr:
        mgr.save(3, {"params": adapters}, metadata=meta, force=True)


def test_a_lora_checkpoint_loads_and_exports_as_the_merged_model(hf_dirs, tmp_path):
    name = "qwen2-bias"
    _, d = hf_dirs[name]
    mesh, (model, params) = _load(name, d, lora_rank=RANK, lora_alpha=ALPHA)
    params = randomize_adapters(params, seed=2)
    ours = logits(model, params)
    ckpt = str(tmp_path / "ckpt")
    _write_lora_checkpoint(ckpt, model, params, d)
    with CheckpointManager(ckpt, read_only=True) as mgr:  # the adapters, not a second base
        saved = [p for p, _ in jax.tree_util.tree_leaves_with_path(mgr.saved_tree(3, "params"))]
    assert saved and all(str(p[-1].key).endswith(("_lora_a", "_lora_b")) for p in saved)
    m2, p2 = load_model(ckpt, mesh=mesh, scan_layers=False)  # another layout than the run's
    assert m2.cfg.lora_rank == 0 and not lora.has_adapters(p2) and not m2.cfg.scan_layers
    assert max_err(ours, logits(m2, p2)) < 1e-5
    out, tok = str(tmp_path / "hf"), str(tmp_path / "tok")  # an export carries a tokenizer
    train_sentencepiece([f"word{i} and word{i + 1} again" for i in range(60)], tok, vocab_size=hf_models.VOCAB - 10)
    orbax_to_hf(ckpt, out, dtype="float32", mesh_cfg=VARIANTS[name][2], tokenizer_dir=tok)
    tm = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert max_err(ours, hf_models.hf_logits(tm, IDS, MASK)) < TOL


def test_a_lora_checkpoint_refuses_a_base_that_changed(hf_dirs, tmp_path):
    _, d = hf_dirs["qwen2-bias"]
    mesh, (model, params) = _load("qwen2-bias", d, lora_rank=RANK)
    base_dir = str(tmp_path / "base")
    hf_models.make_qwen2(base_dir, seed=0)  # the same weights as ``d``
    ckpt = str(tmp_path / "ckpt")
    _write_lora_checkpoint(ckpt, model, params, base_dir)
    load_model(ckpt, mesh=mesh)
    hf_models.make_qwen2(base_dir, seed=5)  # overwritten with other weights
    with pytest.raises(CheckpointError, match=r"not the weights the adapters were trained on"):
        load_model(ckpt, mesh=mesh)


def test_trainable_count_is_what_the_rank_implies():
    cfg = preset("tiny", dtype="float32", scan_layers=False)
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.dim_head, cfg.num_key_value_heads * cfg.dim_head
    for r, targets, per_layer in ((8, lora.LORA_TARGETS, (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d)),
                                  (2, ("q_proj", "v_proj"), (d + q) + (d + kv))):
        lcfg = lora.with_lora(cfg, r, 16.0, targets)
        params = abstract_params(DecoderLM(lcfg))  # shapes only
        adapters, base = lora.split_params(params)
        assert lora.trainable_count(params) == num_params(adapters) == L * r * per_layer == lora.adapter_count(lcfg)
        assert num_params(base) == cfg.num_params()  # the base is the model without LoRA, whole
        assert lora.trainable_count(base) == num_params(base)  # no adapters: full fine-tuning
        print(f"rank {r} on {len(targets)} projections: {num_params(adapters)} trainable of "
              f"{num_params(params)} ({100 * num_params(adapters) / num_params(params):.2f}%)")
    head = abstract_params(DecoderLM(lora.with_lora(cfg.replace(head="scalar"), 4)))
    trained, frozen = lora.split_params(head, head=True)
    assert "score" in trained and "score" not in frozen and lora.combine(frozen, trained).keys() == head.keys()


def test_adapters_are_sharded_like_their_kernels():
    cfg = lora.with_lora(preset("tiny", dtype="float32", scan_layers=True), 4)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    layers = init_params(DecoderLM(cfg), jax.random.key(0), mesh)["layers"]
    spec = lambda part, name: layers[part][name].sharding.spec  # noqa: E731
    assert spec("self_attn", "q_proj_lora_a") == P(None, "fsdp", None)  # [L, D, r]
    assert spec("self_attn", "q_proj_lora_b") == P(None, None, "tensor", None)  # [L, r, N, H]
    assert spec("self_attn", "o_proj_lora_a") == P(None, "tensor", None, None)  # [L, N, H, r]
    assert spec("self_attn", "o_proj_lora_b") == P(None, None, "fsdp")  # [L, r, D]
    assert spec("mlp", "down_proj_lora_a") == P(None, "tensor", None)  # [L, F, r]
    assert spec("mlp", "gate_proj_lora_b") == P(None, None, "tensor")  # [L, r, F]


@pytest.mark.parametrize("override, message", [
    ("model.lora_rank=-2", r"model\.lora_rank=-2 must be 0 \(full fine-tuning\) or positive"),
    ("model.lora_alpha=0", r"model\.lora_alpha=0\.0 must be positive"),
    ("model.lora_targets=[q_proj,wq]", r"model\.lora_targets: 'wq' is not one of"),
    ("model.lora_targets=[]", r"model\.lora_targets=\[\] must name each projection"),
    ("model.lora_rank=1.5", r"model\.lora_rank=1\.5 must be an integer"),
])
def test_bad_lora_settings_are_one_line_config_errors(override, message):
    from rmr1_jax.train.runner import load_config

    with pytest.raises(ConfigError, match=message) as e:
        load_config("distill", None, ["data.train=[x.jsonl]", override])
    assert "\n" not in str(e.value)


def test_lora_settings_stay_out_of_the_hf_config_and_survive_checkpoint_metadata():
    cfg = lora.with_lora(preset("tiny"), 8, 32.0, ["q_proj", "v_proj"])
    assert not [k for k in cfg.to_hf_dict() if "lora" in k]
    back = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.lora_targets == ("q_proj", "v_proj")
    with pytest.raises(CheckpointError, match="lora_targets"):
        cfg.replace(lora_targets=("q_proj", "q_proj"))
