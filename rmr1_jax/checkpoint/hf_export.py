"""Writing an HF directory from parameters sharded over a mesh of one or many processes,
tensor by tensor (:func:`rmr1_jax.checkpoint.hf.save_hf` calls :func:`write_hf_dir`).

Every tensor is checked (present, right shape) before any is gathered. Then, in the order of
``tensor_specs``, each one is gathered to process 0 alone (:func:`gather_to_writer`) and
streamed into its safetensors file, whose header is written first from the planned names,
shapes and offsets: no tensor waits in memory for the rest of its file. Host memory stays near
one tensor (the gathered one plus a ``_WRITE_CHUNK_BYTES`` piece of its HF layout), on process
0; the other processes hold no whole tensor. Every process runs the same collectives in the
same order; process 0 alone writes, into a temporary sibling directory renamed into place when
complete, and no process returns (or raises) before that rename is done or has failed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import struct

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rmr1_jax.errors import CheckpointError, UserError
from rmr1_jax.models.config import ModelConfig

_FILE_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_WRITE_CHUNK_BYTES = 16 * 1024**2  # HF-layout conversion is done (and written) in pieces this large


# --- gathering one tensor onto process 0 ---------------------------------------------------


def _key(index, shape) -> tuple:
    """A shard's index (a tuple of slices) as a hashable ((start, stop), ...)."""
    return tuple(sl.indices(n)[:2] for sl, n in zip(index, shape))


@functools.lru_cache(maxsize=1024)
def _permute_fn(mesh, spec, perm):
    """Compiled: every device's block of an array sharded as ``spec``, moved by ``perm``
    ((source, destination) linear positions in ``mesh.devices``) to a [mesh.size, *block]
    array whose slot i is what device i received (zeros where nothing arrived)."""
    axes = tuple(mesh.axis_names)

    def body(block):
        return jax.lax.ppermute(block, axes, perm)[None]

    if hasattr(jax, "shard_map"):
        f = jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(axes), check_vma=False)
    else:  # older jax
        from jax.experimental.shard_map import shard_map

        f = shard_map(body, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(axes), check_rep=False)
    return jax.jit(f)


def gather_to_writer(x: jax.Array) -> np.ndarray | None:
    """The whole value of ``x`` on process 0, ``None`` on the others.

    Process 0 copies the shards its own devices hold; every shard it lacks is sent to it once,
    from one holder, by collective permutes (rounds of at most one shard per process-0 device;
    one small compile per sharding and round, cached). So the tensor crosses the network once,
    process 0 holds it once on the host, and the other processes hold no more than their own
    shards and a shard-sized buffer per device.
    A collective when ``x`` spans several processes: every process calls it, in the same order.
    """
    writer = jax.process_index() == 0
    if not isinstance(x, jax.Array):
        return np.asarray(x) if writer else None
    if x.is_fully_addressable:
        return _assemble(x) if writer else None
    if not isinstance(x.sharding, NamedSharding):  # an unusual sharding: gathered everywhere
        from jax.experimental import multihost_utils

        full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return full if writer else None
    mesh, spec = x.sharding.mesh, x.sharding.spec
    index_of = x.sharding.devices_indices_map(x.shape)
    flat = list(mesh.devices.flat)
    on_writer = {_key(index_of[d], x.shape) for d in flat if d.process_index == 0}
    missing: dict[tuple, jax.Device] = {}  # shard -> the first device (mesh order) holding it
    for d in flat:
        k = _key(index_of[d], x.shape)
        if k not in on_writer and k not in missing:
            missing[k] = d
    out = _assemble(x) if writer else None
    dsts = [i for i, d in enumerate(flat) if d.process_index == 0]
    pos = {d: i for i, d in enumerate(flat)}
    srcs = list(missing.values())
    for start in range(0, len(srcs), len(dsts)):
        group = list(zip(srcs[start:start + len(dsts)], dsts))
        moved = _permute_fn(mesh, spec, tuple((pos[s], dst) for s, dst in group))(x)
        if writer:
            got = {s.index[0].indices(mesh.size)[0]: s for s in moved.addressable_shards}
            for src, dst in group:
                out[index_of[src]] = np.asarray(got[dst].data)[0]
        del moved
    return out


def _assemble(x: jax.Array) -> np.ndarray:
    """A host array of ``x``'s shape, filled with every distinct shard this process holds."""
    out = np.empty(x.shape, x.dtype)
    done = set()
    for s in x.addressable_shards:
        k = _key(s.index, x.shape)
        if k not in done:
            out[s.index] = np.asarray(s.data)
            done.add(k)
    return out


