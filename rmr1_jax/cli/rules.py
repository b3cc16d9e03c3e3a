"""The handlers of ``rmr1 rules score|select|label|apply`` (RAMO labeling on files): each
calls one library function of :mod:`rmr1_jax.rules` and prints one summary line."""

from __future__ import annotations

from rmr1_jax.cli.options import mesh_of


def cmd_score(args):
    """``rmr1 rules score``: every (prompt, response) of ``--in`` against every rule."""
    from rmr1_jax.checkpoint.identity import checkpoint_identity
    from rmr1_jax.inference.rules import load_rule_scorer, score_file

    scorer, rules = load_rule_scorer(args.ckpt, mesh_of(args), rules_path=args.rules, template_path=args.template,
                                     tokenizer_path=args.tokenizer, chat_template=not args.no_chat_template,
                                     batch_size=args.batch_size, answers=args.answers)
    stats = score_file(scorer, rules, args.inp, args.out, model=checkpoint_identity(args.ckpt))
    print(f"rules score: {stats.written} rows scored, {stats.skipped} already done, against {len(rules)} rules "
          f"-> {args.out}")
    return stats


def _pool(args) -> dict:
    from rmr1_jax.parallel.agreement import agreed
    from rmr1_jax.rules.pool import load_pool

    return {"rules": agreed(load_pool, args.rules), "builtin_pool": args.rules is None}


def _common(args) -> dict:
    return {"pairs_path": args.pairs, **_pool(args), "weight": args.weight, "seed": args.seed,
            "fit_scores_path": args.fit_scores, "fit_pairs_path": args.fit_pairs, "l2": args.l2}


def cmd_select(args) -> None:
    """``rmr1 rules select``: every pair's selected rules and R-hot labels."""
    from rmr1_jax.rules.select import report, select_file

    s = select_file(args.scores, args.out, args.strategy, args.k, **_common(args))
    report(s, "selections", args.out)


def cmd_label(args) -> None:
    """``rmr1 rules label``: rule-labeled pairs (chosen / rejected), with ``--diagnostics`` the
    agreement and mutual information with gold of every strategy and k."""
    from rmr1_jax.rules import diagnostics
    from rmr1_jax.rules.select import label_file, report

    common = _common(args)
    if args.diagnostics:
        diagnostics.check_label_ks(len(common["rules"]), args.strategy, args.k, args.ks)
    s = label_file(args.scores, args.out, args.strategy, args.k, ties=args.ties, **common)
    report(s, f"labeled pairs (ties: {s['ties_handling']})", args.out)
    if args.diagnostics:
        rows = diagnostics.diagnose_file(
            args.scores, args.diagnostics, pairs_path=common["pairs_path"], rules=common["rules"], ks=args.ks,
            fit_scores_path=common["fit_scores_path"], fit_pairs_path=common["fit_pairs_path"], ties=args.ties,
            weight=common["weight"], seed=common["seed"], n_boot=args.n_boot, l2=common["l2"])
        print(diagnostics.format_table(rows))
        print(f"wrote diagnostics to {args.diagnostics}")


def cmd_apply(args) -> dict:
    """``rmr1 rules apply``: the rules a trained Rule Adapter selects, and the labels from them."""
    from rmr1_jax.rules.apply import apply_file
    from rmr1_jax.rules.select import report

    s = apply_file(args.ckpt, args.scores, args.out, k=args.k, pairs_path=args.pairs, **_pool(args),
                   ties=args.ties, seed=args.seed, mesh=mesh_of(args), batch_size=args.batch_size,
                   max_length=args.max_length, tokenizer_path=args.tokenizer, overlong=args.overlong)
    report(s, f"adapter-labeled pairs (ties: {s['ties_handling']})", args.out)
    return s
