"""Generated tokens per second: the generation engine against the static sampler.

Both generate for the same prompts with the same random Qwen2 model (float32, ``--preset``),
greedily, with each prompt's response length fixed in advance by a per-prompt budget (a random
model has no natural length; the budget plays the part of its EOS):

  static  ``Sampler.generate`` over batches of ``--slots`` prompts in order, as callers batch
          today: every batch decodes until its longest row ends.
  engine  ``Engine.generate`` over all prompts at once with ``max_slots = --slots``: a row that
          ends gives its slot to the next prompt.

Two workloads:

  long-tail  lengths from a log-normal with its mean at a quarter of the budget (sigma 1),
             capped at the budget, as RM-R1's judgments are;
  equal      every length at a quarter of the budget: nothing to gain, the engine must not lose.

Printed per workload: tokens/s of each side and their ratio; the static sampler's padded
tokens over real tokens (``sum over batches of slots x longest row / sum of lengths``), the
most any scheduler can gain there; the engine's ratio over that bound (goal: 0.7 or more); the
engine's slot use, host share of its wall time, prefill calls and preemptions; and the KV memory
each holds (static: ``slots x (prompt bucket + budget)`` positions; engine: its peak pages).
Both sides' tokens are compared (greedy: identical rows expected).

    python benchmarks/engine.py [--preset bench-100m] [--prompts 64] [--slots 16] [--budget 512]
                                [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_json, busy_cores, busy_line, machine_info, machine_line, random_lm, table  # noqa: E402


def long_tail_lengths(rng, n: int, budget: int) -> np.ndarray:
    """Log-normal lengths (sigma 1) with mean budget / 4, capped at the budget, at least 1."""
    sigma = 1.0
    mu = np.log(budget / 4) - sigma ** 2 / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, n)), 1, budget).astype(int)


def padded_ratio(lengths, slots: int) -> float:
    """The static sampler's decoded slot-steps over the tokens kept, batching in order."""
    steps = sum(slots * max(lengths[i: i + slots]) for i in range(0, len(lengths), slots))
    return steps / float(sum(lengths))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-100m", help="architecture of the random Qwen2 (a Qwen preset)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--slots", type=int, default=16, help="static batch size = engine slots")
    ap.add_argument("--budget", type=int, default=512, help="max new tokens")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax

    from rmr1_jax.models.paged_attention import page_bytes
    from rmr1_jax.sampling.engine import Engine, EngineConfig
    from rmr1_jax.sampling.sampler import Sampler, SamplingParams, _bucket

    log = lambda s: print(s, flush=True)  # noqa: E731
    rng = np.random.default_rng(args.seed)
    model, params = random_lm(args.preset)
    cfg = model.cfg
    vocab = cfg.vocab_size
    prompts = [rng.integers(4, vocab, int(n)).tolist() for n in rng.integers(16, 65, args.prompts)]
    sp = SamplingParams(max_new_tokens=args.budget, temperature=0.0)
    static = Sampler(model, eos_ids=[vocab], pad_id=0)
    engine = Engine(model, eos_ids=[], pad_id=0,
                    config=EngineConfig(max_slots=args.slots, page_size=args.page_size))
    workloads = {"long-tail": long_tail_lengths(rng, args.prompts, args.budget),
                 "equal": np.full(args.prompts, args.budget // 4)}

    def run_static(lengths):
        out = []
        for i in range(0, len(prompts), args.slots):
            out.append(static.generate(params, prompts[i: i + args.slots], sp, budgets=lengths[i: i + args.slots]))
        return np.concatenate([g.tokens for g in out]), np.concatenate([g.lengths for g in out])

    def run_engine(lengths):
        g = engine.generate(params, prompts, sp, budgets=lengths)
        return g.tokens, g.lengths

    def timed(fn, lengths):
        fn(lengths)  # compile and warm up
        t = time.perf_counter()
        out = fn(lengths)
        return time.perf_counter() - t, out

    busy_before = busy_cores()
    results = {"preset": args.preset, "prompts": args.prompts, "slots": args.slots, "budget": args.budget,
               "machine": machine_info(), "device": jax.devices()[0].device_kind}
    rows = []
    for name, lengths in workloads.items():
        lengths = [int(x) for x in lengths]
        tokens = sum(lengths)
        t_static, (tok_s, len_s) = timed(run_static, lengths)
        t_engine, (tok_e, len_e) = timed(run_engine, lengths)
        st = dict(engine.stats)
        assert len_s.tolist() == lengths and len_e.tolist() == lengths, "a side did not honour the budgets"
        same = float(np.mean([np.array_equal(tok_s[i, : lengths[i]], tok_e[i, : lengths[i]])
                              for i in range(len(lengths))]))
        bound = padded_ratio(lengths, args.slots)
        speed = t_static / t_engine
        page_b = page_bytes(cfg.num_hidden_layers, args.page_size, cfg.num_key_value_heads, cfg.dim_head, "float32")
        static_kv = args.slots * (_bucket(max(len(p) for p in prompts)) + args.budget) * page_b / args.page_size
        r = dict(tokens=tokens, static_tok_s=tokens / t_static, engine_tok_s=tokens / t_engine, speedup=speed,
                 padded_over_real=bound, speedup_over_bound=speed / bound, rows_identical=same,
                 slot_use=st["slot_use"], host_share=st["host_share"], prefill_calls=st.get("prefill_calls", 0),
                 preemptions=st.get("preemptions", 0), static_kv_mib=static_kv / 2 ** 20,
                 engine_kv_mib=st["peak_pages"] * page_b / 2 ** 20, mean_length=tokens / len(lengths))
        results[name] = r
        rows.append((name, f"{r['mean_length']:.0f}", f"{r['static_tok_s']:.0f}", f"{r['engine_tok_s']:.0f}",
                     f"{speed:.2f}x", f"{bound:.2f}x", f"{r['speedup_over_bound']:.2f}", f"{r['slot_use']:.2f}",
                     f"{r['host_share']:.2f}", f"{r['static_kv_mib']:.0f} / {r['engine_kv_mib']:.0f}",
                     f"{same:.2f}"))
        log(f"{name}: {r}")
    busy_after = busy_cores()
    print(machine_line())
    print(f"{args.preset}, {args.prompts} prompts of 16-64 tokens, {args.slots} slots, budget {args.budget}, "
          f"greedy, float32, page size {args.page_size}")
    print(table(rows, ("workload", "mean len", "static tok/s", "engine tok/s", "speedup", "padded/real",
                       "speedup/bound", "slot use", "host share", "KV MiB static/engine", "same rows"),
                (10, 9, 13, 13, 8, 12, 14, 9, 11, 21, 10)))
    line = busy_line(busy_before, busy_after)
    if line:
        print(line)
    append_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
