"""HF import/export parity against transformers (the outside reference).

Every comparison here is our JAX model against a transformers model built from the same
safetensors, in float32, on valid (non-padding) positions only.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hf_models  # noqa: E402

import rmr1_jax as rj  # noqa: E402
from rmr1_jax.models import init_cache  # noqa: E402
from rmr1_jax.models.layers import rope_inv_freq  # noqa: E402

VARIANTS = ("qwen2-bias", "qwen2-tied", "llama3-gqa")
LAYOUTS = ("v5", "classic")
TOL = 1e-4

B, T = 3, 24
LENGTHS = np.array([24, 17, 9])  # right padding: rows of different valid lengths
PROMPT = 12  # KV-cache tests: prefill this many tokens, then decode one at a time


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, hf_models.VOCAB, (B, T)).astype(np.int32)
    mask = (np.arange(T)[None, :] < LENGTHS[:, None]).astype(np.int32)
    ids = np.where(mask.astype(bool), ids, 0).astype(np.int32)  # pads hold token 0, as a tokenizer would
    return ids, mask


IDS, MASK = _batch()
VALID = MASK.astype(bool)


def _canon(model):
    """Same module without source_dir (and with head_dim spelled out), so models loaded from
    different directories share compiles."""
    return model.clone(cfg=_arch(model.cfg))


def _arch(cfg):
    """The architecture part of a config: what must survive a round trip."""
    return cfg.replace(source_dir=None, head_dim=cfg.dim_head)


@partial(jax.jit, static_argnums=0)
def _fwd(model, params, ids, mask):
    return model.apply({"params": params}, ids, attention_mask=mask)


def forward(model, params, ids=IDS, mask=MASK):
    return np.asarray(_fwd(_canon(model), params, jnp.asarray(ids), jnp.asarray(mask)), np.float32)


def max_err(a, b, valid=VALID):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))[valid].max())


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """{variant: (torch model, {layout: dir})}: one random model per variant, saved in both
    config layouts (identical weights)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for seed, name in enumerate(VARIANTS):
        dirs = {}
        for layout in LAYOUTS:
            d = str(root / f"{name}-{layout}")
            model = hf_models.MAKERS[name](d, layout=layout, seed=seed)
            dirs[layout] = d
        out[name] = (model, dirs)
    return out


@pytest.fixture(scope="module")
def ref_logits(hf):
    return {name: hf_models.hf_logits(m, IDS, MASK) for name, (m, _) in hf.items()}


@pytest.fixture(scope="module")
def loaded(hf):
    """Our import of every (variant, layout), scanned, float32."""
    return {(name, layout): rj.load_hf(d) for name, (_, dirs) in hf.items() for layout, d in dirs.items()}


# --- import -------------------------------------------------------------------------------


def test_reference_models_are_nontrivial(hf, ref_logits):
    """Guard on the fixtures themselves: logits are O(1), padding changes nothing we compare,
    biases/norms are randomized, the tied model has no lm_head tensor."""
    for name, logits in ref_logits.items():
        assert 0.3 < float(logits[VALID].std()) < 10, name
    qwen = hf["qwen2-bias"][0]
    assert float(qwen.model.layers[0].self_attn.q_proj.bias.detach().abs().mean()) > 0.1
    assert float((qwen.model.norm.weight.detach() - 1).abs().mean()) > 0.02
    from safetensors import safe_open

    with safe_open(os.path.join(hf["qwen2-tied"][1]["v5"], "model.safetensors"), "np") as f:
        assert "lm_head.weight" not in f.keys()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", VARIANTS)
def test_logits_match_transformers(name, layout, loaded, ref_logits):
    model, params = loaded[(name, layout)]
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    err = max_err(forward(model, params), ref_logits[name])
    assert err < TOL, f"{name}/{layout}: max-abs logit error {err:.2e}"


@pytest.mark.parametrize("name", VARIANTS)
def test_both_config_layouts_give_same_config(name, loaded):
    a, b = (_arch(loaded[(name, layout)][0].cfg) for layout in LAYOUTS)
    assert a == b


