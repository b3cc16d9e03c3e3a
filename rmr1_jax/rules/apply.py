"""The Rule Adapter's apply mode (RAMO): a trained adapter picks each pair's top-k rules, and
the pair is labeled from the rule scores of those rules.

::

    rmr1 rules apply --ckpt DIR --scores FILE [--pairs FILE] --out FILE [--k 5] [--ties skip]
        [--rules FILE] [--seed 0] [--batch-size 16] [--max-length N] [--overlong error|truncate]
        [--tokenizer DIR] [--mesh DATA,FSDP,TENSOR]

    idx = predict_rules(model, params, tokenizer, rows, 5, mesh=mesh)       # [N, 5] int64
    s = apply_file("runs/adapter/checkpoints", "scores.jsonl", "labels.jsonl", pairs_path="pairs.jsonl")

Adapter input: the tokens of a ``"rules"`` training record (``data.records``): the pair in
labeled sections (``data.schemas.rule_adapter_text``) as one user message through the chat
template, no generation prompt; the head reads the last real token. An input longer than
``max_length`` is an error naming its row, or with ``overlong="truncate"`` loses its first
tokens, as the records' truncation does.

Selection: the k largest logits, best first, ties to the lower rule index. Label: A wins iff
the sum of A's selected rule scores is larger than B's; equal sums are ties, resolved by
``ties`` (``rules.select.resolve_ties``). Output rows: the schema of ``rmr1 rules label``
(``rules.select``) with ``strategy: "adapter"``; skipped ties are not written.

Batching: rows sorted by length, ``batch_size`` per forward pass (the last batch filled with
copies of its first row), each right-padded to its longest row rounded up to a multiple of 32
(at most ``max_length``), so one shape compiles per width; rows are sharded over the mesh's
(data, fsdp) axes. Several processes: each passes the same rows and gets every result (each
supplies the rows its own devices hold, wherever the mesh puts them); ``batch_size`` must be a
multiple of the process count; process 0 writes the file, and a failure on any process stops
every process.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from rmr1_jax.data.readers import iter_rows, write_jsonl
from rmr1_jax.data.records import RecordOptions, rules_record
from rmr1_jax.errors import CheckpointError, DataError, UserError
from rmr1_jax.parallel.hostlocal import fetch, to_global_shared
from rmr1_jax.parallel.sharding import activation_sharding
from rmr1_jax.rules.pool import Rule
from rmr1_jax.rules.score_files import load_pairs
from rmr1_jax.rules.select import Labeling, check_builtin_pool, check_options, labeled_rows, resolve_ties, summary

STRATEGY = "adapter"
DEFAULT_K = 5
DEFAULT_MAX_LENGTH = 1024
OVERLONG = ("error", "truncate")
BUCKET = 32


def adapter_inputs(tokenizer, rows: Sequence[dict], num_rules: int, *, max_length: int = DEFAULT_MAX_LENGTH,
                   overlong: str = "error", names: Sequence[str] | None = None) -> list[np.ndarray]:
    """The int32 token ids of each pair's adapter input, built by the ``"rules"`` record code.
    ``rows``: ``prompt`` and ``a``/``b`` (or ``response_a``/``response_b``), strings or message
    lists; ``names`` label rows in errors (default ``row <i>``, 1-based)."""
    if overlong not in OVERLONG:
        raise UserError(f"overlong={overlong!r} must be one of {', '.join(OVERLONG)}")
    names = list(names) if names is not None else [f"row {i + 1}" for i in range(len(rows))]
    opts = RecordOptions(kind="rules", max_length=max_length, num_labels=num_rules)
    out = []
    for row, name in zip(rows, names):
        try:
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}")
            # the selected-rule set is what we predict: an empty one satisfies the record parser
            # (a selection file's own labels, if the row has them, are not read)
            rec = rules_record({**{k: v for k, v in row.items() if k != "labels"}, "rule_indices": []}, name, 0,
                               tokenizer, None, opts)
        except DataError as e:
            raise DataError(f"{name}: cannot show this pair to the rule adapter: {e}") from None
        if rec.length > max_length:
            if overlong == "error":
                raise DataError(f"{name}: the adapter input is {rec.length} tokens, longer than max_length="
                                f"{max_length} (raise it, or truncate to keep the last {max_length} tokens)")
            rec = rec.truncate(max_length)
        out.append(rec.fields["input_ids"])
    return out


def top_rules(logits_nr: np.ndarray, k: int) -> np.ndarray:
    """[N, k] int64: each row's k largest logits' indices, best first, ties to the lower index."""
    return np.argsort(-np.asarray(logits_nr), axis=1, kind="stable")[:, :k].astype(np.int64)


def adapter_logits(model, params, seqs: Sequence[np.ndarray], *, mesh, batch_size: int = 16,
                   max_length: int = DEFAULT_MAX_LENGTH, pad_id: int = 0,
                   names: Sequence[str] | None = None) -> np.ndarray:
    """[N, R] float32 adapter logits of token-id rows (batching: module docstring)."""
    if model.cfg.head != "multilabel":
        raise CheckpointError(f"the model has a {model.cfg.head!r} head; a rule adapter has a 'multilabel' head")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size={batch_size!r} must be a positive integer")
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise UserError(f"batch_size={batch_size} must be a multiple of the process count ({n_proc})")
    names = list(names) if names is not None else [f"row {i + 1}" for i in range(len(seqs))]
    vocab = model.cfg.vocab_size
    seqs = [np.asarray(s, np.int32) for s in seqs]
    for s, name in zip(seqs, names):
        if len(s) > max_length or not len(s):
            raise DataError(f"{name}: {len(s)} tokens; an adapter input has 1 to max_length={max_length}")
        if s.max() >= vocab or s.min() < 0:
            raise DataError(f"{name}: token id {s.max()} is outside the adapter's vocabulary ({vocab}); "
                            f"is this its tokenizer?")
    fwd = jax.jit(lambda prm, ids, mask: model.apply({"params": prm}, ids, attention_mask=mask))
    out = np.zeros((len(seqs), model.cfg.num_labels), np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [seqs[i] for i in idx]
        rows += [rows[0]] * (batch_size - len(rows))
        width = min(max_length, -(-max(len(r) for r in rows) // BUCKET) * BUCKET)
        ids = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j, r in enumerate(rows):
            ids[j, :len(r)], mask[j, :len(r)] = r, 1
        g = to_global_shared({"ids": ids, "mask": mask}, mesh)  # each process supplies its devices' rows
        with activation_sharding(mesh):
            out[idx] = fetch(fwd(params, g["ids"], g["mask"]))[:len(idx)]
    if not np.isfinite(out).all():
        raise UserError("the rule adapter gave non-finite logits")
    return out


def predict_rules(model, params, tokenizer, pairs_rows: Sequence[dict], k: int, *, mesh, batch_size: int = 16,
                  max_length: int = DEFAULT_MAX_LENGTH, overlong: str = "error",
                  names: Sequence[str] | None = None) -> np.ndarray:
    """[N, k] int64: the adapter's k best rules for each pair row (best first, ties to the
    lower index); rows as :func:`adapter_inputs` takes them."""
    r = model.cfg.num_labels
    check_options("topk_discrepancy", k, r)  # any k-using strategy: k must be 1..R
    seqs = adapter_inputs(tokenizer, pairs_rows, r, max_length=max_length, overlong=overlong, names=names)
    logits = adapter_logits(model, params, seqs, mesh=mesh, batch_size=batch_size, max_length=max_length,
                            pad_id=tokenizer.pad_id, names=names)
    return top_rules(logits, k)


def _trained_length(path: str) -> int:
    """The ``data.max_length`` an Orbax checkpoint's run config trained with, else the default."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return DEFAULT_MAX_LENGTH
    from rmr1_jax.checkpoint.reading import read_config

    return int(((read_config(path) or {}).get("data") or {}).get("max_length") or DEFAULT_MAX_LENGTH)


