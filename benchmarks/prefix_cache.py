"""Judging pairs in both orders: the generation engine with its prefix cache against without.

RM-R1's judge prompt is one system prompt (the Chain-of-Rubrics instructions) shared by every
pair, then the pair's question, then its two responses; judging a pair in both orders repeats
the question with the responses swapped. With the prefix cache a prompt reads the full pages of
the head it shares with a prompt prefilled before it (the system prompt for every prompt, the
system prompt and question for a pair's second order) instead of prefilling them again.

The prompts are token ids with that structure (a random Qwen2 of ``--preset``, float32):

  system    ``--system`` tokens, the same for every prompt;
  question  log-normal, mean ``--question`` tokens (sigma 0.5);
  responses log-normal, mean ``--response`` tokens each (sigma 0.7, at most 4x the mean), with a
            few fixed header tokens before each, A then B, and B then A for the second order.

Each judgment's length is fixed in advance by a per-prompt budget (long-tailed: log-normal with
its mean at a quarter of ``--budget``), greedy decoding; both sides run the same prompts in the
same order, pairs side by side (as ``judge_pairs`` and ``rmr1 eval --order both`` send them),
alternating, after one warm-up run each. Printed: prompt tokens prefilled by each side, the share
the cache found, wall time of each side and their ratio, and whether every row is identical.

    python benchmarks/prefix_cache.py [--preset bench-100m] [--pairs 16] [--system 384]
                                      [--question 96] [--response 256] [--budget 128]
                                      [--slots 8] [--repeats 2] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (alternate, append_json, busy_line, machine_info, machine_line, random_lm,  # noqa: E402
                    median, table)
from engine import long_tail_lengths  # noqa: E402


def judge_prompts(rng, vocab: int, pairs: int, system: int, question: float, response: float) -> list[list[int]]:
    """Token-id prompts with RM-R1's structure, each pair's two orders side by side."""
    def ids(n):
        return rng.integers(4, vocab, int(n)).tolist()

    def lognormal(mean, sigma, cap):
        return int(np.clip(np.round(rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma)), 1, cap))

    head, tag_a, tag_b, tail = ids(system), ids(6), ids(6), ids(8)
    out = []
    for _ in range(pairs):
        q = ids(lognormal(question, 0.5, 4 * question))
        a, b = (ids(lognormal(response, 0.7, 4 * response)) for _ in range(2))
        out += [head + q + tag_a + a + tag_b + b + tail, head + q + tag_a + b + tag_b + a + tail]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-100m", help="architecture of the random Qwen2 (a Qwen preset)")
    ap.add_argument("--pairs", type=int, default=16, help="pairs, each judged in both orders")
    ap.add_argument("--system", type=int, default=384, help="system prompt tokens (shared by every prompt)")
    ap.add_argument("--question", type=float, default=96, help="mean question tokens")
    ap.add_argument("--response", type=float, default=256, help="mean tokens of each response")
    ap.add_argument("--budget", type=int, default=128, help="max new tokens (judgment lengths: mean a quarter)")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax

    from rmr1_jax.sampling.engine import Engine, EngineConfig
    from rmr1_jax.sampling.sampler import SamplingParams

    log = lambda s: print(s, flush=True)  # noqa: E731
    rng = np.random.default_rng(args.seed)
    model, params = random_lm(args.preset)
    prompts = judge_prompts(rng, model.cfg.vocab_size, args.pairs, args.system, args.question, args.response)
    budgets = [int(x) for x in long_tail_lengths(rng, len(prompts), args.budget)]
    sp = SamplingParams(max_new_tokens=args.budget, temperature=0.0)
    engines = {name: Engine(model, eos_ids=[], pad_id=0,
                            config=EngineConfig(max_slots=args.slots, page_size=args.page_size, prefix_cache=on))
               for name, on in (("cache", True), ("no cache", False))}
    outs, stats = {}, {}

    def runner(name):
        def once():
            t = time.perf_counter()
            outs[name] = engines[name].generate(params, prompts, sp, budgets=budgets)
            stats[name] = dict(engines[name].stats)
            return time.perf_counter() - t, 0.0
        once()  # compile and warm up
        return once

    times, _, busy_before, busy_after = alternate({n: runner(n) for n in engines}, args.repeats, log)
    same = all(np.array_equal(outs["cache"].tokens[i, :b], outs["no cache"].tokens[i, :b])
               for i, b in enumerate(budgets))
    prompt_tokens = sum(len(p) - 1 for p in prompts)
    t_on, t_off = median(times["cache"]), median(times["no cache"])
    hit = stats["cache"].get("prefix_hit_tokens", 0)
    results = {"preset": args.preset, "pairs": args.pairs, "system": args.system, "question": args.question,
               "response": args.response, "budget": args.budget, "slots": args.slots, "machine": machine_info(),
               "device": jax.devices()[0].device_kind, "prompt_tokens": prompt_tokens,
               "generated_tokens": sum(budgets), "prefill_tokens_cache": stats["cache"]["prefill_tokens"],
               "prefill_tokens_no_cache": stats["no cache"]["prefill_tokens"], "hit_share": hit / prompt_tokens,
               "wall_s_cache": t_on, "wall_s_no_cache": t_off, "speedup": t_off / t_on, "rows_identical": same}
    print(machine_line())
    print(f"{args.preset}, {args.pairs} pairs x 2 orders, prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens (mean {prompt_tokens / len(prompts):.0f}), {sum(budgets)} tokens "
          f"generated (budget {args.budget}), {args.slots} slots, page size {args.page_size}, greedy, float32")
    rows = [(name, stats[name]["prefill_tokens"], f"{median(times[name]):.2f}") for name in engines]
    print(table(rows, ("engine", "prefilled tokens", "wall s"), (10, 17, 8)))
    print(f"the cache found {hit / prompt_tokens:.0%} of the prompt tokens; {t_off / t_on:.2f}x the engine "
          f"without it; rows identical: {same}")
    line = busy_line(busy_before, busy_after)
    if line:
        print(line)
    append_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
