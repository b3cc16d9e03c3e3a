"""grain input pipelines over tokenized records: seeded shuffling, per-host sharding, packing,
batching, and an iterator whose state goes into checkpoints.

The training pipelines give the same global batches whatever the process count: each is the
single-process pipeline's stream of ``batch_size * process_count`` rows (shuffled, packed and
batched alike), of which process ``p`` keeps the block of rows ``[p * batch_size, (p + 1) *
batch_size)``. So a job trains on the same data, in the same order, on one host or many.
Evaluation batches are dealt the same way, every record once, with a short last block padded
with rows that count nowhere, so every process runs the same number of evaluation steps.

Batches are host-local numpy dicts of [per_host_batch, max_length] arrays:
``input_ids``, ``segment_ids`` (0 = padding, 1.. = packed sequence), ``positions`` and
``loss_mask`` (1 on tokens to learn). Preference-pair batches (:func:`pair_dataset`) hold one
pair per row: ``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask``, right-padded.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterator

import grain
import numpy as np


def _eval_shares(source, batch_size: int, limit: int | None, process_index: int, process_count: int):
    """Evaluation: the records of each global batch that this process reads (every record once).
    Global batch ``k`` holds records ``[k * G, (k + 1) * G)`` (``G = batch_size * process_count``),
    of which process ``p`` takes its block of ``batch_size``; the last global batch's blocks may
    be short or empty. Every process gets the same number of batches, so each takes part in
    every step of the evaluation (a process without rows pads its whole block)."""
    n = len(source) if limit is None else min(limit, len(source))
    g = batch_size * process_count
    for start in range(0, n, g):
        lo = start + process_index * batch_size
        yield [source[i] for i in range(lo, min(lo + batch_size, n))]


def _host_rows(ds, batch_size: int, process_index: int, process_count: int):
    """Host batches of the process-invariant row stream ``ds`` (a MapDataset, shuffled and
    repeated as a single process would): global batch ``k`` holds rows ``[k * B, (k + 1) * B)``
    (``B = batch_size * process_count``), of which this process keeps its block of
    ``batch_size``. A finite stream ends after its last full global batch on every process.
    Random access: each process reads its own rows only."""
    global_batch = batch_size * process_count
    if len(ds) < sys.maxsize:  # finite: whole global batches, the same count on every process
        ds = ds[: len(ds) // global_batch * global_batch]
    return ds.batch(batch_size, drop_remainder=True)[process_index::process_count].to_iter_dataset()


def _host_block(process_index: int, batch_size: int):
    """This process's rows of a global batch (a dict of arrays)."""
    lo, hi = process_index * batch_size, (process_index + 1) * batch_size
    return lambda b: {k: np.ascontiguousarray(v[lo:hi]) for k, v in b.items()}