def apply_file(adapter_ckpt: str, scores_path: str, out_path: str, *, k: int | None = None,
               pairs_path: str | None = None, rules: list[Rule] | None = None, ties: str = "skip", seed: int = 0,
               mesh=None, batch_size: int = 16, max_length: int | None = None, tokenizer_path: str | None = None,
               overlong: str = "error", builtin_pool: bool = False) -> dict:
    """Label the pairs of ``scores_path`` (+ ``pairs_path``: ``score_files.load_pairs``) with
    the adapter ``adapter_ckpt`` (Orbax or HF classifier dir) and write label rows to
    ``out_path`` (atomically). ``k`` default 5; ``rules`` the pool (sizes checked, ids
    written) or None; ``mesh`` a Mesh (None: all devices on data);
    ``max_length`` default: the checkpoint's training ``data.max_length``, else 1024;
    ``builtin_pool``: ``rules`` is the built-in pool because no pool file was named, and scores
    from another pool are an error saying to pass it (``select.check_builtin_pool``).
    Returns ``select.summary`` plus ``ties_handling``."""
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.checkpoint.introspect import checkpoint_head, load_checkpoint_tokenizer

    from rmr1_jax.parallel.agreement import agreed, on_process_zero

    def prepare():  # on every process, before any collective: a failure on one host stops them all
        pairs = load_pairs(scores_path, len(rules) if rules is not None and not builtin_pool else None, pairs_path)
        if builtin_pool:  # no pool file named: the scores must come from the built-in pool
            check_builtin_pool(pairs, rules, scores_path)
        r = pairs.num_rules
        k_ = check_options("topk_discrepancy", DEFAULT_K if k is None else k, r, ties)
        head, width = checkpoint_head(adapter_ckpt)
        if head != "multilabel":
            raise CheckpointError(f"{adapter_ckpt}: has a {head!r} head, not a rule adapter's 'multilabel' head")
        if width != r:
            raise UserError(f"{adapter_ckpt}: the adapter's head predicts {width} rules, but the score vectors have "
                            f"{r} (the adapter and the scores must share one rule pool)")
        tokenizer = load_checkpoint_tokenizer(adapter_ckpt, tokenizer_path)
        length = max_length or _trained_length(adapter_ckpt)
        path = pairs_path or scores_path
        names = [f"{path}:{n}" for n, _ in iter_rows(path)]  # load_pairs read every row as a pair
        seqs = adapter_inputs(tokenizer, pairs.rows, r, max_length=length, overlong=overlong, names=names)
        return pairs, k_, tokenizer, length, names, seqs

    pairs, k, tokenizer, max_length, names, seqs = agreed(prepare)
    if mesh is None:
        from rmr1_jax.parallel.mesh import make_mesh

        mesh = make_mesh()
    model, params = load_model(adapter_ckpt, "multilabel", mesh=mesh)
    logits = adapter_logits(model, params, seqs, mesh=mesh, batch_size=batch_size, max_length=max_length,
                            pad_id=tokenizer.pad_id, names=names)
    idx = top_rules(logits, k)
    sa = np.take_along_axis(pairs.scores_a, idx, axis=1).sum(axis=1)
    sb = np.take_along_axis(pairs.scores_b, idx, axis=1).sum(axis=1)
    winner, tie = resolve_ties(sa, sb, ties, seed)
    lab = Labeling(STRATEGY, k, idx, sa, sb, tie, winner)
    rows = labeled_rows(pairs, lab, rules, final=True)
    on_process_zero(write_jsonl, out_path, rows, share=False)
    s = summary(pairs, lab, len(rows))
    s["ties_handling"] = ties
    return s
