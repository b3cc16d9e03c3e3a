"""The ``rmr1`` command. Each subcommand is a thin function over a library call.

Any :class:`~rmr1_jax.errors.UserError` ends the command with one line on stderr and exit
status 2, on every process of a multi-host job (:mod:`rmr1_jax.parallel.agreement`)."""

from __future__ import annotations

import argparse
import os
import sys

from rmr1_jax import __version__
from rmr1_jax.errors import UserError


def _mesh_arg(text: str | None):
    from rmr1_jax.parallel.mesh import parse_mesh

    return parse_mesh(text)


def cmd_convert_hf_to_orbax(args) -> None:
    from rmr1_jax.checkpoint import convert

    step = convert.hf_to_orbax(args.hf_dir, args.out, dtype=args.dtype, mesh_cfg=_mesh_arg(args.mesh),
                               scan_layers=not args.unrolled)
    print(f"wrote Orbax checkpoint step {step} to {args.out}")


def cmd_convert_orbax_to_hf(args) -> None:
    from rmr1_jax.checkpoint import convert

    out = convert.orbax_to_hf(args.ckpt, args.out, step=args.step, dtype=args.dtype,
                              tokenizer_dir=args.tokenizer_dir, overwrite=args.overwrite,
                              mesh_cfg=_mesh_arg(args.mesh))
    exact = ("" if args.dtype == "float32" else
             "; transformers gives the same scores as this checkpoint only from a --dtype float32 export")
    print(f"wrote Hugging Face directory {out} with its tokenizer and chat template (weights in {args.dtype}{exact})")


def cmd_demo(args) -> None:
    if args.which == "ramo":
        from rmr1_jax.ramo_demo import load_ramo_recipe, run_ramo_demo

        run_ramo_demo(load_ramo_recipe(args.out or "runs/demo-ramo", seed=args.seed, quick=args.quick,
                                       directory=args.recipes))
        return
    from rmr1_jax.demo import load_demo_recipe, run_demo

    run_demo(load_demo_recipe(args.out or "runs/demo", seed=args.seed, quick=args.quick, directory=args.recipes))


def cmd_train(args) -> None:
    """``rmr1 <objective> CONFIG [key=value ...]``: one runner, the objective named by the subcommand."""
    from rmr1_jax.train.runner import load_config, run

    from rmr1_jax.parallel.agreement import agreed

    # read on every process: a config one host cannot read stops every process, none waits
    cfg = agreed(load_config, args.objective, args.config, args.overrides)
    result = run(cfg, args.objective).result
    print(f"{args.objective} finished at step {result.step}: {_fmt(result.last_metrics)}"
          + (f"; held-out: {_fmt(result.eval_metrics)}" if result.eval_metrics else ""))


def _judge_items(args) -> list[tuple]:
    """``(id, prompt, a, b)`` of each pair ``rmr1 judge`` is given, checked."""
    from rmr1_jax.data.readers import read_records
    from rmr1_jax.eval.reward_scoring import check_prompt

    if not os.path.isdir(args.ckpt):
        raise UserError(f"{args.ckpt}: checkpoint directory not found")
    if not args.pairs:
        return [("cli", args.prompt, args.a, args.b)]
    rows = list(read_records(args.pairs, lambda row, fid: (row, fid)))
    items = [(fid, row.get("prompt", ""), row.get("a", row.get("response_a")), row.get("b", row.get("response_b")))
             for row, fid in rows]
    for fid, p, a, b in items:
        if not (isinstance(p, (str, list)) and p and isinstance(a, (str, list)) and a and
                isinstance(b, (str, list)) and b):
            raise UserError(f"{args.pairs}: record {fid} needs non-empty 'prompt', 'a' and 'b'")
        check_prompt(p, f"{args.pairs}: record {fid}")
    return items


