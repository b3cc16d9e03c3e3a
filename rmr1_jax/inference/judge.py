"""Generating judgments: a judge's verdict on pairs of responses, for a notebook, ``rmr1
judge`` and evaluation.

::

    judge = load_judge("runs/rm-r1/checkpoints", mesh)             # rmr1_jax.inference.loading
    rows = judge_pairs(judge, [(prompt, response_a, response_b)], both_orders=True)
    rows[0]["verdict"], rows[0]["consistent"]                       # "A" | "B" | None, bool
    judge_file(judge, "pairs.jsonl", "judged.jsonl")                # what `rmr1 judge --in --out` does

Greedy decoding (or sampling: ``temperature``, and ``samples`` judgments per pair drawn in one
engine call that shares the prompt's pages, what ``rmr1 eval --samples`` votes over,
:mod:`rmr1_jax.eval.voting`) through the generation engine with ``batch_size`` slots over the mesh
(:func:`judge_prompts`; in a multi-process job every process runs one schedule over every
prompt, each shard of the mesh decoding its own slots); the verdict is
read from the text by :func:`~rmr1_jax.text.verdict.parse_verdict` (none when the judgment was
cut off at ``max_new_tokens``). Where each response is shown and the other order are the rules
of :mod:`rmr1_jax.ab_positions`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from rmr1_jax.ab_positions import flip, position_consistent
from rmr1_jax.parallel.hostlocal import gather_rows
from rmr1_jax.sampling.engine import Engine, EngineConfig, shard_count
from rmr1_jax.sampling.sampler import Sampler, SamplingParams
from rmr1_jax.text.verdict import parse_verdict, prompt_opens_thinking

# Fields judge_rows adds to each row (an input field of the same name is replaced).
OUTPUT_FIELDS = ("line", "judgment", "verdict", "finished", "judgment_swapped", "verdict_swapped", "consistent",
                 "prob_a", "prob_a_swapped", "prob", "structured", "structured_swapped")


@dataclasses.dataclass
class Judgment:
    """One generated judgment: its text, the verdict read from it (``"A"``, ``"B"`` or None),
    whether it finished within the token budget, and its length in tokens."""

    text: str
    verdict: str | None
    finished: bool
    num_tokens: int


def prompts_open_thinking(tokenizer, prompt_ids: Sequence[Sequence[int]]) -> list[bool]:
    """For each tokenized generation prompt, whether it leaves a ``<think>`` section open, so
    that the judge's output starts inside it (DeepSeek-R1-Distill templates; see
    :func:`~rmr1_jax.text.verdict.parse_verdict`). Decodes each prompt once: callers compute
    the flags once per prompt and index them per sample."""
    return [prompt_opens_thinking(tokenizer.decode(p)) for p in prompt_ids]


def prompt_keys(prompt_ids: Sequence[Sequence[int]], n: int = 1) -> list[int]:
    """A key per tokenized prompt for the engine's ``prompt_index`` (its draws): a hash of its
    tokens, so a prompt's samples depend on the seed and the prompt only, not on the batch it
    ran in (row ids ``key * n + j`` stay within int32)."""
    import hashlib

    top = (2 ** 31 - 1) // max(1, n)
    return [int.from_bytes(hashlib.sha256(np.asarray(p, np.int64).tobytes()).digest()[:8], "little") % top
            for p in prompt_ids]


def judge_prompts(sampler: Sampler, params, prompt_ids: Sequence[Sequence[int]], tokenizer, *, batch_size: int,
                  max_new_tokens: int, temperature: float = 0.0, rng=None, shared: bool = True, n: int = 1,
                  prompt_index: Sequence[int] | None = None) -> list[Judgment]:
    """Generate a judgment for each tokenized prompt. With the generation engine
    (:class:`~rmr1_jax.sampling.engine.Engine`) every prompt goes in one call and the engine
    keeps its slots full; with the static :class:`Sampler`, ``batch_size`` at a time (the last
    batch padded with a copy of its first prompt so every batch compiles to one shape).

    ``n`` (the engine only): judgments per prompt, drawn at ``temperature`` in the same engine
    call (``SamplingParams(n=n)``: the prompt prefilled once, its pages read by every sample);
    the result is prompt-major (prompt ``i``'s judgments are ``i * n`` to ``i * n + n - 1``).
    ``prompt_index`` (the engine only) keys each prompt's draws (e.g. :func:`prompt_keys`).

    In a multi-process job every process passes the same prompts and gets every judgment: the
    engine runs one schedule over them on every process, each shard of the mesh decoding its
    own slots; the sampler has each process generate its block of every batch (``batch_size``
    rounded up to a multiple of the process count) and gathers the blocks' tokens. With
    ``shared=False`` (the engine only) each process passes its own prompts, as many as every
    other process, and gets their judgments (a policy's samples judged where they were drawn)."""
    out: list[Judgment] = []
    sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=n)
    opened = prompts_open_thinking(tokenizer, prompt_ids)
    if isinstance(sampler, Engine):  # continuous batching: every prompt in one call
        g = sampler.generate(params, list(prompt_ids), sp, rng=rng, tokenizer=tokenizer, shared=shared,
                             prompt_index=prompt_index)
        opened = [o for o in opened for _ in range(n)]  # prompt-major, as the rows
        return [Judgment(t, parse_verdict(t, o) if f else None, bool(f), int(length))
                for t, o, f, length in zip(g.texts, opened, g.finished, g.lengths)]
    if n != 1 or prompt_index is not None:
        raise ValueError("several judgments per prompt, or keyed draws, need the generation engine")
    if not shared and jax.process_count() > 1:
        raise ValueError("judging each process's own prompts needs the generation engine")
    plen = max((len(p) for p in prompt_ids), default=1)
    plen = -(-plen // 32) * 32
    n_proc = jax.process_count()
    batch_size = -(-batch_size // n_proc) * n_proc
    block = batch_size // n_proc
    for i in range(0, len(prompt_ids), batch_size):
        chunk = list(prompt_ids[i:i + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        if n_proc == 1:
            g = sampler.generate(params, chunk, sp, rng=rng, tokenizer=tokenizer, prompt_length=plen)
            texts, finished, lengths = g.texts, g.finished, g.lengths
        else:  # this process's block; the whole batch's tokens from every process, in batch order
            p = jax.process_index()
            g = sampler.generate(params, chunk[p * block:(p + 1) * block], sp, rng=rng, prompt_length=plen)
            tokens, lengths, finished = (gather_rows(x) for x in (g.tokens, g.lengths, g.finished.astype(np.int32)))
            texts = [tokenizer.decode(tokens[j, :lengths[j]].tolist(), skip_special_tokens=True)
                     for j in range(real)]
        for j in range(real):
            out.append(Judgment(texts[j], parse_verdict(texts[j], opened[i + j]) if finished[j] else None,
                                bool(finished[j]), int(lengths[j])))
    return out


def verdict_accuracy(judgments: Sequence[Judgment], winners: Sequence[str]) -> dict:
    """Accuracy (no verdict counts as wrong), and the share of outputs with no verdict."""
    n = len(judgments)
    correct = sum(j.verdict == w for j, w in zip(judgments, winners))
    missing = sum(j.verdict is None for j in judgments)
    return {"accuracy": correct / max(n, 1), "no_verdict_rate": missing / max(n, 1),
            "mean_tokens": float(np.mean([j.num_tokens for j in judgments])) if n else 0.0, "n": n}


def judge_pairs(judge, pairs, *, both_orders: bool = False, max_new_tokens: int = 1024,
                batch_size: int = 16, mesh=None, shared: bool = True, prob: bool = False,
                structured: bool = False, principles=None, samples: int = 1, temperature: float = 0.0,
                seed: int = 0) -> list[dict]:
    """Judge (prompt, response_a, response_b) triples (strings or message lists), greedily by
    default.
    Returns dicts with ``judgment``, ``verdict`` and ``finished``; with ``both_orders`` also
    ``judgment_swapped``, ``verdict_swapped`` (the verdict with A and B swapped, mapped back
    to the original labels by :func:`~rmr1_jax.ab_positions.flip`) and ``consistent``
    (:func:`~rmr1_jax.ab_positions.position_consistent`). ``judge``: a
    :class:`~rmr1_jax.inference.loading.LoadedJudge`. ``shared``: as :func:`judge_prompts`
    (False: each process judges its own pairs, as many as every other process). ``prob``: also
    the verdict probabilities (:mod:`rmr1_jax.inference.verdict_prob`): ``prob_a`` (P(A) in the
    given order), with both orders ``prob_a_swapped`` (response_a's in the swapped order, P(B)
    there), and ``prob``, the probability that response_a is the better one (both orders'
    mean); None where a judgment has no verdict. ``structured``: also each judgment's parts as
    JSON, quotes checked against the responses (:func:`~rmr1_jax.text.structured.structure`):
    ``structured`` and, with both orders, ``structured_swapped``. ``principles``: what the judge
    judges by (:func:`~rmr1_jax.text.prompts.build_judge_messages`): one list for every pair, or
    one list (or None) per pair.

    ``temperature`` > 0 samples instead (key ``seed``; each prompt's draws keyed by its tokens,
    :func:`prompt_keys`, so they do not depend on the batch). ``samples`` = k > 1: k judgments
    of each pair drawn in the same engine call (the prompt's pages shared by the k samples;
    ``temperature`` must be > 0); each row's ``judgment``, ``verdict``, ``finished`` and, with
    ``prob``, ``prob_a`` are then lists of k, one per sample (aggregating them is the caller's:
    :mod:`rmr1_jax.eval.voting`); not with ``both_orders`` or ``structured`` (judge each order
    as a pair of its own)."""
    from rmr1_jax.text.prompts import build_judge_messages

    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    if samples > 1 and (both_orders or structured):
        raise ValueError("several samples per pair: judge each order as a pair of its own, without structured")
    if samples > 1 and not temperature > 0:
        raise ValueError(f"{samples} samples per pair need a temperature > 0 (greedy samples are all alike)")

    tok, tpl = judge.tokenizer, judge.template
    sampler = _engine(judge, batch_size, mesh)

    per_pair = principles if principles and not isinstance(principles[0], str) else [principles] * len(pairs)
    if len(per_pair) != len(pairs):
        raise ValueError(f"{len(per_pair)} principle lists for {len(pairs)} pairs")

    def encode(p, a, b, pr):
        return tok.encode(tok.apply_chat_template(build_judge_messages(p, a, b, tpl, principles=pr),
                                                  add_generation_prompt=True))

    prompts = [encode(p, a, b, pr) for (p, a, b), pr in zip(pairs, per_pair)]
    if both_orders:  # both orders in one call, side by side: the engine's prefix cache shares their common head
        prompts = [q for (p, a, b), pr, fwd in zip(pairs, per_pair, prompts) for q in (fwd, encode(p, b, a, pr))]
    sampled = temperature > 0
    js = judge_prompts(sampler, judge.params, prompts, tok, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       shared=shared, temperature=temperature, n=samples,
                       rng=jax.random.key(seed) if sampled else None,
                       prompt_index=prompt_keys(prompts, samples) if sampled else None)
    if samples > 1:
        return _sampled_rows(judge, prompts, js, samples, prob, batch_size)
    fwd, swp = (js[0::2], js[1::2]) if both_orders else (js, [])
    out = [{"judgment": j.text, "verdict": j.verdict, "finished": j.finished} for j in fwd]
    if both_orders:
        for r, j in zip(out, swp):
            r["judgment_swapped"] = j.text
            r["verdict_swapped"] = flip(j.verdict)
            # response_a is shown at A first, then at B
            r["consistent"] = position_consistent((r["verdict"], j.verdict), ("A", "B"))
    if structured:
        from rmr1_jax.text.structured import structure

        for r, (_, a, b), j in zip(out, pairs, fwd):
            r["structured"] = structure(j.text, a, b)
        for r, (_, a, b), j in zip(out, pairs, swp):  # the swapped order showed b at A
            r["structured_swapped"] = structure(j.text, b, a)
    if prob:
        _add_probabilities(judge, out, prompts, js, both_orders=both_orders, batch_size=batch_size, shared=shared)
    return out


def _engine(judge, batch_size: int, mesh=None) -> Engine:
    """The judge's generation engine, made on first use (``batch_size`` slots over the mesh's
    shards, kept full) and reused, so its compiled functions are too."""
    if judge.sampler is None:
        mesh = mesh if mesh is not None else getattr(judge, "mesh", None)
        tok = judge.tokenizer
        judge.sampler = Engine(judge.model, eos_ids=tok.eos_ids, pad_id=tok.pad_id, mesh=mesh,
                               config=EngineConfig(max_slots=max(1, -(-batch_size // shard_count(mesh)))))
    return judge.sampler


def _add_probabilities(judge, out: list[dict], prompts, js: list[Judgment], *, both_orders: bool, batch_size: int,
                       shared: bool) -> None:
    """``prob_a`` (and with both orders ``prob_a_swapped``) and ``prob`` into the rows ``out``:
    the verdict probabilities of the judgments ``js`` of ``prompts`` (see :func:`judge_pairs`)."""
    from rmr1_jax.inference.verdict_prob import both_orders_probability, verdict_probabilities

    tok = judge.tokenizer
    ps = verdict_probabilities(judge.model, judge.params, tok, prompts, [j.text for j in js],
                               opened=prompts_open_thinking(tok, prompts), batch_size=batch_size,
                               mesh=getattr(judge, "mesh", None), shared=shared)
    fwd_p, swp_p = (ps[0::2], ps[1::2]) if both_orders else (ps, [None] * len(ps))
    for r, pa, pb in zip(out, fwd_p, swp_p):
        r["prob_a"] = pa
        if both_orders:
            r["prob_a_swapped"] = None if pb is None else 1.0 - pb
        r["prob"] = both_orders_probability(pa, pb) if both_orders else pa


def _sampled_rows(judge, prompts, js: list[Judgment], k: int, prob: bool, batch_size: int) -> list[dict]:
    """One row per prompt of its ``k`` judgments ``js[i * k:(i + 1) * k]``: ``judgment``,
    ``verdict``, ``finished`` (and with ``prob`` ``prob_a``) as lists of ``k``."""
    out = [{"judgment": [j.text for j in js[i:i + k]], "verdict": [j.verdict for j in js[i:i + k]],
            "finished": [j.finished for j in js[i:i + k]]} for i in range(0, len(js), k)]
    if prob:
        from rmr1_jax.inference.verdict_prob import verdict_probabilities

        tok = judge.tokenizer
        every = [p for p in prompts for _ in range(k)]  # each sample after its prompt
        opened = [o for o in prompts_open_thinking(tok, prompts) for _ in range(k)]
        ps = verdict_probabilities(judge.model, judge.params, tok, every, [j.text for j in js], opened=opened,
                                   batch_size=batch_size)
        for n, r in enumerate(out):
            r["prob_a"] = ps[n * k:(n + 1) * k]
    return out


def judge_rows(judge, rows: Sequence[tuple[int, dict]], out_path: str | None = None, *, both_orders: bool = False,
               max_new_tokens: int = 1024, batch_size: int = 16, prob: bool = False,
               structured: bool = False, principles=None) -> list[dict]:
    """Judge pair rows ``(line, {"prompt", "a", "b", ...})`` (checked, as
    :func:`~rmr1_jax.inference.rows.read_pairs` gives them) and return one row per pair: the
    input row's fields, ``line``, and the fields :func:`judge_pairs` gives (``judgment``,
    ``verdict``, ``finished``; with ``both_orders`` also ``judgment_swapped``,
    ``verdict_swapped``, ``consistent``; with ``prob`` the verdict probabilities, with
    ``structured`` the judgments as JSON). A row's own ``"principles"`` are what its pair is
    judged by; ``principles``, those of the rows without. With ``out_path`` the rows are also
    written there as JSONL, atomically, by process 0 (every process learns whether that worked)."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.inference.rows import pair_of
    from rmr1_jax.parallel.agreement import on_process_zero

    per_row = [row.get("principles") or principles for _, row in rows]
    out = judge_pairs(judge, [pair_of(row, f"line {n}") for n, row in rows], both_orders=both_orders,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, prob=prob, structured=structured,
                      principles=per_row if any(p is not None for p in per_row) else None)
    judged = [{**{k: v for k, v in row.items() if k not in OUTPUT_FIELDS}, "line": n, **j}
              for (n, row), j in zip(rows, out)]
    if out_path:
        on_process_zero(write_jsonl, out_path, judged, share=False)
    return judged


def judge_file(judge, in_path: str, out_path: str | None = None, **kw) -> list[dict]:
    """What ``rmr1 judge --in`` does: read and check every pair row of the JSONL file
    ``in_path`` (on every process; :func:`~rmr1_jax.inference.rows.read_pairs`), judge them and
    write the judged rows to ``out_path`` (:func:`judge_rows`, which takes the same keywords)."""
    from rmr1_jax.inference.rows import read_pairs
    from rmr1_jax.parallel.agreement import agreed

    return judge_rows(judge, agreed(read_pairs, in_path), out_path, **kw)
