"""Bradley-Terry reward-model training step: ours vs a transformers + torch step on the same
model, batch and precision, with MFU against the measured matmul peak and the roofline bound.

Our step is exactly the one ``rmr1 train-rm`` runs: ``make_train_step(bt_loss_fn(model, margin),
optimizer, schedule, accum=1, mesh, state_shardings)`` on ``init_state(params, optimizer)`` with
``make_optimizer(OptimSpec(...))`` (AdamW + global-norm clip 1.0, constant lr), the state donated
and carried from step to step. The model is a random scalar-head ``DecoderLM`` (``--preset``,
default ``bench-100m`` with a ``score`` head [768, 1]); the same initial weights are exported
with ``save_hf`` (float32, ``Qwen2ForSequenceClassification``) and loaded in float32 by
``transformers.AutoModelForSequenceClassification``. The torch step: one forward of the 2P
rows (chosen rows, then rejected rows), loss ``-logsigmoid(r_c - r_r - margin).mean()``,
``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` with the same lr / betas / eps / weight decay,
``torch.set_num_threads(usable cpus)``.

Batch: ``--pairs`` pairs of ``--seq`` tokens, every side right-padded to its own random length
in [3/4 seq, seq] (one row full) with a pad id that no real token uses (vocab - 1), so our
mask-based pooling and transformers' pad-id pooling read the same last real token.

    python benchmarks/bt_step.py [--preset bench-100m] [--pairs 4] [--seq 128] [--warmup 1]
                                 [--repeats 3] [--bf16] [--op-profile] [--json out.jsonl]

Before timing, the first step of ours-f32 and torch-f32 (same weights, same batch) must agree:
loss and mean chosen / rejected rewards to 1e-4 relative, gradient norm (before clipping) to 1e-3.
MFU = positions/s x train_flops_per_token(cfg, seq) / the higher matmul peak measured in this
process (bf16-input and f32 ``measure_matmul_peak``); ``peak / torch-f32's achieved FLOP/s`` is
the largest ours/torch ratio any step of this FLOP count could reach (the roofline bound).
``--bf16`` adds ours with bf16 compute (f32 params), labelled, not compared with torch f32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (alternate, append_json, busy_flagged, busy_line, first_call, format_profile,  # noqa: E402
                    machine_info, machine_line, median, step_profiler, summarize_profile, table, timed,
                    usable_cpus)

LR, B1, B2, EPS, WD, CLIP = 1e-5, 0.9, 0.95, 1e-8, 0.01, 1.0


def make_pairs(p: int, t: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded pairs; real tokens in [0, vocab - 1), pad id vocab - 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("chosen", "rejected"):
        lengths = rng.integers(3 * t // 4, t + 1, size=p)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(0, vocab - 1, size=(p, t), dtype=np.int32)
        out[f"{side}_ids"] = np.where(mask > 0, ids, vocab - 1).astype(np.int32)
        out[f"{side}_mask"] = mask
    out["chosen_ids"][0], out["chosen_mask"][0] = out["chosen_ids"][0].clip(max=vocab - 2), 1
    return out


def build_ours(cfg, params, batch_np, mesh, margin):
    """(run, metrics, jitted-step-and-args for profiling): one real train-rm step per call."""
    import jax

    from rmr1_jax.models import DecoderLM
    from rmr1_jax.schema import OptimSpec
    from rmr1_jax.train.loop import init_state, make_train_step, to_global
    from rmr1_jax.train.optim import make_optimizer
    from rmr1_jax.train.reward_model import bt_loss_fn

    model = DecoderLM(cfg)
    optimizer, schedule = make_optimizer(OptimSpec(lr=LR, schedule="constant", warmup_steps=0, b1=B1, b2=B2,
                                                   eps=EPS, weight_decay=WD, grad_clip=CLIP), 1000)
    state = init_state(params, optimizer)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = make_train_step(bt_loss_fn(model, margin), optimizer, schedule, 1, mesh, state_shardings)
    batch = to_global(batch_np, mesh)
    rng = jax.random.key(0)
    box = {"state": state, "metrics": None}

    def run():
        box["state"], box["metrics"] = step(box["state"], batch, rng)
        jax.block_until_ready((box["state"], box["metrics"]))

    def metrics():
        return {k: float(v) for k, v in jax.device_get(box["metrics"]).items()}

    run.profile_ops = step_profiler(step, box, batch, rng, mesh)
    return run, metrics


def build_torch(hf_dir, batch_np, margin):
    import torch
    import torch.nn.functional as F
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    ids = torch.from_numpy(np.concatenate([batch_np["chosen_ids"], batch_np["rejected_ids"]]).astype(np.int64))
    mask = torch.from_numpy(np.concatenate([batch_np["chosen_mask"], batch_np["rejected_mask"]]).astype(np.int64))
    p = batch_np["chosen_ids"].shape[0]
    box = {}

    def run():
        opt.zero_grad(set_to_none=True)
        r = model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
        rc, rr = r[:p], r[p:]
        loss = -F.logsigmoid(rc - rr - margin).mean()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        box.update(loss=float(loss.detach()), grad_norm=float(gn), reward_chosen=float(rc.detach().mean()),
                   reward_rejected=float(rr.detach().mean()))

    n_params = sum(x.numel() for x in model.parameters())
    return run, lambda: dict(box), n_params


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-100m")
    ap.add_argument("--pairs", type=int, default=4, help="preference pairs per step (2x rows)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence (padded length)")
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side after the first (compile) one")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per side (alternating; median)")
    ap.add_argument("--bf16", action="store_true", help="also time ours with bf16 compute (labelled)")
    ap.add_argument("--op-profile", action="store_true", help="profile one ours-f32 step op by op afterwards")
    ap.add_argument("--peak-size", type=int, default=1024, help="matmul size for the measured peak")
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    from rmr1_jax.checkpoint.hf import save_hf
    from rmr1_jax.models import DecoderLM, init_params, preset
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.train.flops import measure_matmul_peak, train_flops_per_token

    torch.set_num_threads(usable_cpus())
    log = lambda s: print(s, flush=True)  # noqa: E731
    p, t = args.pairs, args.seq
    positions = 2 * p * t

    peak_bf16 = measure_matmul_peak(size=args.peak_size, dtype=jnp.bfloat16)
    peak_f32 = measure_matmul_peak(size=args.peak_size, dtype=jnp.float32)
    peak = max(peak_bf16, peak_f32)
    log(f"measured matmul peak ({args.peak_size}^3, jitted, best of 5): bf16 in / f32 acc {peak_bf16 / 1e9:.1f} "
        f"GFLOP/s, f32 {peak_f32 / 1e9:.1f} GFLOP/s")

    base = preset(args.preset)
    cfg = preset(args.preset, head="scalar", num_labels=1, pad_token_id=base.vocab_size - 1,
                 bos_token_id=None, eos_token_id=None)  # the preset's Qwen ids lie outside this vocabulary
    fpt = train_flops_per_token(cfg, t)
    mesh = make_mesh()
    batch_np = make_pairs(p, t, cfg.vocab_size)
    real = int(batch_np["chosen_mask"].sum() + batch_np["rejected_mask"].sum())
    model = DecoderLM(cfg)
    params = init_params(model, jax.random.key(0), mesh)
    ours_cfgs = {"ours-f32": cfg} | ({"ours-bf16": cfg.replace(dtype="bfloat16")} if args.bf16 else {})
    sides, metric_fns, first_s, first = {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="rmr1-bench-bt-") as tmp:
        hf_dir = save_hf(model, params, os.path.join(tmp, "rm"), dtype="float32")
        torch_run, torch_metrics, n_params = build_torch(hf_dir, batch_np, args.margin)
    for name, c in ours_cfgs.items():
        own = jax.tree.map(jnp.copy, params)  # each side's state is donated
        run, metrics = build_ours(c, own, batch_np, mesh, args.margin)
        first_s[name], _ = first_call(run)
        first[name], sides[name], metric_fns[name] = metrics(), run, metrics
        log(f"{name}: first step (compile + run) {first_s[name]:.1f} s, loss {first[name]['loss']:.6f}, "
            f"grad norm {first[name]['grad_norm']:.6f}")
    del params
    first_s["torch-f32"], _ = first_call(torch_run)
    first["torch-f32"], sides["torch-f32"] = torch_metrics(), torch_run
    log(f"torch-f32: first step {first_s['torch-f32']:.1f} s, loss {first['torch-f32']['loss']:.6f}, "
        f"grad norm {first['torch-f32']['grad_norm']:.6f}")

    o, tf = first["ours-f32"], first["torch-f32"]
    rel = {k: abs(o[k] - tf[k]) / max(abs(tf[k]), 1e-12) for k in ("loss", "reward_chosen", "reward_rejected",
                                                                   "grad_norm")}
    ok = all(v < 1e-4 for k, v in rel.items() if k != "grad_norm") and rel["grad_norm"] < 1e-3
    log("first step, same weights and batch: " + ", ".join(
        f"{k} ours {o[k]:.6f} vs torch {tf[k]:.6f} (rel {rel[k]:.1e})" for k in rel)
        + f" -> {'OK' if ok else 'MISMATCH'}")

    runners = {name: timed(fn, args.warmup) for name, fn in sides.items()}
    times, cpu, busy_before, busy_after = alternate(runners, args.repeats, log=log)
    med = {k: median(v) for k, v in times.items()}
    achieved = {k: fpt * positions / m for k, m in med.items()}
    mfu = {k: a / peak for k, a in achieved.items()}
    log(f"\n{args.preset} scalar RM ({n_params / 1e6:.1f}M params), {p} pairs x 2 sides x seq {t} = {positions} "
        f"positions per step ({real} real tokens), {fpt / 1e6:.1f} MFLOP/position "
        f"({fpt * positions / 1e12:.3f} TFLOP/step); {args.repeats} alternating repeats (median) after "
        f"{args.warmup} warm-up; {machine_line()}")
    rows = [(k, med[k], min(times[k]), max(times[k]), f"{positions / med[k]:.1f}", f"{real / med[k]:.1f}",
             f"{achieved[k] / 1e9:.1f}", f"{100 * mfu[k]:.1f}%", f"{100 * achieved[k] / peak_bf16:.1f}%",
             f"{100 * achieved[k] / peak_f32:.1f}%", f"{first_s[k]:.1f}") for k in sides]
    log(table(rows, ("side", "median s", "min s", "max s", "pos/s", "real tok/s", "GFLOP/s", "MFU", "MFU(bf16)",
                     "MFU(f32)", "first s"), (12, 10, 9, 9, 9, 12, 10, 8, 11, 10, 9)))
    log(f"MFU = achieved / the higher measured peak, {peak / 1e9:.1f} GFLOP/s "
        f"({'bf16 in / f32 acc' if peak == peak_bf16 else 'f32: bf16 inputs run slower here'}); torch uses the "
        f"same FLOP count.")
    bound = peak / achieved["torch-f32"]
    log(f"largest ours/torch-f32 ratio any step of this FLOP count could reach at that peak: {bound:.2f}x "
        f"(torch-f32 runs at {100 * mfu['torch-f32']:.1f}% of it)")
    ratios = {f"{k}/torch-f32": med["torch-f32"] / med[k] for k in sides if k.startswith("ours-")}
    log("ratio torch time / ours (from medians; >1: ours faster):")
    for k, v in ratios.items():
        log(f"  {k:<24}{v:7.3f}" + ("   * not like-for-like (bf16 compute vs torch f32)" if "bf16" in k else ""))
    bl = busy_line(busy_before, busy_after)
    if bl:
        log(bl)

    op_prof = {}
    if args.op_profile:
        from sft_step import step_category

        def category(op_name, hlo_op):  # sft_step's parts; its "loss head" is the score head + BT loss here
            c = step_category(op_name, hlo_op)
            return "score head + BT loss" if c.startswith("loss head") else c

        prof_rows, wall = sides["ours-f32"].profile_ops()
        summary = summarize_profile(prof_rows, category)
        op_prof = {"wall_s": wall, "summary": summary, "top_ops": [r[:4] for r in prof_rows[:20]]}
        log(f"\nop profile of one ours-f32 step ({wall:.1f} s under the profiler; seconds summed over thunks):")
        log(format_profile(summary, prof_rows, top=12))

    result = {
        "benchmark": "bt_step", "model": args.preset, "params": n_params, "pairs": p, "seq": t,
        "positions": positions, "real_tokens": real, "margin": args.margin, "repeats": args.repeats,
        "warmup": args.warmup, **machine_info(), "peak_bf16_flops": peak_bf16, "peak_f32_flops": peak_f32,
        "peak_size": args.peak_size, "train_flops_per_position": fpt, "median_s": med, "times_s": times,
        "cpu_s": cpu, "achieved_flops": achieved, "mfu": mfu, "roofline_max_ratio": bound,
        "ratios_torch_time_over_ours": ratios, "first_step_s": first_s, "first_step_metrics": first,
        "first_step_rel_diff": rel, "first_step_agree": ok, "op_profile": op_prof,
        "other_busy_cores_before": busy_before, "other_busy_cores_after": busy_after,
        "busy_flagged": busy_flagged(busy_before, busy_after),
    }
    append_json(args.json, result)
    if not ok:
        print("ERROR: first-step loss / rewards / grad norm disagree with torch; the sides do not compute the "
              "same step", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
