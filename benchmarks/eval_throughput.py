"""Evaluation throughput of a generative judge: pairs judged per second at batch 32 through
`rmr1 eval`'s own path (benchmark loader -> run_generative -> judge_pairs -> Sampler), and the
share of wall time spent outside the sampler (prompt rendering, tokenization, parsing, result
writing, scoring).

    python benchmarks/eval_throughput.py --judge runs/demo/judge_hf --prompts-dir runs/demo/prompts

The judge is the demo's exported judge (an HF directory with its tokenizer); the benchmark file
is a RewardBench-format JSONL of synthetic pairs written here. Both orders are judged, so each
pair costs two generations.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", required=True, help="HF directory of the judge (e.g. runs/demo/judge_hf)")
    ap.add_argument("--prompts-dir", default=None, help="the demo's prompt template files")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from rmr1_jax.worlds import judging_tasks as synthetic
    from rmr1_jax.eval.registry import load_benchmark
    from rmr1_jax.eval.runs import run_generative
    from rmr1_jax.inference import judge as judge_mod
    from rmr1_jax.inference.judge import judge_pairs
    from rmr1_jax.inference.loading import load_judge
    from rmr1_jax.eval.scoring import score_results
    from rmr1_jax.parallel import make_mesh

    pd = args.prompts_dir
    judge = load_judge(args.judge, make_mesh((1, 1, 1)),
                       system_file=os.path.join(pd, "system.txt") if pd else None,
                       user_file=os.path.join(pd, "user.txt") if pd else None)
    tmp = tempfile.mkdtemp()
    subsets = ["alpacaeval-easy", "math-prm", "hep-python", "donotanswer", "mt-bench-hard"]
    rows = [{"id": i, "prompt": p.prompt[-1]["content"], "chosen": p.chosen[0]["content"],
             "rejected": p.rejected[0]["content"], "subset": subsets[i % len(subsets)]}
            for i, p in enumerate(synthetic.generate_pairs(args.pairs, seed=123,
                                                           kinds=("compare", "caps_word", "starts_with")))]
    data = os.path.join(tmp, "bench.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

    sampler_time = {"s": 0.0}
    real_generate = judge_mod.Sampler.generate

    def timed_generate(self, *a, **kw):
        t = time.perf_counter()
        out = real_generate(self, *a, **kw)
        sampler_time["s"] += time.perf_counter() - t
        return out

    judge_mod.Sampler.generate = timed_generate

    def judge_fn(batch):
        return judge_pairs(judge, batch, max_new_tokens=args.max_new_tokens, batch_size=args.batch)

    # warm-up (compiles) on a separate results file
    run_generative(judge_fn, load_benchmark("rewardbench", data)[: args.batch // 2], os.path.join(tmp, "w.jsonl"),
                   order="both", batch_size=args.batch // 2)
    sampler_time["s"] = 0.0
    t0 = time.perf_counter()
    tasks = load_benchmark("rewardbench", data)
    run_generative(judge_fn, tasks, os.path.join(tmp, "r.jsonl"), order="both", batch_size=args.batch // 2)
    summary = score_results("rewardbench", os.path.join(tmp, "r.jsonl"), expected=tasks)
    wall = time.perf_counter() - t0
    out = {"benchmark": "eval_throughput", "pairs": len(tasks), "generations": 2 * len(tasks),
           "batch": args.batch, "wall_s": wall, "sampler_s": sampler_time["s"],
           "pairs_per_s": len(tasks) / wall, "generations_per_s": 2 * len(tasks) / wall,
           "outside_sampler_share": 1.0 - sampler_time["s"] / wall,
           "accuracy_of_this_run": summary.get("sections", {})}
    print(f"{len(tasks)} pairs (both orders, {2 * len(tasks)} generations, batch {args.batch}): "
          f"{out['pairs_per_s']:.2f} pairs/s, {out['generations_per_s']:.2f} generations/s; "
          f"time outside the sampler {100 * out['outside_sampler_share']:.1f}% of {wall:.1f} s")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
