"""Hugging Face checkpoint import and export for the Qwen2 and Llama families, causal LMs and
sequence classifiers (``score.weight`` [num_labels, D] <-> our ``score`` [D, num_labels]).

Import reads ``config.json`` (classic or transformers-5 layout) and safetensors (single file or
sharded with an index), checks every tensor's name, shape and dtype against the config before
reading any weights, then streams the weights tensor by tensor straight into their target
shardings: host memory stays near the size of the largest tensor. Pickle weights (``.bin``,
``.pt``) are refused: loading them can run arbitrary code.

Export writes a directory ``transformers.AutoModelForCausalLM.from_pretrained`` (or, for a
classification head, ``AutoModelForSequenceClassification``) loads, into a temporary sibling
directory that is renamed into place only when complete. Parameters sharded over several
processes are gathered to process 0 one tensor at a time and streamed into size-capped
safetensors shards (:mod:`rmr1_jax.checkpoint.hf_export`).
"""

from __future__ import annotations

import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors import safe_open

from rmr1_jax.checkpoint.hf_layout import _NP_DTYPES, TensorSpec, _get, _set, _tree_path, tensor_specs
from rmr1_jax.errors import CheckpointError
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import HEAD_PARAMS, abstract_params, logical_axes_for
from rmr1_jax.parallel.sharding import named_sharding

PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_IGNORED_TENSORS = ("rotary_emb.inv_freq",)
_HEAD_TENSORS = ("lm_head.weight", "score.weight")
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


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


def save_hf(model: DecoderLM, params, out_dir: str, dtype: str = "bfloat16", *, tokenizer_dir: str | None = None,
            max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False) -> str:
    """Write ``params`` as an HF directory that transformers loads (``AutoModelForCausalLM``, or
    ``AutoModelForSequenceClassification`` for a classification head). Returns ``out_dir``.

    The directory appears only when complete (written to a temporary sibling, then renamed).
    Tokenizer files are copied from ``tokenizer_dir`` or, for a model from :func:`load_hf`,
    from its source directory. A model with LoRA adapters is written merged
    (``W + (alpha / r) A B``, :func:`rmr1_jax.models.lora.merge`): a plain model, no PEFT.
    Past ``max_shard_bytes`` the weights go into several files with an index. In a multi-host
    job every process calls it: each tensor is gathered to process 0 alone and written there,
    one at a time, and every process returns once the directory is in place.
    """
    if dtype not in _NP_DTYPES:
        raise CheckpointError(f"dtype={dtype!r} is not one of {list(_NP_DTYPES)}")
    from rmr1_jax.models.lora import merge

    cfg, params = merge(model.cfg, params)
    from rmr1_jax.checkpoint.hf_export import plan_export, write_hf_dir

    plan = plan_export(cfg, params, dtype, max_shard_bytes)  # every tensor checked before any is gathered
    return write_hf_dir(cfg, plan, os.path.abspath(out_dir), dtype, tokenizer_dir or cfg.source_dir, overwrite)
