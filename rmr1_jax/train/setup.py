"""What every training job shares: config sections for tokenizer, prompts and data; building
the mesh, tokenizer, model and parameters; and the run directory."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import jax

from rmr1_jax.config import CheckpointSpec, ModelSpec, dump
from rmr1_jax.errors import ConfigError
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.paths import path_field, paths_field


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


def load_tokenizer_for(tok: TokenizerSpec, model: ModelSpec):
    from rmr1_jax.text.tokenizer import load_tokenizer

    path = tok.path or model.hf_dir
    if path is None:
        raise ConfigError("tokenizer.path is required when the model is not loaded from model.hf_dir")
    t = load_tokenizer(path)
    if tok.chat_template_file:
        if not os.path.isfile(tok.chat_template_file):
            raise ConfigError(f"tokenizer.chat_template_file: {tok.chat_template_file} not found")
        with open(tok.chat_template_file) as f:
            t.chat_template = f.read()
    return t


def load_template(p: PromptSpec):
    from rmr1_jax.text.prompts import JudgeTemplate

    return JudgeTemplate.from_files(p.variant, system_file=p.system_file, user_file=p.user_file,
                                    user_multiturn_file=p.user_multiturn_file)


def build_model(spec: ModelSpec, mesh, tokenizer=None, seed: int = 0):
    """(model, params) from an HF directory, an Orbax checkpoint, or a preset (random init)."""
    exec_kw = dict(param_dtype=spec.param_dtype, dtype=spec.dtype, scan_layers=spec.scan_layers,
                   remat_policy=spec.remat_policy, attention_impl=spec.attention_impl)
    if spec.hf_dir:
        from rmr1_jax.checkpoint.hf import load_hf

        model, params = load_hf(spec.hf_dir, dtype=spec.param_dtype, mesh=mesh, compute_dtype=spec.dtype,
                                scan_layers=spec.scan_layers, remat_policy=spec.remat_policy,
                                attention_impl=spec.attention_impl)
        return model, params
    if spec.init_checkpoint:
        from rmr1_jax.checkpoint.reading import read_metadata, restore_params

        meta = read_metadata(spec.init_checkpoint)
        cfg = ModelConfig.from_dict(meta["model_config"], source=f"{spec.init_checkpoint} metadata")
        cfg = cfg.replace(**exec_kw)
        params = restore_params(spec.init_checkpoint, cfg, mesh)
        if spec.param_dtype != meta["model_config"].get("param_dtype", spec.param_dtype):
            params = jax.tree.map(lambda x: x.astype(spec.param_dtype), params)
        return DecoderLM(cfg), params
    from rmr1_jax.models.params import init_params
    from rmr1_jax.models.presets import preset

    over = dict(exec_kw)
    if spec.vocab_size is not None:
        over["vocab_size"] = spec.vocab_size
    if tokenizer is not None:
        over["vocab_size"] = max(over.get("vocab_size", 0), tokenizer.vocab_size)
        over.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    cfg = preset(spec.preset, **over)
    model = DecoderLM(cfg)
    return model, init_params(model, jax.random.key(seed), mesh)


def prepare_run_dir(run_dir: str, cfg, log=print) -> None:
    """Create the run directory, print the resolved config and save it as config.yaml."""
    text = dump(cfg)
    log("resolved config:\n" + "\n".join("  " + line for line in text.splitlines()))
    if jax.process_index() == 0:
        from rmr1_jax.data.readers import atomic_write_text

        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, "config.yaml"), text)


def mesh_from(cfg: MeshConfig):
    return make_mesh(cfg)


def checkpoint_manager(spec: CheckpointSpec, run_dir: str):
    from rmr1_jax.checkpoint.manager import CheckpointManager

    return CheckpointManager(spec.dir or os.path.join(run_dir, "checkpoints"), max_to_keep=spec.keep,
                             async_save=spec.async_save)


def prepare_job(cfg, kind: str, max_length: int, overlong: str, log=print, both_orders: bool = False):
    """The start every training job shares: run directory and resolved config, mesh,
    tokenizer, judge template, and the tokenized records of ``data.train`` (and
    ``data.eval``). Returns ``(mesh, tokenizer, template, sources)``."""
    from rmr1_jax.data.records import RecordOptions, build_records

    run_dir = cfg.train.run_dir
    prepare_run_dir(run_dir, cfg, log)
    mesh = mesh_from(cfg.mesh)
    tokenizer = load_tokenizer_for(cfg.tokenizer, cfg.model)
    template = load_template(cfg.prompt)
    files = {"train": list(cfg.data.train)}
    if cfg.data.eval:
        files["eval"] = list(cfg.data.eval)
    opts = RecordOptions(kind=kind, max_length=max_length, on_error=cfg.data.on_error, overlong=overlong,
                         position_seed=cfg.data.position_seed, both_orders=both_orders)
    sources, _ = build_records(cfg.data.cache_dir or os.path.join(run_dir, "data"), files, tokenizer, template,
                               opts, log=log)
    return mesh, tokenizer, template, sources
