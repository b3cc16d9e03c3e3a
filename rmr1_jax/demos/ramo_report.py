"""What ``rmr1 demo ramo`` reports: the judge's mean scores by kind of rule, the table of
strategies (label agreement, mutual information, reward-model accuracy) and the plots."""

from __future__ import annotations

import os


def judge_summary(scores_path: str, splits, world) -> dict:
    """Mean judge score and relevance of the held-out responses by what the rule is to them
    (``world.summary_group``: follows / breaks a deciding rule, tone, style, ...)."""
    import numpy as np

    from rmr1_jax.rules.score_files import read_scores

    sc = read_scores(scores_path, len(world.rules))
    index = {(r["prompt"], r["response"]): i for i, r in enumerate(sc.rows)}
    groups: dict[str, list[tuple[float, float]]] = {}
    for p in splits["heldout"]:
        for side in ("a", "b"):
            i = index[(p["prompt"], p[side])]
            for r in range(len(world.rules)):
                groups.setdefault(world.summary_group(p, side, r), []).append((sc.scores[i, r], sc.relevance[i, r]))
    return {g: {"score": float(np.mean([v[0] for v in vs])), "relevance": float(np.mean([v[1] for v in vs])),
                "n": len(vs)} for g, vs in sorted(groups.items())}


def format_results(r: dict) -> str:
    """The demo's table: per strategy, label agreement and MI at k (or all rules), and the
    held-out accuracy of the reward model its labels trained."""
    rows = [f"| labels | agreement with gold (k={r['k']}) | mutual information, bits [95% CI] | "
            "reward model held-out accuracy |", "|---|---|---|---|"]
    for st, agree in r["label_agreement"].items():
        mi = r["mutual_information"][st]
        acc = r["rm_heldout_accuracy"].get(st)
        rows.append(f"| {st} | {'-' if agree is None else f'{100 * agree:.1f}%'} | {mi['bits']:.3f} "
                    f"[{mi['low']:.3f}, {mi['high']:.3f}] | {'-' if acc is None else f'{100 * acc:.1f}%'} |")
    if "gold" in r["rm_heldout_accuracy"]:
        rows.append(f"| gold (ceiling) | 100% | 1.000 | {100 * r['rm_heldout_accuracy']['gold']:.1f}% |")
    agree = r["adapter_label_agreement"]
    rows.append(f"Rule Adapter: macro-F1 over rules {r['adapter_macro_f1']:.3f} (flattened two-class F1 "
                f"{r['adapter_f1_flattened_two_class']:.3f}), top-{r['k']} precision {r['adapter_topk_precision']:.3f}; "
                f"held-out labels from its rules agree with gold "
                f"{'-' if agree is None else f'{100 * agree:.1f}%'}")
    return "\n".join(rows)


def plot_results(out_dir: str, r: dict, adapter_dir: str) -> list[str]:
    """``ramo_strategies.png`` (agreement and reward-model accuracy per strategy, mutual
    information against k) and ``adapter_curves.png`` from the adapter's run in ``adapter_dir``;
    returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmr1_jax.figures import save_figure
    from rmr1_jax.train.metrics import plot_curves

    out = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    names = list(r["label_agreement"])
    axes[0].bar(names, [r["label_agreement"][n] or 0 for n in names], color="tab:blue")
    axes[0].set_title(f"label agreement with gold (k={r['k']})")
    rm = r["rm_heldout_accuracy"]
    axes[1].bar(list(rm), list(rm.values()), color="tab:green")
    axes[1].set_title("reward model: held-out gold accuracy")
    for st in ("topk_discrepancy", "max_discrepancy", "random_k"):
        pts = sorted((d["k"], d["mutual_information"]) for d in r["diagnostics"] if d["strategy"] == st)
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=st)
    for st in ("all_rules", "fitted_linear"):
        mi = r["mutual_information"][st]["bits"]
        axes[2].axhline(mi, ls="--", lw=1, label=st, color="gray" if st == "all_rules" else "black")
    axes[2].set_xlabel("k")
    axes[2].set_title("mutual information with gold (bits)")
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_ylim(0.4, 1.0)
        ax.tick_params(axis="x", labelrotation=25, labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    out.append(save_figure(fig, os.path.join(out_dir, "ramo_strategies.png")))
    out.append(plot_curves(os.path.join(adapter_dir, "metrics.jsonl"), os.path.join(out_dir, "adapter_curves.png"),
                           [("train", "loss", "BCE loss"), ("train", "topk_precision", "top-k precision"),
                            ("eval", "macro_f1_rules", "held-out macro-F1 (rules)")], "Rule Adapter"))
    return out
