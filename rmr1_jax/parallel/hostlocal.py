"""Host-local rows and global arrays in a multi-process (multi-host) job.

Each process holds its own rows (its prompts, its rollouts); a jitted computation sees one
global array whose rows are spread over the mesh's (data, fsdp) shards. ``to_global`` builds
it, ``process_rows`` says which global rows this process supplied, ``fetch`` brings a global
array's value to every host, ``agree_max`` makes every process choose the same shape, and
``agree_sum`` totals statistics of the processes' own rows. Rows every process holds alike (a
file being scored) go through ``to_global_shared``, whose global rows are the batch's rows in
order on any mesh.
In a single process they reduce to plain numpy.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from rmr1_jax.parallel.sharding import logical_to_spec


def batch_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Rows over (data, fsdp); a row count those axes do not divide is replicated instead."""
    spec = logical_to_spec(("act_batch",) + (None,) * (len(shape) - 1), shape, mesh)
    return NamedSharding(mesh, spec)


@functools.lru_cache(maxsize=256)
def _row_blocks(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...] | None:
    """Per process (in process order), the global rows its devices hold, when every process
    holds a distinct ``rows / process_count`` of them (the usual case, wherever the mesh puts
    each process's devices: on a TPU slice they need not be contiguous); None when some rows
    live on several processes' devices (a replicated batch, or a (data, fsdp) shard spread over
    processes). Read from every device's index, so each process reaches the same answer."""
    n, n_proc = shape[0], jax.process_count()
    rows: dict[int, set] = {}
    for d, idx in sharding.devices_indices_map(shape).items():
        rows.setdefault(d.process_index, set()).update(range(*idx[0].indices(n)))
    if len(rows) != n_proc or any(len(r) != n // n_proc for r in rows.values()):
        return None
    return tuple(tuple(sorted(rows[p])) for p in sorted(rows))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local batch rows -> one global array per key, rows sharded over (data, fsdp).
    Every process passes the same number of rows. Each process's rows go to its own devices,
    so where they sit in the global array follows the mesh: :func:`process_rows` says which
    global rows they are (on one process, or with a process-major mesh, process ``p``'s block
    ``[p * k, (p + 1) * k)``; on a TPU slice's mesh they may interleave with other processes').
    Where some rows must live on several processes (the rows replicated because the (data,
    fsdp) shards do not divide them, or a shard spread over processes), every process's rows are
    gathered first and the global rows are the processes' blocks in process order."""
    out = {}
    n_proc = jax.process_count()
    for k, v in batch.items():
        global_shape = (v.shape[0] * n_proc,) + v.shape[1:]
        sharding = batch_sharding(mesh, global_shape)
        blocks = _row_blocks(sharding, global_shape) if n_proc > 1 else None
        if n_proc == 1:
            out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
        elif blocks is None:
            from jax.experimental import multihost_utils

            full = np.asarray(multihost_utils.process_allgather(v, tiled=True))
            out[k] = jax.make_array_from_callback(global_shape, sharding, lambda idx, full=full: full[idx])
        else:  # this process's i-th row is global row blocks[p][i]
            local_of = np.full(global_shape[0], -1, np.int64)
            local_of[list(blocks[jax.process_index()])] = np.arange(v.shape[0])
            out[k] = jax.make_array_from_callback(
                global_shape, sharding, lambda idx, v=v, local_of=local_of: v[local_of[idx[0]]][(slice(None),) + tuple(idx[1:])])
    return out


def to_global_shared(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Rows every process holds alike (the same batch on each: scoring a file, judging a
    list) -> one global array per key whose row ``i`` is ``batch[k][i]`` on any mesh; each
    process supplies the rows its own devices hold. ``fetch`` of a row-wise result then lines
    up with the batch, with no assumption about where a process's devices sit in the mesh."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_callback(v.shape, batch_sharding(mesh, v.shape), lambda idx, v=v: v[idx])
    return out


def process_rows(x: jax.Array) -> np.ndarray:
    """Global row indices of the rows this process supplied to ``x`` (made by
    :func:`to_global`), in the order it supplied them."""
    n_proc = jax.process_count()
    n = x.shape[0]
    if n_proc == 1:
        return np.arange(n, dtype=np.int64)
    blocks = _row_blocks(x.sharding, tuple(x.shape))
    if blocks is None:  # gathered in process order
        k = n // n_proc
        return np.arange(jax.process_index() * k, (jax.process_index() + 1) * k, dtype=np.int64)
    return np.asarray(blocks[jax.process_index()], np.int64)


def fetch(x) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on this host. Every process must call
    it at the same point (it is a collective when several processes share the array)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(x) -> np.ndarray:
    """Every process's host rows of ``x`` (the same count on each), concatenated in process
    order, on every process; ``x`` itself in a single process. A collective."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
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
