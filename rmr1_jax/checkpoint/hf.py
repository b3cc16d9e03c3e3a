"""Hugging Face checkpoint import and export for the Qwen2 and Llama families, causal LMs and
sequence classifiers (``score.weight`` [num_labels, D] <-> our ``score`` [D, num_labels]).

Import reads ``config.json`` (classic or transformers-5 layout) and safetensors (single file or
sharded with an index), checks every tensor's name, shape and dtype against the config before
reading any weights, then streams the weights tensor by tensor straight into their target
shardings: host memory stays near the size of the largest tensor. Pickle weights (``.bin``,
``.pt``) are refused: loading them can run arbitrary code.

Export writes a directory ``transformers.AutoModelForCausalLM.from_pretrained`` (or, for a
classification head, ``AutoModelForSequenceClassification``) loads, into a temporary sibling
directory that is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors import safe_open
from safetensors.numpy import save_file

from rmr1_jax.errors import CheckpointError
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import HEAD_PARAMS, abstract_params, logical_axes_for
from rmr1_jax.parallel.hostlocal import fetch
from rmr1_jax.parallel.sharding import named_sharding

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_IGNORED_TENSORS = ("rotary_emb.inv_freq",)
_HEAD_TENSORS = ("lm_head.weight", "score.weight")
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


# --- the name/layout table ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and where it lives in our parameter tree."""

    hf_name: str
    path: tuple[str, ...]  # path in the unrolled-per-layer tree (layer leaves under "layers")
    layer: int | None
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_head
    ident = lambda x: x
    T = lambda x: x.T

    def in_heads(heads):  # [heads*h, d] <-> [d, heads, h]
        return (lambda w: w.T.reshape(d, heads, h), lambda w: w.reshape(d, heads * h).T)

    def bias(heads):
        return (lambda b: b.reshape(heads, h), lambda b: b.reshape(heads * h))

    specs = [TensorSpec("model.embed_tokens.weight", ("embed_tokens",), None, (v, d), ident, ident),
             TensorSpec("model.norm.weight", ("norm", "scale"), None, (d,), ident, ident)]
    if cfg.is_classifier:
        specs.append(TensorSpec("score.weight", ("score",), None, (cfg.num_labels, d), T, T))
    elif not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head",), None, (v, d), T, T))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        L = lambda *path: ("layers",) + path
        specs += [
            TensorSpec(p + "input_layernorm.weight", L("input_layernorm", "scale"), i, (d,), ident, ident),
            TensorSpec(p + "post_attention_layernorm.weight", L("post_attention_layernorm", "scale"), i, (d,),
                       ident, ident),
            TensorSpec(p + "self_attn.q_proj.weight", L("self_attn", "q_proj_kernel"), i, (n * h, d), *in_heads(n)),
            TensorSpec(p + "self_attn.k_proj.weight", L("self_attn", "k_proj_kernel"), i, (k * h, d), *in_heads(k)),
            TensorSpec(p + "self_attn.v_proj.weight", L("self_attn", "v_proj_kernel"), i, (k * h, d), *in_heads(k)),
            TensorSpec(p + "self_attn.o_proj.weight", L("self_attn", "o_proj_kernel"), i, (d, n * h),
                       lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T),
            TensorSpec(p + "mlp.gate_proj.weight", L("mlp", "gate_proj_kernel"), i, (f, d), T, T),
            TensorSpec(p + "mlp.up_proj.weight", L("mlp", "up_proj_kernel"), i, (f, d), T, T),
            TensorSpec(p + "mlp.down_proj.weight", L("mlp", "down_proj_kernel"), i, (d, f), T, T),
        ]
        if cfg.attention_bias:
            specs += [
                TensorSpec(p + "self_attn.q_proj.bias", L("self_attn", "q_proj_bias"), i, (n * h,), *bias(n)),
                TensorSpec(p + "self_attn.k_proj.bias", L("self_attn", "k_proj_bias"), i, (k * h,), *bias(k)),
                TensorSpec(p + "self_attn.v_proj.bias", L("self_attn", "v_proj_bias"), i, (k * h,), *bias(k)),
            ]
        if cfg.o_proj_bias:
            specs.append(TensorSpec(p + "self_attn.o_proj.bias", L("self_attn", "o_proj_bias"), i, (d,), ident, ident))
    return specs


