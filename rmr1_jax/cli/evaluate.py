"""The handler of ``rmr1 eval``: run a benchmark with a judge or a scalar reward model and
report it, or re-score results files."""

from __future__ import annotations

import os

from rmr1_jax.cli.options import mesh_of
from rmr1_jax.errors import UserError


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
    from rmr1_jax.inference.reward import load_reward_model

    if args.order == "both":
        raise UserError("--order both is for generative judges; a scalar reward model scores each response once")
    scorer = load_reward_model(args.ckpt, mesh_of(args), tokenizer_path=args.tokenizer,
                               max_length=args.max_length, batch_size=args.batch_size,
                               truncate=args.overlong == "truncate")
    name = os.path.basename(os.path.normpath(args.ckpt))
    if args.benchmark == "rewardbench2":
        from rmr1_jax.eval.rewardbench2 import run_rewardbench2, score_rewardbench2
        from rmr1_jax.parallel.agreement import on_process_zero

        stats = run_rewardbench2(scorer, tasks, results, batch_size=args.batch_size, model_name=name)
        print(f"scored {stats.written} new prompts ({stats.skipped} already in {results})")
        _print_rewardbench2(on_process_zero(score_rewardbench2, results), name, out)
        return
    from rmr1_jax.eval.report import summary_line
    from rmr1_jax.eval.runs import run_scalar

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
            _print_rewardbench2(score_rewardbench2(args.results[0]), args.results[0], args.out_dir)
            return
        if len(args.results) > 1:  # several models side by side
            from rmr1_jax.eval.report import compare
            from rmr1_jax.eval.scoring import score_results

            names = [os.path.basename(os.path.dirname(os.path.abspath(r))) or r for r in args.results]
            if len(set(names)) < len(names):
                names = args.results
            table = compare({n: score_results(args.benchmark, r, args.no_verdict) for n, r in zip(names, args.results)})
            print(table)
            if args.out_dir:
                from rmr1_jax.data.readers import atomic_write_text

                os.makedirs(args.out_dir, exist_ok=True)
                atomic_write_text(os.path.join(args.out_dir, f"compare-{args.benchmark}.md"), table + "\n")
            return
        summary, paths = score_and_report(args.benchmark, args.results[0], args.out_dir, args.no_verdict)
        print(summary_line(summary))
        if paths:
            print(f"report: {paths.get('markdown', args.out_dir)}")
        return
    if not (args.ckpt and args.data):
        raise UserError("rmr1 eval needs --ckpt DIR and --data PATH (or: rmr1 eval score --results FILE)")
    from rmr1_jax.parallel.agreement import agreed

    scalar, tasks = agreed(_eval_inputs, args)  # a file one host cannot read stops every process
    if args.limit:
        tasks = tasks[: args.limit]
    out = args.out_dir or os.path.join("runs", "eval", args.benchmark)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    if scalar:
        _eval_scalar(args, tasks, results, out)
        return
    from rmr1_jax.inference.judge import judge_pairs
    from rmr1_jax.inference.loading import load_judge
    from rmr1_jax.eval.runs import run_generative

    judge = load_judge(args.ckpt, mesh_of(args), tokenizer_path=args.tokenizer,
                       prompt_variant=args.prompt_variant, system_file=args.system_file, user_file=args.user_file)

    def judge_fn(batch):
        return judge_pairs(judge, batch, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    stats = run_generative(judge_fn, tasks, results, order=args.order, seed=args.seed, batch_size=args.batch_size,
                           model_name=os.path.basename(os.path.normpath(args.ckpt)), keep_text=args.keep_text)
    summary, _ = _report(args.benchmark, results, out, args.no_verdict, tasks)
    print(f"judged {stats.written} new examples ({stats.total - stats.written} already in {results})")
    print(summary_line(summary))
    print(f"report: {out}")
