"""Decoder architecture description, and its translation to and from HF ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from rmr1_jax.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
# What the model computes after the final norm: next-token logits [B, T, V] ("lm"), or scores
# pooled at each row's last real token, [B, num_labels]: one for a reward model ("scalar"),
# one per rule for the rule adapter ("multilabel"; transformers' ``score`` head either way).
HEADS = ("lm", "scalar", "multilabel")
_CAUSAL_LM_ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_SEQ_CLS_ARCH = {"qwen2": "Qwen2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}
_ARCH_TO_TYPE = {arch: t for table in (_CAUSAL_LM_ARCH, _SEQ_CLS_ARCH) for t, arch in table.items()}
# The one table of rematerialization policies: name -> what the backward pass may keep from
# the forward pass of each layer (None: everything, no remat).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
# The projections a low-rank adapter may sit on (rmr1_jax.models.lora), in layer order.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One decoder family: Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen (``qwen2``) and
    Llama 3.x (``llama``), with one of :data:`HEADS` (transformers' ``*ForCausalLM`` or
    ``*ForSequenceClassification``). Field names follow HF where HF has one."""

    model_type: str = "qwen2"
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"} as a tuple of (key, value) pairs (hashable).
    rope_scaling: tuple | None = None
    max_position_embeddings: int = 32768
    attention_bias: bool = True  # q/k/v projection biases (Qwen2); Llama: False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    head: str = "lm"  # one of HEADS
    num_labels: int = 1  # outputs of a classification head ("scalar": 1); unused by "lm"
    # execution choices (not part of the architecture)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype: "bfloat16" for bf16 compute with f32 params
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str | None = None  # None/"auto" (best for the backend), "xla", "cudnn", "splash"
    source_dir: str | None = None  # HF directory this config came from (tokenizer files are copied on export)
    # LoRA (rmr1_jax.models.lora): rank 0 = none; else y = x W + (lora_alpha / lora_rank) (x A) B
    # on each projection of lora_targets. Not architecture: never written to config.json.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise CheckpointError(f"remat_policy {self.remat_policy!r} is not one of {list(REMAT_POLICIES)}")
        if self.attention_impl not in (None, "auto", "xla", "cudnn", "splash"):
            raise CheckpointError(f"attention_impl {self.attention_impl!r} is not one of "
                                  f"['auto', 'xla', 'cudnn', 'splash']")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise CheckpointError("hidden_size must be divisible by num_attention_heads when head_dim is unset")
        if self.head not in HEADS:
            raise CheckpointError(f"head {self.head!r} is not one of {list(HEADS)}")
        if not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool) or self.num_labels < 1:
            raise CheckpointError(f"num_labels={self.num_labels!r} must be a positive integer")
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise CheckpointError(f"lora_rank={self.lora_rank!r} must be a non-negative integer (0: no LoRA)")
        if self.lora_rank and not self.lora_alpha > 0:
            raise CheckpointError(f"lora_alpha={self.lora_alpha!r} must be positive")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise CheckpointError(f"lora_targets={list(self.lora_targets)} must be distinct names out of "
                                  f"{list(LORA_TARGETS)}")
        if self.head == "scalar" and self.num_labels != 1:
            raise CheckpointError(f"head 'scalar' has one output, not num_labels={self.num_labels} "
                                  f"(use head 'multilabel')")

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def o_proj_bias(self) -> bool:
        """Llama's ``attention_bias`` also gives the output projection a bias (HF's
        ``LlamaAttention``); Qwen2's q/k/v biases do not extend to it."""
        return self.model_type == "llama" and self.attention_bias

    @property
    def is_classifier(self) -> bool:
        """A ``score`` head pooled per sequence ("scalar" or "multilabel"), not an LM head."""
        return self.head != "lm"

    @property
    def lora_scale(self) -> float:
        """alpha / r, the factor of the adapters' product (0 without LoRA)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def lora_on(self, projection: str) -> bool:
        """Whether ``projection`` (a name of :data:`LORA_TARGETS`) carries an adapter."""
        return self.lora_rank > 0 and projection in self.lora_targets

    @property
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **kw) -> "ModelConfig":
        if isinstance(kw.get("rope_scaling"), dict):
            kw["rope_scaling"] = tuple(sorted(kw["rope_scaling"].items()))
        if isinstance(kw.get("lora_targets"), list):
            kw["lora_targets"] = tuple(kw["lora_targets"])
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, f, v, l = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        h, k, dh = self.num_attention_heads, self.num_key_value_heads, self.dim_head
        attn = d * h * dh * 2 + d * k * dh * 2 + (h * dh + 2 * k * dh if self.attention_bias else 0) \
            + (d if self.o_proj_bias else 0)
        mlp = 3 * d * f
        per_layer = attn + mlp + 2 * d
        if self.is_classifier:
            head = d * self.num_labels
        else:
            head = 0 if self.tie_word_embeddings else v * d
        return v * d + head + l * per_layer + d

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in checkpoint metadata."""
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"{source}: unknown model config keys {unknown}")
        d = dict(d)
        if isinstance(d.get("rope_scaling"), dict):
            d["rope_scaling"] = tuple(sorted(d["rope_scaling"].items()))
        elif isinstance(d.get("rope_scaling"), list):  # dataclasses.asdict's pairs, through JSON
            d["rope_scaling"] = tuple(tuple(pair) for pair in d["rope_scaling"])
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = tuple(d["eos_token_id"])
        if isinstance(d.get("lora_targets"), list):
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)

    # --- HF translation --------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
        """Accepts both the classic layout (``rope_theta``/``rope_scaling`` at top level,
        ``torch_dtype``) and the transformers-5 layout (``rope_parameters``, ``dtype``,
        possibly ``head_dim: null``)."""
        if not isinstance(hf, dict):
            raise CheckpointError(f"{source}: must be a JSON object, got {type(hf).__name__}")
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
        rope_params = hf.get("rope_parameters") or {}
        rope_theta = hf.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or None
        if scaling is None and rope_params.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        if scaling is not None:
            rtype = scaling.get("rope_type", scaling.get("type", "default"))
            if rtype == "default":
                scaling = None
            elif rtype != "llama3":
                raise CheckpointError(f"{source}: rope scaling type {rtype!r} is not supported (only llama3)")
            else:
                need = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
                missing = [k for k in need if k not in scaling]
                if missing:
                    raise CheckpointError(f"{source}: llama3 rope scaling lacks {missing}")
                scaling = tuple(sorted([("rope_type", "llama3")] + [(k, scaling[k]) for k in need]))
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
        kw.update(overrides)
        try:
            return cls(**kw)
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None

    @classmethod
    def from_hf_dir(cls, path: str, **overrides) -> "ModelConfig":
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise CheckpointError(f"{cfg_path}: config.json not found")
        try:
            with open(cfg_path) as f:
                hf = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        overrides.setdefault("source_dir", os.path.abspath(path))
        return cls.from_hf_dict(hf, source=cfg_path, **overrides)

    def to_hf_dict(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """config.json content that transformers (4.x and 5.x) loads."""
        arch = (_SEQ_CLS_ARCH if self.is_classifier else _CAUSAL_LM_ARCH)[self.model_type]
        out: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.dim_head,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": torch_dtype,
            "use_cache": True,
            "attention_dropout": 0.0,
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        else:
            out["use_sliding_window"] = False
            out["sliding_window"] = None
            out["max_window_layers"] = self.num_hidden_layers
        if self.is_classifier:
            # transformers pools at the last token that is not pad_token_id (written above)
            out["num_labels"] = self.num_labels
            if self.head == "multilabel":  # sigmoid/BCE per label, also with a single label
                out["problem_type"] = "multi_label_classification"
        return out


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