def _tree_path(spec: TensorSpec, scanned: bool) -> tuple[str, ...]:
    if spec.layer is None or scanned:
        return spec.path
    return (f"layers_{spec.layer}",) + spec.path[1:]


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


# --- locating and checking weight files ---------------------------------------------------


def _weight_map(path: str) -> dict[str, str]:
    """tensor name -> safetensors file, from the index or the single file."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                wm = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: malformed safetensors index ({type(e).__name__}: {e})") from None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names")
        files = {os.path.join(path, v) for v in wm.values()}
        for fn in sorted(files):
            if not os.path.isfile(fn):
                raise CheckpointError(f"{fn}: listed in {index} but missing")
        return {name: os.path.join(path, fn) for name, fn in wm.items()}
    if os.path.isfile(single):
        return {name: single for name in _keys(single)}
    shards = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if shards:
        out = {}
        for fn in shards:
            out.update({name: fn for name in _keys(fn)})
        return out
    pickles = [p for pat in PICKLE_PATTERNS for p in glob.glob(os.path.join(path, pat))]
    if pickles:
        raise CheckpointError(
            f"{pickles[0]}: pickle weights are refused (loading them can run arbitrary code); "
            "convert the checkpoint to safetensors first"
        )
    raise CheckpointError(f"{path}: no model weights found (expected model.safetensors or an index)")


def _keys(fn: str) -> list[str]:
    try:
        with safe_open(fn, framework="np") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{fn}: unreadable safetensors file ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _check_headers(specs: list[TensorSpec], wm: dict[str, str], cfg: ModelConfig, trunk_only: bool) -> None:
    expected = {s.hf_name for s in specs}
    by_file: dict[str, list[TensorSpec]] = {}
    for s in specs:
        if s.hf_name not in wm:
            where = os.path.dirname(next(iter(wm.values()))) if wm else "checkpoint"
            raise CheckpointError(f"{where}: tensor {s.hf_name} is missing from the checkpoint")
        by_file.setdefault(wm[s.hf_name], []).append(s)
    for name, fn in wm.items():
        if name in expected or name.endswith(_IGNORED_TENSORS):
            continue
        if (cfg.tie_word_embeddings and name == "lm_head.weight") or (trunk_only and name in _HEAD_TENSORS):
            continue
        kind = f"sequence classifier with num_labels={cfg.num_labels}" if cfg.is_classifier else "causal LM"
        raise CheckpointError(f"{fn}: unexpected tensor {name} (not part of a {cfg.model_type} {kind} "
                              f"with this config.json)")
    for fn, group in by_file.items():
        try:
            f = safe_open(fn, framework="np")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{fn}: unreadable safetensors file ({_one_line(e)})") from None
        with f:
            present = set(f.keys())
            for s in group:
                if s.hf_name not in present:
                    raise CheckpointError(f"{fn}: tensor {s.hf_name} is not in this file (the index says it is)")
                sl = f.get_slice(s.hf_name)
                shape = tuple(sl.get_shape())
                if s.path == ("score",) and shape != s.hf_shape:
                    raise CheckpointError(
                        f"{fn}: tensor {s.hf_name} has shape {list(shape)}, a score head of "
                        f"num_labels={cfg.num_labels} (config.json) needs {list(s.hf_shape)}")
                if shape != s.hf_shape:
                    raise CheckpointError(
                        f"{fn}: tensor {s.hf_name} has shape {list(shape)}, config.json implies {list(s.hf_shape)}"
                    )
                dt = sl.get_dtype()
                if dt not in _ST_DTYPES:
                    raise CheckpointError(f"{fn}: tensor {s.hf_name} has unsupported dtype {dt}")


def _read(fn: str, name: str) -> np.ndarray:
    # One open per tensor keeps the file's mapped pages from piling up in resident memory.
    try:
        with safe_open(fn, framework="np") as f:
            return f.get_tensor(name)
    except Exception as e:  # a file truncated after its header was checked
        raise CheckpointError(f"{fn}: cannot read tensor {name} ({_one_line(e)})") from None


@functools.lru_cache(maxsize=256)
def _stack_fns(shape: tuple, dtype, sharding):
    """Compiled (zeros, write-layer-i) for one stacked parameter kind; cached so all layers
    and all loads of the same architecture reuse them."""
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    write = jax.jit(lambda b, x, i: jax.lax.dynamic_update_index_in_dim(b, x, i, 0),
                    donate_argnums=0, out_shardings=sharding)
    return zeros, write


# --- import -----------------------------------------------------------------------------


def load_hf(path: str, dtype: str = "float32", mesh: Mesh | None = None, *, compute_dtype: str | None = None,
            scan_layers: bool = True, remat_policy: str = "none", attention_impl: str | None = None,
            rules=None):
    """Load a local HF directory as ``(DecoderLM, params)``, with the head its config.json
    names (a ``*ForSequenceClassification`` architecture: a ``score`` head).

    Args:
      path: directory with ``config.json`` and safetensors weights.
      dtype: parameter dtype ("float32" / "bfloat16").
      mesh: place parameters on this mesh by the sharding rules (default: the first device).
      compute_dtype: activation dtype (default: ``dtype``).
      scan_layers: stack layers for ``nn.scan`` (fast compiles) or keep them unrolled.
      attention_impl: ``jax.nn.dot_product_attention``'s implementation (``None``: plain XLA).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    if dtype not in _NP_DTYPES:
        raise CheckpointError(f"dtype={dtype!r} is not one of {list(_NP_DTYPES)}")
    cfg = ModelConfig.from_hf_dir(path, param_dtype=dtype, dtype=compute_dtype or dtype,
                                  scan_layers=scan_layers, remat_policy=remat_policy, attention_impl=attention_impl)
    return DecoderLM(cfg), read_hf_params(path, cfg, mesh, rules)


