"""``rmr1 rules select`` and ``rmr1 rules label``: thin functions over ``rules.select`` and
``rules.diagnostics`` taking argparse namespaces.

Namespace fields (``add_select_arguments`` / ``add_label_arguments`` declare them all):

Both commands:
  ``scores`` (str, ``--scores FILE``): a pairwise score file (ours or RAMO's released
      ``scoresA`` / ``scoresB`` layout), or with ``pairs`` a per-response score file.
  ``pairs`` (str | None, ``--pairs FILE``): pairs ``{"prompt", "a", "b", "winner"?}`` whose
      responses are looked up in the per-response ``scores`` file.
  ``out`` (str, ``--out FILE``): the output JSONL (schema in ``rules.select``).
  ``rules`` (str | None, ``--rules FILE``): the rule pool (JSONL or YAML); None: the default
      pool. Its size must match the score vectors; its ids are written as ``rule_ids``.
      Scores made with a custom pool and no ``--rules``: one error saying to pass it.
  ``strategy`` (str, ``--strategy``, default ``topk_discrepancy``): one of
      ``rules.select.STRATEGIES``.
  ``k`` (int, ``--k``, default 5): rules kept per pair.
  ``weight`` (float, ``--weight``, default 0.5): the discrepancy weight of
      ``topk_discrepancy``.
  ``seed`` (int, ``--seed``, default 0): for ``random_k``, random tie breaking and the
      bootstrap.
  ``fit_scores`` / ``fit_pairs`` (str | None, ``--fit-scores`` / ``--fit-pairs``): the gold
      pairs ``fitted_linear`` fits on (same two layouts); None: the input's own gold pairs.
  ``l2`` (float, ``--l2``, default 0.01): the L2 strength of the ``fitted_linear`` fit.

``label`` only:
  ``ties`` (str, ``--ties``, default ``skip``): ``skip`` | ``a`` | ``b`` | ``random``.
  ``diagnostics`` (str | None, ``--diagnostics FILE.json``): also write agreement and
      mutual information with gold for every strategy and each k of ``ks``, and print them.
  ``ks`` (list[int], ``--ks``, default 3 5 8) and ``n_boot`` (int, ``--n-boot``, default
      1000): the diagnostics' k values and bootstrap resamples.
"""

from __future__ import annotations

from rmr1_jax.rules import diagnostics
from rmr1_jax.rules.pool import load_pool
from rmr1_jax.rules.select import STRATEGIES, TIES, label_file, select_file

_DEFAULTS = {"pairs": None, "rules": None, "strategy": "topk_discrepancy", "k": 5, "weight": 0.5, "seed": 0,
             "fit_scores": None, "fit_pairs": None, "l2": 1e-2, "ties": "skip", "diagnostics": None,
             "ks": list(diagnostics.DEFAULT_KS), "n_boot": 1000}


def add_select_arguments(parser) -> None:
    """Declare the fields of :func:`cmd_select` on an argparse parser."""
    parser.add_argument("--scores", required=True, help="pairwise score file, or per-response file with --pairs")
    parser.add_argument("--pairs", default=None, help="pairs {prompt, a, b, winner?} to join with --scores")
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--rules", default=None, help="rule pool (JSONL or YAML); default: the built-in pool")
    parser.add_argument("--strategy", default="topk_discrepancy", choices=STRATEGIES)
    parser.add_argument("--k", type=int, default=5, help="rules kept per pair")
    parser.add_argument("--weight", type=float, default=0.5, help="discrepancy weight of topk_discrepancy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-scores", dest="fit_scores", default=None,
                        help="gold pairs for fitted_linear (default: the input's gold pairs)")
    parser.add_argument("--fit-pairs", dest="fit_pairs", default=None, help="pairs file joined with --fit-scores")
    parser.add_argument("--l2", type=float, default=1e-2, help="L2 strength of the fitted_linear fit")