@functools.lru_cache(maxsize=256)
def _layer_fn(sharding):
    rest = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
    return jax.jit(lambda a, i: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), out_shardings=rest)


def _layer(leaf: jax.Array, i: int) -> jax.Array:
    """Layer ``i`` of a stacked leaf, on the devices that hold it (a collective when the leaf
    spans processes; the stacked axis is normally unsharded, so no data moves)."""
    if isinstance(getattr(leaf, "sharding", None), NamedSharding):
        return _layer_fn(leaf.sharding)(leaf, np.int32(i))
    return leaf[i]


# --- the plan: which tensor goes where ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    spec: object  # hf.TensorSpec
    leaf: jax.Array
    layer: int | None  # index into a stacked leaf
    nbytes: int
    file: int  # shard number


def plan_export(cfg: ModelConfig, params, dtype: str, max_shard_bytes: int) -> list[_Entry]:
    """Every HF tensor of ``cfg`` located in ``params`` and checked (a missing parameter or a
    wrong shape is a one-line error), assigned to a shard of at most ``max_shard_bytes``
    (a larger tensor gets a shard of its own). Reads no values; the same on every process."""
    from rmr1_jax.checkpoint.hf_layout import _get, _tree_path, tensor_specs

    scanned = "layers" in params
    itemsize = np.dtype(_np_dtype(dtype)).itemsize
    out, file, size = [], 0, 0
    for s in tensor_specs(cfg):
        tp = _tree_path(s, scanned)
        try:
            leaf = _get(params, tp)
            shape = tuple(leaf.shape)
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"params lack {'/'.join(tp)} (needed for {s.hf_name})") from None
        layer = s.layer if s.layer is not None and scanned else None
        ours = shape[1:] if layer is not None else shape
        try:
            got = tuple(jax.eval_shape(s.to_hf, jax.ShapeDtypeStruct(ours, leaf.dtype)).shape)
        except (TypeError, ValueError):
            got = ours
        if (layer is not None and (not shape or shape[0] <= layer)) or got != s.hf_shape:
            raise CheckpointError(f"params {'/'.join(tp)} give {s.hf_name} shape {list(got)}, "
                                  f"expected {list(s.hf_shape)}")
        nbytes = int(np.prod(s.hf_shape, dtype=np.int64)) * itemsize
        if size and size + nbytes > max_shard_bytes:
            file, size = file + 1, 0
        out.append(_Entry(s, leaf, layer, nbytes, file))
        size += nbytes
    return out


def _np_dtype(dtype: str):
    from rmr1_jax.checkpoint.hf_layout import _NP_DTYPES

    return _NP_DTYPES[dtype]


# --- writing ----------------------------------------------------------------------------------