@pytest.mark.parametrize("name", VARIANTS)
def test_config_translation(name, hf, loaded):
    """Fields read from config.json agree with what transformers itself understood."""
    tm, _ = hf[name]
    tc = tm.config
    cfg = loaded[(name, "classic")][0].cfg
    assert cfg.vocab_size == tc.vocab_size and cfg.hidden_size == tc.hidden_size
    assert cfg.num_hidden_layers == tc.num_hidden_layers
    assert cfg.num_attention_heads == tc.num_attention_heads
    assert cfg.num_key_value_heads == tc.num_key_value_heads
    assert cfg.rms_norm_eps == pytest.approx(tc.rms_norm_eps)
    assert cfg.rope_theta == pytest.approx(tc.rope_parameters["rope_theta"])
    assert cfg.tie_word_embeddings == tc.tie_word_embeddings
    # rotary inverse frequencies (Llama-3 scaling included) equal transformers' buffer
    ours = np.asarray(rope_inv_freq(cfg))
    theirs = tm.model.rotary_emb.inv_freq.float().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
    if name == "llama3-gqa":
        unscaled = np.asarray(rope_inv_freq(cfg.replace(rope_scaling=None)))
        # the scaling really changes frequencies at this size (otherwise the test proves nothing)
        assert np.abs(unscaled - ours).max() > 1e-3


def test_sharded_checkpoint(tmp_path):
    d = str(tmp_path / "sharded")
    tm = hf_models.make_sharded(d, kind="llama3", seed=7)
    n_files = len([f for f in os.listdir(d) if f.endswith(".safetensors")])
    assert n_files >= 3
    model, params = rj.load_hf(d)
    err = max_err(forward(model, params), hf_models.hf_logits(tm, IDS, MASK))
    assert err < TOL, f"sharded checkpoint: max-abs logit error {err:.2e}"


def test_scan_and_unrolled_layers_agree(hf, loaded, ref_logits):
    name = "llama3-gqa"
    m_scan, p_scan = loaded[(name, "v5")]
    m_unr, p_unr = rj.load_hf(hf[name][1]["v5"], scan_layers=False)
    assert "layers" in p_scan and "layers_0" not in p_scan
    assert "layers_0" in p_unr and "layers" not in p_unr
    a, b = forward(m_scan, p_scan), forward(m_unr, p_unr)
    assert max_err(a, b) < 1e-5
    assert max_err(b, ref_logits[name]) < TOL


def test_bfloat16_params(hf):
    tm, dirs = hf["qwen2-bias"]
    model, params = rj.load_hf(dirs["v5"], dtype="bfloat16")
    dtypes = {str(x.dtype) for x in jax.tree.leaves(params)}
    assert dtypes == {"bfloat16"}, dtypes
    assert model.cfg.param_dtype == "bfloat16"
    # values are transformers' weights rounded to bf16 (layout: [V, D] embedding, [D, N, H] q kernel)
    emb = tm.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(params["embed_tokens"], np.float32), emb)
    q1 = tm.model.layers[1].self_attn.q_proj.weight.detach().to(torch.bfloat16).float().numpy()
    ours_q1 = np.asarray(params["layers"]["self_attn"]["q_proj_kernel"][1], np.float32)
    np.testing.assert_array_equal(ours_q1.reshape(ours_q1.shape[0], -1).T, q1)


def test_bfloat16_compute_close_to_float32(hf, ref_logits):
    name = "llama3-gqa"
    model, params = rj.load_hf(hf[name][1]["v5"], compute_dtype="bfloat16", scan_layers=False)
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"float32"}
    out = forward(model, params)
    assert out.dtype == np.float32
    ref = ref_logits[name]
    scale = float(np.abs(ref[VALID]).max())
    err = max_err(out, ref)
    assert err < 5e-2 * scale, f"bf16 compute error {err:.3f} vs logit scale {scale:.3f}"
    assert err > 0  # it really computed in bf16
    agree = float((out.argmax(-1) == ref.argmax(-1))[VALID].mean())
    assert agree >= 0.9, f"argmax agreement {agree:.2f}"


# --- KV cache -------------------------------------------------------------------------------


