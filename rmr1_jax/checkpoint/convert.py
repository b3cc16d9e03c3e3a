"""Conversions between HF directories and Orbax checkpoints (``rmr1 convert``), for every head
(a sequence classifier converts to a checkpoint with a ``score`` head, and back)."""

from __future__ import annotations

import os

from rmr1_jax.errors import CheckpointError
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh


def checkpoint_metadata(cfg: ModelConfig) -> dict:
    return {"format_version": 1, "layer_layout": "scanned" if cfg.scan_layers else "unrolled",
            "model_config": cfg.to_dict()}


def hf_to_orbax(hf_dir: str, out: str, *, dtype: str = "float32", mesh_cfg: MeshConfig | None = None,
                scan_layers: bool = True, step: int = 0) -> int:
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.checkpoint.manager import CheckpointManager

    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"{out}: exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out):
        raise CheckpointError(f"{out}: already exists and is not empty")
    mesh = make_mesh(mesh_cfg)
    model, params = load_model(hf_dir, kind="hf", mesh=mesh, param_dtype=dtype, scan_layers=scan_layers)
    with CheckpointManager(out, max_to_keep=None) as mngr:
        mngr.save(step, {"params": params}, metadata=checkpoint_metadata(model.cfg), force=True)
    return step


def orbax_to_hf(ckpt: str, out: str, *, step: int | None = None, dtype: str = "bfloat16",
                tokenizer_dir: str | None = None, overwrite: bool = False,
                mesh_cfg: MeshConfig | None = None) -> str:
    """An Orbax checkpoint as an HF directory (:func:`~rmr1_jax.checkpoint.hf.save_hf`). In a
    multi-host job every process runs it: the parameters are restored sharded over the global
    mesh, gathered to process 0 one tensor at a time, and written by process 0 alone."""
    from rmr1_jax.checkpoint.hf import save_hf
    from rmr1_jax.checkpoint.hf_export import check_export_dir
    from rmr1_jax.checkpoint.loading import load_model

    check_export_dir(os.path.abspath(out), overwrite)  # before the restore, not after it
    model, params = load_model(ckpt, kind="orbax", mesh=make_mesh(mesh_cfg), step=step)
    return save_hf(model, params, out, dtype=dtype, tokenizer_dir=tokenizer_dir, overwrite=overwrite)
