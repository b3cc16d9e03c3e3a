"""What a GRPO rollout step costs on the generation engine, from the responses' lengths.

The engine (:mod:`rmr1_jax.sampling.engine`) keeps ``sampling.max_slots`` sequences decoding on
each data-parallel shard and refills a slot as soon as its sequence ends, so a step's decode
time depends on how the response lengths are spread, not on the budget alone. The planner
draws the step's lengths from ``grpo.expected_response_tokens`` (:func:`response_lengths`),
replays the engine's admissions over them (:func:`simulate`: every live sequence advances one
token a step, a finished one's slot goes to the next waiting sequence) and prices each decode
step at the larger of its compute and its HBM traffic (the weights once, every live sequence's
keys and values). The static sampler's batches are priced the same way for comparison: each
batch runs until its longest response ends.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os

import numpy as np

from rmr1_jax.errors import ConfigError
from rmr1_jax.train.grpo_math import QUANTILES

SIGMA = 1.0  # the spread of the log-normal a mean alone stands for (RM-R1-like long tails)


def response_lengths(expected, budget: int, count: int, seed: int = 0, where: str = "grpo.expected_response_tokens"):
    """``count`` response lengths (1 to ``budget`` tokens) standing for ``expected``:

    * ``None``: every response at the budget (the most a step can cost);
    * a number: a log-normal (sigma 1) long tail whose mean, after the cap at the budget, is
      that number;
    * a list of numbers: the lengths a previous run saw (resampled, capped at the budget);
    * a path: a previous GRPO run's ``metrics.jsonl``: the quantiles its rollout steps logged
      (``response_length_p10`` ... ``_max``; else the mean ``response_length`` as above)."""
    rng = np.random.default_rng(seed)
    if expected is None:
        return np.full(count, budget, np.int64)
    if isinstance(expected, str):
        return _from_metrics(expected, budget, count, rng, where)
    if isinstance(expected, (list, tuple)):
        seen = np.asarray(expected, float)
        if seen.size == 0 or not np.all(seen >= 1):
            raise ConfigError(f"{where}: a list of response lengths must hold numbers of at least 1")
        return np.clip(np.round(rng.choice(seen, count)), 1, budget).astype(np.int64)
    mean = float(expected)
    if not 1 <= mean <= budget:
        raise ConfigError(f"{where}={expected}: a mean response length must lie within 1 and the budget "
                          f"(grpo.max_response_tokens={budget})")
    return _lognormal(mean, budget, count, rng)


def _lognormal(mean: float, budget: int, count: int, rng) -> np.ndarray:
    """Log-normal lengths whose capped mean is ``mean`` (the scale found by bisection)."""
    z = rng.standard_normal(count)

    def lengths(scale):
        return np.clip(np.round(scale * np.exp(SIGMA * z - SIGMA ** 2 / 2)), 1, budget)

    lo, hi = 1e-3, float(budget) * 1e3
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if lengths(mid).mean() < mean else (lo, mid)
    return lengths(hi).astype(np.int64)


def _from_metrics(path: str, budget: int, count: int, rng, where: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: {path}: no such metrics file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: {path}:{n}: not a JSON line") from None
            if isinstance(row, dict) and "response_length" in row:
                rows.append(row)
    if not rows:
        raise ConfigError(f"{where}: {path}: no GRPO rollout metrics (response_length) in it")
    keys = [k for k, _ in QUANTILES]
    with_q = [r for r in rows if all(k in r for k in keys)]
    if with_q:  # the mean of each quantile over the run's steps, then inverse-CDF draws between them
        qs = np.array([np.mean([r[k] for r in with_q]) for k in keys])
        ps = np.array([p for _, p in QUANTILES])
        return np.clip(np.round(np.interp(rng.uniform(0, 1, count), ps, qs)), 1, budget).astype(np.int64)
    mean = min(float(budget), max(1.0, float(np.mean([r["response_length"] for r in rows]))))
    return _lognormal(mean, budget, count, rng)


@dataclasses.dataclass
class Segment:
    """Steps of a decode during which ``live`` sequences run (no sequence ends or joins)."""

    steps: int
    live: int
    kv_tokens: float  # keys and values held by the live sequences, on average over the steps


def simulate(lengths, slots: int, prompt_tokens: int) -> list[Segment]:
    """The engine's decode steps for sequences of ``lengths`` new tokens after a prompt of
    ``prompt_tokens``, ``slots`` at once, each freed slot refilled at once with the next
    sequence (in order), as :class:`~rmr1_jax.sampling.scheduler.Schedule` admits them."""
    lengths = [int(x) for x in lengths]
    waiting = iter(lengths)
    ends: list[tuple[int, int]] = []  # (the step it ends at, its length), a heap
    for _ in range(min(slots, len(lengths))):
        n = next(waiting)
        heapq.heappush(ends, (n, n))
    t, kv_now = 0, prompt_tokens * len(ends)  # keys and values the live sequences hold at step t
    segments = []
    while ends:
        live, steps = len(ends), ends[0][0] - t
        if steps > 0:
            segments.append(Segment(steps, live, kv_now + live * (steps - 1) / 2))
            kv_now += live * steps
        t = ends[0][0]
        while ends and ends[0][0] == t:
            _, n_done = heapq.heappop(ends)
            kv_now -= prompt_tokens + n_done
            nxt = next(waiting, None)
            if nxt is not None:
                heapq.heappush(ends, (t + nxt, nxt))
                kv_now += prompt_tokens
    return segments


def static_segments(lengths, batch: int, prompt_tokens: int) -> list[Segment]:
    """The static sampler's decode steps: batches of ``batch`` sequences in order, each run
    until its longest ends (finished rows keep their slots)."""
    lengths = list(lengths)
    out = []
    for i in range(0, len(lengths), batch):
        rows = lengths[i:i + batch]
        longest = max(rows)
        out.append(Segment(longest, len(rows), len(rows) * (prompt_tokens + (longest - 1) / 2)))
    return out


def decode_seconds(segments, *, flops_per_row_step: float, weight_bytes: float, kv_bytes_per_token: float,
                   peak_flops: float, bandwidth: float, shards: int = 1) -> float:
    """Seconds of the decode steps of ``segments`` (counts over the whole mesh; ``shards``
    data-parallel shards share them evenly): each step the larger of its compute at
    ``peak_flops`` and its HBM traffic (``weight_bytes`` per device, the live sequences' keys
    and values) at ``bandwidth``, both per device."""
    total = 0.0
    for s in segments:
        rows, kv = s.live / shards, s.kv_tokens / shards
        compute = flops_per_row_step * rows / peak_flops
        memory = (weight_bytes + kv_bytes_per_token * kv) / bandwidth
        total += s.steps * max(compute, memory)
    return total


def logprob_widths(lengths, rows: int, budget: int, buckets: int, hosts: int = 1) -> np.ndarray:
    """The response columns of each log-prob forward of a rollout step, as
    :meth:`rmr1_jax.train.rollouts.RolloutSource._logprobs` runs them: each host's rows (the
    step's ``lengths`` dealt in ``hosts`` parts) sorted by response length, ``rows`` a forward,
    a forward's columns its longest response rounded up to a multiple of 1/``buckets`` of the
    budget, the hosts' ``i``-th forwards all at the widest of them."""
    step = -(-budget // buckets)
    parts = [np.sort(p) for p in np.array_split(np.asarray(lengths), hosts)]
    count = max(-(-len(p) // rows) for p in parts)
    return np.asarray([max((min(budget, -(-int(p[i * rows:(i + 1) * rows].max()) // step) * step)
                            for p in parts if len(p) > i * rows), default=0) for i in range(count)])


def pool_pages(sampling, free_bytes: float, page_bytes: int, need: int) -> int:
    """Pages of a shard's pool: ``sampling.kv_pages``, else ``kv_memory_fraction`` of the
    memory a device has free during the rollout, at most what every slot at its longest takes
    (``need``), as the engine sizes it."""
    if sampling.kv_pages is not None:
        return sampling.kv_pages
    return int(max(2, min(need, sampling.kv_memory_fraction * max(free_bytes, 0) // page_bytes)))


def price_rollout(spec, sampling, *, shards: int, num_pages: int, step_flops: float, prefill_flops: float,
                  prefill_tokens: int, weight_bytes: float, kv_bytes_per_token: float, peak_flops: float,
                  bandwidth: float) -> dict:
    """Seconds of one rollout step on the engine, and of the same sequences in static batches
    of as many, from the responses' lengths (``spec.expected_response_tokens``). ``step_flops``:
    a decode step's FLOPs per device with every one of the ``sampling.max_slots`` slots of each
    shard live; ``prefill_flops``: a prefill call's, which prefills ``prefill_tokens`` prompt
    tokens over the mesh; the rest per device (see :func:`decode_seconds`)."""
    prompts, budget, prompt = spec.prompts_per_step, spec.max_response_tokens, spec.max_prompt_tokens
    lengths = response_lengths(spec.expected_response_tokens, budget, prompts * spec.n)
    pool_tokens = (num_pages - 1) * sampling.page_size
    # the pool bounds the sequences a shard holds at once (their prompts and mean response)
    slots = max(1, min(sampling.max_slots, int(pool_tokens // (prompt + lengths.mean()))))
    per_row = dict(flops_per_row_step=step_flops / sampling.max_slots, weight_bytes=weight_bytes,
                   kv_bytes_per_token=kv_bytes_per_token, peak_flops=peak_flops, bandwidth=bandwidth, shards=shards)
    prefill = -(-prompts * prompt // prefill_tokens) * prefill_flops / peak_flops
    engine = prefill + decode_seconds(simulate(lengths, slots * shards, prompt), **per_row)
    static = prefill + decode_seconds(static_segments(lengths, sampling.max_slots * shards, prompt), **per_row)
    return {"seconds": engine, "static_seconds": static, "slots": slots, "pool_bound": slots < sampling.max_slots,
            "mean": float(lengths.mean()), "p90": float(np.quantile(lengths, 0.9)), "max": int(lengths.max()),
            "prefill_seconds": prefill}