@partial(jax.jit, static_argnums=0)
def _cached(model, params, ids, mask, cache, index):
    return model.apply({"params": params}, ids, attention_mask=mask, cache=cache, cache_index=index)


def _decode_all(model, params, ids, mask, prompt_len):
    """Prefill ids[:, :prompt_len] then feed the rest one token at a time; the logits of every
    position, stacked [B, T, V]."""
    model = _canon(model)
    b, t = ids.shape
    cache = init_cache(model.cfg, b, t)
    logits, cache = _cached(model, params, jnp.asarray(ids[:, :prompt_len]), jnp.asarray(mask[:, :prompt_len]),
                            cache, 0)
    steps = [np.asarray(logits)]
    for i in range(prompt_len, t):
        logits, cache = _cached(model, params, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(mask[:, i:i + 1]),
                                cache, i)
        steps.append(np.asarray(logits))
    return np.concatenate(steps, axis=1)


@pytest.mark.parametrize("name", ["llama3-gqa", "qwen2-bias"])
def test_kv_cache_decode_matches_full_forward(name, hf, loaded):
    tm = hf[name][0]
    model, params = loaded[(name, "v5")]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, hf_models.VOCAB, (B, T)).astype(np.int32)
    mask = np.ones_like(ids)
    step = _decode_all(model, params, ids, mask, prompt_len=PROMPT)
    full = forward(model, params, ids, mask)
    ref = hf_models.hf_logits(tm, ids, mask)
    valid = mask.astype(bool)
    assert max_err(step, full, valid) < TOL
    assert max_err(step, ref, valid) < TOL


@pytest.mark.parametrize("name", ["llama3-gqa", "qwen2-bias"])
def test_kv_cache_left_padded_matches_transformers(name, hf, loaded):
    """Left-padded prompts (transformers' generate convention): position_ids = cumsum(mask) - 1."""
    tm = hf[name][0]
    model, params = loaded[(name, "v5")]
    rng = np.random.default_rng(2)
    pads = np.array([0, 3, 7])
    ids = rng.integers(0, hf_models.VOCAB, (B, T)).astype(np.int32)
    mask = (np.arange(T)[None, :] >= pads[:, None]).astype(np.int32)
    ids = np.where(mask.astype(bool), ids, 0).astype(np.int32)
    position_ids = np.cumsum(mask, axis=-1) - 1
    position_ids = np.where(mask.astype(bool), position_ids, 1)  # as transformers' generate fills pads
    ref = hf_models.hf_logits(tm, ids, mask, position_ids=position_ids)
    valid = mask.astype(bool)

    step = _decode_all(model, params, ids, mask, prompt_len=PROMPT)
    err = max_err(step, ref, valid)
    assert err < TOL, f"{name}: cached decode vs transformers, max-abs error {err:.2e}"
    full = forward(model, params, ids, mask)
    err = max_err(full, ref, valid)
    assert err < TOL, f"{name}: full left-padded forward vs transformers, max-abs error {err:.2e}"
    assert max_err(step, full, valid) < TOL
    # the reference itself: a left-padded row equals the same tokens run without padding
    plain = hf_models.hf_logits(tm, ids[2:, 7:], mask[2:, 7:])
    np.testing.assert_allclose(ref[2, 7:], plain[0], atol=TOL)


# --- export ---------------------------------------------------------------------------------


def _load_transformers(path, **kw):
    tm, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kw)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(key), f"{path}: transformers reports {key}={info.get(key)}"
    return tm.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_export_float32_roundtrip(name, hf, loaded, ref_logits, tmp_path):
    model, params = loaded[(name, "classic")]
    out = str(tmp_path / "export")
    assert rj.save_hf(model, params, out, dtype="float32") == os.path.abspath(out)
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert os.path.isfile(os.path.join(out, "generation_config.json"))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert not [p for p in os.listdir(tmp_path) if "partial" in p or ".old-" in p]
    tm = _load_transformers(out)
    assert next(tm.parameters()).dtype == torch.float32
    assert tm.config.tie_word_embeddings == (name == "qwen2-tied")
    err = max_err(hf_models.hf_logits(tm, IDS, MASK), ref_logits[name])
    assert err < TOL, f"{name}: exported model in transformers, max-abs logit error {err:.2e}"
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == hf[name][0].generation_config.eos_token_id
    # and it reads back into us unchanged (unrolled: cheap to load, and the llama compile is shared)
    m2, p2 = rj.load_hf(out, scan_layers=False)
    assert _arch(m2.cfg) == _arch(model.cfg).replace(scan_layers=False)
    if name == "llama3-gqa":
        assert max_err(forward(m2, p2), ref_logits[name]) < TOL


