"""SFT training-step throughput: MFU against the measured matmul peak, and ours vs a
transformers + torch training step on the same model.

Builds the random ``bench-100m`` Qwen2 (124.7M parameters) with transformers (offline), saves it
and imports it with ``rmr1_jax.load_hf`` once per execution configuration, so every side trains
the same weights. Our step is the real one: ``make_train_step(sft_loss_fn(model), optimizer,
schedule, accum=1, mesh, state_shardings)`` on ``init_state(params, optimizer)`` with
``make_optimizer(OptimSpec(...))`` (AdamW + global-norm clip 1.0, constant lr), fed one packed
batch (``segment_ids`` all 1, ``loss_mask`` all 1, positions 0..T-1), as ``train()`` feeds it.

    python benchmarks/sft_step.py [--batch 4] [--seq 1024] [--configs bf16-scan,f32-scan]
                                  [--torch f32,bf16] [--repeats 2] [--profile] [--json out.jsonl]

Sides (``--configs``; ``all`` = the four ours-* sides):
  ours-bf16-scan      f32 params, bf16 compute, nn.scan over layers, remat none
  ours-bf16-unrolled  same, layers unrolled (scan_layers=False)
  ours-f32-scan       f32 params and compute, scanned
  ours-f32-unrolled   f32, unrolled
  torch-f32           Qwen2ForCausalLM.train(), torch.optim.AdamW(b1 .9, b2 .95, eps 1e-8, wd 0),
                      clip_grad_norm_(1.0), loss = sum of masked next-token CE / token count
  torch-bf16*         the same step under torch.autocast("cpu", bfloat16) (labelled: mixed precision)

MFU = tokens/s x train_flops_per_token(cfg, seq) / peak, with the peak measured in this run by
``rmr1_jax.train.flops.measure_matmul_peak`` (jitted [n, n] @ [n, n]) for bf16 inputs with f32
accumulation and for f32: the MFU of record uses the higher of the two (bf16 on machines with
bf16 arithmetic; f32 on CPUs that only convert bf16, where the bf16 peak is lower), and both
others are printed. ``peak / torch-f32's achieved FLOP/s`` is the largest ours/torch ratio the
machine allows. Before timing, the first-step loss and
gradient norm of ours-f32 and torch-f32 (same weights, same batch) are compared.

``--profile`` times the step's parts in isolation (jitted, same shapes, compute dtype of each
ours side): one decoder layer forward+backward (x L), its attention alone (x L), the chunked
loss head, the optimizer update, and the rest = step - (parts).
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
                    format_profile, machine_info, machine_line, median, step_profiler, summarize_profile, table,
                    timed)

OURS = {
    "bf16-scan": ("bfloat16", True),
    "bf16-unrolled": ("bfloat16", False),
    "f32-scan": ("float32", True),
    "f32-unrolled": ("float32", False),
}
LR = 1e-5


def make_batch(b: int, t: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab, size=(b, t), dtype=np.int32),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
            "loss_mask": np.ones((b, t), np.int32)}


def build_ours(hf_dir: str, dtype: str, scan: bool, batch_np: dict, mesh):
    """(run, first_metrics_fn, model) for one of our configurations. ``run()`` does one step and
    blocks; the state is donated and carried between calls like in ``train()``."""
    import jax

    from rmr1_jax import load_hf
    from rmr1_jax.train.loop import init_state, make_train_step, to_global
    from rmr1_jax.schema import OptimSpec
    from rmr1_jax.train.optim import make_optimizer
    from rmr1_jax.train.sft import sft_loss_fn

    model, params = load_hf(hf_dir, dtype="float32", mesh=mesh, compute_dtype=dtype, scan_layers=scan,
                            remat_policy="none")
    optimizer, schedule = make_optimizer(OptimSpec(lr=LR, schedule="constant", warmup_steps=0, b1=0.9, b2=0.95,
                                                   eps=1e-8, weight_decay=0.0, grad_clip=1.0), 1000)
    state = init_state(params, optimizer)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = make_train_step(sft_loss_fn(model), optimizer, schedule, 1, mesh, state_shardings)
    batch = to_global(batch_np, mesh)
    rng = jax.random.key(0)
    box = {"state": state, "metrics": None}

    def run():
        box["state"], m = step(box["state"], batch, rng)
        box["metrics"] = m
        jax.block_until_ready((box["state"], m))

    def metrics():
        return {k: float(v) for k, v in jax.device_get(box["metrics"]).items()}

    run.profile_ops = step_profiler(step, box, batch, rng, mesh)
    return run, metrics, model


def build_torch(hf_model, batch_np: dict, autocast: bool):
    import torch

    model = hf_model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    ids = torch.from_numpy(batch_np["input_ids"].astype(np.int64))
    # the same targets as rmr1_jax.models.logprobs.next_token_targets: token t+1 inside the segment
    # with loss_mask[t+1] set (all of them here); the last position has no target
    targets = ids[:, 1:]
    mask = torch.from_numpy((batch_np["loss_mask"][:, 1:] > 0) & (batch_np["segment_ids"][:, 1:] ==
                                                                   batch_np["segment_ids"][:, :-1]))
    count = mask.sum().clamp(min=1).float()
    box = {}

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                targets.reshape(-1), reduction="none")
        loss = (nll * mask.reshape(-1)).sum() / count
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        box["loss"], box["grad_norm"] = float(loss.detach()), float(gn)

    return run, lambda: dict(box)


def step_category(op_name: str, hlo_op: str) -> str:
    if "self_attn/vmap(" in op_name or "dot_product_attention" in op_name:
        return "attention core (QK^T, mask, softmax, PV)"
    if "self_attn" in op_name:
        return "attention projections + rope"
    if "/mlp/" in op_name:
        return "MLP"
    if "layernorm" in op_name or "/norm/" in op_name:
        return "RMSNorm"
    if "index_in_dim" in op_name:
        return "layer loop (scan: slice weights, stack grads/residuals)"
    if "DecoderLM" in op_name:
        return "decoder other (embedding, masks, positions)"
    if "jvp(" in op_name:
        return "loss head (chunked logits, logsumexp)"
    if not op_name:
        return "unattributed (fusions without op metadata)"
    return "optimizer (clip + AdamW), metrics"


def profile_parts(dtype: str, b: int, t: int, log, repeats: int = 2) -> dict[str, float]:
    """Seconds of each part of one step, timed in isolation (min of ``repeats`` after compile)."""
    import jax
    import jax.numpy as jnp
    import optax

    from rmr1_jax.models import DecoderLM, init_params, preset
    from rmr1_jax.models.layers import DecoderLayer, rope_cos_sin
    from rmr1_jax.models.logprobs import token_logprobs
    from rmr1_jax.schema import OptimSpec
    from rmr1_jax.train.optim import make_optimizer

    cfg = preset("bench-100m", dtype=dtype)
    cdt = jnp.dtype(dtype)
    key = jax.random.key(0)

    def bench(f, *args):
        f = jax.jit(f)
        jax.block_until_ready(f(*args))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            best = min(best, time.perf_counter() - t0)
        return best

    x = jax.random.normal(key, (b, t, cfg.hidden_size), cdt)
    pos = jnp.tile(jnp.arange(t)[None], (b, 1))
    cos, sin = rope_cos_sin(cfg, pos)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & jnp.ones((b, 1, 1, t), bool)
    layer = DecoderLayer(cfg)
    lp = layer.init(key, x, None, cos, sin, mask, None)["params"]

    def layer_loss(p, x):
        return layer.apply({"params": p}, x, None, cos, sin, mask, None)[0].astype(jnp.float32).sum()

    out = {"layer_fwd_bwd": bench(lambda p, x: jax.grad(layer_loss, argnums=(0, 1))(p, x), lp, x)}
    n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_head
    q = jax.random.normal(key, (b, t, n, h), cdt)
    kv = jax.random.normal(key, (b, t, k, h), cdt)

    def attn_loss(q, kk, v):
        o = jax.nn.dot_product_attention(q, kk, v, mask=mask, scale=1.0 / np.sqrt(h))
        return o.astype(jnp.float32).sum()

    out["attention_fwd_bwd"] = bench(lambda q, kk, v: jax.grad(attn_loss, argnums=(0, 1, 2))(q, kk, v), q, kv, kv)
    head = jax.random.normal(key, (cfg.hidden_size, cfg.vocab_size), jnp.float32) * 0.02
    y = jax.random.randint(key, (b, t), 0, cfg.vocab_size)
    out["loss_head_fwd_bwd"] = bench(
        lambda hid, w, y: jax.grad(lambda hid, w: token_logprobs(hid, w, y).sum(), argnums=(0, 1))(hid, w),
        x, head, y)
    model = DecoderLM(cfg)
    params = init_params(model, key)
    opt, _ = make_optimizer(OptimSpec(lr=LR, schedule="constant", warmup_steps=0), 1000)
    opt_state = opt.init(params)

    def update(g, s, p):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    out["optimizer"] = bench(update, params, opt_state, params)
    log(f"  profiled {dtype}: " + ", ".join(f"{k} {v:.3f} s" for k, v in out.items()))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--configs", default="bf16-scan,f32-scan",
                    help=f"comma list of ours sides ({', '.join(OURS)}) or 'all'")
    ap.add_argument("--torch", default="f32,bf16", help="torch sides: comma list of f32, bf16; 'none' to skip")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per side (after warm-up)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="untimed steps per side after the first one (which compiles and is timed separately)")
    ap.add_argument("--peak-size", type=int, default=1024, help="matmul size for the measured peak")
    ap.add_argument("--profile", action="store_true", help="also time the step's parts in isolation")
    ap.add_argument("--op-profile", default="",
                    help="comma list of ours sides (e.g. bf16-unrolled,f32-scan) to profile op by op "
                         "(jax.profiler; one extra compile and step each)")
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax.numpy as jnp

    from rmr1_jax import preset
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.train.flops import measure_matmul_peak, train_flops_per_token

    configs = list(OURS) if args.configs == "all" else [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in OURS:
            ap.error(f"unknown config {c!r}; choose from {', '.join(OURS)} or all")
    torch_sides = [] if args.torch == "none" else [s for s in args.torch.split(",") if s]
    for s in torch_sides:
        if s not in ("f32", "bf16"):
            ap.error(f"unknown torch side {s!r}")
    b, t = args.batch, args.seq
    tokens = b * t
    log = lambda s: print(s, flush=True)  # noqa: E731

    # --- matmul peaks, measured in this process ----------------------------------------------
    peak_bf16 = measure_matmul_peak(size=args.peak_size, dtype=jnp.bfloat16)
    peak_f32 = measure_matmul_peak(size=args.peak_size, dtype=jnp.float32)
    log(f"measured matmul peak ({args.peak_size}^3, jitted, best of 5): bf16 in / f32 acc {peak_bf16 / 1e9:.1f} "
        f"GFLOP/s, f32 {peak_f32 / 1e9:.1f} GFLOP/s")

    cfg = preset("bench-100m")
    fpt = train_flops_per_token(cfg, t)
    mesh = make_mesh()
    batch_np = make_batch(b, t, cfg.vocab_size)
    sides, metric_fns, compile_s, first = {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="rmr1-bench-sft-") as tmp:
        hf_model = build_hf_model(tmp)
        for c in configs:
            dtype, scan = OURS[c]
            run, metrics, _ = build_ours(tmp, dtype, scan, batch_np, mesh)
            compile_s["ours-" + c], _ = first_call(run)
            first["ours-" + c] = metrics()
            sides["ours-" + c], metric_fns["ours-" + c] = run, metrics
            log(f"ours-{c}: first step (compile + run) {compile_s['ours-' + c]:.1f} s, loss "
                f"{first['ours-' + c]['loss']:.5f}, grad norm {first['ours-' + c]['grad_norm']:.5f}")
    n_params = sum(int(np.prod(p.shape)) for p in hf_model.parameters())
    for s in torch_sides:
        # every torch side starts from the same initial weights only for the first one; later
        # steps keep training (like ours), which does not change the cost of a step
        run, metrics = build_torch(hf_model, batch_np, autocast=(s == "bf16"))
        compile_s["torch-" + s], _ = first_call(run)
        first["torch-" + s] = metrics()
        sides["torch-" + s], metric_fns["torch-" + s] = run, metrics
        log(f"torch-{s}: first step {compile_s['torch-' + s]:.1f} s, loss {first['torch-' + s]['loss']:.5f}, "
            f"grad norm {first['torch-' + s]['grad_norm']:.5f}")

    check = None
    if "ours-f32-scan" in first or "ours-f32-unrolled" in first:
        ours_first = first.get("ours-f32-scan") or first["ours-f32-unrolled"]
        if "torch-f32" in first and torch_sides and torch_sides[0] == "f32":
            tf = first["torch-f32"]
            check = {"loss_rel_diff": abs(ours_first["loss"] - tf["loss"]) / abs(tf["loss"]),
                     "grad_norm_rel_diff": abs(ours_first["grad_norm"] - tf["grad_norm"]) / abs(tf["grad_norm"])}
            ok = check["loss_rel_diff"] < 1e-4 and check["grad_norm_rel_diff"] < 1e-3
            check["agree"] = ok
            log(f"first step, same weights and batch: loss ours {ours_first['loss']:.6f} vs torch {tf['loss']:.6f} "
                f"(rel {check['loss_rel_diff']:.1e}), grad norm ours {ours_first['grad_norm']:.6f} vs torch "
                f"{tf['grad_norm']:.6f} (rel {check['grad_norm_rel_diff']:.1e}) -> {'OK' if ok else 'MISMATCH'}")

    # --- timing: alternate sides ------------------------------------------------------------
    runners = {name: timed(fn, args.warmup) for name, fn in sides.items()}
    times, cpu, busy_before, busy_after = alternate(runners, args.repeats, log=log)
    med = {name: median(v) for name, v in times.items()}
    tps = {name: tokens / m for name, m in med.items()}
    flops_per_step = fpt * tokens
    achieved = {name: flops_per_step / m for name, m in med.items()}
    # the MFU of record is against the higher measured peak: bf16 x bf16 -> f32 where the machine
    # has bf16 arithmetic (AMX, tensor cores), f32 where bf16 inputs are only converted (AVX2)
    peak = max(peak_bf16, peak_f32)
    mfu = {name: achieved[name] / peak for name in med}
    mfu_bf16_peak = {name: achieved[name] / peak_bf16 for name in med}
    mfu_f32_peak = {name: achieved[name] / peak_f32 for name in med}

    log(f"\nbench-100m ({n_params / 1e6:.1f}M params), batch {b} x seq {t} = {tokens} tokens per step, "
        f"{train_flops_per_token(cfg, t) / 1e6:.1f} MFLOP/token ({flops_per_step / 1e12:.2f} TFLOP/step); "
        f"{args.repeats} alternating repeats (median), {machine_line()}")
    rows = []
    for name in sides:
        v = times[name]
        rows.append((name, med[name], min(v), max(v), f"{tps[name]:.1f}", f"{achieved[name] / 1e9:.1f}",
                     f"{100 * mfu[name]:.1f}%", f"{100 * mfu_bf16_peak[name]:.1f}%",
                     f"{100 * mfu_f32_peak[name]:.1f}%", f"{compile_s[name]:.1f}"))
    log(table(rows, ("side", "median s", "min s", "max s", "tokens/s", "GFLOP/s", "MFU", "MFU(bf16)", "MFU(f32)",
                     "first s"), (22, 10, 9, 9, 10, 10, 8, 11, 10, 9)))
    log(f"MFU = achieved / the higher measured peak, {peak / 1e9:.1f} GFLOP/s ("
        f"{'bf16 in / f32 acc' if peak == peak_bf16 else 'f32: bf16 inputs run slower here'}; the MFU of record); "
        f"MFU(bf16) = achieved / bf16 peak {peak_bf16 / 1e9:.1f} GFLOP/s; MFU(f32) = achieved / f32 peak "
        f"{peak_f32 / 1e9:.1f} GFLOP/s. Torch rows use the same FLOP count.")
    if "torch-f32" in achieved:
        log(f"largest ours/torch-f32 ratio any step of this FLOP count could reach at that peak: "
            f"{peak / achieved['torch-f32']:.2f}x (torch-f32 runs at {100 * mfu['torch-f32']:.1f}% of it)")
    ratios = {}
    for name in sides:
        if not name.startswith("ours-"):
            continue
        for tname in sides:
            if tname.startswith("torch-"):
                ratios[f"{name}/{tname}"] = tps[name] / tps[tname]
    if ratios:
        log("ratios ours/torch (tokens/s from medians; >1: ours faster; goal >= 1.5 vs torch-f32):")
        for k, v in ratios.items():
            log(f"  {k:<38}{v:7.3f}" + ("   * not like-for-like (precision differs)"
                                          if ("bf16" in k.split("/")[0]) != ("bf16" in k.split("/")[1]) else ""))
    bl = busy_line(busy_before, busy_after)
    if bl:
        log(bl)

    prof = {}
    if args.profile:
        log("\nprofile (parts timed in isolation, min of 2 after compile):")
        for c in configs:
            dtype, _ = OURS[c]
            if dtype not in prof:
                prof[dtype] = profile_parts(dtype, b, t, log)
        for c in configs:
            dtype, _ = OURS[c]
            p = prof[dtype]
            L = cfg.num_hidden_layers
            step = med["ours-" + c]
            parts = {"attention (x L)": L * p["attention_fwd_bwd"],
                     "layer matmuls+elementwise (x L)": L * (p["layer_fwd_bwd"] - p["attention_fwd_bwd"]),
                     "loss head (chunked)": p["loss_head_fwd_bwd"], "optimizer": p["optimizer"]}
            parts["rest (step - parts)"] = step - sum(parts.values())
            log(f"  ours-{c} step {step:.2f} s: " + ", ".join(
                f"{k} {v:.2f} s ({100 * v / step:.0f}%)" for k, v in parts.items()))

    op_prof = {}
    for c in [c for c in args.op_profile.split(",") if c]:
        if "ours-" + c not in sides:
            log(f"--op-profile {c}: not among the timed sides, skipped")
            continue
        rows, wall = sides["ours-" + c].profile_ops()
        summary = summarize_profile(rows, step_category)
        op_prof[c] = {"wall_s": wall, "summary": summary, "top_ops": [r[:4] for r in rows[:20]]}
        log(f"\nop profile of one ours-{c} step ({wall:.1f} s under the profiler; seconds summed over thunks):")
        log(format_profile(summary, rows, top=12))

    result = {
        "benchmark": "sft_step", "model": "bench-100m", "params": n_params, "batch": b, "seq": t,
        "repeats": args.repeats, "warmup": args.warmup, **machine_info(),
        "peak_bf16_flops": peak_bf16, "peak_f32_flops": peak_f32, "peak_size": args.peak_size,
        "train_flops_per_token": fpt, "median_s": med, "times_s": times, "cpu_s": cpu, "tokens_per_s": tps,
        "achieved_flops": achieved, "mfu": mfu, "mfu_peak_flops": peak, "mfu_vs_bf16_peak": mfu_bf16_peak,
        "mfu_vs_f32_peak": mfu_f32_peak,
        "first_step_s": compile_s, "first_step_metrics": first, "ratios_ours_over_torch": ratios,
        "first_step_check": check, "profile": prof, "op_profile": op_prof,
        "other_busy_cores_before": busy_before, "other_busy_cores_after": busy_after,
        "busy_flagged": busy_flagged(busy_before, busy_after),
    }
    append_json(args.json, result)
    if check is not None and not check["agree"]:
        print("ERROR: first-step loss / grad norm disagree with torch; the sides do not compute the same step",
              file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
