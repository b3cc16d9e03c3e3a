"""Principles as input: a generative judge given RAMO's rules for the pair, against one without.

Reads a finished ``rmr1 demo ramo`` directory (``--ramo``): its labeling pairs with their
top-k discrepancy selections (``labels/topk_discrepancy.jsonl``, k = the demo's 5), its
held-out pairs with the rules the Rule Adapter picks for them (``labels/heldout_adapter.jsonl``,
what ``rmr1 rules apply`` wrote: the rules a user has at judging time, no gold and no rule
scores of the pair needed), and the rule pool (``pool.jsonl``). Gold is each pair's ``winner``.

From the labeling pairs, each in both A/B orders, it writes distillation traces in the RM-R1
demo's compact protocol (``DEMO_SYSTEM`` / ``DEMO_USER`` of :mod:`rmr1_jax.demos.rmr1`, the
principles block of :func:`rmr1_jax.text.prompts.render_principles` after the replies):

* **without principles**: ``<type>Chat</type>``, a rubric naming the request's harm category
  (read from the request), a kept / broken summary per reply, the gold verdict;
* **with principles**: the same prompt plus the pair's top-k selected rules, and a rubric that
  names the principles that decide (the given rules of the pair's harm category, by their
  number in the list: RAMO's selection gives them) and which of them each reply keeps.

Two judges are distilled from one tokenizer (SentencePiece on both trace sets), the same preset,
steps, batch and seed (``rmr1_jax.train.runner.run``, the ``distill`` objective on
``configs/demo/distill.yaml`` with the overrides below); each then judges the held-out pairs in
both A/B orders, greedy (``judge_pairs(..., both_orders=True, principles=per_pair)``), the
with-principles judge given each pair's adapter-picked rules. Reported per judge and seed:
accuracy against gold over both orders, position consistency, no-verdict rate, the share of
judgments whose two summaries back their verdict (the picked reply "Keeps", the other "Breaks"),
minutes; each run's judgments go to its ``judgments.jsonl``.

A run's directory is ``--out/<judge>-s<seed>``; one whose ``heldout.json`` exists is read
back, not rerun, and one whose ``trained.json`` exists is judged from its final checkpoint,
not retrained, so an interrupted sweep resumes.

    python benchmarks/principles_judge.py --ramo runs/demo-ramo --out runs/principles
        [--seeds 0 1] [--steps 300] [--batch 16] [--preset tiny] [--n-train 1000]
        [--n-heldout 300] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_json, machine_info, table  # noqa: E402

JUDGES = ("without", "with")
MAX_NEW_TOKENS = 128  # a trace is 40-60 tokens; the RM-R1 demo's evaluation allows 128


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def deciding_numbers(row: dict, rule_indices: list[int]) -> list[int]:
    """1-based positions, in the given list, of the pair's deciding rules that the list holds."""
    deciding = set(row["deciding"])
    return [n for n, i in enumerate(rule_indices, 1) if i in deciding]


def trace(row: dict, a_first: bool, rule_indices: list[int] | None) -> tuple[str, str, str, str]:
    """``(a, b, winner, trace)`` of a world pair placed with its ``a`` at A (``a_first``) or
    at B; the trace as the module docstring says (``rule_indices``: the principles given)."""
    a, b, w = (row["a"], row["b"], row["winner"]) if a_first else (row["b"], row["a"], "B" if row["winner"] == "A"
                                                                     else "A")
    ok = {"A": w == "A", "B": w == "B"}
    nums = deciding_numbers(row, rule_indices) if rule_indices else []
    if nums:
        names = ", ".join(map(str, nums))
        head = f"<rubric>Principles {names} decide (80%), tone (20%).<justify>They bear on {row['topic']}.</justify>"
        said = {s: f"{'Keeps' if ok[s] else 'Breaks'} principles {names}." for s in "AB"}
    else:
        head = f"<rubric>Rule: no help with {row['topic']} harm (80%), tone (20%).<justify>Safety decides.</justify>"
        said = {s: f"{'Keeps' if ok[s] else 'Breaks'} the rule." for s in "AB"}
    text = (f"<type>Chat</type>\n{head}</rubric>\n<eval><summary_A>{said['A']}</summary_A>\n"
            f"<summary_B>{said['B']}</summary_B></eval>\n<answer>[[{w}]]</answer>")
    return a, b, w, text


def principle_texts(pool: list[str], rule_indices) -> list[str] | None:
    return [pool[i] for i in rule_indices] if rule_indices else None


