"""What the runner builds for every training job: the run directory and resolved config, the
mesh, tokenizer, judge template, tokenized records, model and parameters, and the checkpoint
manager."""

from __future__ import annotations

import dataclasses
import os

import jax

from rmr1_jax.config import dump
from rmr1_jax.errors import ConfigError
from rmr1_jax.parallel.mesh import make_mesh
from rmr1_jax.schema import CheckpointSpec, ModelSpec, PromptSpec, TokenizerSpec


def load_tokenizer_for(tok: TokenizerSpec, model: ModelSpec):
    from rmr1_jax.text.tokenizer import load_tokenizer
    from rmr1_jax.text.tokenizer_base import SENTENCEPIECE_MODEL, TOKENIZER_JSON

    path = tok.path or model.hf_dir
    if path is None:
        raise ConfigError("tokenizer.path is required when the model is not loaded from model.hf_dir")
    if not tok.path:  # the tokenizer defaults to the model's directory: a wrong hf_dir is named as such
        check_hf_dir(path)
        if not any(os.path.isfile(os.path.join(path, n)) for n in (TOKENIZER_JSON, SENTENCEPIECE_MODEL)):
            raise ConfigError(f"model.hf_dir: {path} has no tokenizer ({TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}) "
                              f"and tokenizer.path is not set: set tokenizer.path to the model's tokenizer")
    t = load_tokenizer(path)
    if tok.chat_template_file:
        if not os.path.isfile(tok.chat_template_file):
            raise ConfigError(f"tokenizer.chat_template_file: {tok.chat_template_file} not found")
        with open(tok.chat_template_file) as f:
            t.chat_template = f.read()
    return t


def chat_template_of(tokenizer) -> str:
    """The template ``tokenizer`` renders chats with (``tokenizer.chat_template_file`` has
    replaced its own), else the built-in ChatML it falls back to: what a run records in its
    checkpoints so that every later reader renders the text it trained on."""
    from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE

    return tokenizer.chat_template if tokenizer.chat_template is not None else DEFAULT_CHAT_TEMPLATE


def load_template(p: PromptSpec):
    from rmr1_jax.text.prompts import JudgeTemplate

    return JudgeTemplate.from_files(p.variant, system_file=p.system_file, user_file=p.user_file,
                                    user_multiturn_file=p.user_multiturn_file)


def build_model(spec: ModelSpec, mesh, tokenizer=None, seed: int = 0, head: str | None = None):
    """(model, params) as the ``model`` section says: from ``hf_dir``, else ``init_checkpoint``
    (an Orbax checkpoint), else ``preset`` (random init from ``seed``, the vocabulary sized to
    ``tokenizer``), through :func:`rmr1_jax.checkpoint.loading.load_model`. With
    ``model.lora_rank > 0`` the params include fresh LoRA adapters (see :func:`split_trainable`)."""
    from rmr1_jax.checkpoint.loading import load_model

    source, kind = model_source(spec)
    return load_model(source, head, mesh=mesh, kind=kind, num_labels=spec.num_labels if head == "multilabel" else None,
                      param_dtype=spec.param_dtype, dtype=spec.dtype,
                      scan_layers=spec.scan_layers, remat_policy=spec.remat_policy,
                      attention_impl=spec.attention_impl, vocab_size=spec.vocab_size, tokenizer=tokenizer,
                      seed=seed, lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_targets=spec.lora_targets)


def check_hf_dir(path: str) -> None:
    """``model.hf_dir`` must be a Hugging Face model directory: a one-line error naming the
    field when it is missing or has no ``config.json``."""
    if not os.path.isdir(path):
        raise ConfigError(f"model.hf_dir: {path} not found")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"model.hf_dir: {path} is not a Hugging Face directory (no config.json)")


def resolve_model_source(cfg):
    """``cfg`` with ``model.preset`` cleared when ``hf_dir`` or ``init_checkpoint`` decides the
    model (:func:`model_source`): the resolved config a run prints and saves then names what
    it trains, not the preset's default ``tiny``."""
    if cfg.model.preset is None or model_source(cfg.model)[1] == "preset":
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, preset=None))


def model_source(spec: ModelSpec) -> tuple[str, str]:
    """``(source, kind)`` of the ``model`` section: ``hf_dir``, else ``init_checkpoint``, else ``preset``."""
    if spec.hf_dir:
        return spec.hf_dir, "hf"
    if spec.init_checkpoint:
        return spec.init_checkpoint, "orbax"
    return spec.preset, "preset"


def split_trainable(model_cfg, params):
    """``(trainable, frozen)``: with LoRA the adapters (and a classification head) and the frozen
    base (:func:`rmr1_jax.models.lora.split_for`, no copy); without, all params and ``None``."""
    from rmr1_jax.models import lora

    if not model_cfg.lora_rank:
        return params, None
    return lora.split_for(model_cfg, params)


