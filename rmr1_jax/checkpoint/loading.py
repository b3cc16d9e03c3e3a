"""One loader for every model source, with the head asked for.

``model, params = load_model(source, head=None, *, mesh=mesh, ...)`` where ``source`` is

* a preset name (:data:`~rmr1_jax.models.presets.PRESETS`): random parameters from ``seed``;
* a local HF directory (it has ``config.json``): its safetensors weights, causal LM or
  sequence classifier;
* an Orbax checkpoint directory written by training: its metadata's ``model_config`` and the
  saved ``state["params"]`` tree, read with :func:`~rmr1_jax.checkpoint.reading.restore_params`;
  a LoRA run's checkpoint (adapters only) loads its base as the metadata's ``lora_base`` says
  (:mod:`~rmr1_jax.checkpoint.lora_base`) and comes back merged, a model without adapters.

The kind is inferred from ``source`` (a preset name wins over a directory of the same name:
write ``./tiny`` for the directory) unless ``kind`` names it.

Heads (:data:`~rmr1_jax.models.config.HEADS`): ``head=None`` keeps the source's. A
classification head (``"scalar"``, ``"multilabel"``) asked of a causal-LM source starts a
reward model or rule adapter: the trunk (embeddings, layers, final norm) is loaded, the LM head
is not read, and the ``score`` head [D, num_labels] is initialized from ``seed``, exactly as a
random initialization of the whole model would give it. A classifier source keeps its ``score``
head; asking for another width, or for an LM head, is an error.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

from rmr1_jax.checkpoint.hf import read_hf_params
from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.checkpoint.reading import restore_params
from rmr1_jax.errors import CheckpointError
from rmr1_jax.models import lora
from rmr1_jax.models.config import HEADS, LORA_TARGETS, ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import (HEAD_PARAMS, init_head, init_params, param_shardings, stack_layers,
                                    unstack_layers)
from rmr1_jax.models.presets import PRESETS, preset
from rmr1_jax.parallel.mesh import make_mesh
from rmr1_jax.paths import is_remote


class _FromSource:
    """The type of :data:`FROM_SOURCE`."""

    def __repr__(self) -> str:
        return "FROM_SOURCE"


# The default of every execution option: what an Orbax checkpoint's saved model_config says;
# for HF directories and presets ModelConfig's defaults, with the compute dtype following
# param_dtype. (``None`` cannot be the marker: it is a valid attention_impl.)
FROM_SOURCE = _FromSource()
_KINDS = ("preset", "hf", "orbax")


def source_kind(source: str) -> str:
    """``"preset"``, ``"hf"`` or ``"orbax"`` (remote paths are Orbax checkpoints)."""
    if source.lower() in PRESETS:
        return "preset"
    if is_remote(source):
        return "orbax"
    if not os.path.isdir(source):
        raise CheckpointError(f"{source}: not a checkpoint directory, nor a model preset ({', '.join(PRESETS)})")
    return "hf" if os.path.isfile(os.path.join(source, "config.json")) else "orbax"


def load_model(source: str, head: str | None = None, *, mesh: Mesh | None, num_labels: int | None = None,
               kind: str | None = None, step: int | None = None, param_dtype=FROM_SOURCE, dtype=FROM_SOURCE,
               scan_layers=FROM_SOURCE, remat_policy=FROM_SOURCE, attention_impl=FROM_SOURCE,
               vocab_size: int | None = None, tokenizer=None, seed: int = 0, rules=None,
               lora_rank: int = 0, lora_alpha: float = 16.0, lora_targets=LORA_TARGETS) -> tuple[DecoderLM, dict]:
    """``(DecoderLM, params)`` from a preset, an HF directory or an Orbax checkpoint.

    Args:
      source: preset name, HF directory or Orbax checkpoint directory (see the module docstring).
      head: one of ``HEADS``; ``None`` keeps the source's (presets: ``"lm"``).
      mesh: place parameters on this mesh by the sharding rules (``None``: the first device).
      num_labels: outputs of a ``"multilabel"`` head (a classifier source's own by default).
      kind: ``"preset"``, ``"hf"`` or ``"orbax"``: load ``source`` as this kind (its errors then
        say what that kind lacks, e.g. a missing config.json); default: :func:`source_kind`.
      step: the Orbax checkpoint step (default: the latest).
      param_dtype, dtype, scan_layers, remat_policy, attention_impl: the execution options of
        :class:`~rmr1_jax.models.config.ModelConfig` (default :data:`FROM_SOURCE`). Parameters
        are read (or cast) into ``param_dtype``.
      vocab_size, tokenizer: presets only: the vocabulary size, raised to
        ``tokenizer.vocab_size``, and the tokenizer's bos/eos/pad ids.
      seed: random initialization of a preset, or of a head started fresh.
      lora_rank, lora_alpha, lora_targets: with ``lora_rank > 0``, fresh LoRA adapters
        (:mod:`rmr1_jax.models.lora`, from ``seed``) on the loaded model, which becomes their
        frozen base. A LoRA checkpoint (written by a LoRA run) loads as the model it trained:
        its base, read from where its metadata's ``lora_base`` says and checked against the
        fingerprint saved there, with the saved adapters merged into the kernels.
    Returns:
      the module and its parameter pytree; the model's output is logits [B, T, V] ("lm") or
      scores [B, num_labels] float32 (classification heads).
    """
    exec_kw = {k: v for k, v in dict(param_dtype=param_dtype, dtype=dtype, scan_layers=scan_layers,
                                      remat_policy=remat_policy, attention_impl=attention_impl).items()
               if v is not FROM_SOURCE}
    model, params = _load(source, head, num_labels, kind, step, exec_kw, vocab_size, tokenizer, mesh, seed, rules)
    if not lora_rank:
        return model, params
    model = DecoderLM(lora.with_lora(model.cfg, lora_rank, lora_alpha, lora_targets))
    return model, lora.combine(params, lora.init_adapters(model, jax.random.key(seed), mesh, rules))


def _load(source, head, num_labels, kind, step, exec_kw, vocab_size, tokenizer, mesh, seed, rules):
    kind = kind or source_kind(source)
    if kind not in _KINDS:
        raise CheckpointError(f"kind={kind!r} is not one of {list(_KINDS)}")
    if kind == "orbax":  # a directory with no step says what it lacks (CheckpointManager)
        return _from_orbax(source, head, num_labels, step, exec_kw, mesh, seed, rules)
    if "dtype" not in exec_kw and "param_dtype" in exec_kw:
        exec_kw["dtype"] = exec_kw["param_dtype"]
    if kind == "preset":
        return _from_preset(source, head, num_labels, exec_kw, vocab_size, tokenizer, mesh, seed, rules)
    if not os.path.isdir(source):
        raise CheckpointError(f"{source}: not a directory")
    src = ModelConfig.from_hf_dir(source, **exec_kw)
    cfg = with_head(src, head, num_labels, source)
    fresh = _fresh_head(src, cfg)
    params = read_hf_params(source, cfg, mesh, rules, trunk_only=fresh)
    return _finish(cfg, params, fresh, mesh, seed, rules)


def with_head(cfg: ModelConfig, head: str | None, num_labels: int | None, source: str) -> ModelConfig:
    """``cfg`` (the source's) with the head asked for; a classifier source's ``score`` head of
    another width, or an LM head asked of a classifier, is an error naming ``source``."""
    if head is None and num_labels is None:
        return cfg
    head = head or cfg.head
    if head not in HEADS:
        raise CheckpointError(f"head={head!r} is not one of {list(HEADS)}")
    if head == "lm":
        if num_labels is not None:
            raise CheckpointError(f"num_labels={num_labels} is for a classification head, not head='lm'")
        if cfg.is_classifier:
            raise CheckpointError(f"{source}: has a {cfg.head!r} score head (num_labels={cfg.num_labels}); "
                                  f"it cannot be loaded with head='lm'")
        return cfg.replace(head="lm", num_labels=1)
    if num_labels is not None:
        n = num_labels  # ModelConfig refuses a "scalar" head of another width than 1
    elif head == "scalar":
        n = 1
    elif cfg.is_classifier:
        n = cfg.num_labels
    else:
        raise CheckpointError(f"{source}: head='multilabel' needs num_labels (the source has no score head)")
    if cfg.is_classifier and n != cfg.num_labels:
        raise CheckpointError(f"{source}: has a score head of num_labels={cfg.num_labels}; head={head!r} "
                              f"with num_labels={n} conflicts with it")
    return cfg.replace(head=head, num_labels=n)


def _fresh_head(src: ModelConfig, cfg: ModelConfig) -> bool:
    """A classification head asked of a causal LM: the trunk is loaded, the head is new."""
    return cfg.is_classifier and not src.is_classifier


def _finish(cfg: ModelConfig, params: dict, fresh: bool, mesh, seed: int, rules):
    model = DecoderLM(cfg)
    if fresh:
        params = {**params, **init_head(model, jax.random.key(seed), mesh, rules)}
    return model, params


def _from_preset(name, head, num_labels, exec_kw, vocab_size, tokenizer, mesh, seed, rules):
    over = dict(exec_kw)
    if vocab_size is not None:
        over["vocab_size"] = vocab_size
    if tokenizer is not None:
        over["vocab_size"] = max(over.get("vocab_size", 0), tokenizer.vocab_size)
        over.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    cfg = with_head(preset(name, **over), head, num_labels, name)
    model = DecoderLM(cfg)
    return model, init_params(model, jax.random.key(seed), mesh, rules)


def _from_orbax(source, head, num_labels, step, exec_kw, mesh, seed, rules):
    with CheckpointManager(source, read_only=True) as mgr:
        step = mgr.resolve_step(step)
        meta = mgr.read_metadata(step)
    if not meta.get("model_config"):
        raise CheckpointError(f"{source}: checkpoint metadata has no model_config; cannot build its model")
    src = ModelConfig.from_dict(meta["model_config"], source=f"{source} metadata")
    if mesh is None:
        mesh = make_mesh(devices=jax.devices()[:1])
    if meta.get("lora_base"):
        from rmr1_jax.checkpoint.lora_base import merged_lora_checkpoint

        src, params = merged_lora_checkpoint(source, step, src, meta["lora_base"], mesh, rules, load_model)
        cfg = with_head(src.replace(**exec_kw), head, num_labels, source)
        fresh = _fresh_head(src, cfg)
        return _finish(cfg, _adapt(params, src, cfg, fresh, mesh, rules), fresh, mesh, seed, rules)
    cfg = with_head(src.replace(**exec_kw), head, num_labels, source)
    fresh = _fresh_head(src, cfg)
    params = restore_params(source, cfg, mesh, step=step, trunk_only=fresh, rules=rules)
    if cfg.lora_rank:  # the whole tree, adapters included, saved as one: the model it computes
        cfg, params = lora.merge(cfg, params)
    return _finish(cfg, params, fresh, mesh, seed, rules)


def _adapt(params: dict, src: ModelConfig, cfg: ModelConfig, fresh: bool, mesh, rules) -> dict:
    """``params`` of ``src`` in the layer layout and parameter dtype of ``cfg`` (without the head
    when a fresh one replaces it), in one compiled step that writes the final shardings."""
    if fresh:
        params = {k: v for k, v in params.items() if k not in HEAD_PARAMS}
    if src.scan_layers == cfg.scan_layers and src.param_dtype == cfg.param_dtype:
        return params
    dt = jax.numpy.dtype(cfg.param_dtype)

    def convert(p):
        if src.scan_layers != cfg.scan_layers:
            p = stack_layers(p) if cfg.scan_layers else unstack_layers(p, cfg.num_hidden_layers)
        return jax.tree.map(lambda x: x.astype(dt), p)

    shapes = jax.eval_shape(convert, params)
    return jax.jit(convert, out_shardings=param_shardings(shapes, mesh, rules))(params)
