"""Reports of scored benchmark summaries (:mod:`rmr1_jax.eval.scoring`): a one-line summary,
a markdown table, a RewardBench-style results JSON, PNG bar charts per section, and a
side-by-side comparison of several models. Every report names the scoring rules used. A run
that read verdict probabilities adds a calibration section and a reliability plot
(:mod:`rmr1_jax.eval.calibration`); one that voted over k sampled judgments a table and a plot
of the accuracy against k (:mod:`rmr1_jax.eval.voting`)."""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Mapping

from rmr1_jax.data.readers import atomic_write_text
from rmr1_jax.eval.benchmarks import REWARDBENCH_SECTIONS, RMB_GROUPS
from rmr1_jax.eval.registry import BENCHMARKS, get
from rmr1_jax.eval.scoring import MATH_PRM_WEIGHT

_OVERALL = {"rewardbench": "Overall", "rm-bench": "Total", "rmb": "Overall"}  # the headline's name
_SUBSET_LABEL = {"rewardbench": "Subset", "rm-bench": "Domain (as in the data)", "rmb": "Group/scenario"}


def _title(benchmark: str) -> str:
    return get(benchmark).title


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def rules_text(summary: dict) -> str:
    sc = summary["scoring"]
    parts = []
    if "generative" in summary["model_type"]:
        parts.append(sc["no_verdict_rule"])
    if "scalar" in summary["model_type"]:
        parts.append(f"scalar ties count {sc['scalar_tie']:g}")
    if "weights" in sc:  # RewardBench's section weights
        parts.append(f"section weights: {sc.get('weights', 'official')} (math-prm weighted {MATH_PRM_WEIGHT})"
                     if sc.get("weights", "official") == "official" else
                     "section weights: observed counts (math-prm weighted as all code rows)")
    return "; ".join(parts)


def headline(summary: dict) -> dict[str, float | None]:
    """The benchmark's headline numbers in report order (sections, then overall)."""
    out = dict(summary["sections"])
    out.update(summary.get("difficulty", {}))  # RM-Bench's hard / normal / easy
    out[_OVERALL[summary["benchmark"]]] = summary["overall"]
    return out