def cmd_judge(args) -> None:
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.judging import judge_pairs
    from rmr1_jax.eval.loading import load_judge
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.parallel.agreement import agreed, on_process_zero

    if args.pairs is None and None in (args.prompt, args.a, args.b):
        raise UserError("give --prompt, --a and --b, or --pairs FILE.jsonl")
    items = agreed(_judge_items, args)  # read on every process before any collective
    judge = load_judge(args.ckpt, make_mesh(_mesh_arg(args.mesh)), tokenizer_path=args.tokenizer,
                       prompt_variant=args.prompt_variant, system_file=args.system_file, user_file=args.user_file)
    out = judge_pairs(judge, [(p, a, b) for _, p, a, b in items], both_orders=args.both_orders,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    for (rid, *_), r in zip(items, out):
        r["id"] = rid
    if args.out:  # process 0 writes (atomically); every process learns the outcome
        on_process_zero(write_jsonl, args.out, out, share=False)
        print(f"wrote {len(out)} judgments to {args.out}")
    else:
        for r in out:
            print(r["judgment"])
            line = f"verdict: {r['verdict']}"
            if args.both_orders:
                line += f" | swapped order: {r['verdict_swapped']} (position-consistent: {r['consistent']})"
            print(line)


def cmd_score_rm(args) -> None:
    from rmr1_jax.eval.reward_scoring import load_reward_model, score_file
    from rmr1_jax.parallel import make_mesh

    scorer = load_reward_model(args.ckpt, make_mesh(_mesh_arg(args.mesh)), tokenizer_path=args.tokenizer,
                               dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size,
                               truncate=args.truncate)
    stats = score_file(scorer, args.inp, args.out, batch_size=args.batch_size)
    print(f"scored {stats.written} rows ({stats.skipped} already in {args.out}) -> {args.out}")


def _print_rewardbench2(summary: dict, name: str, out: str | None) -> None:
    """The RewardBench 2 summary line; with ``out``, its JSON summary and markdown report."""
    import json

    from rmr1_jax.eval.rewardbench2 import summary_markdown

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    subsets = ", ".join(f"{k} {pct(v)}" for k, v in summary["subsets"].items())
    overall = pct(summary["overall"]) if summary["overall"] is not None else \
        f"- (no score for {', '.join(summary['missing'])}; mean of the others {pct(summary['overall_present'])})"
    print(f"RewardBench 2 {name}: overall {overall} ({subsets})")
    if out:
        from rmr1_jax.data.readers import atomic_write_text
        from rmr1_jax.parallel.agreement import on_process_zero

        def write():
            os.makedirs(out, exist_ok=True)
            atomic_write_text(os.path.join(out, "summary-rewardbench2.json"), json.dumps(summary, indent=2) + "\n")
            atomic_write_text(os.path.join(out, "report-rewardbench2.md"), summary_markdown(summary))

        on_process_zero(write, share=False)
        print(f"report: {os.path.join(out, 'report-rewardbench2.md')}")


def _report(benchmark: str, results: str, out: str, no_verdict: str, tasks):
    """Score the results file and write the report on process 0 (which alone wrote the results);
    every process gets the summary."""
    from rmr1_jax.eval.report import score_and_report
    from rmr1_jax.parallel.agreement import on_process_zero

    return on_process_zero(score_and_report, benchmark, results, out, no_verdict, expected=tasks)


def _eval_scalar(args, tasks, results: str, out: str) -> None:
    """``rmr1 eval`` with a scalar reward model: every response scored, no judging."""
    from rmr1_jax.eval.reward_scoring import load_reward_model
    from rmr1_jax.parallel import make_mesh

    if args.order == "both":
        raise UserError("--order both is for generative judges; a scalar reward model scores each response once")
    scorer = load_reward_model(args.ckpt, make_mesh(_mesh_arg(args.mesh)), tokenizer_path=args.tokenizer,
                               max_length=args.max_length, batch_size=args.batch_size, truncate=args.truncate)
    name = os.path.basename(os.path.normpath(args.ckpt))
    if args.benchmark == "rewardbench2":
        from rmr1_jax.eval.rewardbench2 import run_rewardbench2, score_rewardbench2
        from rmr1_jax.parallel.agreement import on_process_zero

        stats = run_rewardbench2(scorer, tasks, results, batch_size=args.batch_size, model_name=name)
        print(f"scored {stats.written} new prompts ({stats.skipped} already in {results})")
        _print_rewardbench2(on_process_zero(score_rewardbench2, results), name, out)
        return
    from rmr1_jax.eval.report import summary_line
    from rmr1_jax.eval.scalar import run_scalar

    stats = run_scalar(scorer, tasks, results, batch_size=args.batch_size, model_name=name)
    summary, _ = _report(args.benchmark, results, out, args.no_verdict, tasks)
    print(f"scored {stats.written} new examples ({stats.total - stats.written} already in {results})")
    print(summary_line(summary))
    print(f"report: {out}")


def _eval_inputs(args):
    """(whether the checkpoint is a scalar reward model, the benchmark's tasks)."""
    from rmr1_jax.checkpoint.introspect import checkpoint_head

    scalar = checkpoint_head(args.ckpt)[0] == "scalar"
    if args.benchmark == "rewardbench2":
        if not scalar:
            raise UserError(f"{args.ckpt}: RewardBench 2 has no official pairwise-judge path; "
                            f"--benchmark rewardbench2 needs a scalar reward model")
        from rmr1_jax.eval.rewardbench2 import load_rewardbench2

        return scalar, load_rewardbench2(args.data)
    from rmr1_jax.eval.benchmarks import load_benchmark

    return scalar, load_benchmark(args.benchmark, args.data)


def cmd_eval(args) -> None:
    from rmr1_jax.eval.report import score_and_report, summary_line

    if args.mode == "score":
        if not args.results:
            raise UserError("rmr1 eval score needs --results FILE [FILE ...]")
        if args.benchmark == "rewardbench2":
            from rmr1_jax.eval.rewardbench2 import score_rewardbench2

            if len(args.results) > 1:
                raise UserError("rmr1 eval score --benchmark rewardbench2 takes one --results file")
            _print_rewardbench2(score_rewardbench2(args.results[0]), args.results[0], args.out)
            return
        if len(args.results) > 1:  # several models side by side
            from rmr1_jax.eval.report import compare
            from rmr1_jax.eval.scoring import score_results

            names = [os.path.basename(os.path.dirname(os.path.abspath(r))) or r for r in args.results]
            if len(set(names)) < len(names):
                names = args.results
            table = compare({n: score_results(args.benchmark, r, args.no_verdict) for n, r in zip(names, args.results)})
            print(table)
            if args.out:
                from rmr1_jax.data.readers import atomic_write_text

                os.makedirs(args.out, exist_ok=True)
                atomic_write_text(os.path.join(args.out, f"compare-{args.benchmark}.md"), table + "\n")
            return
        summary, paths = score_and_report(args.benchmark, args.results[0], args.out, args.no_verdict)
        print(summary_line(summary))
        if paths:
            print(f"report: {paths.get('markdown', args.out)}")
        return
    if not (args.ckpt and args.data):
        raise UserError("rmr1 eval needs --ckpt DIR and --data PATH (or: rmr1 eval score --results FILE)")
    from rmr1_jax.parallel.agreement import agreed

    scalar, tasks = agreed(_eval_inputs, args)  # a file one host cannot read stops every process
    if args.limit:
        tasks = tasks[: args.limit]
    out = args.out or os.path.join("runs", "eval", args.benchmark)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    if scalar:
        _eval_scalar(args, tasks, results, out)
        return
    from rmr1_jax.judging import judge_pairs
    from rmr1_jax.eval.loading import load_judge
    from rmr1_jax.eval.scalar import run_generative
    from rmr1_jax.parallel import make_mesh

    judge = load_judge(args.ckpt, make_mesh(_mesh_arg(args.mesh)), tokenizer_path=args.tokenizer,
                       prompt_variant=args.prompt_variant, system_file=args.system_file, user_file=args.user_file)

    def judge_fn(batch):
        return judge_pairs(judge, batch, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    stats = run_generative(judge_fn, tasks, results, order=args.order, seed=args.seed, batch_size=args.batch_size,
                           model_name=os.path.basename(os.path.normpath(args.ckpt)), keep_text=args.keep_text)
    summary, _ = _report(args.benchmark, results, out, args.no_verdict, tasks)
    print(f"judged {stats.written} new examples ({stats.total - stats.written} already in {results})")
    print(summary_line(summary))
    print(f"report: {out}")


def _fmt(m: dict) -> str:
    keys = [k for k in ("loss", "reward_mean", "verdict_accuracy", "accuracy", "margin", "perplexity") if k in m]
    return ", ".join(f"{k}={m[k]:.4g}" for k in keys)


def _rules_cmd(module: str, name: str):
    """A subcommand that runs ``module.name(args)``, imported when it runs."""
    def run(args):
        import importlib

        getattr(importlib.import_module(module), name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmr1", description="Reasoning reward models in JAX.")
    p.add_argument("--version", action="version", version=f"rmr1 {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a whole pipeline on the embedded default (synthetic data, CPU): "
                                       "RM-R1 (default) or RAMO")
    demo.add_argument("which", nargs="?", choices=("rm-r1", "ramo"), default="rm-r1",
                      help="rm-r1: distillation + GRPO of a reasoning judge; ramo: rule scoring, selection, "
                           "Rule Adapter and reward models")
    demo.add_argument("--out", default=None, help="output directory (default: runs/demo, or runs/demo-ramo)")
    demo.add_argument("--seed", type=int, default=None, help="data and training seed (default: the recipes')")
    demo.add_argument("--quick", action="store_true",
                      help="a seconds-long smoke run (no learning expected): the recipes' quick.yaml overrides")
    demo.add_argument("--recipes", default=None,
                      help="recipe directory (default: configs/demo, or configs/demo_ramo)")
    demo.set_defaults(func=cmd_demo)
    for name, objective, text in (("distill", "distill", "stage 1: distill reasoning traces (SFT)"),
                                  ("grpo", "grpo", "stage 2: GRPO with the verifiable verdict reward"),
                                  ("train-rm", "reward-model", "a Bradley-Terry scalar reward model on preference pairs"),
                                  ("rule-adapter", "rule-adapter", "the RAMO Rule Adapter on selected-rule sets")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("config", help="YAML recipe (configs/...)")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=2e-6")
        sp.set_defaults(func=cmd_train, objective=objective)

    from rmr1_jax.plan.commands import add_parser as add_plan_parser

    add_plan_parser(sub)
    rules = sub.add_parser("rules", help="RAMO labeling: score rules with a model, select rules per pair, label")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    rs = rsub.add_parser("score", help="score every (prompt, response) against every rule: P(Yes) - P(No)")
    rs.add_argument("--ckpt", required=True, help="the rule-scoring judge (Orbax or HF causal LM)")
    rs.add_argument("--rules", default=None, help="rule pool, JSONL {id, text, category} or YAML (default: the built-in pool)")
    rs.add_argument("--in", dest="in_path", required=True, help="JSONL rows {prompt, response}")
    rs.add_argument("--out", required=True)
    rs.add_argument("--template", default=None, help="scoring prompt with {rule}, {prompt}, {response}")
    rs.add_argument("--no-chat-template", action="store_true", help="send the rendered template as is")
    rs.add_argument("--batch-size", type=int, default=32)
    rs.add_argument("--tokenizer", default=None)
    rs.add_argument("--mesh", default=None)
    rs.set_defaults(func=_rules_cmd("rmr1_jax.rules.scoring", "cmd_score"))
    from rmr1_jax.rules.commands import add_apply_arguments, add_label_arguments, add_select_arguments

    sel = rsub.add_parser("select", help="pick the rules of each pair (top-k discrepancy and baselines)")
    add_select_arguments(sel)
    sel.set_defaults(func=_rules_cmd("rmr1_jax.rules.commands", "cmd_select"))
    lab = rsub.add_parser("label", help="label each pair from its selected rules, with diagnostics against gold")
    add_label_arguments(lab)
    lab.set_defaults(func=_rules_cmd("rmr1_jax.rules.commands", "cmd_label"))
    ap = rsub.add_parser("apply", help="label new pairs from the rules a trained Rule Adapter selects")
    add_apply_arguments(ap)
    ap.set_defaults(func=_rules_cmd("rmr1_jax.rules.apply", "cmd_apply"))

    jd = sub.add_parser("judge", help="judge a pair (or a JSONL file of pairs) with a trained judge")
    jd.add_argument("--ckpt", required=True, help="Orbax checkpoint directory or HF directory")
    jd.add_argument("--prompt", help="the client question")
    jd.add_argument("--a", help="response A")
    jd.add_argument("--b", help="response B")
    jd.add_argument("--pairs", help="JSONL with prompt, a, b per line")
    jd.add_argument("--out", help="write judgments as JSONL here")
    jd.add_argument("--both-orders", action="store_true", help="also judge with A and B swapped")
    jd.add_argument("--max-new-tokens", type=int, default=1024)
    jd.add_argument("--batch-size", type=int, default=16)
    jd.add_argument("--tokenizer", default=None, help="tokenizer path (default: from the checkpoint)")
    jd.add_argument("--prompt-variant", choices=["instruct", "reasoning"], default=None)
    jd.add_argument("--system-file", default=None)
    jd.add_argument("--user-file", default=None)
    jd.add_argument("--mesh", default=None)
    jd.set_defaults(func=cmd_judge)

    sr = sub.add_parser("score-rm", help="score responses or pairs (JSONL) with a scalar reward model")
    sr.add_argument("--ckpt", required=True, help="Orbax checkpoint or HF *ForSequenceClassification directory")
    sr.add_argument("--in", dest="inp", metavar="FILE", required=True,
                    help="JSONL rows: {prompt, response}, {prompt, a, b} or {text}")
    sr.add_argument("--out", required=True, help="output JSONL (resumed if it exists)")
    sr.add_argument("--batch-size", type=int, default=16, help="rows per forward pass and per fsynced write")
    sr.add_argument("--max-length", type=int, default=4096, help="longest row in tokens")
    sr.add_argument("--truncate", action="store_true", help="drop a long row's first tokens instead of failing")
    sr.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    sr.add_argument("--tokenizer", default=None, help="tokenizer path (default: from the checkpoint)")
    sr.add_argument("--mesh", default=None, help="DATA,FSDP,TENSOR (default: all devices on data)")
    sr.set_defaults(func=cmd_score_rm)

    ev = sub.add_parser("eval", help="RewardBench / RewardBench 2 / RM-Bench / RMB with the official formulas")
    ev.add_argument("mode", nargs="?", choices=["run", "score"], default="run",
                    help="run (judge or score, then report) or score (re-score a results file)")
    ev.add_argument("--benchmark", required=True, choices=["rewardbench", "rewardbench2", "rm-bench", "rmb"])
    ev.add_argument("--ckpt", help="a judge, or a scalar reward model (Orbax or HF directory)")
    ev.add_argument("--data", help="benchmark file or directory (JSON / JSONL / Parquet)")
    ev.add_argument("--results", nargs="+", help="per-example results JSONL (for score); several: side by side")
    ev.add_argument("--out", help="output directory (results.jsonl, report.md, summary JSON, charts)")
    ev.add_argument("--no-verdict", choices=["zero", "half"], default="zero",
                    help="score of an output without a verdict: 0 (RM-R1) or 0.5 (upstream RewardBench)")
    ev.add_argument("--order", choices=["random", "both"], default="random",
                    help="A/B order: seeded random per example, or both orders (position consistency)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max-new-tokens", type=int, default=4096)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--limit", type=int, default=None, help="judge only the first N comparisons")
    ev.add_argument("--keep-text", action="store_true", help="store judgment texts in the results")
    ev.add_argument("--max-length", type=int, default=4096, help="scalar reward models: longest row in tokens")
    ev.add_argument("--truncate", action="store_true", help="scalar reward models: drop a long row's first tokens")
    ev.add_argument("--tokenizer", default=None)
    ev.add_argument("--prompt-variant", choices=["instruct", "reasoning"], default=None)
    ev.add_argument("--system-file", default=None)
    ev.add_argument("--user-file", default=None)
    ev.add_argument("--mesh", default=None)
    ev.set_defaults(func=cmd_eval)

    conv = sub.add_parser("convert", help="convert checkpoints between Hugging Face and Orbax")
    csub = conv.add_subparsers(dest="direction", required=True)
    h2o = csub.add_parser("hf-to-orbax", help="HF safetensors directory -> Orbax checkpoint")
    h2o.add_argument("--hf-dir", required=True)
    h2o.add_argument("--out", required=True)
    h2o.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    h2o.add_argument("--mesh", default=None, help="DATA,FSDP,TENSOR (default: all devices on data)")
    h2o.add_argument("--unrolled", action="store_true", help="store layers unrolled instead of stacked")
    h2o.set_defaults(func=cmd_convert_hf_to_orbax)
    o2h = csub.add_parser("orbax-to-hf", help="Orbax checkpoint -> HF directory transformers loads")
    o2h.add_argument("--ckpt", required=True)
    o2h.add_argument("--out", required=True)
    o2h.add_argument("--step", type=int, default=None, help="default: latest")
    o2h.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    o2h.add_argument("--tokenizer-dir", default=None, help="copy tokenizer files from here")
    o2h.add_argument("--overwrite", action="store_true")
    o2h.add_argument("--mesh", default=None)
    o2h.set_defaults(func=cmd_convert_orbax_to_hf)
    return p


class _QuietReadOnly:
    """Orbax warns each time a checkpoint directory is opened read-only, which is exactly
    what restoring for conversion or judging does."""

    def filter(self, record) -> bool:
        return "read only" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("absl").addFilter(_QuietReadOnly())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (rmr1 plan CONFIG --topology T k=v)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        from rmr1_jax.parallel.mesh import initialize_distributed

        initialize_distributed()  # a no-op unless this is one process of a multi-host job
        args.func(args)
    except UserError as e:
        print(f"rmr1 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmr1 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
