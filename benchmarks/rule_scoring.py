"""Rule-scoring throughput: ``RuleScorer`` (what ``rmr1 rules score`` runs) with and without
prefix sharing vs a transformers forward over the same whole judge prompts, same batch.

Builds the ``bench-100m`` model with random weights in our code (``load_model("bench-100m")``),
exports it with ``rmr1_jax.checkpoint.hf.save_hf`` (float32) and loads that directory in
``transformers.AutoModelForCausalLM``. A SentencePiece tokenizer is trained on the fly on
random words and the default judge template (the answer words as single pieces).
``--responses`` (prompt, response) items of about ``--words`` words each are scored against ``--rules`` rules of about 12 words: every
(response, rule) pair is one row, ``--batch`` rows per forward on every side, in the same
item-major order (each item's rules shortest prompt first, as ``RuleScorer`` batches them). Items per second counts scored (response, rule) pairs.

* ours, shared: each response's common token prefix (instruction + conversation) runs once,
  each rule's suffix runs over a copy of its KV cache (``share_prefix=True``);
* ours, whole: every whole judge prompt (``share_prefix=False``);
* torch: ``model(input_ids, attention_mask, position_ids, logits_to_keep=1)`` over the same
  token ids, left-padded to each batch's longest row (its best case: pre-tokenized rows, no
  bucket padding, the LM head only at the last position). Ours' times include rendering and
  tokenizing the prompts.

Before timing, the P(Yes) - P(No) scores of all three sides must agree. ONE process,
alternating repeats, medians; see README.md for the method.

    python benchmarks/rule_scoring.py [--responses 1] [--rules 100] [--words 40] [--batch 50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (alternate, append_json, busy_flagged, busy_line, first_call, machine_info,  # noqa: E402
                    machine_line, median, table, timed)

WORDS = ("safety private data violence weapon cyber crime insult polite honest refuse help explain "
         "careful risk harm user assistant question answer medical legal advice child animal fraud "
         "drug hate speech fair respect truth source fact rule response should never always").split()
ANSWERS = ("Yes", "No", "Irrelevant")


def _text(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=1)
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--words", type=int, default=40, help="words per conversation (prompt + response)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over all items per side")
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax
    import torch
    import transformers

    from rmr1_jax.checkpoint.hf import save_hf
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.models.presets import PRESETS
    from rmr1_jax.inference.rules import DEFAULT_TEMPLATE, RuleScorer
    from rmr1_jax.text.tokenizer import train_sentencepiece

    rng = np.random.default_rng(0)
    mesh = make_mesh()
    with tempfile.TemporaryDirectory(prefix="rmr1-bench-rules-") as tmp:
        corpus = [_text(rng, 30) for _ in range(300)] + [DEFAULT_TEMPLATE] * 20
        tok = train_sentencepiece(corpus, os.path.join(tmp, "tok"), vocab_size=2000,
                                  extra_symbols=[*ANSWERS, *("\u2581" + a for a in ANSWERS)])
        model, params = load_model("bench-100m", "lm", mesh=mesh, tokenizer=tok, param_dtype="float32",
                                   vocab_size=PRESETS["bench-100m"]["vocab_size"])
        save_hf(model, params, os.path.join(tmp, "hf"), dtype="float32")
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "hf"),
                                                                     dtype=torch.float32).eval()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    rules = [f"Prefer the response that {_text(rng, 10)}." for _ in range(args.rules)]
    items = [(_text(rng, args.words // 3), _text(rng, args.words - args.words // 3)) for _ in range(args.responses)]
    shared = RuleScorer(model, params, tok, mesh, batch_size=args.batch, share_prefix=True)
    whole = RuleScorer(model, params, tok, mesh, batch_size=args.batch, share_prefix=False)

    # item-major rows, each item's rules shortest first: the order RuleScorer batches them in
    enc = [[tok.encode(shared.render(rule, p, r)) for rule in rules] for p, r in items]
    order = [sorted(range(len(rules)), key=lambda j: len(e[j])) for e in enc]
    seqs = [e[j] for e, o in zip(enc, order) for j in o]
    batches = [seqs[i:i + args.batch] for i in range(0, len(seqs), args.batch)]
    yes, no = (int(i) for i in shared.answer_ids[:2])

    def run_torch():
        out = []
        with torch.inference_mode():
            for rows in batches:
                width = max(len(s) for s in rows)
                ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for k, s in enumerate(rows):
                    ids[k, width - len(s):] = torch.tensor(s)
                    mask[k, width - len(s):] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
                probs = torch.softmax(logits[:, -1].double(), -1)
                out.append((probs[:, yes] - probs[:, no]).numpy())
        flat, res = np.concatenate(out), np.zeros((len(items), len(rules)))
        for i, o in enumerate(order):
            res[i, o] = flat[i * len(rules):(i + 1) * len(rules)]
        return res

    def run_shared():
        return shared.score(items, rules)[0]

    def run_whole():
        return whole.score(items, rules)[0]

    # --- correctness (and our compiles) ------------------------------------------------------
    first = {"ours, shared": first_call(run_shared), "ours, whole": first_call(run_whole)}
    ref = run_torch()
    diffs = {k: float(np.max(np.abs(v[1] - ref))) for k, v in first.items()}
    scale = float(np.max(np.abs(ref)))
    agree = all(d <= 1e-4 + 1e-3 * scale for d in diffs.values())
    print(f"scores [{len(items)} x {len(rules)}]: max|ours - torch| shared {diffs['ours, shared']:.2e}, whole "
          f"{diffs['ours, whole']:.2e} (max|torch| {scale:.2e}) -> {'OK' if agree else 'MISMATCH'}; first passes "
          f"(compile) shared {first['ours, shared'][0]:.1f} s, whole {first['ours, whole'][0]:.1f} s")
    prefix, suffixes = shared._item_ids(*items[0], rules, "item 0")
    print(f"judge prompt ~{len(prefix) + len(suffixes[0])} tokens: shared prefix {len(prefix)}, rule suffix "
          f"~{int(np.mean([len(s) for s in suffixes]))}")

    runners = {"ours, shared": timed(run_shared, 0), "ours, whole": timed(run_whole, 0), "torch": timed(run_torch, 0)}
    times, cpu, busy0, busy1 = alternate(runners, args.repeats)
    n = len(items) * len(rules)
    med = {k: median(v) for k, v in times.items()}
    ips = {k: n / m for k, m in med.items()}
    ratios = {"shared_over_torch": ips["ours, shared"] / ips["torch"],
              "whole_over_torch": ips["ours, whole"] / ips["torch"],
              "shared_over_whole": ips["ours, shared"] / ips["ours, whole"]}
    print(f"\nbench-100m ({n_params / 1e6:.1f}M params, float32), {len(items)} responses x {len(rules)} rules = {n} "
          f"items, batch {args.batch}, {args.repeats} alternating repeats (median); {machine_line()}")
    print(table([(k, med[k], min(times[k]), ips[k]) for k in runners],
                ("side", "median s", "min s", "items/s"), (16, 10, 10, 10)))
    print(f"\nratio shared/torch {ratios['shared_over_torch']:.2f}x, whole/torch {ratios['whole_over_torch']:.2f}x, "
          f"shared/whole {ratios['shared_over_whole']:.2f}x (items/s; >1: the first is faster)")
    line = busy_line(busy0, busy1)
    if line:
        print(line)
    result = {"benchmark": "rule_scoring", "model": "bench-100m", "params": n_params, "responses": len(items),
              "rules": len(rules), "words": args.words, "batch": args.batch, "repeats": args.repeats,
              **machine_info(), "median_s": med, "items_per_s": ips, "times_s": times, "cpu_s": cpu, **ratios,
              "prefix_tokens": len(prefix), "scores_max_abs_diff": diffs, "scores_agree": agree,
              "other_busy_cores_before": busy0, "other_busy_cores_after": busy1, "flagged": busy_flagged(busy0, busy1)}
    append_json(args.json, result)
    if not agree:
        print("ERROR: scores disagree; the timings do not compare the same computation", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