def _to_sft_example(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    ids = np.asarray(rec["input_ids"], np.int32)
    return {"input_ids": ids, "loss_mask": np.asarray(rec["loss_mask"], np.int32)}


def sft_dataset(source, *, batch_size: int, max_length: int, seed: int, pad_id: int, epochs: int | None = None,
                pack: bool = True, shuffle: bool = True, process_index: int = 0, process_count: int = 1,
                num_packing_bins: int | None = None):
    """An endless (``epochs=None``) or finite grain IterDataset of packed SFT batches of
    ``batch_size`` rows per process. Packing, being sequential, runs over the global stream on
    every process (``num_packing_bins``, default the global batch), which then keeps its block
    of each global batch (see the module docstring)."""
    global_batch = batch_size * process_count
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(epochs)
    if not pack and process_count > 1:  # no packing: each process reads its own rows only
        return _host_rows(ds.map(lambda r: _pad_single(_to_sft_example(r), max_length, pad_id)), batch_size,
                          process_index, process_count)
    ds = ds.map(_to_sft_example).to_iter_dataset()
    if pack:
        ds = grain.experimental.FirstFitPackIterDataset(
            ds, length_struct={"input_ids": max_length, "loss_mask": max_length},
            num_packing_bins=num_packing_bins or global_batch, seed=seed, shuffle_bins=shuffle,
            padding_struct={"input_ids": pad_id, "loss_mask": 0},
        )
        ds = ds.map(_rename_packed)
    else:
        ds = ds.map(lambda ex: _pad_single(ex, max_length, pad_id))
    ds = ds.batch(global_batch, drop_remainder=True)
    return ds.map(_host_block(process_index, batch_size)) if process_count > 1 else ds


def _rename_packed(ex):
    return {"input_ids": ex["input_ids"], "segment_ids": ex["input_ids_segment_ids"],
            "positions": ex["input_ids_positions"], "loss_mask": ex["loss_mask"]}


def _pad_single(ex, max_length: int, pad_id: int):
    n = min(len(ex["input_ids"]), max_length)
    ids = np.full(max_length, pad_id, np.int32)
    ids[:n] = ex["input_ids"][:n]
    mask = np.zeros(max_length, np.int32)
    mask[:n] = ex["loss_mask"][:n]
    seg = np.zeros(max_length, np.int32)
    seg[:n] = 1
    pos = np.zeros(max_length, np.int32)
    pos[:n] = np.arange(n)
    return {"input_ids": ids, "segment_ids": seg, "positions": pos, "loss_mask": mask}


def eval_batches(source, *, batch_size: int, max_length: int, pad_id: int, limit: int | None = None,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every record once, one per row (no packing), ``batch_size`` rows per process and the same
    number of batches on every process (:func:`_eval_shares`); a short block is padded with
    all-padding rows (segment 0, loss 0) so every batch has the same shape."""
    empty = {"input_ids": np.full(max_length, pad_id, np.int32),
             **{k: np.zeros(max_length, np.int32) for k in ("segment_ids", "positions", "loss_mask")}}
    for recs in _eval_shares(source, batch_size, limit, process_index, process_count):
        rows = [_pad_single(_to_sft_example(r), max_length, pad_id) for r in recs]
        yield _stack(rows + [empty] * (batch_size - len(rows)))


def _to_pair_example(rec: dict[str, Any], max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    out = {}
    for side in ("chosen", "rejected"):
        ids = np.asarray(rec[f"{side}_ids"], np.int32)[:max_length]
        row = np.full(max_length, pad_id, np.int32)
        row[: len(ids)] = ids
        mask = np.zeros(max_length, np.int32)
        mask[: len(ids)] = 1
        out[f"{side}_ids"], out[f"{side}_mask"] = row, mask
    return out


def pair_dataset(source, *, batch_size: int, max_length: int, seed: int, pad_id: int, epochs: int | None = None,
                 shuffle: bool = True, process_index: int = 0, process_count: int = 1):
    """An endless (``epochs=None``) or finite grain IterDataset of preference-pair batches:
    ``batch_size`` pairs per host, each side right-padded to ``max_length``."""
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(epochs).map(lambda r: _to_pair_example(r, max_length, pad_id))
    if process_count > 1:
        return _host_rows(ds, batch_size, process_index, process_count)
    return ds.to_iter_dataset().batch(batch_size, drop_remainder=True)


def pair_eval_batches(source, *, batch_size: int, max_length: int, pad_id: int, limit: int | None = None,
                      process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every pair once, the same number of batches on every process (:func:`_eval_shares`); a
    short block is filled with all-padding pairs (masks 0), which the reward-model loss does
    not count."""
    empty = _to_pair_example({"chosen_ids": np.zeros(0, np.int32), "rejected_ids": np.zeros(0, np.int32)},
                             max_length, pad_id)
    for recs in _eval_shares(source, batch_size, limit, process_index, process_count):
        rows = [_to_pair_example(r, max_length, pad_id) for r in recs]
        yield _stack(rows + [empty] * (batch_size - len(rows)))


def _to_rules_example(rec: dict[str, Any], max_length: int, pad_id: int, num_labels: int) -> dict[str, np.ndarray]:
    ids = np.asarray(rec["input_ids"], np.int32)[-max_length:]
    row = np.full(max_length, pad_id, np.int32)
    row[: len(ids)] = ids
    mask = np.zeros(max_length, np.int32)
    mask[: len(ids)] = 1
    labels = np.zeros(num_labels, np.float32)
    labels[: len(rec["labels"])] = np.asarray(rec["labels"], np.float32)
    return {"input_ids": row, "attention_mask": mask, "labels": labels}


def rules_dataset(source, *, batch_size: int, max_length: int, seed: int, pad_id: int, num_labels: int,
                  epochs: int | None = None, process_index: int = 0, process_count: int = 1):
    """Rule-adapter batches: ``input_ids``/``attention_mask`` [B, T] right-padded, ``labels`` [B, R]
    (``batch_size`` rows per host)."""
    ds = grain.MapDataset.source(source).shuffle(seed=seed)
    ds = ds.repeat(epochs).map(lambda r: _to_rules_example(r, max_length, pad_id, num_labels))
    if process_count > 1:
        return _host_rows(ds, batch_size, process_index, process_count)
    return ds.to_iter_dataset().batch(batch_size, drop_remainder=True)


def rules_eval_batches(source, *, batch_size: int, max_length: int, pad_id: int, num_labels: int,
                       limit: int | None = None, process_index: int = 0,
                       process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, the same number of batches on every process (:func:`_eval_shares`);
    a short block is filled with empty rows (mask 0)."""
    empty = _to_rules_example({"input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.uint8)},
                              max_length, pad_id, num_labels)
    for recs in _eval_shares(source, batch_size, limit, process_index, process_count):
        rows = [_to_rules_example(r, max_length, pad_id, num_labels) for r in recs]
        yield _stack(rows + [empty] * (batch_size - len(rows)))


def _stack(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class CheckpointableIterator:
    """Wraps a grain iterator; ``state()`` / ``restore(state)`` give exact resume."""

    def __init__(self, dataset):
        self._ds = dataset
        self._it = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def state(self) -> dict:
        return {"grain": json.loads(json.dumps(self._it.get_state(), default=_jsonable))}

    def restore(self, state: dict) -> None:
        self._it = iter(self._ds)
        self._it.set_state(state["grain"])


def _jsonable(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"iterator state value {x!r} is not JSON-serializable")
