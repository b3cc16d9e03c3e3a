"""Scoring with a scalar reward model (a ``"scalar"`` head): texts, conversations,
(prompt, response) pairs and JSONL files.

::

    scorer = load_reward_model("runs/rm/checkpoints", mesh)    # or an HF *ForSequenceClassification dir
    scorer.score_texts(["..."])                                # the text's own tokens, nothing added
    scorer.score_conversations([[{"role": "user", ...}, {"role": "assistant", ...}]])
    scorer.score(prompts, responses)                           # a ScalarRewardModel (eval/runs.py)
    score_file(scorer, "in.jsonl", "out.jsonl")                # what `rmr1 score-rm` does

The rows of a file (:func:`~rmr1_jax.inference.rows.read_score_rows`): ``{"text"}`` (scored
as it is), ``{"prompt", "response"}``, ``{"prompt", "a", "b"}`` or ``{"prompt", "chosen",
"rejected"}``, the responses rendered after their prompt with the tokenizer's chat template.

Batching: rows are sorted by length and scored ``batch_size`` at a time (a shorter last batch
is filled up, with copies of its first row whose scores are dropped, to the next power of two
rows that divides over the mesh's data shards and the processes), each batch padded on the
right with the tokenizer's pad id to its longest row rounded up to a multiple of ``bucket``
(at most ``max_length``), so only a few shapes compile. Rows are sharded over the mesh's
(data, fsdp) axes. The score is read at each row's last real token (from the mask), so the pad
id never changes a score. A row longer than ``max_length`` is an error naming it; with
``truncate=True`` its first tokens are dropped instead (the end, where the score is read, is
kept).

Multi-process jobs: every process calls with the same rows and gets every score back; each
process supplies the rows of every batch that its own devices hold (``batch_size`` must be a
multiple of the process count). :func:`score_file` reads which rows are done on process 0,
which alone writes; a failure on any process stops every process
(:mod:`rmr1_jax.parallel.agreement`).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import jax
import numpy as np

from rmr1_jax.data.readers import FileStats
from rmr1_jax.errors import CheckpointError, DataError, UserError
from rmr1_jax.inference.rows import conversation, preference_conversations, read_score_rows

# Fields score_file adds to each row (an input field of the same name is replaced).
OUTPUT_FIELDS = ("line", "score", "score_a", "score_b", "score_chosen", "score_rejected", "preferred")


class RewardScorer:
    """A loaded scalar reward model with its tokenizer: batched, sharded scoring.

    Args:
      model, params: a ``DecoderLM`` with a ``"scalar"`` head and its parameters (on ``mesh``).
      tokenizer: a :class:`~rmr1_jax.text.tokenizer_base.Tokenizer` (``encode_batch``,
        ``apply_chat_template``, ``pad_id``).
      mesh: the device mesh the batches are sharded over.
      batch_size: rows per forward pass (at most; see the module docstring).
      max_length: the longest row, in tokens.
      truncate: drop a long row's first tokens instead of raising.
      bucket: batch widths are multiples of this (capped at ``max_length``).
    """

    def __init__(self, model, params, tokenizer, mesh, *, batch_size: int = 16, max_length: int = 4096,
                 truncate: bool = False, bucket: int = 64, source: str = "the reward model"):
        if model.cfg.head != "scalar":
            raise CheckpointError(f"{source}: has a {model.cfg.head!r} head; scoring needs a 'scalar' reward model head")
        for name, v in (("batch_size", batch_size), ("max_length", max_length), ("bucket", bucket)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"{name}={v!r} must be a positive integer")
        if batch_size % jax.process_count():
            raise UserError(f"batch_size={batch_size} must be a multiple of the process count "
                            f"({jax.process_count()}): each process supplies an equal block of every batch")
        self.model, self.params, self.tokenizer, self.mesh = model, params, tokenizer, mesh
        self.batch_size, self.max_length, self.truncate, self.bucket = batch_size, max_length, truncate, bucket
        self.source = source
        self._fwd = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, attention_mask=mask)[:, 0])

    # -- the public calls ----------------------------------------------------------------------

    def score_texts(self, texts: Sequence[str], names: Sequence[str] | None = None) -> list[float]:
        """One score per text, tokenized as it is (no BOS/EOS or template added). ``names``
        label the rows in errors (default ``row <i>``)."""
        return self.score_ids(self.tokenizer.encode_batch(list(texts)), names)

    def score_conversations(self, convs: Sequence[Sequence[dict]], names: Sequence[str] | None = None) -> list[float]:
        """One score per conversation (``{"role", "content"}`` messages), rendered with the
        tokenizer's chat template (``add_generation_prompt=False``) and then tokenized."""
        return self.score_texts([self.render(c) for c in convs], names)

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        """:class:`~rmr1_jax.eval.runs.ScalarRewardModel`: the score of each response as the
        assistant's reply to its prompt (messages, or a string: one user message)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        return self.score_conversations([conversation(p, r) for p, r in zip(prompts, responses)])

    def render(self, messages: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=False)

    def score_ids(self, rows: Sequence[Sequence[int]], names: Sequence[str] | None = None) -> list[float]:
        """One score per row of token ids (see the module docstring for batching)."""
        names = list(names) if names is not None else [f"row {i}" for i in range(len(rows))]
        if len(names) != len(rows):
            raise ValueError(f"{len(names)} names for {len(rows)} rows")
        rows = [self._fit(list(r), name) for r, name in zip(rows, names)]
        out = np.zeros(len(rows), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._batch([rows[i] for i in idx], [names[i] for i in idx])
        return [float(x) for x in out]

    # -- internals -----------------------------------------------------------------------------

    def _fit(self, ids: list[int], name: str) -> list[int]:
        if not ids:
            raise DataError(f"{name}: nothing to score (no tokens)")
        if len(ids) > self.max_length:
            if not self.truncate:
                raise DataError(f"{name}: {len(ids)} tokens, more than max_length={self.max_length} (raise "
                                f"max_length, or truncate to keep the last {self.max_length} tokens)")
            ids = ids[-self.max_length:]
        top = max(ids)
        if top >= self.model.cfg.vocab_size or min(ids) < 0:
            raise DataError(f"{name}: token id {top} is outside the model's vocabulary "
                            f"(vocab_size={self.model.cfg.vocab_size}); is this the model's tokenizer?")
        return ids

    def _rows(self, real: int) -> int:
        """A forward's rows for ``real`` rows to score: the next power of two (so few shapes
        compile, and a short batch is not padded to ``batch_size``), a multiple of the mesh's
        data-parallel shards, at most ``batch_size``."""
        import math

        unit = jax.process_count()  # every process supplies an equal block
        if self.mesh is not None:
            unit = math.lcm(unit, self.mesh.shape.get("data", 1) * self.mesh.shape.get("fsdp", 1))
        n = -(-(1 << max(0, real - 1).bit_length()) // unit) * unit
        return n if n < self.batch_size else self.batch_size

    def _width(self, longest: int) -> int:
        return min(self.max_length, -(-longest // self.bucket) * self.bucket)

    def _batch(self, rows: list[list[int]], names: list[str]) -> np.ndarray:
        from rmr1_jax.parallel.hostlocal import fetch, to_global_shared
        from rmr1_jax.parallel.sharding import activation_sharding

        real = len(rows)
        rows = rows + [rows[0]] * (self._rows(real) - real)
        width = self._width(max(len(r) for r in rows))
        pad = getattr(self.tokenizer, "pad_id", None)
        if pad is None and any(len(r) < width for r in rows):
            raise UserError(f"the tokenizer has no pad id, and the batch with {names[0]} needs padding "
                            f"(name a pad_token in its tokenizer_config.json)")
        ids = np.full((len(rows), width), 0 if pad is None else pad, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        # every process holds the whole batch; each supplies the rows its devices hold
        g = to_global_shared({"ids": ids, "mask": mask}, self.mesh)
        with activation_sharding(self.mesh):
            scores = fetch(self._fwd(self.params, g["ids"], g["mask"]))
        return scores[:real]

    def fingerprint(self) -> dict:
        """What the scores depend on besides the rows: the model, the tokenizer's template, the
        length limit and truncation (for a resumed output file, :mod:`rmr1_jax.data.resumable`)."""
        from rmr1_jax.checkpoint.identity import checkpoint_identity, text_digest

        model = checkpoint_identity(self.source) if os.path.isdir(self.source) else self.source
        return {"model": model, "chat_template": text_digest(getattr(self.tokenizer, "chat_template", None)),
                "vocab_size": int(self.model.cfg.vocab_size), "max_length": self.max_length,
                "truncate": self.truncate}


def load_reward_model(path: str, mesh, *, tokenizer_path: str | None = None, dtype: str = "float32",
                      max_length: int = 4096, batch_size: int = 16, truncate: bool = False,
                      step: int | None = None) -> RewardScorer:
    """A :class:`RewardScorer` from an HF ``*ForSequenceClassification`` directory or an Orbax
    checkpoint with a ``"scalar"`` head (anything else is a one-line error, found from the
    config before any weight is read). The tokenizer is ``tokenizer_path``, else the HF
    directory's own files, else the one the checkpoint's run config names (as for judges).
    ``dtype``: the parameter dtype of an HF directory, the compute dtype of an Orbax checkpoint
    (whose parameters keep their saved dtype)."""
    from rmr1_jax.checkpoint.introspect import checkpoint_head, load_checkpoint_tokenizer
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel.agreement import agreed

    def prepare():  # every process, before any collective: a failure on one host stops them all
        head, num_labels = checkpoint_head(path, step=step)
        if head != "scalar":
            what = "a causal LM (an 'lm' head)" if head == "lm" else f"a {head!r} head of {num_labels} labels"
            raise CheckpointError(f"{path}: the checkpoint has {what}, not a scalar reward model head ('scalar', "
                                  f"e.g. an HF *ForSequenceClassification with num_labels=1)")
        return load_checkpoint_tokenizer(path, tokenizer_path, step=step)

    tokenizer = agreed(prepare)
    if os.path.isfile(os.path.join(path, "config.json")):
        model, params = load_model(path, "scalar", kind="hf", mesh=mesh, param_dtype=dtype)
    else:
        model, params = load_model(path, "scalar", kind="orbax", mesh=mesh, dtype=dtype, step=step)
    return RewardScorer(model, params, tokenizer, mesh, batch_size=batch_size, max_length=max_length,
                        truncate=truncate, source=path)


# ============================================================================ JSONL files


def _kept(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in OUTPUT_FIELDS}


def _scored_rows(scorer: RewardScorer, chunk: list[tuple[int, dict, str]], in_path: str) -> list[dict]:
    texts, names = [], []
    for n, row, kind in chunk:
        where = f"{in_path}:{n}"
        if kind == "text":
            texts.append(row["text"])
            names.append(where)
        elif kind == "response":
            texts.append(scorer.render(conversation(row["prompt"], row["response"])))
            names.append(where)
        elif kind == "preference":
            texts += [scorer.render(c) for c in preference_conversations(row, where)]
            names += [f"{where} (chosen)", f"{where} (rejected)"]
        else:
            texts += [scorer.render(conversation(row["prompt"], row[k])) for k in ("a", "b")]
            names += [f"{where} (response a)", f"{where} (response b)"]
    scores = scorer.score_texts(texts, names)
    out, pos = [], 0
    for n, row, kind in chunk:
        rec = {**_kept(row), "line": n}
        if kind in ("pair", "preference"):
            a, b = scores[pos], scores[pos + 1]
            pos += 2
            names = ("a", "b") if kind == "pair" else ("chosen", "rejected")
            rec.update({f"score_{names[0]}": a, f"score_{names[1]}": b,
                        "preferred": names[0] if a > b else names[1] if b > a else "tie"})
            bad = not (math.isfinite(a) and math.isfinite(b))
        else:
            rec["score"] = scores[pos]
            pos += 1
            bad = not math.isfinite(rec["score"])
        if bad:
            raise DataError(f"{in_path}:{n}: the model gave a non-finite score")
        out.append(rec)
    return out


def score_file(scorer: RewardScorer, in_path: str, out_path: str, *, batch_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> FileStats:
    """Score every row of the JSONL file ``in_path`` into ``out_path``, one output row per
    input row: the input's fields (an input field named like an output field is replaced),
    ``line`` (its input line number), and ``score`` for ``{"text"}`` rows (scored as they are)
    and ``{"prompt", "response"}`` rows (rendered with the chat template; a string prompt is one
    user message), or ``score_a``, ``score_b`` and ``preferred`` (``"a"``, ``"b"`` or ``"tie"``)
    for ``{"prompt", "a", "b"}`` rows.

    Every input row's shape is checked before anything is scored, and an input without rows
    is an error (a row too long or a token outside the vocabulary is found when its batch is
    scored; the rows before it stay written, and a rerun resumes after them). Resumable
    (:class:`~rmr1_jax.data.resumable.ResumableOutput`): rows whose line is already in
    ``out_path`` are skipped and the rest appended ``batch_size`` input rows at a time
    (default: the scorer's), in input order, flushed and fsynced per batch. An output file
    written for another input, or by another model, template or length limit
    (:meth:`RewardScorer.fingerprint`), is an error."""
    from rmr1_jax.data.resumable import ResumableOutput
    from rmr1_jax.parallel.agreement import agreed

    batch_size = batch_size or scorer.batch_size
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be positive")
    rows = agreed(read_score_rows, in_path)
    with ResumableOutput(out_path, in_path, {n: row for n, row, _ in rows}, fingerprint=scorer.fingerprint(),
                         output_fields=OUTPUT_FIELDS) as out:
        todo = [r for r in rows if r[0] not in out.done]
        stats = FileStats(total=len(rows), skipped=len(rows) - len(todo))
        for i in range(0, len(todo), batch_size):
            scored = _scored_rows(scorer, todo[i:i + batch_size], in_path)
            out.append(scored)
            stats.written += len(scored)
            if progress:
                progress(stats.skipped + stats.written, stats.total)
    return stats
