"""The handler of ``rmr1 eval``: run a benchmark with a judge or a scalar reward model and report
it (``--samples K --vote RULE``: K sampled judgments voted on, :mod:`rmr1_jax.eval.voting`), or
re-score results files (:mod:`rmr1_jax.eval.run`, from the benchmark's registry entry)."""

from __future__ import annotations

from rmr1_jax.cli.options import mesh_config
from rmr1_jax.errors import UserError


def cmd_eval(args) -> None:
    from rmr1_jax.eval.run import rescore, run_benchmark

    if args.mode == "score":
        out = rescore(args.benchmark, args.results or [], args.out_dir, no_verdict=args.no_verdict)
    elif not (args.ckpt and args.data):
        raise UserError("rmr1 eval needs --ckpt DIR and --data PATH (or: rmr1 eval score --results FILE)")
    else:
        out = run_benchmark(args.benchmark, args.ckpt, args.data, out_dir=args.out_dir, mesh=mesh_config(args),
                            batch_size=args.batch_size, limit=args.limit, no_verdict=args.no_verdict,
                            order=args.order, seed=args.seed, max_new_tokens=args.max_new_tokens,
                            keep_text=args.keep_text, max_length=args.max_length, overlong=args.overlong,
                            tokenizer=args.tokenizer, prompt_variant=args.prompt_variant,
                            system_file=args.system_file, user_file=args.user_file, prob=args.prob,
                            samples=args.samples, vote=args.vote, temperature=args.temperature,
                            scheme=args.scheme)
    print("\n".join(out.lines))
