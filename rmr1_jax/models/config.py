"""The decoder's description, :class:`ModelConfig`, and the tables its fields name.

A config holds three groups of fields, kept flat (one keyword each, as YAML ``model:`` keys
and checkpoint metadata spell them) but listed apart by :data:`ARCHITECTURE_FIELDS`,
:data:`EXECUTION_FIELDS` and :data:`LORA_FIELDS`, each checked by its own validator:

* the architecture: what the weights mean, the part ``config.json`` carries;
* the execution settings: how the model runs (dtypes, scanned layers, remat, attention
  kernel), free to change between runs of the same weights;
* LoRA: the low-rank adapters trained on top (:mod:`rmr1_jax.models.lora`).

``source_dir`` (where the config came from) belongs to none of them. The translation to and
from HF ``config.json`` is :mod:`rmr1_jax.models.hf_config`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from rmr1_jax.errors import CheckpointError
from rmr1_jax.models import hf_config
from rmr1_jax.models.attention import IMPLS as ATTENTION_IMPLS
from rmr1_jax.models.hf_config import SUPPORTED_MODEL_TYPES

# What the model computes after the final norm: next-token logits [B, T, V] ("lm"), or scores
# pooled at each row's last real token, [B, num_labels]: one for a reward model ("scalar"),
# one per rule for the rule adapter ("multilabel"; transformers' ``score`` head either way).
HEADS = ("lm", "scalar", "multilabel")
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

# The field groups, in field order (the order of to_dict() and of checkpoint metadata).
ARCHITECTURE_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
    "rope_scaling", "max_position_embeddings", "attention_bias", "mlp_bias", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "head", "num_labels",
)
EXECUTION_FIELDS = ("param_dtype", "dtype", "scan_layers", "remat_policy", "attention_impl")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One decoder family: Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen (``qwen2``) and
    Llama 3.x (``llama``), with one of :data:`HEADS` (transformers' ``*ForCausalLM`` or
    ``*ForSequenceClassification``). Field names follow HF where HF has one. The fields come
    in the groups the module docstring describes; :meth:`architecture_kw`,
    :meth:`execution_kw` and :meth:`lora_kw` give each as keyword arguments."""

    # --- architecture (ARCHITECTURE_FIELDS: what config.json carries) -----------------
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
    # --- execution (EXECUTION_FIELDS: how it runs, not part of the architecture) ----------
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype: "bfloat16" for bf16 compute with f32 params
    scan_layers: bool = True
    remat_policy: str = "none"  # a name of REMAT_POLICIES
    attention_impl: str | None = None  # None/"auto" (best for the backend), "xla", "cudnn", "splash"
    # --- provenance ---------------------------------------------------------------------
    source_dir: str | None = None  # HF directory this config came from (tokenizer files are copied on export)
    # --- LoRA (LORA_FIELDS; rmr1_jax.models.lora) -----------------------------------------
    # rank 0 = none; else y = x W + (lora_alpha / lora_rank) (x A) B on each projection of
    # lora_targets. Not architecture: never written to config.json.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        self._check_architecture()
        self._check_execution()
        self._check_lora()

    def _check_architecture(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
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
        if self.head == "scalar" and self.num_labels != 1:
            raise CheckpointError(f"head 'scalar' has one output, not num_labels={self.num_labels} "
                                  f"(use head 'multilabel')")

    def _check_execution(self):
        if self.remat_policy not in REMAT_POLICIES:
            raise CheckpointError(f"remat_policy {self.remat_policy!r} is not one of {list(REMAT_POLICIES)}")
        if self.attention_impl not in (None, *ATTENTION_IMPLS):
            raise CheckpointError(f"attention_impl {self.attention_impl!r} is not one of {list(ATTENTION_IMPLS)}")

    def _check_lora(self):
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise CheckpointError(f"lora_rank={self.lora_rank!r} must be a non-negative integer (0: no LoRA)")
        if self.lora_rank and not self.lora_alpha > 0:
            raise CheckpointError(f"lora_alpha={self.lora_alpha!r} must be positive")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise CheckpointError(f"lora_targets={list(self.lora_targets)} must be distinct names out of "
                                  f"{list(LORA_TARGETS)}")

    # --- the groups -----------------------------------------------------------------------

    def architecture_kw(self) -> dict[str, Any]:
        """The architecture fields (:data:`ARCHITECTURE_FIELDS`), as keyword arguments."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}

    def execution_kw(self) -> dict[str, Any]:
        """The execution settings (:data:`EXECUTION_FIELDS`), as keyword arguments: e.g.
        ``other.replace(**cfg.execution_kw())`` runs ``other`` the way ``cfg`` runs."""
        return {name: getattr(self, name) for name in EXECUTION_FIELDS}

    def lora_kw(self) -> dict[str, Any]:
        """The LoRA fields (:data:`LORA_FIELDS`), as keyword arguments."""
        return {name: getattr(self, name) for name in LORA_FIELDS}

    # --- derived architecture -----------------------------------------------------------

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
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

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

    # --- derived LoRA -------------------------------------------------------------------

    @property
    def lora_scale(self) -> float:
        """alpha / r, the factor of the adapters' product (0 without LoRA)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def lora_on(self, projection: str) -> bool:
        """Whether ``projection`` (a name of :data:`LORA_TARGETS`) carries an adapter."""
        return self.lora_rank > 0 and projection in self.lora_targets

    # --- copies and the checkpoint-metadata form ------------------------------------------

    def replace(self, **kw) -> "ModelConfig":
        if isinstance(kw.get("rope_scaling"), dict):
            kw["rope_scaling"] = tuple(sorted(kw["rope_scaling"].items()))
        if isinstance(kw.get("lora_targets"), list):
            kw["lora_targets"] = tuple(kw["lora_targets"])
        return dataclasses.replace(self, **kw)

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

    # --- HF config.json (the translation itself: rmr1_jax.models.hf_config) ---------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
        """The config an HF ``config.json`` (the dict ``hf``) describes, with ``overrides``
        (execution settings, LoRA, head, ...) replacing fields. Accepts both the classic layout
        (``rope_theta``/``rope_scaling`` at top level, ``torch_dtype``) and the transformers-5
        layout (``rope_parameters``, ``dtype``, possibly ``head_dim: null``)."""
        kw = hf_config.config_kwargs(hf, source)
        kw.update(overrides)
        try:
            return cls(**kw)
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None

    @classmethod
    def from_hf_dir(cls, path: str, **overrides) -> "ModelConfig":
        """:meth:`from_hf_dict` of ``path``/config.json; ``source_dir`` defaults to ``path``."""
        hf, cfg_path = hf_config.read_config_json(path)
        overrides.setdefault("source_dir", os.path.abspath(path))
        return cls.from_hf_dict(hf, source=cfg_path, **overrides)

    def to_hf_dict(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """config.json content that transformers (4.x and 5.x) loads."""
        return hf_config.to_hf_dict(self, torch_dtype)