def lora_base_metadata(spec: ModelSpec, seed: int, frozen) -> dict:
    """The checkpoint metadata that lets a LoRA run's checkpoints load without their base in
    them (:mod:`rmr1_jax.checkpoint.lora_base`): where the base comes from and its fingerprint."""
    from rmr1_jax.checkpoint.lora_base import base_record
    from rmr1_jax.checkpoint.manager import CheckpointManager

    source, kind = model_source(spec)
    step = None
    if kind == "orbax":  # the step build_model loaded: later saves there must not change the base
        with CheckpointManager(source, read_only=True) as mgr:
            step = mgr.resolve_step(None)
    return {"lora_base": base_record(kind, source, seed, frozen, step)}


def check_resumed_lora_base(ckpt, record: dict) -> None:
    """Before a LoRA run resumes from ``ckpt`` (a CheckpointManager): the frozen base it has
    just rebuilt (``record``, its :func:`lora_base_metadata` entry, from the current
    ``model.hf_dir``, the latest step of ``model.init_checkpoint`` or the preset and seed) must
    be the base the saved adapters were trained on, by the fingerprint in the checkpoint's
    metadata; else a one-line CheckpointError naming both. No saved step: nothing to compare."""
    from rmr1_jax.errors import CheckpointError
    from rmr1_jax.models.lora import fingerprint_mismatch

    step = ckpt.latest_step()
    if step is None:
        return
    saved = ckpt.read_metadata(step).get("lora_base") or {}
    if not saved.get("fingerprint"):
        return  # a checkpoint from before fingerprints: nothing to compare with
    bad = fingerprint_mismatch(saved["fingerprint"], record["fingerprint"])
    if bad is not None:
        raise CheckpointError(
            f"{ckpt.directory} step {step}: cannot resume this LoRA run: its base is now {_describe_base(record)}, "
            f"not the weights the saved adapters were trained on ({_describe_base(saved)}; {bad} differs from the "
            f"fingerprint in the checkpoint metadata)")


def _describe_base(rec: dict) -> str:
    kind, source = rec.get("kind"), rec.get("source")
    if kind == "preset":
        return f"preset {source!r} initialized from seed {rec.get('seed')}"
    step = rec.get("step")
    return f"{'Orbax checkpoint' if kind == 'orbax' else 'HF directory'} {source}" + (
        f" step {step}" if step is not None else "")


def prepare_run_dir(run_dir: str, cfg, log=print) -> None:
    """Create the run directory, print the resolved config and save it as config.yaml."""
    text = dump(cfg)
    log("resolved config:\n" + "\n".join("  " + line for line in text.splitlines()))
    if jax.process_index() == 0:
        from rmr1_jax.data.readers import atomic_write_text

        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, "config.yaml"), text)


def checkpoint_manager(spec: CheckpointSpec, run_dir: str):
    from rmr1_jax.checkpoint.manager import CheckpointManager

    return CheckpointManager(spec.dir or os.path.join(run_dir, "checkpoints"), max_to_keep=spec.keep,
                             async_save=spec.async_save)


def prepare_job(cfg, records, log=print):
    """The start every training job shares: run directory and resolved config, mesh,
    tokenizer, judge template, and the tokenized records of ``data.train`` (and ``data.eval``)
    as ``records`` (a :class:`~rmr1_jax.train.objective.RecordSpec`) asks.
    Returns ``(mesh, tokenizer, template, sources)``."""
    from rmr1_jax.data.records import RecordOptions, build_records

    from rmr1_jax.parallel.agreement import agreed

    run_dir = cfg.train.run_dir

    def inputs():  # every process reads them; one host that cannot stops every process
        prepare_run_dir(run_dir, cfg, log)
        source, kind = model_source(cfg.model)
        if kind == "hf":
            check_hf_dir(source)
        if kind == "orbax" and not os.path.isdir(source):
            raise ConfigError(f"model.init_checkpoint: {source} not found")
        return load_tokenizer_for(cfg.tokenizer, cfg.model), load_template(cfg.prompt)

    tokenizer, template = agreed(inputs)
    mesh = make_mesh(cfg.mesh)
    files = {"train": list(cfg.data.train)}
    if cfg.data.eval:
        files["eval"] = list(cfg.data.eval)
    opts = RecordOptions(kind=records.kind, max_length=records.max_length, on_error=cfg.data.on_error,
                         overlong=records.overlong, position_seed=cfg.data.position_seed,
                         both_orders=records.both_orders, num_labels=records.num_labels,
                         length_key=records.length_key)
    sources, _ = build_records(cfg.data.cache_dir or os.path.join(run_dir, "data"), files, tokenizer, template,
                               opts, log=log)
    return mesh, tokenizer, template, sources
