"""The config sections every job shares, defined once.

A job's config is a :class:`JobConfig` (model, mesh, tokenizer, prompt, data, optim, train,
checkpoint), plus the objective's own section (``grpo:`` for GRPO). The YAML recipe mirrors
these dataclasses; :mod:`rmr1_jax.config` loads and checks it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from rmr1_jax.errors import ConfigError
from rmr1_jax.models.config import LORA_TARGETS
from rmr1_jax.parallel.mesh import MeshConfig
from rmr1_jax.paths import path_field, paths_field

# Rows per optimizer step when neither the recipe nor the objective sets train.global_batch.
DEFAULT_GLOBAL_BATCH = 128


@dataclasses.dataclass
class ModelSpec:
    """Where the model comes from and how it runs."""

    preset: str | None = "tiny"  # an architecture preset (random init) ...
    hf_dir: str | None = path_field()  # ... or a local HF directory (overrides preset)
    init_checkpoint: str | None = path_field()  # ... or an Orbax checkpoint directory (params only)
    # the preset describing the model when its weights are not at hand (rmr1 plan); the
    # checkpoint's own config wins when hf_dir / init_checkpoint exist
    architecture: str | None = None
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # compute dtype
    scan_layers: bool = True
    remat_policy: str = "none"  # a name in rmr1_jax.models.config.REMAT_POLICIES
    attention_impl: str | None = None
    vocab_size: int | None = None  # preset override, e.g. to match a freshly trained tokenizer
    num_labels: int | None = None  # outputs of a multi-label head (the rule adapter: the pool size)
    # LoRA (rmr1_jax.models.lora): rank 0 trains every weight; r > 0 trains low-rank adapters
    # on the lora_targets projections, scaled by lora_alpha / r, the base frozen
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))

    def validate(self, where: str):
        from rmr1_jax.models.config import REMAT_POLICIES

        if self.preset is None and self.hf_dir is None and self.init_checkpoint is None:
            raise ConfigError(f"{where}: set one of model.preset, model.hf_dir, model.init_checkpoint")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"{where}: model.remat_policy={self.remat_policy!r} is not one of "
                              f"{list(REMAT_POLICIES)}")
        if self.architecture is not None:
            from rmr1_jax.models.presets import PRESETS

            if self.architecture.lower() not in PRESETS:
                raise ConfigError(f"{where}: model.architecture={self.architecture!r} is not a preset "
                                  f"({', '.join(PRESETS)})")
        if self.lora_rank < 0:
            raise ConfigError(f"{where}: model.lora_rank={self.lora_rank} must be 0 (full fine-tuning) or positive")
        if self.lora_alpha <= 0:
            raise ConfigError(f"{where}: model.lora_alpha={self.lora_alpha} must be positive")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ConfigError(f"{where}: model.lora_targets: {bad[0]!r} is not one of {list(LORA_TARGETS)}")
        if not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ConfigError(f"{where}: model.lora_targets={self.lora_targets} must name each projection at "
                              f"most once, and at least one")


@dataclasses.dataclass
class TokenizerSpec:
    path: str | None = path_field()  # tokenizer dir or .model file; default: model.hf_dir
    chat_template_file: str | None = path_field()  # replaces the tokenizer's own template


@dataclasses.dataclass
class PromptSpec:
    variant: Literal["instruct", "reasoning"] = "instruct"
    system_file: str | None = path_field()  # any template text may come from a file, to reproduce
    user_file: str | None = path_field()  # a checkpoint's exact training prompt
    user_multiturn_file: str | None = path_field()


@dataclasses.dataclass
class DataSpec:
    train: list[str] = paths_field()  # JSONL / Parquet files
    eval: list[str] = paths_field()
    cache_dir: str | None = path_field()  # tokenized records; default <run_dir>/data
    max_length: int = 2048
    pack: bool = True
    on_error: Literal["raise", "skip"] = "raise"
    overlong: Literal["error", "skip", "truncate"] = "error"
    position_seed: int = 0

    def validate(self, where: str):
        if not self.train:
            raise ConfigError(f"{where}: data.train must list at least one file")
        if self.max_length < 8:
            raise ConfigError(f"{where}: data.max_length must be at least 8")


@dataclasses.dataclass
class OptimSpec:
    lr: float = 5e-6
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    warmup_ratio: float = 0.03  # of the total steps (ignored when warmup_steps is set)
    warmup_steps: int | None = None
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global-norm clip; 0 disables

    def validate(self, where: str):
        if self.lr <= 0:
            raise ConfigError(f"{where}: optim.lr must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}: optim.min_lr_ratio must be in [0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{where}: optim.warmup_ratio must be in [0, 1)")


@dataclasses.dataclass
class TrainSpec:
    run_dir: str = path_field("runs/default")
    # rows per optimizer step (packed rows when packing); None: what the objective derives
    # (GRPO: grpo.minibatch_prompts x grpo.n), else DEFAULT_GLOBAL_BATCH
    global_batch: int | None = None
    micro_batch: int | None = None  # rows per accumulation step; None = global_batch
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    eval_limit: int | None = None  # held-out records per evaluation (None = all)
    progress: bool = True
    peak_flops: float | None = None  # MFU denominator for the whole mesh; None = measured at start

    def accum_steps(self) -> int:
        """Micro-batches accumulated per optimizer step."""
        rows = self.global_batch or DEFAULT_GLOBAL_BATCH
        return rows // (self.micro_batch or rows)

    def validate(self, where: str):
        if self.global_batch is not None and self.global_batch <= 0:
            raise ConfigError(f"{where}: train.global_batch must be positive")
        if self.global_batch is not None:
            self.check_micro_batch(where, self.global_batch)

    def check_micro_batch(self, where: str, rows: int, what: str = "train.global_batch"):
        mb = self.micro_batch or rows
        if mb <= 0 or rows % mb:
            raise ConfigError(f"{where}: train.micro_batch={self.micro_batch} must divide {what}={rows}")


@dataclasses.dataclass
class CheckpointSpec:
    dir: str | None = path_field()  # default: <run_dir>/checkpoints
    save_every: int = 500
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass
class JobConfig:
    """The sections of every training job. An objective's config subclasses it, adding its
    own section and, where the method calls for it, other defaults (GRPO's optimizer)."""

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    tokenizer: TokenizerSpec = dataclasses.field(default_factory=TokenizerSpec)
    prompt: PromptSpec = dataclasses.field(default_factory=PromptSpec)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    optim: OptimSpec = dataclasses.field(default_factory=OptimSpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    checkpoint: CheckpointSpec = dataclasses.field(default_factory=CheckpointSpec)
