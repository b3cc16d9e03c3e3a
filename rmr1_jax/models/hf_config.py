"""Translation between :class:`~rmr1_jax.models.config.ModelConfig` and transformers'
``config.json``: which HF families and architectures we read, what each key must hold, and the
``config.json`` we write on export. Only the architecture crosses over: execution settings and
LoRA are never read from, nor written to, ``config.json``.

``ModelConfig.from_hf_dict`` / ``from_hf_dir`` / ``to_hf_dict`` are the entry points; this
module deals in plain dicts (the keyword arguments of a ``ModelConfig``) so that it needs no
import of the config class.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rmr1_jax.errors import CheckpointError

# The HF families this port implements (transformers' ``model_type``) and the architecture
# class each head kind has in transformers: ``*ForCausalLM`` (an LM head) or
# ``*ForSequenceClassification`` (a ``score`` head).
SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
_CAUSAL_LM_ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_SEQ_CLS_ARCH = {"qwen2": "Qwen2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}
_ARCH_TO_TYPE = {arch: t for table in (_CAUSAL_LM_ARCH, _SEQ_CLS_ARCH) for t, arch in table.items()}
_LLAMA3_SCALING_KEYS = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]


def read_config_json(path: str) -> tuple[dict, str]:
    """``(content, file path)`` of the ``config.json`` in the HF directory ``path``."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{cfg_path}: config.json not found")
    try:
        with open(cfg_path) as f:
            return json.load(f), cfg_path
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def config_kwargs(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``ModelConfig`` keyword arguments (architecture and head) of the HF config ``hf``.
    Accepts both the classic layout (``rope_theta``/``rope_scaling`` at top level,
    ``torch_dtype``) and the transformers-5 layout (``rope_parameters``, ``dtype``, possibly
    ``head_dim: null``). Errors name ``source``."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: must be a JSON object, got {type(hf).__name__}")
    model_type = _model_type(hf, source)
    _check_values(hf, source)
    rope_theta, scaling = _rope(hf, source)
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = tuple(eos)
    kv = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    # Qwen2 always has q/k/v biases; Llama has them only when attention_bias is set.
    attention_bias = True if model_type == "qwen2" else bool(hf.get("attention_bias", False))
    kw = dict(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=kv,
        head_dim=hf.get("head_dim") or None,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        attention_bias=bool(attention_bias),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
    )
    if kw["mlp_bias"]:
        raise CheckpointError(f"{source}: mlp_bias=true is not supported")
    kw["head"], kw["num_labels"] = _hf_head(hf, source)
    return kw


def _model_type(hf: dict[str, Any], source: str) -> str:
    """``model_type``, else the family of the first known class in ``architectures``."""
    model_type = hf.get("model_type")
    if model_type is None:
        for arch in hf.get("architectures") or []:
            model_type = _ARCH_TO_TYPE.get(arch)
            if model_type:
                break
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = hf.get("architectures")
        raise CheckpointError(
            f"{source}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return model_type


def _check_values(hf: dict[str, Any], source: str) -> None:
    """Every key we read holds a value of its type, and no feature we lack is switched on."""
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    for key in required:
        v = hf.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise CheckpointError(f"{source}: key {key!r} is missing or not a positive integer")
    for key in ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        v = hf.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise CheckpointError(f"{source}: key {key!r} must be a positive integer, got {v!r}")
    for key in ("rms_norm_eps", "rope_theta"):
        v = hf.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
            raise CheckpointError(f"{source}: key {key!r} must be a positive number, got {v!r}")
    if hf.get("rope_parameters") is not None and not isinstance(hf["rope_parameters"], dict):
        raise CheckpointError(f"{source}: key 'rope_parameters' must be an object")
    if hf.get("rope_scaling") is not None and not isinstance(hf["rope_scaling"], dict):
        raise CheckpointError(f"{source}: key 'rope_scaling' must be an object")
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
    act = hf.get("hidden_act", hf.get("hidden_activation", "silu"))
    if act != "silu":
        raise CheckpointError(f"{source}: hidden_act={act!r} is not supported (only 'silu', the SwiGLU MLP "
                              f"of Qwen2 and Llama)")


def _rope(hf: dict[str, Any], source: str) -> tuple[Any, tuple | None]:
    """``(rope_theta, rope_scaling)``: the scaling as ``ModelConfig`` holds it (sorted
    ``(key, value)`` pairs of a llama3 scaling; ``None`` for the default rotary embedding), from
    top-level keys or transformers 5's ``rope_parameters``."""
    rope_params = hf.get("rope_parameters") or {}
    rope_theta = hf.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or None
    if scaling is None and rope_params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    if scaling is None:
        return rope_theta, None
    rtype = scaling.get("rope_type", scaling.get("type", "default"))
    if rtype == "default":
        return rope_theta, None
    if rtype != "llama3":
        raise CheckpointError(f"{source}: rope scaling type {rtype!r} is not supported (only llama3)")
    missing = [k for k in _LLAMA3_SCALING_KEYS if k not in scaling]
    if missing:
        raise CheckpointError(f"{source}: llama3 rope scaling lacks {missing}")
    return rope_theta, tuple(sorted([("rope_type", "llama3")] + [(k, scaling[k]) for k in _LLAMA3_SCALING_KEYS]))


def _hf_head(hf: dict[str, Any], source: str) -> tuple[str, int]:
    """(head, num_labels) of an HF config: a ``*ForSequenceClassification`` architecture has a
    ``score`` head of ``num_labels`` outputs (``len(id2label)`` when absent, as transformers 5
    writes it; transformers' default 2 when neither is given)."""
    archs = hf.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        return "lm", 1
    n = hf.get("num_labels")
    if n is None and isinstance(hf.get("id2label"), dict):
        n = len(hf["id2label"])
    n = 2 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CheckpointError(f"{source}: key 'num_labels' must be a positive integer, got {n!r}")
    multi = n > 1 or hf.get("problem_type") == "multi_label_classification"
    return ("multilabel" if multi else "scalar"), n


def to_hf_dict(cfg, torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """config.json content of the ``ModelConfig`` ``cfg`` that transformers (4.x and 5.x) loads."""
    arch = (_SEQ_CLS_ARCH if cfg.is_classifier else _CAUSAL_LM_ARCH)[cfg.model_type]
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.dim_head,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
        "attention_dropout": 0.0,
    }
    if cfg.model_type == "llama":
        out["attention_bias"] = cfg.attention_bias
        out["mlp_bias"] = False
    else:
        out["use_sliding_window"] = False
        out["sliding_window"] = None
        out["max_window_layers"] = cfg.num_hidden_layers
    if cfg.is_classifier:
        # transformers pools at the last token that is not pad_token_id (written above)
        out["num_labels"] = cfg.num_labels
        if cfg.head == "multilabel":  # sigmoid/BCE per label, also with a single label
            out["problem_type"] = "multi_label_classification"
    return out
