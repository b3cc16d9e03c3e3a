"""The handlers of ``rmr1 demo``, the training jobs, ``plan``, ``judge``, ``score-rm``,
``generate``, ``convert`` and ``tokenizer``: each reads its options and calls one library function."""

from __future__ import annotations

import os

from rmr1_jax.cli.options import mesh_config, mesh_of
from rmr1_jax.errors import UserError


def cmd_demo(args) -> None:
    if args.world is not None and args.which != "ramo":
        raise UserError(f"--world is an option of `rmr1 demo ramo`, not of `rmr1 demo {args.which}`")
    if args.which == "policy":
        from rmr1_jax.demos.policy import load_policy_recipe, run_policy_demo

        run_policy_demo(load_policy_recipe(args.out_dir or "runs/demo-policy", seed=args.seed, quick=args.quick,
                                           directory=args.recipes, judges=args.judges))
        return
    if args.which == "ramo":
        from rmr1_jax.demos.ramo import load_ramo_recipe, run_ramo_demo

        run_ramo_demo(load_ramo_recipe(args.out_dir or "runs/demo-ramo", seed=args.seed, quick=args.quick,
                                       directory=args.recipes, world=args.world))
        return
    from rmr1_jax.demos.rmr1 import load_demo_recipe, run_demo

    run_demo(load_demo_recipe(args.out_dir or "runs/demo", seed=args.seed, quick=args.quick,
                              directory=args.recipes))


def cmd_train(args) -> None:
    """``rmr1 <objective> CONFIG [key=value ...]``: one runner, the objective named by the subcommand."""
    from rmr1_jax.parallel.agreement import agreed
    from rmr1_jax.train.runner import load_config, run

    # read on every process: a config one host cannot read stops every process, none waits
    cfg = agreed(load_config, args.objective, args.config, args.overrides)
    result = run(cfg, args.objective).result
    print(f"{args.objective} finished at step {result.step}: {_fmt(result.last_metrics)}"
          + (f"; held-out: {_fmt(result.eval_metrics)}" if result.eval_metrics else ""))


def _fmt(m: dict) -> str:
    keys = [k for k in ("loss", "reward_mean", "verdict_accuracy", "check_accuracy", "accuracy", "margin",
                        "perplexity") if k in m]
    return ", ".join(f"{k}={m[k]:.4g}" for k in keys)


def cmd_plan(args) -> None:
    from rmr1_jax.plan.commands import cmd_plan as plan

    plan(args)


def _judge_items(args) -> tuple[str, list[tuple[int, dict]]]:
    """``(kind, [(line, row), ...])`` of what ``rmr1 judge`` is given (``--in``, one row shape a
    file; or line 1 of ``--prompt`` with ``--a``/``--b`` or ``--response``/``--reference``),
    checked, with the checkpoint directory."""
    from rmr1_jax.inference.rows import judge_row_kind, read_judge_rows

    if not os.path.isdir(args.ckpt):
        raise UserError(f"{args.ckpt}: checkpoint directory not found")
    if args.inp:
        kind, rows = read_judge_rows(args.inp)
    elif args.response is not None or args.reference is not None:
        if None in (args.prompt, args.response, args.reference) or args.a is not None or args.b is not None:
            raise UserError("pointwise: give --prompt, --response and --reference (not --a/--b)")
        rows = [(1, {"prompt": args.prompt, "response": args.response, "reference": args.reference})]
        kind = judge_row_kind(rows[0][1], "--prompt/--response/--reference")
    elif None in (args.prompt, args.a, args.b):
        raise UserError("give --prompt with --a and --b (a pair) or --response and --reference (pointwise), "
                        "or --in FILE.jsonl")
    else:
        rows = [(1, {"prompt": args.prompt, "a": args.a, "b": args.b})]
        kind = judge_row_kind(rows[0][1], "--prompt/--a/--b")
    if kind == "listwise" and (args.prob or args.structured):
        raise UserError("--prob and --json read single judgments: they are for pair and pointwise rows, not "
                        "listwise ones")
    return kind, rows