def read_hf_params(path: str, cfg: ModelConfig, mesh: Mesh | None = None, rules=None, *,
                   trunk_only: bool = False) -> dict:
    """The parameters of ``cfg`` (architecture, head, ``param_dtype``, ``scan_layers``) from the
    safetensors of HF directory ``path``, every tensor checked before any is read.

    ``trunk_only``: read the embeddings, layers and final norm but no head (neither the
    directory's ``lm_head.weight`` nor its ``score.weight`` is read), for a head started fresh.
    """
    if cfg.param_dtype not in _NP_DTYPES:
        raise CheckpointError(f"dtype={cfg.param_dtype!r} is not one of {list(_NP_DTYPES)}")
    scan_layers = cfg.scan_layers
    specs = [s for s in tensor_specs(cfg) if not (trunk_only and s.path[0] in HEAD_PARAMS)]
    wm = _weight_map(path)
    _check_headers(specs, wm, cfg, trunk_only)
    abstract = abstract_params(DecoderLM(cfg))
    np_dtype = _NP_DTYPES[cfg.param_dtype]

    def sharding_for(tree_path, shape):
        if mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return named_sharding(mesh, logical_axes_for(list(tree_path), len(shape)), shape, rules)

    def to_device(arr: np.ndarray, sharding) -> jax.Array:
        return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])

    params: dict = {}
    stacked: dict[tuple, list[TensorSpec]] = {}
    for s in specs:
        if s.layer is not None and scan_layers:
            stacked.setdefault(s.path, []).append(s)
            continue
        tp = _tree_path(s, scan_layers)
        # one conversion (layout + dtype) and a blocking transfer: at most one host copy alive
        arr = np.ascontiguousarray(s.to_ours(_read(wm[s.hf_name], s.hf_name)), dtype=np_dtype)
        leaf = to_device(arr, sharding_for(tp, arr.shape))
        leaf.block_until_ready()
        _set(params, tp, leaf)
        del arr

    for tp, layer_specs in stacked.items():
        full = _get(abstract, tp)
        full_sharding = sharding_for(tp, full.shape)
        layer_sharding = NamedSharding(full_sharding.mesh, PartitionSpec(*full_sharding.spec[1:])) \
            if isinstance(full_sharding, NamedSharding) else full_sharding
        zeros, write = _stack_fns(tuple(full.shape), np.dtype(np_dtype), full_sharding)
        buf = zeros()
        for s in sorted(layer_specs, key=lambda s: s.layer):
            arr = np.ascontiguousarray(s.to_ours(_read(wm[s.hf_name], s.hf_name)), dtype=np_dtype)
            buf = write(buf, to_device(arr, layer_sharding), np.int32(s.layer))
            buf.block_until_ready()
            del arr
        _set(params, tp, buf)
    return params