class _SafetensorsStream:
    """One safetensors file written tensor by tensor. The header (names, dtypes, shapes and
    offsets, in write order) comes from the plan, so it is written before any data."""

    def __init__(self, path: str, entries: list[_Entry], file_dtype: str):
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for e in entries:
            header[e.spec.hf_name] = {"dtype": file_dtype, "shape": list(e.spec.hf_shape),
                                      "data_offsets": [off, off + e.nbytes]}
            off += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self.path, self.f = path, open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, hf_view: np.ndarray, np_dtype) -> None:
        """``hf_view`` (any layout) converted to C order and ``np_dtype`` a piece at a time."""
        rows = hf_view.reshape(hf_view.shape[0], -1) if hf_view.ndim > 1 else hf_view.reshape(1, -1)
        step = max(1, _WRITE_CHUNK_BYTES // max(1, rows.shape[1] * np.dtype(np_dtype).itemsize))
        for r in range(0, rows.shape[0], step):
            piece = np.ascontiguousarray(rows[r:r + step], dtype=np_dtype)
            self.f.write(piece.reshape(-1).view(np.uint8))

    def close(self) -> None:
        self.f.close()


def _file_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def check_export_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that exists and is not an empty directory (unless ``overwrite``),
    as process 0 sees it, on every process alike (a collective when there are several)."""
    err = None
    if jax.process_index() == 0 and os.path.exists(out_dir) and not overwrite \
            and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        err = CheckpointError(f"{out_dir}: already exists and is not empty (pass overwrite=True / --overwrite)")
    if _any_process(err is not None):
        raise err or CheckpointError(f"{out_dir}: process 0 refused this export directory (its error says why)")


def write_hf_dir(cfg: ModelConfig, plan: list[_Entry], out_dir: str, dtype: str, source_dir: str | None,
                 overwrite: bool, *, tokenizer_files: dict[str, bytes] | None = None) -> str:
    """Gather and write every tensor of ``plan`` (:func:`plan_export`) plus config, generation
    config and tokenizer files into ``out_dir``: ``tokenizer_files`` ({file name: content}, on
    process 0) when given, else those found in ``source_dir``. Process 0 writes; every process
    returns only once the directory is complete, or raises on every process when process 0
    cannot write (whatever the error: it is carried to the end, never raised mid-collective)."""
    writer = jax.process_index() == 0
    check_export_dir(out_dir, overwrite)
    err: CheckpointError | None = None
    tmp = f"{out_dir}.partial-{os.getpid()}"
    files = _Files(tmp, plan, dtype) if writer else None
    try:
        if writer:
            err = _attempt(tmp, files.start)
        for e in plan:
            leaf = _layer(e.leaf, e.layer) if e.layer is not None else e.leaf
            full = gather_to_writer(leaf)  # a collective: every process joins it, whatever happened
            del leaf
            if writer and err is None:
                err = _attempt(files.path(e), files.write, e, full)
            del full
        if writer and err is None:
            err = _attempt(tmp, files.finish, cfg, source_dir, out_dir, tokenizer_files)
        if writer and err is not None:
            files.close(quiet=True)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if writer:
            files.close(quiet=True)
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _any_process(err is not None):  # also the barrier: no process returns before the rename
        raise err or CheckpointError(f"{out_dir}: process 0 failed to write the export (its error says why)")
    return out_dir


class _Files:
    """Process 0's side of an export: the temporary directory and its shard files, each opened
    when its first tensor arrives."""

    def __init__(self, tmp: str, plan: list[_Entry], dtype: str):
        self.tmp, self.plan, self.dtype = tmp, plan, dtype
        self.names = _file_names(plan[-1].file + 1 if plan else 1)
        self.stream: _SafetensorsStream | None = None

    def path(self, e: _Entry) -> str:
        return os.path.join(self.tmp, self.names[e.file])

    def start(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)

    def write(self, e: _Entry, full: np.ndarray) -> None:
        if self.stream is None or self.stream.path != self.path(e):
            self.close()
            self.stream = _SafetensorsStream(self.path(e), [p for p in self.plan if p.file == e.file],
                                             _FILE_DTYPES[self.dtype])
        self.stream.write(e.spec.to_hf(full), _np_dtype(self.dtype))

    def finish(self, cfg: ModelConfig, source_dir: str | None, out_dir: str,
               tokenizer_files: dict[str, bytes] | None = None) -> None:
        """The last shard closed, the index and the small files written, the directory renamed."""
        self.close()
        _finish(cfg, self.tmp, self.names, self.plan, self.dtype, source_dir, tokenizer_files)
        _replace(self.tmp, out_dir)

    def close(self, quiet: bool = False) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                if not quiet:
                    raise


def _attempt(where: str, fn, *args) -> CheckpointError | None:
    """Run a write step on process 0; any error it raises (a full disk, a file it cannot write,
    a tokenizer file it cannot convert, a bug) becomes the export's one-line error, so that
    process 0 keeps joining the collectives and every process fails together at the end, none
    left waiting in a collective for it."""
    try:
        fn(*args)
    except OSError as e:
        return CheckpointError(f"{where}: cannot write ({' '.join(str(e).split())})")
    except CheckpointError as e:
        return e
    except Exception as e:  # noqa: BLE001 - carried to every process, see above
        what = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        return CheckpointError(f"{where}: the export failed ({' '.join(what.split())})")
    return None


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (a collective, and a barrier, when there are
    several)."""
    if jax.process_count() == 1:
        return flag
    from rmr1_jax.parallel.hostlocal import agree_max

    return bool(agree_max([int(flag)])[0])


def _replace(tmp: str, out_dir: str) -> None:
    if os.path.exists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def _finish(cfg, tmp, names, plan, dtype, source_dir, tokenizer_files=None):
    from rmr1_jax.checkpoint.hf_layout import TOKENIZER_FILES

    if len(names) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in plan)},
                 "weight_map": {e.spec.hf_name: names[e.file] for e in plan}}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(torch_dtype=dtype), f, indent=2)
    gen_src = os.path.join(source_dir, "generation_config.json") if source_dir else None
    if gen_src and os.path.isfile(gen_src):
        shutil.copyfile(gen_src, os.path.join(tmp, "generation_config.json"))
    else:
        gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
               "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id}
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2)
    if tokenizer_files is not None:
        for name, content in tokenizer_files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
    elif source_dir:
        for name in TOKENIZER_FILES:
            src = os.path.join(source_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(tmp, name))
