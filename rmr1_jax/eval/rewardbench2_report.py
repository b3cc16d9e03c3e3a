"""RewardBench 2's summary as a terminal line and as report files (its registry entry's
``score``, ``report`` and ``line``; the scores are :func:`~rmr1_jax.eval.rewardbench2.score_rewardbench2`'s)."""

from __future__ import annotations

import json
import os
from typing import Iterable

from rmr1_jax.data.readers import atomic_write_text
from rmr1_jax.eval.rewardbench2 import SUBSETS, TIES_WEIGHTS, score_rewardbench2

SUMMARY_FILE, REPORT_FILE = "summary-rewardbench2.json", "report-rewardbench2.md"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def score_results(benchmark: str, results_path: str, *, no_verdict: str = "zero",
                  expected: Iterable | None = None) -> dict:
    """:func:`~rmr1_jax.eval.rewardbench2.score_rewardbench2` of a results file. A scalar model
    scores every completion, so there is no verdict to miss (``no_verdict`` does not apply),
    and the official formulas score the prompts the file has (``expected`` is not compared)."""
    return score_rewardbench2(results_path)


def summary_line(summary: dict, name: str | None = None) -> str:
    """``RewardBench 2 NAME: overall X (subset scores)``; without every subset, the mean of the
    others, clearly not the official overall."""
    subsets = ", ".join(f"{k} {_pct(v)}" for k, v in summary["subsets"].items())
    overall = _pct(summary["overall"]) if summary["overall"] is not None else \
        f"- (no score for {', '.join(summary['missing'])}; mean of the others {_pct(summary['overall_present'])})"
    note = f" [pairwise {summary['pairwise']}, not the official scoring]" if summary.get("pairwise") else ""
    return f"RewardBench 2 {name or 'model'}: overall {overall} ({subsets}){note}"


def write_report(summary: dict, out_dir: str) -> dict[str, str]:
    """Write the JSON summary (:data:`SUMMARY_FILE`) and the markdown report
    (:data:`REPORT_FILE`, :func:`summary_markdown`) into ``out_dir``; returns their paths as
    ``{"json", "md"}``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, SUMMARY_FILE), "md": os.path.join(out_dir, REPORT_FILE)}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n")
    atomic_write_text(paths["md"], summary_markdown(summary))
    return paths


def summary_markdown(summary: dict) -> str:
    """A markdown report: the six subsets (score x 100 and prompt count), the Ties components
    and the overall (or why there is none)."""

    lines = ["## RewardBench 2", ""]
    if summary.get("pairwise"):
        lines += [f"**Not the official RewardBench 2 scoring.** A generative judge has no scalar score: each "
                  f"prompt's completions met in a {summary['pairwise'].replace('_', ' ')} of pairwise verdicts "
                  f"(every pair in both orders), each completion scored by its win rate (a tie, inconsistent "
                  f"or missing verdict counting half), and the official formulas applied to those scores.", ""]
    lines += ["| Subset | Score | Prompts |", "|---|---:|---:|"]
    for s in SUBSETS:
        lines.append(f"| {s} | {_pct(summary['subsets'].get(s))} | {summary['counts'].get(s, 0)} |")
    if summary["overall"] is not None:
        lines.append(f"| **Overall** | **{_pct(summary['overall'])}** | {summary['n']} |")
    t = summary["ties"]
    margin = "-" if t["margin"] is None else f"{t['margin']:+.3f}"
    names = {"tied_accuracy": "tied accuracy", "ref_accuracy": "ref accuracy", "preferred": "preferred",
             "preferred_hard": "preferred (hard)", "margin": "margin (tanh, in -1..1)"}
    lines += ["", "| Ties component | Weight | Value |", "|---|---:|---:|"]
    lines += [f"| {names[k]} | {w:.2f} | {margin if k == 'margin' else _pct(t[k])} |"
              for k, w in TIES_WEIGHTS.items()]
    lines += ["",
              f"Ties prompts: {t['n_ref']} ref, {t['n_tied']} tied, {t['n_paired']} prompt numbers with both.",
              "Scoring: best-of-4 with 1/k credit for a k-way tie at the top (every subset but Ties); "
              "Ties = 0.30 tied + 0.30 ref + 0.20 preferred + 0.20 preferred_hard + 0.01 margin; "
              "overall = unweighted mean of the six subsets."]
    if summary["overall"] is None:
        lines.append(f"Overall not reported: no score for {', '.join(summary['missing'])}"
                     + ("" if summary["overall_present"] is None else
                        f" (mean of the {6 - len(summary['missing'])} present subsets, not the official "
                        f"overall: {_pct(summary['overall_present'])})") + ".")
    return "\n".join(lines) + "\n"