def test_export_bfloat16(hf, loaded, ref_logits, tmp_path):
    name = "llama3-gqa"
    model, params = loaded[(name, "v5")]
    out = str(tmp_path / "bf16")
    rj.save_hf(model, params, out, dtype="bfloat16")
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    tm = _load_transformers(out)
    assert next(tm.parameters()).dtype == torch.bfloat16  # config says bfloat16
    got = hf_models.hf_logits(tm, IDS, MASK)
    ref = ref_logits[name]
    scale = float(np.abs(ref[VALID]).max())
    err = max_err(got, ref)
    assert err < 5e-2 * scale, f"bf16 export: error {err:.3f} vs logit scale {scale:.3f}"
    # weights are exactly the float32 ones rounded to bf16
    w = tm.model.layers[2].mlp.down_proj.weight.detach().float().numpy()
    ours = np.asarray(params["layers"]["mlp"]["down_proj_kernel"][2]).T.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(w, ours.astype(np.float32))


def test_export_sharded(hf, loaded, ref_logits, tmp_path):
    name = "qwen2-bias"
    model, params = loaded[(name, "v5")]
    out = str(tmp_path / "sharded")
    rj.save_hf(model, params, out, dtype="float32", max_shard_bytes=60_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) >= 3, files
    assert "model.safetensors" not in files
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert set(index["weight_map"].values()) == set(files)
    tm = _load_transformers(out)
    assert set(index["weight_map"]) == set(tm.state_dict())
    err = max_err(hf_models.hf_logits(tm, IDS, MASK), ref_logits[name])
    assert err < TOL, f"sharded export: max-abs logit error {err:.2e}"


def test_export_from_unrolled_params(hf, ref_logits, tmp_path):
    name = "qwen2-tied"
    model, params = rj.load_hf(hf[name][1]["v5"], scan_layers=False)
    out = str(tmp_path / "unrolled")
    rj.save_hf(model, params, out, dtype="float32")
    tm = _load_transformers(out)
    err = max_err(hf_models.hf_logits(tm, IDS, MASK), ref_logits[name])
    assert err < TOL


def test_llama_attention_bias_including_o_proj(tmp_path):
    """Llama with ``attention_bias: true``: HF adds biases to q/k/v and to o_proj. Import, the
    logits, and the export transformers reads back, against transformers."""
    d = str(tmp_path / "llama-bias")
    hf = hf_models.make_llama3(d, seed=7, attention_bias=True)
    assert float(hf.model.layers[0].self_attn.o_proj.bias.detach().abs().mean()) > 0.1  # randomized
    ref = hf_models.hf_logits(hf, IDS, MASK)
    model, params = rj.load_hf(d, scan_layers=False)
    assert model.cfg.o_proj_bias
    assert max_err(forward(model, params), ref) < TOL
    out = str(tmp_path / "export")
    rj.save_hf(model, params, out, dtype="float32")
    assert max_err(hf_models.hf_logits(_load_transformers(out), IDS, MASK), ref) < TOL


def test_attention_impl_is_kept_when_loading_an_hf_directory(hf):
    """``model.attention_impl`` reaches the model built from ``model.hf_dir``."""
    from rmr1_jax.schema import ModelSpec
    from rmr1_jax.train.setup import build_model

    _, dirs = hf["llama3-gqa"]
    model, _ = build_model(ModelSpec(hf_dir=dirs["v5"], attention_impl="xla", scan_layers=False), mesh=None)
    assert model.cfg.attention_impl == "xla"
