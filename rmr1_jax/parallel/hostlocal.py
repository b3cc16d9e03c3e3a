"""Host-local rows and global arrays in a multi-process (multi-host) job.

Each process holds its own rows (its prompts, its rollouts); a jitted computation sees one
global array whose rows are spread over the mesh's (data, fsdp) shards. ``to_global`` builds
it, ``process_rows`` says which global rows this process supplied, ``fetch`` brings a global
array's value to every host, ``agree_max`` makes every process choose the same shape, and
``agree_sum`` totals statistics of the processes' own rows.
In a single process they reduce to plain numpy.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from rmr1_jax.parallel.sharding import logical_to_spec


def batch_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Rows over (data, fsdp); a row count those axes do not divide is replicated instead."""
    spec = logical_to_spec(("act_batch",) + (None,) * (len(shape) - 1), shape, mesh)
    return NamedSharding(mesh, spec)


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local batch rows -> one global array per key, rows sharded over (data, fsdp).
    Every process passes the same number of rows; the global rows are the processes' rows in
    process order. Where the (data, fsdp) shards do not divide the rows (or there is one such
    shard, as with a mesh that is all tensor-parallel), the rows are replicated: every
    process's rows are gathered to every host first."""
    out = {}
    n_proc = jax.process_count()
    for k, v in batch.items():
        global_shape = (v.shape[0] * n_proc,) + v.shape[1:]
        sharding = batch_sharding(mesh, global_shape)
        if n_proc > 1 and sharding.is_fully_replicated:
            from jax.experimental import multihost_utils

            v = np.asarray(multihost_utils.process_allgather(v, tiled=True))
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out


def process_rows(x: jax.Array) -> np.ndarray:
    """Global row indices of the rows this process supplied to ``x`` (made by
    :func:`to_global`): its addressable shards' rows, in order; for replicated rows, its
    block of them in process order."""
    n = x.shape[0]
    n_proc = jax.process_count()
    if n_proc > 1 and x.sharding.is_fully_replicated:
        k = n // n_proc
        return np.arange(jax.process_index() * k, (jax.process_index() + 1) * k, dtype=np.int64)
    rows = set()
    for s in x.addressable_shards:
        sl = s.index[0]
        rows.update(range(*sl.indices(n)))
    return np.array(sorted(rows), np.int64)


def fetch(x) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on this host. Every process must call
    it at the same point (it is a collective when several processes share the array)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def agree_max(values) -> np.ndarray:
    """Element-wise maximum of a small int vector over all processes (for shapes every process
    must share); the vector itself in a single process."""
    v = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return v
    from jax.experimental import multihost_utils

    return np.max(np.asarray(multihost_utils.process_allgather(v)), axis=0)


def agree_sum(values) -> np.ndarray:
    """Element-wise sum of a small float vector over all processes (totals of statistics each
    process computed on its own rows, e.g. for metrics process 0 logs); the vector itself, as
    float32, in a single process. Every process must call it at the same point."""
    v = np.asarray(values, np.float64).astype(np.float32)
    if jax.process_count() == 1:
        return v
    from jax.experimental import multihost_utils

    return np.sum(np.asarray(multihost_utils.process_allgather(v)), axis=0, dtype=np.float32)
