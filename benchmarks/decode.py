"""Greedy decode throughput: ``rmr1_jax.sampling.Sampler.generate`` vs transformers ``generate``.

Builds the random ``bench-100m`` Qwen2 (124.7M parameters) with transformers (offline), saves it
and imports it with ``rmr1_jax.load_hf`` (float32; both sides float32). For each batch size,
random prompts of ``--prompt`` tokens (no padding) are decoded greedily for exactly ``--new``
tokens on both sides, with a KV cache:

  ours    Sampler(model, eos_ids=[vocab_size], pad_id=0, chunk=--chunk).generate(params, prompts,
          SamplingParams(max_new_tokens=N, temperature=0.0)). The EOS id lies outside the
          vocabulary, so it is never produced and every row decodes N tokens.
  torch   model.generate(input_ids, attention_mask, max_new_tokens=N, min_new_tokens=N,
          do_sample=False, use_cache=True) under inference_mode (no EOS id configured).

Tokens/s = batch x N / median wall time of the whole call (prefill of the prompt included on
both sides). Before timing, the greedy tokens are compared: the first ``--check`` tokens of every
row must agree (random weights leave near-ties, so a later divergence from rounding is possible
and is reported as the mean agreeing prefix).

    python benchmarks/decode.py [--batches 8,32] [--prompt 64] [--new 256] [--repeats 1]
                                [--profile] [--json out.jsonl]

Roofline (always printed): per decode step, the compute floor (forward FLOPs of ``batch`` rows
at the mean context, at this machine's float32 matmul peak measured in the same run) and the
memory floor (the weights the step reads, less the embedding table, plus the KV cache at the
mean context, at the bandwidth of a jitted sum over every parameter). Their maximum is the
fastest step any implementation could take here; torch's step over it is the largest
ours/torch ratio this machine allows.

``--profile`` (first batch size): prefill vs per-token decode time, the time to read the weights
once (measured bandwidth), the KV-cache bytes, a sweep over the sampler's chunk size, the
unrolled-layer model, and an op-level profile of one compiled decode chunk (``jax.profiler``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (alternate, append_json, build_hf_model, busy_flagged, busy_line, first_call,  # noqa: E402
                    format_profile, machine_info, machine_line, median, op_profile, summarize_profile, table,
                    timed)


def decode_category(op_name: str, hlo_op: str) -> str:
    if "self_attn/vmap(" in op_name or "dot_product_attention" in op_name:
        return "attention core (QK^T, softmax, PV)"
    if "self_attn" in op_name:
        if "dynamic_update_slice" in op_name or "dynamic-update-slice" in hlo_op:
            return "KV-cache write"
        return "attention projections, rope, cache read"
    if "/mlp/" in op_name:
        return "MLP"
    if "layernorm" in op_name or "/norm/" in op_name:
        return "RMSNorm"
    if "index_in_dim" in op_name:
        return "layer loop (scan: slice weights / cache per layer)"
    if "DecoderLM" in op_name and "dot_general" in op_name:
        return "LM head"
    if "DecoderLM" in op_name:
        return "decoder other (embed, mask, positions)"
    if not op_name:
        return "unattributed (fusions without op metadata)"
    return "sampling loop (argmax, log_softmax, bookkeeping)"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-100m",
                    help="architecture of the random Qwen2 model (rmr1_jax.models.presets; a Qwen preset)")
    ap.add_argument("--batches", default="8,32", help="comma list of batch sizes")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="generated tokens per row")
    ap.add_argument("--chunk", type=int, default=64, help="Sampler chunk (decode steps per compiled call)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per side and batch size, after the first (warm-up) call; default 1 on CPU "
                         "(keeps the run near 4 min on 2 cores; the calls are long, so single calls vary little), "
                         "5 on a GPU")
    ap.add_argument("--check", type=int, default=16, help="leading greedy tokens that must agree (float32 pair)")
    ap.add_argument("--no-bf16", action="store_true",
                    help="skip the bfloat16 pair (ours with Sampler(weights_dtype='bfloat16') vs torch with the "
                         "model cast to bfloat16)")
    ap.add_argument("--no-f32", action="store_true",
                    help="skip the float32 pair (then greedy agreement is reported for bf16, not required)")
    ap.add_argument("--profile", action="store_true", help="profile the decode loop at the first batch size")
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)
    if args.no_f32 and args.no_bf16:
        ap.error("--no-f32 and --no-bf16 leave nothing to measure")

    import contextlib

    import jax
    import torch

    import rmr1_jax
    from rmr1_jax.sampling.sampler import Sampler, SamplingParams

    log = lambda s: print(s, flush=True)  # noqa: E731
    gpu = jax.default_backend() == "gpu"
    tdev = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    repeats = args.repeats if args.repeats is not None else (5 if gpu else 1)
    # float32 on both sides means float32 arithmetic: on a GPU, JAX's default matmul precision
    # rounds float32 dots through TF32 while torch's does not (allow_tf32 False), so the float32
    # pair runs JAX at "highest". The bfloat16 pair keeps the defaults.
    f32_ctx = (lambda: jax.default_matmul_precision("highest")) if gpu else contextlib.nullcontext
    if tdev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)
    batches = [int(x) for x in args.batches.split(",") if x]
    P, N = args.prompt, args.new
    with tempfile.TemporaryDirectory(prefix="rmr1-bench-decode-") as tmp:
        hf_model = build_hf_model(tmp, preset_name=args.preset)
        model, params = rmr1_jax.load_hf(tmp, dtype="float32")
        model_unrolled = params_unrolled = None
        if args.profile:
            model_unrolled, params_unrolled = rmr1_jax.load_hf(tmp, dtype="float32", scan_layers=False)
    V = model.cfg.vocab_size
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    sp = SamplingParams(max_new_tokens=N, temperature=0.0)
    # (suffix of the result keys, dtype name, our sampler, torch model, context for our calls)
    pairs = []
    if not args.no_f32:
        pairs.append(("", "float32", Sampler(model, eos_ids=[V], pad_id=0, chunk=args.chunk),
                      hf_model.to(tdev), f32_ctx))
    if not args.no_bf16:
        import copy

        hf_bf16 = (hf_model if args.no_f32 else copy.deepcopy(hf_model)).to(device=tdev, dtype=torch.bfloat16)
        pairs.append(("_bf16", "bfloat16", Sampler(model, eos_ids=[V], pad_id=0, chunk=args.chunk,
                                                   weights_dtype="bfloat16"), hf_bf16, contextlib.nullcontext))
    ref = pairs[0][0]  # greedy tokens of this pair's torch side are the reference

    results = {}
    for b in batches:
        prompts = np.random.default_rng(b).integers(0, V, size=(b, P)).astype(np.int32)
        plist = prompts.tolist()
        ids_t = torch.from_numpy(prompts.astype(np.int64)).to(tdev)
        box = {}
        runners, first = {}, {}
        for sfx, _, smp, hf, ctx in pairs:
            def run_ours(smp=smp, ctx=ctx, key="ours" + sfx):
                with ctx():
                    box[key] = smp.generate(params, plist, sp)

            def run_torch(m=hf, key="torch" + sfx):
                with torch.inference_mode():
                    box[key] = m.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=N,
                                          min_new_tokens=N, do_sample=False, use_cache=True, pad_token_id=0)
                sync()

            first["ours" + sfx], _ = first_call(run_ours)
            first["torch" + sfx], _ = first_call(run_torch)
            runners.update({"ours" + sfx: timed(run_ours, 0), "torch" + sfx: timed(run_torch, 0)})
        tokens = {k: (v.tokens if k.startswith("ours") else v[:, P:].cpu().numpy()) for k, v in box.items()}
        for k, v in box.items():
            if k.startswith("ours"):
                assert v.tokens.shape == (b, N) and (v.lengths == N).all(), f"{k} did not decode {N} tokens"
        ref_tok = tokens["torch" + ref]
        assert ref_tok.shape == (b, N), f"torch decoded {ref_tok.shape[1]} tokens, not {N}"
        k = min(args.check, N)
        ours_tok = tokens["ours" + ref]
        rows_ok = int(np.sum(np.all(ours_tok[:, :k] == ref_tok[:, :k], axis=1)))
        mism = ours_tok != ref_tok
        prefix = np.where(mism.any(axis=1), mism.argmax(axis=1), N)
        # bfloat16 rounding moves near-ties on random weights: its agreement is reported, not required
        agree = rows_ok == b or ref == "_bf16"
        log(f"batch {b}: first {k} greedy tokens of ours{ref} and torch{ref} agree in {rows_ok}/{b} rows "
            f"({'OK' if rows_ok == b else 'reported only' if ref == '_bf16' else 'MISMATCH'}); agreeing prefix "
            f"mean {prefix.mean():.1f} of {N} (min {prefix.min()}); first calls (ours compiles): "
            + ", ".join(f"{s} {t:.1f} s" for s, t in first.items()))
        bf16 = {}
        if ref == "" and "ours_bf16" in tokens:
            for key in ("ours_bf16", "torch_bf16"):
                m = tokens[key] != ref_tok
                bf16[f"{key}_agreeing_prefix_mean_vs_torch_f32"] = float(
                    np.where(m.any(axis=1), m.argmax(axis=1), N).mean())
            log(f"batch {b}: bf16 greedy tokens, agreeing prefix with torch f32 (mean of {N}): ours "
                f"{bf16['ours_bf16_agreeing_prefix_mean_vs_torch_f32']:.1f}, torch bf16 "
                f"{bf16['torch_bf16_agreeing_prefix_mean_vs_torch_f32']:.1f}")
        times, cpu, bb, ba = alternate(runners, repeats)
        med = {s: median(v) for s, v in times.items()}
        tps = {s: b * N / m for s, m in med.items()}
        ratios = {}
        for sfx, *_ in pairs:
            ratios["ratio_ours" + sfx + "_over_torch" + sfx] = tps["ours" + sfx] / tps["torch" + sfx]
        if not args.no_f32:
            ratios["ratio_ours_over_torch"] = ratios.pop("ratio_ours_over_torch")
            ratios["ratio_min_times"] = min(times["torch"]) / min(times["ours"])
            if "ours_bf16" in tps:
                ratios["ratio_ours_bf16_over_torch_f32"] = tps["ours_bf16"] / tps["torch"]
        results[b] = {"median_s": med, "times_s": times, "cpu_s": cpu, "tokens_per_s": tps, **bf16, **ratios,
                      "first_call_s": first, "reference_pair": "float32" if ref == "" else "bfloat16",
                      "rows_agree_first_k": rows_ok, "check_k": k, "agree": agree,
                      "agreeing_prefix_mean": float(prefix.mean()), "agreeing_prefix_min": int(prefix.min()),
                      "other_busy_cores_before": bb, "other_busy_cores_after": ba,
                      "busy_flagged": busy_flagged(bb, ba)}

    where = f"{jax.devices()[0].device_kind} (torch on {tdev})" if gpu else "CPU"
    log(f"\n{args.preset} ({n_params / 1e6:.1f}M params), greedy, prompt {P} + {N} new tokens, KV cache, on "
        f"{where}, {repeats} alternating repeats (median); {machine_line()}")
    if not args.no_f32:
        rows = []
        for b, r in results.items():
            rows.append((str(b), f"{r['tokens_per_s']['ours']:.1f}", f"{r['tokens_per_s']['torch']:.1f}",
                         f"{r['ratio_ours_over_torch']:.3f}", f"{r['ratio_min_times']:.3f}",
                         f"{1e3 * r['median_s']['ours'] / N:.2f}", f"{1e3 * r['median_s']['torch'] / N:.2f}"))
        log("float32" + (" (JAX matmul precision 'highest', torch allow_tf32 False)" if gpu else "") + ":")
        log(table(rows, ("batch", "ours tok/s", "torch tok/s", "ours/torch", "(min)", "ours ms/step",
                         "torch ms/step"), (7, 12, 13, 12, 9, 14, 15)))
        log("ours/torch: ratio of tokens/s from the medians (>1: ours faster; goal >= 3); (min): from the fastest "
            "calls; ms/step = call time / new tokens (prefill included)")
    if not args.no_bf16:
        rows = [(str(b), f"{r['tokens_per_s']['ours_bf16']:.1f}", f"{r['tokens_per_s']['torch_bf16']:.1f}",
                 f"{r['ratio_ours_bf16_over_torch_bf16']:.3f}",
                 f"{r['ratio_ours_bf16_over_torch_f32']:.3f}" if not args.no_f32 else "-")
                for b, r in results.items()]
        log("\nbfloat16 weights (ours: Sampler(weights_dtype='bfloat16'), f32 logits; torch: model.to(bfloat16)):")
        log(table(rows, ("batch", "ours bf16 tok/s", "torch bf16 tok/s", "ours/torch bf16", "ours bf16/torch f32"),
                  (7, 17, 18, 17, 21)))
    for b, r in results.items():
        bl = busy_line(r["other_busy_cores_before"], r["other_busy_cores_after"])
        if bl:
            log(f"batch {b}: {bl}")

    roof = roofline(model.cfg, params, results, P, N, log, dtypes=[(sfx, dt) for sfx, dt, *_ in pairs])

    prof = {}
    if args.profile:
        b = batches[0]
        with f32_ctx():
            prof = profile_decode(model, params, model_unrolled, params_unrolled, b, P, N, args.chunk, V, log)

    result = {"benchmark": "decode", "model": args.preset, "params": n_params, "prompt": P, "new_tokens": N,
              "chunk": args.chunk, "repeats": repeats, "torch_device": tdev, **machine_info(),
              "device_kind": jax.devices()[0].device_kind,
              "results": {str(b): r for b, r in results.items()}, "roofline": roof, "profile": prof}
    append_json(args.json, result)
    if not all(r["agree"] for r in results.values()):
        print("ERROR: greedy tokens disagree with transformers in the first positions", file=sys.stderr)
        sys.exit(1)
    return result


def weight_read_s(params) -> float:
    """Seconds to read every parameter once: a jitted sum over all leaves, best of 5."""
    import jax
    import jax.numpy as jnp

    read = jax.jit(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(p)))
    read(params).block_until_ready()
    return min(_time(lambda: read(params).block_until_ready()) for _ in range(5))


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a jitted elementwise pass over a ``nbytes`` float32 array (read once, written
    once; both counted), best of 10: the device-memory bandwidth a streaming kernel reaches."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001 + 1.0)
    f(x).block_until_ready()
    return 2 * nbytes / min(_time(lambda: f(x).block_until_ready()) for _ in range(10))


def roofline(cfg, params, results, P, N, log, dtypes=(("", "float32"),)) -> dict:
    """Per decode step and measured pair (``dtypes``: (result-key suffix, dtype name)): the
    compute floor (forward FLOPs of ``batch`` rows at the mean context over this device's
    matmul peak in that dtype) and the memory floor (weights read per step, less an untied
    embedding table, plus the KV cache at the mean context, in that dtype, over the measured
    bandwidth). On a GPU the bandwidth is the faster of the weight read and a 1 GiB streaming
    pass (HBM), and the matmul peaks come from 8192^3 products."""
    import contextlib

    import jax
    import jax.numpy as jnp

    from rmr1_jax.train.flops import forward_flops_per_token, measure_matmul_peak

    gpu = jax.default_backend() == "gpu"
    nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
    bw_weights = nbytes / weight_read_s(params)
    bw_copy = copy_bandwidth() if gpu else None
    bandwidth = max(bw_weights, bw_copy or 0.0)
    ctx = P + N / 2
    n_elems = sum(x.size for x in jax.tree.leaves(params))
    out = {"bandwidth_Bps": bandwidth, "weight_read_Bps": bw_weights, "copy_Bps": bw_copy, "mean_context": ctx,
           "pairs": {}}
    for sfx, dt in dtypes:
        size = 8192 if gpu else 1024
        with jax.default_matmul_precision("highest") if dt == "float32" else contextlib.nullcontext():
            peak = measure_matmul_peak(size=size, dtype=jnp.dtype(dt), devices=jax.devices()[:1])
        esize = jnp.dtype(dt).itemsize
        # an untied embedding table is read only at the step's b rows
        step_bytes = esize * (n_elems - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size))
        kv_bytes_per_row = 2 * cfg.num_hidden_layers * ctx * cfg.num_key_value_heads * cfg.dim_head * esize
        pair = {"dtype": dt, "peak_flops": peak, "step_weight_bytes": step_bytes, "batches": {}}
        rows = []
        for b, r in results.items():
            compute = b * forward_flops_per_token(cfg, int(ctx)) / peak
            memory = (step_bytes + b * kv_bytes_per_row) / bandwidth
            floor = max(compute, memory)
            ours, torch_ = r["median_s"]["ours" + sfx] / N, r["median_s"]["torch" + sfx] / N
            pair["batches"][str(b)] = {"compute_floor_s": compute, "memory_floor_s": memory, "floor_s": floor,
                                       "ours_of_roofline": floor / ours, "torch_of_roofline": floor / torch_,
                                       "max_ratio_over_torch": torch_ / floor}
            rows.append((str(b), f"{1e3 * compute:.3f}", f"{1e3 * memory:.3f}", f"{1e3 * ours:.3f}",
                         f"{100 * floor / ours:.0f}%", f"{1e3 * torch_:.3f}", f"{100 * floor / torch_:.0f}%",
                         f"{torch_ / floor:.2f}x"))
        out["pairs"][dt] = pair
        if sfx == "":  # the float32 keys earlier runs wrote
            out.update(peak_f32_flops=peak, batches=pair["batches"])
        log(f"\nroofline ({dt}): matmul peak {peak / 1e12:.2f} TFLOP/s ({size}^3, this run), bandwidth "
            f"{bandwidth / 1e9:.1f} GB/s (weight read {bw_weights / 1e9:.1f}"
            + (f", 1 GiB streaming pass {bw_copy / 1e9:.1f}" if bw_copy else "") + f"), mean context {ctx:.0f}, "
            f"{step_bytes / 1e6:.0f} MB of weights read per step")
        log(table(rows, ("batch", "compute ms", "memory ms", "ours ms", "ours/roof", "torch ms", "torch/roof",
                         "max ours/torch"), (7, 12, 11, 9, 11, 10, 12, 16)))
    log("compute/memory ms: the step's floors; ours/torch ms: measured ms/step (as above); x/roof: floor / "
        "measured step; max ours/torch: torch's step / floor, the largest ratio any decoder could reach here")
    return out


def profile_decode(model, params, model_unrolled, params_unrolled, b, P, N, chunk, V, log) -> dict:
    import jax
    import jax.numpy as jnp

    from rmr1_jax.sampling.sampler import Sampler, SamplingParams, decode_schedule

    out = {}
    log(f"\nprofile, batch {b}:")
    nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
    t_read = weight_read_s(params)
    step, n_chunks = decode_schedule(N, chunk)
    steps_total = step * n_chunks
    cfg = model.cfg
    cache_bytes = 2 * cfg.num_hidden_layers * b * (P + steps_total) * cfg.num_key_value_heads * cfg.dim_head * 4
    out.update(param_bytes=nbytes, weight_read_s=t_read, bandwidth_GBps=nbytes / t_read / 1e9,
               kv_cache_bytes=cache_bytes)
    log(f"  weights {nbytes / 1e6:.0f} MB: one full read {1e3 * t_read:.1f} ms ({nbytes / t_read / 1e9:.1f} GB/s, "
        f"jitted sum of every parameter); KV cache (k and v, f32) {cache_bytes / 1e6:.1f} MB")

    sp = SamplingParams(max_new_tokens=N, temperature=0.0)
    prompts = np.random.default_rng(b).integers(0, V, size=(b, P)).astype(np.int32)
    ids, mask = jnp.asarray(prompts), jnp.ones((b, P), bool)
    sampler = Sampler(model, eos_ids=[V], pad_id=0, chunk=chunk)
    sampler.generate(params, prompts.tolist(), sp)
    t_gen = min(_time(lambda: sampler.generate(params, prompts.tolist(), sp)) for _ in range(2))
    dparams = sampler._prepare(params)  # what generate() hands the prefill and decode
    prefill = lambda: jax.block_until_ready(sampler._prefill(dparams, ids, mask, n=1, max_len=P + steps_total))  # noqa
    prefill()
    t_pre = min(_time(prefill) for _ in range(3))
    per_tok = (t_gen - t_pre) / N
    out.update(generate_s=t_gen, prefill_s=t_pre, decode_step_s=per_tok,
               decode_step_over_weight_read=per_tok / t_read)
    log(f"  generate {t_gen:.2f} s = prefill {t_pre:.2f} s + {N} steps x {1e3 * per_tok:.1f} ms; one step = "
        f"{per_tok / t_read:.1f}x the weight-read time (a memory-bound decoder would be ~1x at this batch)")

    sweep = {}
    for c in sorted({16, chunk, 256} - {0}):
        s = Sampler(model, eos_ids=[V], pad_id=0, chunk=c)
        s.generate(params, prompts.tolist(), sp)
        sweep[c] = b * N / _time(lambda: s.generate(params, prompts.tolist(), sp))
    out["chunk_sweep_tokens_per_s"] = sweep
    log("  chunk sweep (tokens/s, one call each): " + ", ".join(f"chunk {c}: {v:.1f}" for c, v in sweep.items()))

    s_unr = None
    if model_unrolled is not None:
        s_unr = Sampler(model_unrolled, eos_ids=[V], pad_id=0, chunk=chunk)
        s_unr.generate(params_unrolled, prompts.tolist(), sp)
        t_unr = _time(lambda: s_unr.generate(params_unrolled, prompts.tolist(), sp))
        out["unrolled_tokens_per_s"] = b * N / t_unr
        log(f"  unrolled layers (scan_layers=False): {b * N / t_unr:.1f} tokens/s vs scanned {b * N / t_gen:.1f}")

    # op-level profile of one compiled decode chunk (the executable generate() runs)
    variants = [("scanned", sampler, params)]
    if s_unr is not None:
        variants.append(("unrolled", s_unr, params_unrolled))
    out["op_profile"] = {}
    for name, smp, prm in variants:
        steps = step  # the chunk generate() compiles
        rows, wall = _op_profile_decode(smp, prm, ids, mask, P, N, steps_total, steps)
        summary = summarize_profile(rows, decode_category)
        out["op_profile"][name] = {"steps": steps, "wall_s": wall, "summary": summary,
                                   "top_ops": [r[:4] for r in rows[:15]]}
        log(f"  op profile of one decode chunk, {name} layers ({steps} steps, {1e3 * wall / steps:.1f} ms/step "
            f"under the profiler; seconds summed over thunks):")
        log(format_profile(summary, rows, top=10))
    return out


def _op_profile_decode(sampler, params, ids, mask, P, N, steps_total, steps):
    import jax
    import jax.numpy as jnp

    b = ids.shape[0]
    params = sampler._prepare(params)
    last, cache = sampler._prefill(params, ids, mask, n=1, max_len=P + steps_total)
    carry = {"last": last, "cache": cache, "prompt_len": jnp.int32(P), "max_new": jnp.int32(N),
             "tokens": jnp.zeros((b, steps_total), jnp.int32), "logprobs": jnp.zeros((b, steps_total), jnp.float32),
             "done": jnp.zeros((b,), bool), "eos": jnp.zeros((b,), bool), "lengths": jnp.zeros((b,), jnp.int32)}
    static = dict(steps=steps, greedy=True, temperature=0.0, top_k=0, top_p=1.0)
    rng = jax.random.key(0)
    compiled = sampler.decode_fn(b).lower(params, carry, jnp.int32(0), rng, **static).compile()
    carry = jax.block_until_ready(compiled(params, carry, jnp.int32(0), rng))  # warm-up (the carry is donated)
    rows, wall, _ = op_profile(compiled, (params, carry, jnp.int32(steps), rng), runs=1)
    return rows, wall


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
