"""Reading parts of a checkpoint written by :class:`~rmr1_jax.checkpoint.manager.CheckpointManager`
without a training state to restore into: the parameters alone, onto any mesh and either layer
layout (:func:`restore_params`), the metadata item and the saved run config."""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from rmr1_jax.checkpoint.manager import SCANNED, UNROLLED, CheckpointManager, layout_of, abstract_like
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import abstract_params, param_shardings, stack_layers, unstack_layers


def restore_params(directory: str, model_cfg: ModelConfig, mesh: Mesh, step: int | None = None,
                   key: str = "params"):
    """The parameters of a checkpoint, sharded on ``mesh`` for ``model_cfg``.

    Reads only ``state[key]``, directly into the shardings :func:`param_shardings` gives on
    ``mesh`` (never whole on one device), cast to ``model_cfg.param_dtype``. When the checkpoint
    was written with the other layer layout than ``model_cfg.scan_layers`` asks for, the layers
    are stacked or unstacked in one compiled step that writes the final shardings. The layout
    comes from the saved keys (``layers`` vs ``layers_<i>``), falling back to the checkpoint's
    ``layer_layout`` metadata.
    """
    with CheckpointManager(directory, read_only=True) as mgr:
        step = mgr.resolve_step(step)
        saved_params = mgr.saved_tree(step, key)
        # The saved keys are the ground truth; the metadata's layer_layout (which describes
        # ``state["params"]``) only decides when the keys cannot, e.g. a model without layers.
        layout = layout_of(saved_params) or mgr.read_metadata(step).get("layer_layout")
        want = SCANNED if model_cfg.scan_layers else UNROLLED
        saved_cfg = model_cfg if layout in (None, want) else model_cfg.replace(scan_layers=layout == SCANNED)
        shapes = abstract_params(DecoderLM(saved_cfg))
        target = abstract_like(shapes, param_shardings(shapes, mesh))
        params = mgr.restore_subtree(step, key, target)
    if layout in (None, want):
        return params
    final_shapes = abstract_params(DecoderLM(model_cfg))
    convert = stack_layers if want == SCANNED else (lambda p: unstack_layers(p, model_cfg.num_hidden_layers))
    return jax.jit(convert, out_shardings=param_shardings(final_shapes, mesh))(params)


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
