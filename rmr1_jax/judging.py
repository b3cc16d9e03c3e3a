"""Judging a pair with its responses at positions A and B: where each response is shown, the
same pair in the other order, position consistency, and verdicts generated for batches of
judge prompts.

Every A/B rule of the package is defined here once:

* placement - :func:`alternate_at_a` from :func:`seeded_start` (training data: alternating,
  so the labels stay balanced), :func:`coin_at_a` (evaluation: a seeded coin flip per task
  that does not depend on the task's position in the file), and :func:`place`;
* the other order - :func:`flip` (a label or verdict read in the swapped order) and
  :func:`swap`;
* both orders - :func:`position_consistent` and :func:`both_orders_metrics`;
* generation - :func:`judge_prompts`, :func:`judge_pairs`, :func:`verdict_accuracy`.

This module sits below ``data``, ``train`` and ``eval`` (they import it; it imports none of
them), so records, rollouts and benchmark runs place and flip with the same functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence, TypeVar

import jax
import numpy as np

from rmr1_jax.sampling.sampler import Sampler, SamplingParams
from rmr1_jax.text.verdict import parse_verdict, prompt_opens_thinking

T = TypeVar("T")

_OTHER = {"A": "B", "B": "A", None: None}


# ============================================================================ placement


def seeded_start(seed: int) -> int:
    """The first placement (0 or 1) of :func:`alternate_at_a` for a seed: a hash, so every
    seed picks its own start, the same one on every machine."""
    return int(hashlib.sha256(f"positions:{seed}".encode()).hexdigest(), 16) % 2


def alternate_at_a(index: int, start: int = 0) -> bool:
    """Whether item ``index`` of a stream shows its chosen response at A: alternating from
    ``start`` (0: the first item has it at A), which keeps the two labels balanced to within
    one in every prefix of the stream."""
    return (index + start) % 2 == 0


def coin_at_a(seed: int, benchmark: str, item_id, pair_index) -> bool:
    """A seeded coin flip per task: whether its first response is shown at A. It depends only
    on ``(seed, benchmark, item_id, pair_index)``, so a resumed or reordered run shows every
    task the same way."""
    h = hashlib.sha256(f"ab:{seed}:{benchmark}:{item_id}:{pair_index}".encode()).digest()
    return h[0] % 2 == 0


def place(first: T, second: T, first_at_a: bool) -> tuple[T, T, str]:
    """``(response_a, response_b, position of first)``: ``first`` at A when ``first_at_a``,
    else at B. With ``first`` the chosen response the position is the right verdict."""
    return (first, second, "A") if first_at_a else (second, first, "B")


# ============================================================================ the other order


def flip(label: str | None) -> str | None:
    """The other position: ``"A"`` <-> ``"B"``; ``None`` (no verdict) stays ``None``. Maps a
    winner to the swapped order, and a verdict given in the swapped order back to the
    original one."""
    return _OTHER[label]


def swap(a: T, b: T, winner: str) -> tuple[T, T, str]:
    """The same pair in the other order: B's response at A and the other label."""
    return b, a, flip(winner)


# ============================================================================ both orders


def position_consistent(verdicts: Sequence[str | None], winners: Sequence[str]) -> bool:
    """Whether the two judgments of one pair (``verdicts`` in the two orders, each as shown)
    both gave a verdict and picked the same response. ``winners``: where one and the same
    response (the better one, or any fixed one) was shown in each order."""
    picks = [v == w for v, w in zip(verdicts, winners)]
    return all(v is not None for v in verdicts) and picks[0] == picks[1]