def read_principles(path: str | None) -> list[str] | None:
    """The principles file of ``rmr1 judge --principles``: one principle a line (blank lines
    and lines starting with ``#`` skipped); a missing or empty file is an error naming it."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UserError(f"{path}: principles file not found")
    with open(path, encoding="utf-8") as f:
        out = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise UserError(f"{path}: no principles (one a line; blank lines and # comments are skipped)")
    return out


def cmd_judge(args) -> None:
    from rmr1_jax.inference import listwise, pointwise
    from rmr1_jax.inference.judge import judge_rows
    from rmr1_jax.inference.loading import load_judge
    from rmr1_jax.parallel.agreement import agreed

    principles = agreed(read_principles, args.principles)
    kind, rows = agreed(_judge_items, args)  # read on every process before any collective
    judge = load_judge(args.ckpt, mesh_of(args), tokenizer_path=args.tokenizer, prompt_variant=args.prompt_variant,
                       system_file=args.system_file, user_file=args.user_file)
    kw = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "principles": principles}
    if kind == "pointwise":
        out = pointwise.score_rows(judge, rows, args.out, prob=args.prob, structured=args.structured, **kw)
    elif kind == "listwise":
        out = listwise.rank_rows(judge, rows, args.out, scheme=args.scheme, seed=args.seed, **kw)
    else:
        out = judge_rows(judge, rows, args.out, both_orders=args.both_orders, prob=args.prob,
                         structured=args.structured, **kw)
    if args.out:
        print(f"wrote {len(out)} {'rankings' if kind == 'listwise' else 'judgments'} to {args.out}")
        return
    for r in out:
        if kind == "listwise":
            print(listwise.describe(r))
            continue
        print(r["judgment"])
        if kind == "pointwise":
            print(pointwise.describe(r))
        else:
            line = f"verdict: {r['verdict']}"
            if args.both_orders:
                line += f" | swapped order: {r['verdict_swapped']} (position-consistent: {r['consistent']})"
            if args.prob:
                line += " | P(a better): " + ("none (no verdict)" if r["prob"] is None else f"{r['prob']:.3f}")
            print(line)
        if args.structured:
            import json

            print(json.dumps(r["structured"], ensure_ascii=False))


def cmd_score_rm(args) -> None:
    from rmr1_jax.inference.reward import load_reward_model, score_file

    scorer = load_reward_model(args.ckpt, mesh_of(args), tokenizer_path=args.tokenizer, dtype=args.dtype,
                               max_length=args.max_length, batch_size=args.batch_size,
                               truncate=args.overlong == "truncate")
    stats = score_file(scorer, args.inp, args.out, batch_size=args.batch_size)
    print(f"scored {stats.written} rows ({stats.skipped} already in {args.out}) -> {args.out}")


def cmd_generate(args) -> None:
    from rmr1_jax.inference.generate import check_sampling, generate_file, load_generator
    from rmr1_jax.inference.rows import read_generate_rows
    from rmr1_jax.parallel.agreement import agreed
    from rmr1_jax.sampling.sampler import SamplingParams

    rows = agreed(read_generate_rows, args.inp, args.raw)  # checked before the model loads
    sp = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, n=args.n, stop_strings=tuple(args.stop))
    check_sampling(sp)
    gen = load_generator(args.ckpt, mesh_of(args), tokenizer_path=args.tokenizer, max_slots=args.max_slots,
                         page_size=args.page_size, kv_pages=args.kv_pages, prefill_chunk=args.prefill_chunk)
    st = generate_file(gen, args.inp, args.out, sp, raw=args.raw, seed=args.seed, rows=rows)
    rate = f", {st.tokens / st.seconds:,.0f} tokens/s" if st.seconds > 0 and st.tokens else ""
    print(f"generated {st.written} rows x {args.n} completions ({st.tokens:,} tokens{rate}; {st.skipped} rows "
          f"already in {args.out}) -> {args.out}")


def cmd_serve(args) -> None:
    from rmr1_jax.serve import serve

    for name in ("max_batch", "max_queue", "port"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.timeout <= 0 or args.max_body_mb <= 0:
        raise UserError("--timeout and --max-body-mb must be positive")
    serve(args.ckpt, host=args.host, port=args.port, mesh=mesh_of(args), tokenizer_path=args.tokenizer,
          max_batch=args.max_batch, max_queue=args.max_queue, timeout=args.timeout,
          max_body_bytes=int(args.max_body_mb * (1 << 20)), max_slots=args.max_slots or 32,
          max_new_tokens=args.max_new_tokens, prompt_variant=args.prompt_variant, system_file=args.system_file,
          user_file=args.user_file)


def cmd_hf_to_orbax(args) -> None:
    from rmr1_jax.checkpoint import convert

    step = convert.hf_to_orbax(args.ckpt, args.out, dtype=args.dtype, mesh_cfg=mesh_config(args),
                               scan_layers=not args.unrolled)
    print(f"wrote Orbax checkpoint step {step} to {args.out}")


def cmd_orbax_to_hf(args) -> None:
    from rmr1_jax.checkpoint import convert

    out = convert.orbax_to_hf(args.ckpt, args.out, step=args.step, dtype=args.dtype,
                              tokenizer_dir=args.tokenizer, overwrite=args.overwrite, mesh_cfg=mesh_config(args))
    exact = ("" if args.dtype == "float32" else
             "; transformers gives the same scores as this checkpoint only from a --dtype float32 export")
    print(f"wrote Hugging Face directory {out} with its tokenizer and chat template (weights in {args.dtype}{exact})")


def cmd_tokenizer_train(args) -> None:
    from rmr1_jax.data.corpus import train_sentencepiece_files

    tok = train_sentencepiece_files(args.inp, args.out, vocab_size=args.vocab_size, seed=args.seed)
    print(f"wrote a SentencePiece tokenizer of {tok.vocab_size} pieces to {args.out}")