def summary_line(summary: dict, name: str | None = None) -> str:
    """One line for the terminal: the headline scores and the rules used. The model is the
    summary's own (``name`` is not needed: the summary names it)."""
    h = headline(summary)
    ov = _OVERALL[summary["benchmark"]]
    body = ", ".join(f"{k} {_pct(v)}" for k, v in h.items() if k != ov)
    nv = ""
    if summary["n_judgments"]:
        nv = f"; {summary['n_no_verdict']} of {summary['n_judgments']} judgments without a verdict"
    pc = "" if summary["position_consistency"] is None else \
        f"; position consistency {_pct(summary['position_consistency'])}"
    v = summary.get("voting")
    vk = "" if not v else f"; {v['vote']} vote, accuracy at k = " + "/".join(
        str(r["k"]) for r in v["by_k"]) + ": " + "/".join(_pct(r["accuracy"]) for r in v["by_k"])
    part = "" if summary["complete"] else " [INCOMPLETE: " + "; ".join(summary["warnings"]) + "]"
    return (f"{_title(summary['benchmark'])} {summary['model']}: {ov} {_pct(summary['overall'])} ({body})"
            f" [{rules_text(summary)}{nv}{pc}{vk}]{part}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(summary: dict) -> str:
    b = summary["benchmark"]
    out = [f"## {_title(b)}: {summary['model']}", ""]
    out.append(f"Scoring: {rules_text(summary)}.")
    facts = [f"{summary['n_examples']} examples"]
    if summary["n_judgments"]:
        facts.append(f"{summary['n_no_verdict']} of {summary['n_judgments']} judgments without a verdict "
                     f"({_pct(summary['no_verdict_rate'])}%)")
    if summary["position_consistency"] is not None:
        facts.append(f"position consistency {_pct(summary['position_consistency'])}% over "
                     f"{summary['n_both_orders']} pairs judged in both orders")
    out += ["", "; ".join(facts) + ".", ""]
    if not summary["complete"]:
        out += ["**Incomplete:** " + "; ".join(summary["warnings"]) + ".", ""]
    out.append(_table(["Score", "%"], [[k, _pct(v)] for k, v in headline(summary).items()]))
    out.append("")
    if "domains" in summary:  # RM-Bench: each domain's hard / normal / easy
        rows = [[d, _pct(v["hard"]), _pct(v["normal"]), _pct(v["easy"]), _pct(v["score"]), str(v["n_items"])]
                for d, v in summary["domains"].items()]
        out += [_table(["Domain", "Hard", "Normal", "Easy", "Score", "Items"], rows), ""]
    rows = [[s, _pct(v["accuracy"]), str(v["n"])] for s, v in summary["subsets"].items()]
    out += [_table([_SUBSET_LABEL[b], "Accuracy %", "N"], rows), ""]
    c = summary.get("calibration")
    if c:
        out += ["### Calibration of the verdict probabilities", "",
                f"Over {c['n']} judgments with a verdict probability (P(A) where the judge wrote its verdict, "
                f"each order one observation): expected calibration error {c['ece']:.3f} ({c['bins']} confidence "
                f"bins), Brier score {c['brier']:.3f} (always 1/2 scores 0.250).", "",
                _table(["P(A) bin", "N", "mean P(A)", "A better %"],
                       [[f"{r['low']:.1f}-{r['high']:.1f}", str(r["n"]), f"{r['mean_p']:.3f}", _pct(r["frac_a"])]
                        for r in c["reliability"]]), ""]
    v = summary.get("voting")
    if v:
        out += ["### Accuracy against k", "", _voting_text(summary), "", _voting_table(summary), ""]
    return "\n".join(out)


def _voting_text(summary: dict) -> str:
    v = summary["voting"]
    rule = {"majority": "the majority of the parsed verdicts (a sample without one abstains; a tie is no "
                        "verdict)",
            "mean-prob": "the mean of the samples' P(A) against 1/2 (exactly 1/2, or no probability, is no "
                         "verdict)"}.get(v["vote"], f"the {v['vote']} rule")
    return (f"{v['samples']} sampled judgments per pair and order, over {v['n']} pairs; at each k the verdict "
            f"of an order is {rule} of its first k samples, and a missing verdict is scored as above "
            f"({summary['scoring']['no_verdict_rule']}).")


def _voting_table(summary: dict) -> str:
    rows_ = summary["voting"]["by_k"]
    head = ["k", "Accuracy %", "No verdict %"]
    cols = [lambda r: str(r["k"]), lambda r: _pct(r["accuracy"]), lambda r: _pct(r["no_verdict_rate"])]
    if any(r["position_consistency"] is not None for r in rows_):
        head.append("Position consistency %")
        cols.append(lambda r: _pct(r["position_consistency"]))
    if any(r["overall"] is not None for r in rows_):
        head.append(_OVERALL[summary["benchmark"]] + " %")
        cols.append(lambda r: _pct(r["overall"]))
    return _table(head, [[c(r) for c in cols] for r in rows_])


def to_results_json(summary: dict) -> dict:
    """A RewardBench-results-style object: model, model type, one key per subset accuracy and
    per section score, then the rest of the summary."""
    out: dict[str, Any] = {"model": summary["model"], "model_type": summary["model_type"],
                           "benchmark": summary["benchmark"]}
    out.update({s: v["accuracy"] for s, v in summary["subsets"].items()})
    out.update(headline(summary))
    out.update({k: v for k, v in summary.items() if k not in out})
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "x"


def _bar_png(path: str, labels: list[str], values: list[float | None], title: str, note: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rmr1_jax.figures import save_figure

    vals = [0.0 if v is None else 100 * v for v in values]
    horizontal = len(labels) > 8
    if horizontal:
        fig, ax = plt.subplots(figsize=(7.0, 0.28 * len(labels) + 1.2))
        ax.barh(range(len(labels)), vals, color="tab:blue")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy %")
        ax.grid(alpha=0.3, axis="x")
    else:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.0 * len(labels) + 1.5), 3.6))
        bars = ax.bar(range(len(labels)), vals, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0, ha="right"
                      if len(labels) > 3 else "center", fontsize=8)
        ax.set_ylim(0, 109)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3, axis="y")
        for rect, v, raw in zip(bars, vals, values):
            ax.text(rect.get_x() + rect.get_width() / 2, v + 1, "-" if raw is None else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=7)
    ax.set_title(title, fontsize=10, loc="left")
    if note:
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=6, color="0.35")
    return save_figure(fig, path)


def _rewardbench_plots(summary: dict, out_dir: str, name: str) -> list[str]:
    """One chart per section, of its subsets."""
    paths = []
    for sec, subs in REWARDBENCH_SECTIONS.items():
        present = [s for s in subs if s in summary["subsets"]]
        if present:
            paths.append(_bar_png(os.path.join(out_dir, f"{name}-{_slug(sec)}.png"), present,
                                  [summary["subsets"][s]["accuracy"] for s in present],
                                  f"RewardBench {sec}: {_pct(summary['sections'][sec])}", rules_text(summary)))
    return paths


