"""Reading parts of a checkpoint written by :class:`~rmr1_jax.checkpoint.manager.CheckpointManager`
without a training state to restore into: the parameters alone, onto any mesh and either layer
layout (:func:`restore_params`), the metadata item and the saved run config."""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.checkpoint.trees import SCANNED, UNROLLED, abstract_like, layout_of
from rmr1_jax.errors import CheckpointError
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import HEAD_PARAMS, abstract_params, param_shardings, stack_layers, unstack_layers


def restore_params(directory: str, model_cfg: ModelConfig, mesh: Mesh, step: int | None = None,
                   key: str = "params", *, trunk_only: bool = False, rules=None):
    """The parameters of a checkpoint, sharded on ``mesh`` for ``model_cfg``.

    Reads only ``state[key]``, directly into the shardings :func:`param_shardings` gives on
    ``mesh`` by ``rules`` (never whole on one device), cast to ``model_cfg.param_dtype``. The
    target is the parameter tree of ``model_cfg``, its head included (``lm_head``, or ``score``
    [D, num_labels]); a saved head of another kind is an error naming both. When the checkpoint
    was written with the other layer layout than ``model_cfg.scan_layers`` asks for, the layers
    are stacked or unstacked in one compiled step that writes the final shardings. The layout
    comes from the saved keys (``layers`` vs ``layers_<i>``), falling back to the checkpoint's
    ``layer_layout`` metadata.

    ``trunk_only``: read the embeddings, layers and final norm but no head (the saved head,
    whatever its kind, is not read), for a model whose head is started fresh.
    """
    with CheckpointManager(directory, read_only=True) as mgr:
        step = mgr.resolve_step(step)
        saved_params = mgr.saved_tree(step, key)
        # The saved keys are the ground truth; the metadata's layer_layout (which describes
        # ``state["params"]``) only decides when the keys cannot, e.g. a model without layers.
        layout = layout_of(saved_params) or mgr.read_metadata(step).get("layer_layout")
        want = SCANNED if model_cfg.scan_layers else UNROLLED
        saved_cfg = model_cfg if layout in (None, want) else model_cfg.replace(scan_layers=layout == SCANNED)
        shapes = _without_head(abstract_params(DecoderLM(saved_cfg)), trunk_only)
        target = abstract_like(shapes, param_shardings(shapes, mesh, rules))
        if trunk_only:  # each trunk entry alone: restore_subtree matches whole saved subtrees
            params = {name: mgr.restore_subtree(step, f"{key}/{name}", sub) for name, sub in target.items()}
        else:
            _check_head(directory, step, key, saved_params, shapes, model_cfg)
            params = mgr.restore_subtree(step, key, target)
    if layout in (None, want):
        return params
    final_shapes = _without_head(abstract_params(DecoderLM(model_cfg)), trunk_only)
    convert = stack_layers if want == SCANNED else (lambda p: unstack_layers(p, model_cfg.num_hidden_layers))
    return jax.jit(convert, out_shardings=param_shardings(final_shapes, mesh, rules))(params)


def _without_head(shapes: dict, trunk_only: bool) -> dict:
    return {k: v for k, v in shapes.items() if k not in HEAD_PARAMS} if trunk_only else shapes


def _check_head(directory: str, step: int, key: str, saved_params, shapes: dict, model_cfg: ModelConfig) -> None:
    """A saved head of another kind than ``model_cfg``'s, said in one line (the generic key
    comparison would only list a missing and an unexpected key)."""
    saved = sorted(k for k in saved_params if k in HEAD_PARAMS) if isinstance(saved_params, dict) else []
    wanted = sorted(k for k in shapes if k in HEAD_PARAMS)
    if saved and saved != wanted:
        raise CheckpointError(
            f"{directory} step {step}: {key} has head parameters {', '.join(saved)}, but the model config's "
            f"{model_cfg.head!r} head needs {', '.join(wanted) or 'none (tied embeddings)'}")


def read_metadata(directory: str, step: int | None = None) -> dict:
    """The metadata item of a checkpoint step (latest by default), without reading arrays."""
    with CheckpointManager(directory, read_only=True) as mgr:
        step = mgr.resolve_step(step)
        meta = mgr.read_metadata(step)
    meta.setdefault("step", step)
    return meta


def read_config(directory: str, step: int | None = None) -> dict | None:
    """The resolved run config saved with a checkpoint step (latest by default), or None."""
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.read_config(mgr.resolve_step(step))
