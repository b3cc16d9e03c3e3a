"""The base of a LoRA checkpoint: recorded when a LoRA run starts, found again on load.

A LoRA run's checkpoints hold the trained part only (the adapters, plus a classification head
trained with them) and its optimizer state, never the frozen base again. Their metadata names
the base instead, as the ``lora_base`` entry::

    {"kind": "preset" | "hf" | "orbax", "source": preset name or absolute directory,
     "step": the Orbax base's step (else null), "seed": the run's seed,
     "fingerprint": {leaf path: [signed projection, norm]}}

:func:`merged_lora_checkpoint` loads that base the way the run did (a preset is initialized
again from the seed), checks it against the fingerprint (a base directory overwritten, or a
preset initialized differently by another JAX version, is an error, never adapters applied to
the wrong weights), restores the trained part and merges it into the kernels.
"""

from __future__ import annotations

import jax

from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.checkpoint.trees import abstract_like
from rmr1_jax.errors import CheckpointError
from rmr1_jax.models import lora
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import abstract_params, init_params, param_shardings


def base_record(kind: str, source: str, seed: int, base_params: dict, step: int | None = None) -> dict:
    """The ``lora_base`` metadata entry of a run whose frozen base is ``base_params``, loaded
    from ``source`` as ``kind`` (an Orbax base at ``step``)."""
    return {"kind": kind, "source": source, "step": step, "seed": seed, "fingerprint": lora.fingerprint(base_params)}


def merged_lora_checkpoint(directory: str, step: int | None, saved: ModelConfig, base: dict, mesh, rules,
                           load_model) -> tuple[ModelConfig, dict]:
    """``(cfg, params)`` of the plain model a LoRA checkpoint computes: its base (as ``base``, the
    ``lora_base`` metadata, says) with the saved adapters merged in, in the layout and dtype the
    run trained with. ``saved``: the checkpoint's model config (LoRA on)."""
    where = f"{directory}: LoRA base {base.get('kind')} {base.get('source')!r}"
    params = _load_base(saved, base, mesh, rules, load_model, where)
    frozen = lora.split_for(saved, params)[1]  # a head trained with the adapters is in the checkpoint
    if base.get("fingerprint"):
        bad = lora.fingerprint_mismatch(base["fingerprint"], lora.fingerprint(frozen))
        if bad is not None:
            raise CheckpointError(f"{where}: not the weights the adapters were trained on ({bad} differs from the "
                                  f"fingerprint in the checkpoint metadata)")
    trained = _restore_trained(directory, step, saved, mesh, rules)
    return lora.merge(saved, lora.combine(frozen, trained))


def _load_base(saved: ModelConfig, base: dict, mesh, rules, load_model, where: str) -> dict:
    kind, source = base.get("kind"), base.get("source")
    seed = int(base.get("seed") or 0)
    if kind == "preset":
        return init_params(DecoderLM(lora.base_config(saved)), jax.random.key(seed), mesh, rules)
    if kind not in ("hf", "orbax") or not source:
        raise CheckpointError(f"{where}: the metadata's lora_base has no loadable kind and source")
    try:
        _, params = load_model(source, saved.head, kind=kind, step=base.get("step"), mesh=mesh,
                               num_labels=saved.num_labels if saved.head == "multilabel" else None,
                               param_dtype=saved.param_dtype, dtype=saved.dtype, scan_layers=saved.scan_layers,
                               seed=seed, rules=rules)
    except CheckpointError as e:
        raise CheckpointError(f"{where} cannot be loaded ({e})") from None
    return params


def _restore_trained(directory: str, step: int | None, saved: ModelConfig, mesh, rules) -> dict:
    """The checkpoint's ``state["params"]``: the adapters (and a head trained with them)."""
    shapes = lora.split_for(saved, abstract_params(DecoderLM(saved)))[0]
    target = abstract_like(shapes, param_shardings(shapes, mesh, rules))
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.restore_subtree(mgr.resolve_step(step), "params", target)