def _rm_bench_plots(summary: dict, out_dir: str, name: str) -> list[str]:
    """One chart per domain, of its hard / normal / easy accuracies."""
    return [_bar_png(os.path.join(out_dir, f"{name}-{_slug(dom)}.png"), ["hard", "normal", "easy"],
                     [v["hard"], v["normal"], v["easy"]], f"RM-Bench {dom}: {_pct(v['score'])}", rules_text(summary))
            for dom, v in summary["domains"].items()]


def _rmb_plots(summary: dict, out_dir: str, name: str) -> list[str]:
    """One chart per group, of its scenarios."""
    paths = []
    for g in RMB_GROUPS:
        keys = [k for k in summary["subsets"] if k.startswith(g + "/")]
        if keys:
            paths.append(_bar_png(os.path.join(out_dir, f"{name}-{_slug(g)}.png"), [k[len(g) + 1:] for k in keys],
                                  [summary["subsets"][k]["accuracy"] for k in keys],
                                  f"RMB {g}: {_pct(summary['sections'][g])}", rules_text(summary)))
    return paths


_SECTION_PLOTS = {"rewardbench": _rewardbench_plots, "rm-bench": _rm_bench_plots, "rmb": _rmb_plots}


def _plots(summary: dict, out_dir: str, name: str) -> list[str]:
    """The overview chart of the headline scores, then the benchmark's own charts."""
    h = headline(summary)
    overview = _bar_png(os.path.join(out_dir, f"{name}-overview.png"), list(h), list(h.values()),
                        f"{_title(summary['benchmark'])}: {summary['model']}", rules_text(summary))
    pngs = [overview] + _SECTION_PLOTS[summary["benchmark"]](summary, out_dir, name)
    if summary.get("calibration"):
        from rmr1_jax.eval.calibration import plot

        pngs.append(plot(summary["calibration"], os.path.join(out_dir, f"{name}-reliability.png"),
                         f"{_title(summary['benchmark'])}: {summary['model']}"))
    if summary.get("voting"):
        from rmr1_jax.eval import voting

        pngs.append(voting.plot(summary["voting"], os.path.join(out_dir, f"{name}-accuracy-vs-k.png"),
                                f"{_title(summary['benchmark'])}: {summary['model']}",
                                _OVERALL[summary["benchmark"]]))
    return pngs


def write_report(summary: dict, out_dir: str, name: str | None = None) -> dict[str, Any]:
    """Write ``NAME.md`` (tables), ``NAME.json`` (RewardBench-results-style summary) and PNG
    bar charts (``NAME-overview.png`` and one per section; ``NAME-reliability.png`` with verdict
    probabilities, ``NAME-accuracy-vs-k.png`` with votes) into ``out_dir``. ``name`` defaults
    to ``<model>-<benchmark>``. Returns ``{"md": path, "json": path, "png": [paths]}``."""
    os.makedirs(out_dir, exist_ok=True)
    name = name or f"{_slug(summary['model'])}-{summary['benchmark']}"
    md = os.path.join(out_dir, f"{name}.md")
    js = os.path.join(out_dir, f"{name}.json")
    pngs = _plots(summary, out_dir, name)
    atomic_write_text(js, json.dumps(to_results_json(summary), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md, f"# {_title(summary['benchmark'])} report\n\n" + to_markdown(summary))
    return {"md": md, "json": js, "png": pngs}


def compare(summaries: Mapping[str, dict]) -> str:
    """Markdown putting several models side by side: per benchmark, one table of headline
    scores (and the scoring rules / no-verdict rate) and one of per-subset accuracies, one
    column per model name."""
    by_bench: dict[str, list[tuple[str, dict]]] = collections.defaultdict(list)
    for name, s in summaries.items():
        by_bench[s["benchmark"]].append((name, s))
    out = []
    for b in (name for name in BENCHMARKS if name in by_bench):
        group = by_bench[b]
        names = [n for n, _ in group]
        out += [f"## {_title(b)}", ""]
        keys: list[str] = []
        for _, s in group:
            keys += [k for k in headline(s) if k not in keys]
        rows = [[k] + [_pct(headline(s).get(k)) for _, s in group] for k in keys]
        rows.append(["No verdict %"] + [_pct(s["no_verdict_rate"]) for _, s in group])
        rows.append(["Complete"] + ["yes" if s["complete"] else "no" for _, s in group])
        out += [_table(["Score"] + names, rows), ""]
        out += ["Scoring: " + "; ".join(f"{n}: {rules_text(s)}" for n, s in group) + ".", ""]
        subs: list[str] = []
        for _, s in group:
            subs += [k for k in s["subsets"] if k not in subs]
        rows = [[k] + [_pct(s["subsets"][k]["accuracy"]) if k in s["subsets"] else "-" for _, s in group]
                for k in subs]
        out += [_table(["Subset"] + names, rows), ""]
    return "\n".join(out)