# --- export -----------------------------------------------------------------------------


def _iter_hf_tensors(cfg: ModelConfig, params, np_dtype) -> Iterator[tuple[str, np.ndarray]]:
    scanned = "layers" in params
    for s in tensor_specs(cfg):
        tp = _tree_path(s, scanned)
        try:
            leaf = _get(params, tp)
        except (KeyError, TypeError):
            raise CheckpointError(f"params lack {'/'.join(tp)} (needed for {s.hf_name})") from None
        if s.layer is not None and scanned:
            leaf = leaf[s.layer]
        arr = s.to_hf(fetch(leaf))
        if tuple(arr.shape) != s.hf_shape:
            raise CheckpointError(f"params {'/'.join(tp)} give {s.hf_name} shape {list(arr.shape)}, "
                                  f"expected {list(s.hf_shape)}")
        yield s.hf_name, np.ascontiguousarray(arr.astype(np_dtype))


def save_hf(model: DecoderLM, params, out_dir: str, dtype: str = "bfloat16", *, tokenizer_dir: str | None = None,
            max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False) -> str:
    """Write ``params`` as an HF directory that transformers loads (``AutoModelForCausalLM``, or
    ``AutoModelForSequenceClassification`` for a classification head). Returns ``out_dir``.

    The directory appears only when complete (written to a temporary sibling, then renamed).
    Tokenizer files are copied from ``tokenizer_dir`` or, for a model from :func:`load_hf`,
    from its source directory.
    """
    if dtype not in _NP_DTYPES:
        raise CheckpointError(f"dtype={dtype!r} is not one of {list(_NP_DTYPES)}")
    cfg = model.cfg
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists and is not empty (pass overwrite=True / --overwrite)")
    writer = jax.process_index() == 0
    tmp = f"{out_dir}.partial-{os.getpid()}"
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    shard_files: list[str] = []

    def flush():
        nonlocal size
        if writer and shards[-1]:
            fn = f"shard-{len(shard_files):05d}.safetensors"
            save_file(shards[-1], os.path.join(tmp, fn), metadata={"format": "pt"})
            shard_files.append(fn)
        shards[-1] = {}
        size = 0

    weight_map: dict[str, int] = {}
    total = 0
    try:
        for name, arr in _iter_hf_tensors(cfg, params, _NP_DTYPES[dtype]):
            if size and size + arr.nbytes > max_shard_bytes:
                flush()
            shards[-1][name] = arr
            weight_map[name] = len(shard_files)
            size += arr.nbytes
            total += arr.nbytes
        flush()
        if writer:
            _finish_export(cfg, tmp, shard_files, weight_map, total, dtype,
                           tokenizer_dir or cfg.source_dir)
            if os.path.exists(out_dir):
                old = f"{out_dir}.old-{os.getpid()}"
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old)
            else:
                os.replace(tmp, out_dir)
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _finish_export(cfg, tmp, shard_files, weight_map, total, dtype, source_dir):
    n = len(shard_files)
    if n == 1:
        os.replace(os.path.join(tmp, shard_files[0]), os.path.join(tmp, "model.safetensors"))
    else:
        final = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for a, b in zip(shard_files, final):
            os.replace(os.path.join(tmp, a), os.path.join(tmp, b))
        index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(torch_dtype=dtype), f, indent=2)
    gen_src = os.path.join(source_dir, "generation_config.json") if source_dir else None
    if gen_src and os.path.isfile(gen_src):
        shutil.copyfile(gen_src, os.path.join(tmp, "generation_config.json"))
    else:
        gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
               "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id}
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2)
    if source_dir:
        for name in TOKENIZER_FILES:
            src = os.path.join(source_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(tmp, name))
