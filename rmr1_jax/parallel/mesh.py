"""Device mesh over the ``(data, fsdp, tensor)`` axes, single- or multi-host."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rmr1_jax.errors import ConfigError
from rmr1_jax.parallel.sharding import MESH_AXES, merge_rules


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. One entry may be -1: it takes whatever the device count leaves.

    ``dcn_data`` > 1 splits the data axis across TPU slices (multi-slice jobs); the other
    axes then stay inside a slice, where the interconnect is fast.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    # overrides of the logical-axis table, {logical name: mesh axis, list of them, or null},
    # e.g. {"embed": null, "mlp": ["fsdp", "tensor"]}; see rmr1_jax.parallel.sharding
    rules: dict[str, Any] | None = None

    def validate(self, where: str):
        merge_rules(self.rules, f"{where}: mesh.rules")

    def axis_rules(self):
        """The logical-axis table of this mesh: the defaults with ``rules`` applied."""
        return merge_rules(self.rules)


def parse_mesh(text: str | None) -> MeshConfig:
    """``"DATA,FSDP,TENSOR"`` (a command line's ``--mesh``; one may be -1) as a MeshConfig;
    empty: every device on the data axis."""
    if not text:
        return MeshConfig()
    try:
        parts = [int(p) for p in text.split(",")]
        if len(parts) != 3:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--mesh {text!r}: expected three integers DATA,FSDP,TENSOR (one may be -1)") from None
    return MeshConfig(*parts)


def resolve_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    dims = [cfg.data, cfg.fsdp, cfg.tensor]
    for name, d in zip(MESH_AXES, dims):
        if d == 0 or d < -1:
            raise ConfigError(f"mesh.{name}={d}: each mesh axis must be a positive size or -1")
    if dims.count(-1) > 1:
        raise ConfigError("mesh: at most one of data/fsdp/tensor may be -1")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if num_devices % known:
            raise ConfigError(
                f"mesh: {num_devices} devices cannot be split with the fixed axes "
                f"(data={cfg.data}, fsdp={cfg.fsdp}, tensor={cfg.tensor})"
            )
        dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) != num_devices:
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {math.prod(dims)} but there are {num_devices} devices"
        )
    return tuple(dims)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig | Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ``('data', 'fsdp', 'tensor')`` over all (or the given) devices.

    On TPU the device order follows the physical topology (``mesh_utils``), so the
    ``tensor`` axis lands on the closest chips.
    """
    if cfg is None:
        cfg = MeshConfig()
    elif not isinstance(cfg, MeshConfig):
        cfg = MeshConfig(*cfg)
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_shape(cfg, len(devices))
    from jax.experimental import mesh_utils

    if cfg.dcn_data > 1:
        if shape[0] % cfg.dcn_data:
            raise ConfigError(f"mesh.dcn_data={cfg.dcn_data} must divide the data axis ({shape[0]})")
        ici = (shape[0] // cfg.dcn_data, shape[1], shape[2])
        arr = mesh_utils.create_hybrid_device_mesh(ici, (cfg.dcn_data, 1, 1), devices=devices)
    else:
        try:
            arr = mesh_utils.create_device_mesh(shape, devices=devices)
        except (NotImplementedError, ValueError, AssertionError):
            arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


_JOINED = False  # this process has joined its multi-host job


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-host job. On TPU pods and SLURM, JAX finds everything by itself; the
    arguments (or ``RMR1_COORDINATOR`` / ``RMR1_NUM_PROCESSES`` / ``RMR1_PROCESS_ID``) are
    for plain multi-process CPU/GPU runs. A single-process run is left untouched, and a process
    that has joined already stays joined (several commands may run in one process)."""
    global _JOINED
    if _JOINED:
        return
    coordinator = coordinator or os.environ.get("RMR1_COORDINATOR")
    if num_processes is None and os.environ.get("RMR1_NUM_PROCESSES"):
        num_processes = int(os.environ["RMR1_NUM_PROCESSES"])
    if process_id is None and os.environ.get("RMR1_PROCESS_ID"):
        process_id = int(os.environ["RMR1_PROCESS_ID"])
    if coordinator is None and num_processes is None:
        tpu_pod = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
        if not (tpu_pod or slurm):
            return
        jax.distributed.initialize()
        _JOINED = True
        return
    # CPU processes need a collectives backend; this setting does not affect GPU or TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    _JOINED = True