def both_orders_metrics(rows: Sequence[dict], winners: Sequence[str],
                        groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Held-out metrics of pairs judged in both orders. ``rows``: what
    :func:`judge_pairs` returns with ``both_orders`` (verdicts in the original labels);
    ``winners``: the right verdict of each pair in its original order.

    ``accuracy`` is over all ``2 n`` judgments (no verdict counts as wrong),
    ``no_verdict_rate`` the share of them without a verdict, ``position_consistency`` the
    share of pairs whose two judgments pick the same response; with ``groups`` (one name per
    pair) ``by_group`` holds the accuracy per group, in sorted order."""
    n = max(len(rows), 1)
    verdicts = [v for r in rows for v in (r["verdict"], r["verdict_swapped"])]
    scores = [(r["verdict"] == w) + (r["verdict_swapped"] == w) for r, w in zip(rows, winners)]
    out: dict[str, Any] = {"accuracy": sum(scores) / (2 * n),
                           "no_verdict_rate": sum(v is None for v in verdicts) / (2 * n),
                           "position_consistency": sum(r["consistent"] for r in rows) / n}
    if groups is not None:
        by: dict[str, list[int]] = {}
        for g, sc in zip(groups, scores):
            by.setdefault(g, []).append(sc)
        out["by_group"] = {k: sum(v) / (2 * len(v)) for k, v in sorted(by.items())}
    return out


# ============================================================================ generation


@dataclasses.dataclass
class Judgment:
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


def judge_prompts(sampler: Sampler, params, prompt_ids: Sequence[Sequence[int]], tokenizer, *, batch_size: int,
                  max_new_tokens: int, temperature: float = 0.0, rng=None) -> list[Judgment]:
    """Generate a judgment for each tokenized prompt, ``batch_size`` at a time (the last batch
    is padded with a copy of its first prompt so every batch compiles to one shape).

    In a multi-process job every process passes the same prompts and gets every judgment: each
    process generates its block of every batch (``batch_size`` is rounded up to a multiple of
    the process count), and the blocks' tokens are gathered to every process."""
    out: list[Judgment] = []
    sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    plen = max((len(p) for p in prompt_ids), default=1)
    plen = -(-plen // 32) * 32
    opened = prompts_open_thinking(tokenizer, prompt_ids)
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
            from jax.experimental import multihost_utils

            p = jax.process_index()
            g = sampler.generate(params, chunk[p * block:(p + 1) * block], sp, rng=rng, prompt_length=plen)
            tokens, lengths, finished = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                                         for x in (g.tokens, g.lengths, g.finished.astype(np.int32)))
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
                batch_size: int = 16, mesh=None) -> list[dict]:
    """Judge (prompt, response_a, response_b) triples (strings or message lists) greedily.
    Returns dicts with ``judgment``, ``verdict`` and ``finished``; with ``both_orders`` also
    ``judgment_swapped``, ``verdict_swapped`` (the verdict with A and B swapped, mapped back
    to the original labels by :func:`flip`) and ``consistent`` (:func:`position_consistent`)."""
    from rmr1_jax.text.prompts import build_judge_messages

    tok, tpl = judge.tokenizer, judge.template
    if judge.sampler is None:  # one Sampler per judge: its compiled functions are reused across calls
        judge.sampler = Sampler(judge.model, eos_ids=tok.eos_ids, pad_id=tok.pad_id,
                                mesh=mesh if mesh is not None else getattr(judge, "mesh", None))
    sampler = judge.sampler

    def encode(p, a, b):
        return tok.encode(tok.apply_chat_template(build_judge_messages(p, a, b, tpl), add_generation_prompt=True))

    fwd = judge_prompts(sampler, judge.params, [encode(p, a, b) for p, a, b in pairs], tok,
                        batch_size=batch_size, max_new_tokens=max_new_tokens)
    out = [{"judgment": j.text, "verdict": j.verdict, "finished": j.finished} for j in fwd]
    if both_orders:
        swp = judge_prompts(sampler, judge.params, [encode(p, b, a) for p, a, b in pairs], tok,
                            batch_size=batch_size, max_new_tokens=max_new_tokens)
        for r, j in zip(out, swp):
            r["judgment_swapped"] = j.text
            r["verdict_swapped"] = flip(j.verdict)
            # response_a is shown at A first, then at B
            r["consistent"] = position_consistent((r["verdict"], j.verdict), ("A", "B"))
    return out
