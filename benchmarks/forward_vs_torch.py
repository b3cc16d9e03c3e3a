"""Forward-pass throughput of our jitted ``DecoderLM.apply`` vs transformers, same model.

Builds a random ``bench-100m`` Qwen2 model (hidden 768, intermediate 2048, 12 layers, 12 heads,
4 KV heads, vocab 32000) with transformers (offline, nothing is downloaded), saves it as
safetensors to a temporary directory, imports it with ``rmr1_jax.load_hf`` and times a forward
pass at the same batch and length on both sides, in ONE process, alternating the two sides on
every repeat and reporting the median. Before timing, checks that the two logits agree, so both
sides compute the same thing.

    python benchmarks/forward_vs_torch.py [--batch 4] [--seq 512] [--repeats 5] [--json out.jsonl]

Rows:
  ours f32       jax.jit(model.apply) in float32 (params and compute), + block_until_ready
  torch f32      transformers Qwen2ForCausalLM(input_ids, attention_mask) under inference_mode
  ours bf16*     float32 params, bfloat16 compute (``compute_dtype="bfloat16"``); torch stays f32,
                 so this row is NOT like-for-like and is reported separately (--no-bf16 skips it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (append_json, build_hf_model, busy_cores, machine_info, timed,  # noqa: E402
                    usable_cpus)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per side (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side (the first one compiles)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the (not like-for-like) bf16-compute row")
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    import rmr1_jax

    b, t = args.batch, args.seq
    tokens = b * t
    with tempfile.TemporaryDirectory(prefix="rmr1-bench-fwd-") as tmp:
        hf_model = build_hf_model(tmp)
        model, params = rmr1_jax.load_hf(tmp, dtype="float32")
        model_bf16 = None
        if not args.no_bf16:
            model_bf16, params_bf16 = rmr1_jax.load_hf(tmp, dtype="float32", compute_dtype="bfloat16")
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    rng = np.random.default_rng(0)
    ids_np = rng.integers(0, model.cfg.vocab_size, size=(b, t), dtype=np.int32)
    mask_np = np.ones((b, t), np.int32)
    ids_j, mask_j = jnp.asarray(ids_np), jnp.asarray(mask_np)
    ids_t, mask_t = torch.from_numpy(ids_np.astype(np.int64)), torch.from_numpy(mask_np.astype(np.int64))

    fwd = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m))

    def run_ours():
        return fwd(params, ids_j, mask_j).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return hf_model(input_ids=ids_t, attention_mask=mask_t).logits

    # --- correctness: same computation on both sides ---------------------------------------
    ours_logits = np.asarray(run_ours())
    ref_logits = run_torch().numpy()
    max_abs = float(np.max(np.abs(ours_logits - ref_logits)))
    ref_scale = float(np.max(np.abs(ref_logits)))
    rel = max_abs / max(ref_scale, 1e-30)
    agree = rel < 1e-3
    print(f"logits [{b}, {t}, {model.cfg.vocab_size}]: max|ours - torch| = {max_abs:.3e} "
          f"(max|torch| = {ref_scale:.3e}, relative {rel:.2e}) -> {'OK' if agree else 'MISMATCH'}")
    del ours_logits, ref_logits

    sides = {"ours_f32": run_ours, "torch_f32": run_torch}
    bf16_err = None
    if model_bf16 is not None:
        fwd_bf16 = jax.jit(lambda p, i, m: model_bf16.apply({"params": p}, i, attention_mask=m))

        def run_ours_bf16():
            return fwd_bf16(params_bf16, ids_j, mask_j).block_until_ready()

        lb = np.asarray(run_ours_bf16())
        bf16_err = float(np.max(np.abs(lb - run_torch().numpy())))
        del lb
        sides["ours_bf16_compute"] = run_ours_bf16

    # --- timing: warm up every side, then alternate sides on every repeat -----------------
    runners = {name: timed(fn, args.warmup) for name, fn in sides.items()}
    busy_before = busy_cores()
    times: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}  # process CPU seconds (all threads)
    for r in range(args.repeats):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            wall, cpu_s = runners[name]()
            times[name].append(wall)
            cpu[name].append(cpu_s)
    busy_after = busy_cores()
    med = {name: statistics.median(v) for name, v in times.items()}
    tps = {name: tokens / m for name, m in med.items()}
    ratio = tps["ours_f32"] / tps["torch_f32"]

    threads = torch.get_num_threads()
    print(f"\nbench-100m ({n_params / 1e6:.1f}M params), batch {b} x seq {t} = {tokens} tokens, "
          f"{args.repeats} alternating repeats (median), warm-up {args.warmup}; "
          f"torch threads {threads}, usable cpus {usable_cpus()} of {os.cpu_count()}, "
          f"jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__}")
    print(f"{'side':<26}{'median s':>10}{'min s':>10}{'max s':>10}{'tokens/s':>12}{'median CPU s':>14}")
    labels = {"ours_f32": "ours f32 (jit)", "torch_f32": "torch f32 (HF, inference)",
              "ours_bf16_compute": "ours bf16 compute *"}
    for name in sides:
        v = times[name]
        print(f"{labels[name]:<26}{med[name]:>10.3f}{min(v):>10.3f}{max(v):>10.3f}{tps[name]:>12.1f}"
              f"{statistics.median(cpu[name]):>14.3f}")
    print(f"\nratio ours/torch (tokens/s, f32 vs f32): {ratio:.3f}   "
          f"(>1: ours faster; ours takes {med['ours_f32'] / med['torch_f32']:.2f}x torch's time per forward)")
    print(f"ratio of fastest repeats (min times): {min(times['torch_f32']) / min(times['ours_f32']):.3f}")
    cpu_ratio = statistics.median(cpu["torch_f32"]) / statistics.median(cpu["ours_f32"])
    print(f"ratio of median CPU seconds (torch/ours): {cpu_ratio:.3f}   (robust to other processes only when "
          f"each side runs one thread: `taskset -c 0 python ...`; with several threads it counts spin-waiting)")
    if busy_before is not None:
        print(f"other processes kept {busy_before:.2f} cores busy before timing, {busy_after:.2f} after "
              f"(of {os.cpu_count()})" + ("  <-- machine shared: treat the ratio with care"
                                           if max(busy_before, busy_after) > 0.25 else ""))
    if "ours_bf16_compute" in tps:
        bf16_ratio = tps["ours_bf16_compute"] / tps["torch_f32"]
        print(f"* NOT like-for-like: ours bf16 compute vs torch f32: ratio {bf16_ratio:.3f}"
              f" (max|logit diff| vs torch f32 = {bf16_err:.3e})")

    result = {
        "benchmark": "forward_vs_torch", "model": "bench-100m", "params": n_params, "batch": b, "seq": t,
        "repeats": args.repeats, "warmup": args.warmup, **machine_info(),
        "median_s": med, "tokens_per_s": tps, "times_s": times,
        "ratio_ours_over_torch": ratio,
        "ratio_min_times": min(times["torch_f32"]) / min(times["ours_f32"]),
        "ratio_cpu_time": cpu_ratio, "cpu_s": cpu,
        "other_busy_cores_before": busy_before, "other_busy_cores_after": busy_after,
        "ratio_bf16_compute_over_torch_f32": (tps["ours_bf16_compute"] / tps["torch_f32"]
                                              if "ours_bf16_compute" in tps else None),
        "logits_max_abs_diff": max_abs, "logits_rel_diff": rel, "logits_agree": agree,
        "bf16_logits_max_abs_diff": bf16_err,
    }
    append_json(args.json, result)
    if not agree:
        print("ERROR: logits disagree; the timings do not compare the same computation", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
