"""Reward-model scoring throughput: ``RewardScorer`` (what ``rmr1 score-rm`` runs) vs a
transformers ``AutoModelForSequenceClassification`` forward, same model, same rows, same batch.

Builds a random ``bench-100m``-shaped ``Qwen2ForSequenceClassification`` (num_labels 1, q/k/v
biases randomized) with transformers (offline), saves it as safetensors to a temporary
directory, imports it with ``rmr1_jax.load_hf`` (a ``"scalar"`` head, float32) and scores the
same ``--rows`` rows of random token ids (lengths uniform in ``[--min-len, --max-len]``) on both
sides, in ONE process, alternating the sides on every repeat, median reported. Both sides sort
the rows by length and take ``--batch`` rows per forward; ours pads each batch to a multiple of
64 tokens (its compile buckets) and fills the last batch up with copies, torch pads each batch
to its own longest row (its best case: no compilation, no bucket padding). Before timing, the
scores of the two sides must agree.

    python benchmarks/score_rm.py [--rows 64] [--batch 8] [--min-len 16] [--max-len 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (alternate, append_json, build_hf_model, busy_flagged, busy_line, first_call,  # noqa: E402
                    machine_info, machine_line, median, table, timed)

PAD = 0  # rows draw their ids from [1, vocab): the pad id never occurs inside a row


def build_hf_classifier(out_dir: str, seed: int = 0):
    """Random float32 ``Qwen2ForSequenceClassification`` of the bench-100m shape, saved to
    ``out_dir``; returns the torch model (eval mode)."""
    return build_hf_model(out_dir, seed, num_labels=1, pad_token_id=PAD)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over all rows per side")
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax
    import torch

    import rmr1_jax
    from rmr1_jax.inference.reward import RewardScorer
    from rmr1_jax.parallel import make_mesh

    with tempfile.TemporaryDirectory(prefix="rmr1-bench-rm-") as tmp:
        hf_model = build_hf_classifier(tmp)
        model, params = rmr1_jax.load_hf(tmp, dtype="float32")
    assert model.cfg.head == "scalar"
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    vocab = model.cfg.vocab_size

    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min_len, args.max_len + 1, args.rows)
    rows = [rng.integers(1, vocab, n).tolist() for n in lengths]
    scorer = RewardScorer(model, params, types.SimpleNamespace(pad_id=PAD), make_mesh(),
                          batch_size=args.batch, max_length=args.max_len)

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]

    def run_ours():
        return scorer.score_ids(rows)

    def run_torch():
        out = np.zeros(len(rows), np.float32)
        with torch.inference_mode():
            for idx in batches:
                width = max(len(rows[i]) for i in idx)
                ids = torch.full((len(idx), width), PAD, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for k, i in enumerate(idx):
                    ids[k, :len(rows[i])] = torch.tensor(rows[i])
                    mask[k, :len(rows[i])] = 1
                out[idx] = hf_model(input_ids=ids, attention_mask=mask).logits[:, 0].float().numpy()
        return out

    # --- correctness (and our compile: every length bucket once) ------------------------------
    first_s, ours = first_call(run_ours)
    ref = run_torch()
    max_abs = float(np.max(np.abs(np.asarray(ours) - ref)))
    scale = float(np.max(np.abs(ref)))
    agree = max_abs / max(scale, 1e-30) < 1e-3
    print(f"scores [{args.rows}]: max|ours - torch| = {max_abs:.3e} (max|torch| = {scale:.3e}) -> "
          f"{'OK' if agree else 'MISMATCH'}; ours' first pass (compiles) {first_s:.1f} s")

    real_tokens = int(lengths.sum())
    ours_tokens = sum(args.batch * scorer._width(max(len(rows[i]) for i in idx)) for idx in batches)
    torch_tokens = sum(len(idx) * max(len(rows[i]) for i in idx) for idx in batches)

    runners = {"ours": timed(run_ours, 1), "torch": timed(run_torch, 1)}
    times, cpu, busy0, busy1 = alternate(runners, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    rps = {k: args.rows / m for k, m in med.items()}
    ratio = rps["ours"] / rps["torch"]

    print(f"\nbench-100m classifier ({n_params / 1e6:.1f}M params), {args.rows} rows of {args.min_len}-"
          f"{args.max_len} tokens ({real_tokens} real tokens), batch {args.batch}, {args.repeats} alternating "
          f"repeats (median); {machine_line()}")
    print(table([("ours (RewardScorer, jit)", med["ours"], min(times["ours"]), rps["ours"], ours_tokens),
                 ("torch (HF, inference)", med["torch"], min(times["torch"]), rps["torch"], torch_tokens)],
                ("side", "median s", "min s", "rows/s", "padded tokens"), (28, 10, 10, 10, 15)))
    print(f"\nratio ours/torch (rows/s): {ratio:.3f}   (>1: ours faster; ours computes "
          f"{ours_tokens / torch_tokens:.2f}x torch's padded tokens)")
    print(f"ratio of fastest repeats: {min(times['torch']) / min(times['ours']):.3f}; of median CPU seconds "
          f"(torch/ours): {median(cpu['torch']) / median(cpu['ours']):.3f}")
    line = busy_line(busy0, busy1)
    if line:
        print(line)

    result = {"benchmark": "score_rm", "model": "bench-100m-scalar", "params": n_params, "rows": args.rows,
              "batch": args.batch, "min_len": args.min_len, "max_len": args.max_len, "repeats": args.repeats,
              **machine_info(), "median_s": med, "rows_per_s": rps, "times_s": times, "cpu_s": cpu,
              "ratio_ours_over_torch": ratio, "first_pass_s": first_s, "real_tokens": real_tokens,
              "padded_tokens": {"ours": ours_tokens, "torch": torch_tokens},
              "scores_max_abs_diff": max_abs, "scores_agree": agree,
              "other_busy_cores_before": busy0, "other_busy_cores_after": busy1,
              "flagged": busy_flagged(busy0, busy1)}
    append_json(args.json, result)
    if not agree:
        print("ERROR: scores disagree; the timings do not compare the same computation", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