def add_label_arguments(parser) -> None:
    """Declare the fields of :func:`cmd_label` on an argparse parser."""
    add_select_arguments(parser)
    parser.add_argument("--ties", default="skip", choices=TIES, help="what a tie becomes (default: skipped)")
    parser.add_argument("--diagnostics", default=None, help="write agreement / mutual information JSON here")
    parser.add_argument("--ks", type=int, nargs="+", default=list(diagnostics.DEFAULT_KS))
    parser.add_argument("--n-boot", dest="n_boot", type=int, default=1000, help="bootstrap resamples")


def add_apply_arguments(parser) -> None:
    """Declare the fields of :func:`cmd_apply` on an argparse parser."""
    parser.add_argument("--adapter", required=True, help="rule adapter: Orbax checkpoint or HF classifier dir")
    parser.add_argument("--scores", required=True, help="pairwise score file, or per-response file with --pairs")
    parser.add_argument("--pairs", default=None, help="pairs {prompt, a, b, winner?} to join with --scores")
    parser.add_argument("--out", required=True, help="output JSONL (rules label rows, strategy 'adapter')")
    parser.add_argument("--rules", default=None, help="rule pool (JSONL or YAML); default: the built-in pool")
    parser.add_argument("--k", type=int, default=5, help="rules selected per pair")
    parser.add_argument("--ties", default="skip", choices=TIES, help="what a tie becomes (default: skipped)")
    parser.add_argument("--seed", type=int, default=0, help="for --ties random")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="pairs per forward pass")
    parser.add_argument("--max-length", dest="max_length", type=int, default=None,
                        help="longest adapter input in tokens (default: the training max_length, else 1024)")
    parser.add_argument("--overlong", default="error", choices=("error", "truncate"),
                        help="a longer input: error or truncate")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the adapter's)")
    parser.add_argument("--mesh", default=None, help="DATA,FSDP,TENSOR (default: all devices on data)")


def _opt(args, name):
    return getattr(args, name, _DEFAULTS[name])


def _common(args) -> dict:
    return {"pairs_path": _opt(args, "pairs"), "rules": load_pool(_opt(args, "rules")),
            "builtin_pool": _opt(args, "rules") is None, "weight": _opt(args, "weight"), "seed": _opt(args, "seed"),
            "fit_scores_path": _opt(args, "fit_scores"), "fit_pairs_path": _opt(args, "fit_pairs"),
            "l2": _opt(args, "l2")}


def report(s: dict, what: str, out: str) -> None:
    line = f"{s['strategy']} (k={s['k']}): {s['pairs']} pairs, {s['ties']} ties; wrote {s['written']} {what} to {out}"
    if "agreement" in s:
        line += f"; agreement with gold {s['agreement']:.3f} on {s['gold_pairs']} pairs"
    print(line)


def cmd_select(args) -> None:
    """``rmr1 rules select``: every pair's selected rules and R-hot labels."""
    s = select_file(args.scores, args.out, _opt(args, "strategy"), _opt(args, "k"), **_common(args))
    report(s, "selections", args.out)


def cmd_label(args) -> None:
    """``rmr1 rules label``: rule-labeled pairs (chosen / rejected), optionally with the
    diagnostics over every strategy and k."""
    common = _common(args)
    s = label_file(args.scores, args.out, _opt(args, "strategy"), _opt(args, "k"), ties=_opt(args, "ties"), **common)
    report(s, f"labeled pairs (ties: {s['ties_handling']})", args.out)
    if _opt(args, "diagnostics"):
        rows = diagnostics.diagnose_file(
            args.scores, _opt(args, "diagnostics"), pairs_path=common["pairs_path"], rules=common["rules"],
            ks=_opt(args, "ks"), fit_scores_path=common["fit_scores_path"],
            fit_pairs_path=common["fit_pairs_path"], ties=_opt(args, "ties"), weight=common["weight"],
            seed=common["seed"], n_boot=_opt(args, "n_boot"), l2=common["l2"])
        print(diagnostics.format_table(rows))
        print(f"wrote diagnostics to {_opt(args, 'diagnostics')}")