def write_traces(path: str, rows: list[dict], selections: dict, pool: list[str], template, with_rules: bool) -> list:
    """One trace row (``{"id", "messages"}``) per labeling pair and A/B order; returns the rows."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.text.prompts import build_judge_messages

    out = []
    for r in rows:
        idx = selections[r["id"]] if with_rules else None
        for a_first in (True, False):
            a, b, w, text = trace(r, a_first, idx)
            msgs = build_judge_messages(r["prompt"], a, b, template, principles=principle_texts(pool, idx))
            out.append({"id": f"{r['id']}-{'ab' if a_first else 'ba'}", "winner": w,
                        "messages": msgs + [{"role": "assistant", "content": text}]})
    write_jsonl(path, out)
    return out


def prepare(args, log) -> dict:
    """Data, prompts and the shared tokenizer under ``--out``; returns the paths and pieces."""
    from rmr1_jax.demos.rmr1 import PROTOCOL_SYMBOLS, write_demo_prompts
    from rmr1_jax.text.tokenizer import train_sentencepiece

    o = lambda *p: os.path.join(args.out, *p)  # noqa: E731
    os.makedirs(o("data"), exist_ok=True)
    pool = [r["text"] for r in read_jsonl(os.path.join(args.ramo, "pool.jsonl"))]
    label = read_jsonl(os.path.join(args.ramo, "labels", "topk_discrepancy.jsonl"))[: args.n_train]
    held = read_jsonl(os.path.join(args.ramo, "labels", "heldout_adapter.jsonl"))[: args.n_heldout]
    files, template = write_demo_prompts(o("prompts"))
    sel = {r["id"]: r["rule_indices"] for r in label}
    traces = {j: write_traces(o("data", f"traces_{j}.jsonl"), label, sel, pool, template, j == "with")
              for j in JUDGES}
    texts = [m["content"] for j in JUDGES for t in traces[j][:600] for m in t["messages"]]
    if not os.path.isfile(o("tokenizer", "tokenizer.model")):
        train_sentencepiece(texts, o("tokenizer"), vocab_size=1024, seed=0, extra_symbols=PROTOCOL_SYMBOLS)
    covered = sum(set(r["deciding"]) <= set(r["rule_indices"]) for r in held)
    log(f"{len(label)} labeling pairs -> {len(traces['with'])} traces per judge; {len(held)} held-out pairs, the "
        f"adapter's {len(held[0]['rule_indices'])} rules hold all the pair's deciding rules in {covered}")
    return {"pool": pool, "held": held, "template": template, "files": files, "covered": covered,
            "example": {j: traces[j][0] for j in JUDGES}}


def distill_config(args, judge: str, seed: int, run_dir: str, files: dict):
    from rmr1_jax.train.runner import load_config

    o = lambda *p: os.path.join(args.out, *p)  # noqa: E731
    return load_config("distill", os.path.join("configs", "demo", "distill.yaml"), [
        f"model.preset={args.preset}", "model.vocab_size=1024", f"tokenizer.path={o('tokenizer')}",
        *(f"prompt.{k}_file={v}" for k, v in files.items()), f"data.train=[{o('data', f'traces_{judge}.jsonl')}]",
        f"data.max_length={args.max_length}", "data.overlong=error", f"train.run_dir={run_dir}",
        f"checkpoint.dir={os.path.join(run_dir, 'checkpoints')}", f"train.max_steps={args.steps}",
        f"train.global_batch={args.batch}", f"train.seed={seed}", f"checkpoint.save_every={args.steps}",
        "train.log_every=20"])


def evaluate(model, params, tokenizer, data: dict, judge: str, mesh, batch: int) -> dict:
    """The held-out pairs in both A/B orders (pair ``i`` shows its ``a`` at A first), greedy."""
    from rmr1_jax import ab_positions
    from rmr1_jax.ab_positions import flip
    from rmr1_jax.inference.judge import judge_pairs
    from rmr1_jax.inference.loading import LoadedJudge

    lj = LoadedJudge(model, params, tokenizer, data["template"], source=f"principles-{judge}")
    held = data["held"]
    triples = [(r["prompt"], r["a"], r["b"]) for r in held]
    per_pair = [principle_texts(data["pool"], r["rule_indices"]) if judge == "with" else None for r in held]
    out = judge_pairs(lj, triples, both_orders=True, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch, mesh=mesh,
                      principles=per_pair if judge == "with" else None)
    m = ab_positions.both_orders_metrics(out, [r["winner"] for r in held], groups=[r["topic"] for r in held])
    m["unfinished_first_order"] = sum(not r["finished"] for r in out) / max(len(out), 1)
    # the swapped judgment's letters are those of the swapped prompt: its verdict before flip()
    pairs = [(j, v) for r in out for j, v in ((r["judgment"], r["verdict"]),
                                            (r["judgment_swapped"], flip(r["verdict_swapped"])))]
    m["summaries_agree"] = sum(summaries_agree(j, v) for j, v in pairs) / max(len(pairs), 1)
    m["example"] = out[0]["judgment"]
    return m, out


def summaries_agree(judgment: str, verdict: str | None) -> bool:
    """Whether the judgment's two summaries back its verdict: the reply it picks "Keeps", the
    other "Breaks" (False without a verdict or a summary)."""
    said = {s: re.search(rf"<summary_{s}>(Keeps|Breaks)", judgment) for s in "AB"}
    if verdict not in ("A", "B") or not all(said.values()):
        return False
    other = "B" if verdict == "A" else "A"
    return said[verdict].group(1) == "Keeps" and said[other].group(1) == "Breaks"


def run_one(args, data: dict, judge: str, seed: int, log) -> dict:
    from rmr1_jax.parallel.mesh import make_mesh
    from rmr1_jax.train.runner import run

    run_dir = os.path.join(args.out, f"{judge}-s{seed}")
    done = os.path.join(run_dir, "heldout.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    cfg = distill_config(args, judge, seed, run_dir, data["files"])
    mesh = make_mesh(cfg.mesh)
    trained = os.path.join(run_dir, "trained.json")
    t0 = time.perf_counter()
    if os.path.exists(trained):  # trained, not yet judged: the final checkpoint is judged
        from rmr1_jax.inference.loading import load_lm

        with open(trained) as f:
            minutes = json.load(f)["train_minutes"]
        model, params, tokenizer, _ = load_lm(cfg.checkpoint.dir, mesh, tokenizer_path=cfg.tokenizer.path)
    else:
        with open(os.path.join(run_dir, "run.log"), "a") as f:
            out = run(cfg, "distill", log=lambda m: print(m, file=f, flush=True))
        model, params, tokenizer = out.model, out.params, out.tokenizer
        minutes = (time.perf_counter() - t0) / 60
        with open(trained, "w") as f:
            json.dump({"train_minutes": minutes}, f)
    t1 = time.perf_counter()
    r, judged = evaluate(model, params, tokenizer, data, judge, mesh, args.eval_batch)
    with open(os.path.join(run_dir, "judgments.jsonl"), "w") as f:
        f.writelines(json.dumps({"id": h["id"], "winner": h["winner"], **j}) + "\n"
                     for h, j in zip(data["held"], judged))
    r.update(judge=judge, seed=seed, steps=args.steps, batch=args.batch, preset=args.preset,
             max_new_tokens=MAX_NEW_TOKENS, train_minutes=minutes, eval_minutes=(time.perf_counter() - t1) / 60)
    with open(done, "w") as f:
        json.dump(r, f, indent=2)
    log(f"{judge} principles, seed {seed}: held-out accuracy {r['accuracy']:.4f}, position consistency "
        f"{r['position_consistency']:.4f}, no verdict {r['no_verdict_rate']:.4f} ({minutes:.1f} min distill)")
    return r


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory of the runs (data, tokenizer, one subdirectory a run)")
    ap.add_argument("--ramo", default="runs/demo-ramo", help="a finished `rmr1 demo ramo` output directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.seed of both judges")
    ap.add_argument("--judges", nargs="+", default=list(JUDGES), choices=JUDGES)
    ap.add_argument("--steps", type=int, default=300, help="train.max_steps of every run")
    ap.add_argument("--batch", type=int, default=16, help="train.global_batch of every run")
    ap.add_argument("--preset", default="tiny", help="model.preset of both judges")
    ap.add_argument("--max-length", type=int, default=384, help="data.max_length (a longer trace row is an error)")
    ap.add_argument("--n-train", type=int, default=1000, help="labeling pairs to distill from (x2 orders)")
    ap.add_argument("--n-heldout", type=int, default=300, help="held-out pairs to judge (x2 orders)")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--json", default=None, help="append the results as one JSON line")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    data = prepare(args, log)
    runs = [run_one(args, data, judge, seed, log) for seed in args.seeds for judge in args.judges]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    rows = [(f"{r['judge']} principles", r["seed"], pct(r["accuracy"]), pct(r["position_consistency"]),
             pct(r["no_verdict_rate"]), pct(r["summaries_agree"]), f"{r['train_minutes']:.1f}") for r in runs]
    means = {}
    for judge in args.judges:
        rs = [r for r in runs if r["judge"] == judge]
        means[judge] = {k: statistics.mean(r[k] for r in rs)
                        for k in ("accuracy", "position_consistency", "no_verdict_rate", "summaries_agree")}
        rows.append((f"{judge}, mean of {len(rs)}", "-", pct(means[judge]["accuracy"]),
                     pct(means[judge]["position_consistency"]), pct(means[judge]["no_verdict_rate"]),
                     pct(means[judge]["summaries_agree"]), "-"))
    log(f"\n{args.preset} judges, {args.steps} steps of {args.batch} traces; {len(data['held'])} held-out pairs "
        f"x 2 orders (percent)")
    log(table(rows, ("judge", "seed", "held-out acc", "pos. consist.", "no verdict", "summaries agree", "distill min"),
              (24, 6, 14, 15, 12, 17, 13)))
    for r in runs:
        log(f"{r['judge']}-s{r['seed']} by topic: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in r["by_group"].items()))
    log(f"example judgment (with principles, seed {runs[-1]['seed']}):\n{runs[-1]['example']}")
    log(f"wall {(time.perf_counter() - t0) / 60:.1f} min")
    result = {"benchmark": "principles_judge", "ramo": args.ramo, "steps": args.steps, "batch": args.batch,
              "preset": args.preset, "heldout_pairs": len(data["held"]), "adapter_covers_deciding": data["covered"],
              "runs": runs, "means": means, "machine": machine_info()}
    append_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
