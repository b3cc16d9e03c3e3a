"""Test-time scaling of a generative judge: ``k`` sampled judgments per pair and per A/B order
(``rmr1 eval --samples k --vote RULE``), aggregated into one verdict per order.

The ``k`` samples of one judge prompt go through the generation engine in one call
(``SamplingParams(n=k)``, :func:`~rmr1_jax.inference.judge.judge_pairs` with ``samples=k``), so
the prompt is prefilled once and its pages are read by all ``k`` samples. Sampling is at
``temperature`` (1.0 by default when ``k > 1``); a sample's draws depend on the seed and its
prompt only, not on the batch it ran in, so a resumed run samples what an uninterrupted one
would.

Aggregation rules (:data:`VOTES`), per order:

* ``majority``: the verdict most of the ``k`` samples gave. A sample without a verdict (cut
  off, unparsable) abstains. A **tie** (as many ``A`` as ``B``, including no verdict at all)
  is **no verdict**, and is scored as ``rmr1 eval`` scores a missing verdict:
  ``--no-verdict zero`` counts it 0 (RM-R1's rule, the default), ``half`` 0.5. With an even
  ``k`` ties happen; an odd ``k`` breaks them whenever every sample has a verdict.
* ``mean-prob``: the mean over the samples of the verdict probability P([[A]])
  (:mod:`rmr1_jax.inference.verdict_prob`, what ``--prob`` reads) over the samples that have
  one (a sample without a verdict has no probability and abstains), thresholded at 1/2:
  above is ``A``, below is ``B``; exactly 1/2, or no sample with a probability, is no verdict
  (scored as above).

Results rows keep every sample's verdict, in the labels of the order it was judged in (as the
row's ``verdict``): ``votes`` (the first or only order, ``k`` entries) and, judged in both
orders, ``votes_swapped``; with probabilities (``--prob`` or ``mean-prob``) ``vote_probs`` and
``vote_probs_swapped`` (each sample's P(A), None where it has none) and ``prob_a`` their mean;
``vote`` names the rule; ``verdict`` is the aggregate of all ``k``. The accuracy a run of ``k``
samples would have had with ``k' <= k`` is then read from the same file by aggregating the
first ``k'`` votes of each order (:func:`accuracy_against_k`, at :func:`ks_upto`: 1, 2, 4, 8,
16, ... and ``k``): the report's "accuracy against k" table and plot.
"""

from __future__ import annotations

from typing import Callable, Sequence

from rmr1_jax.errors import UserError

VOTES = ("majority", "mean-prob")


def check_voting(samples: int, vote: str | None, temperature: float | None) -> tuple[str | None, float]:
    """``(vote, temperature)`` as a run uses them, or a one-line UserError: ``samples`` at least
    1; ``vote`` one of :data:`VOTES`, only with ``samples > 1`` (default ``majority`` then);
    ``temperature`` at least 0 (default 1.0 with ``samples > 1``, 0 = greedy with one), and
    not 0 with ``samples > 1`` (greedy samples are all alike)."""
    if not isinstance(samples, int) or samples < 1:
        raise UserError(f"--samples must be a whole number of judgments, at least 1, not {samples!r}")
    if vote is not None and vote not in VOTES:
        raise UserError(f"--vote must be one of {', '.join(VOTES)}, not {vote!r}")
    if vote is not None and samples == 1:
        raise UserError(f"--vote {vote} needs --samples K with K > 1 (one judgment has nothing to vote over)")
    if temperature is not None and not temperature >= 0:
        raise UserError(f"--temperature must be 0 (greedy) or positive, not {temperature}")
    if samples > 1 and temperature == 0:
        raise UserError(f"--samples {samples} needs --temperature > 0: greedy samples of one prompt are all alike")
    if samples == 1:
        return None, 0.0 if temperature is None else float(temperature)
    return vote or "majority", 1.0 if temperature is None else float(temperature)


def majority(votes: Sequence[str | None]) -> str | None:
    """The verdict most votes gave; None on a tie (no verdicts at all included). A None vote
    abstains."""
    a, b = sum(v == "A" for v in votes), sum(v == "B" for v in votes)
    return "A" if a > b else "B" if b > a else None


def mean_prob(probs: Sequence[float | None]) -> tuple[str | None, float | None]:
    """``(verdict, mean P(A))`` of the samples' probabilities (None ones abstain): ``A`` above
    1/2, ``B`` below, None at exactly 1/2 or when no sample has a probability."""
    ps = [float(p) for p in probs if p is not None]
    if not ps:
        return None, None
    m = sum(ps) / len(ps)
    return ("A" if m > 0.5 else "B" if m < 0.5 else None), m


def aggregate(rule: str, votes: Sequence[str | None], probs: Sequence[float | None] | None = None
              ) -> tuple[str | None, float | None]:
    """``(verdict, mean P(A) or None)`` of one order's samples under ``rule``. ``mean-prob``
    needs ``probs``; with ``majority`` the mean probability is given too when ``probs`` is."""
    m = mean_prob(probs)[1] if probs is not None else None
    if rule == "majority":
        return majority(votes), m
    if rule == "mean-prob":
        if probs is None:
            raise ValueError("mean-prob voting needs each sample's verdict probability")
        return mean_prob(probs)
    raise ValueError(f"unknown vote rule {rule!r} (expected one of {', '.join(VOTES)})")


def vote_outputs(outs: Sequence[dict], rule: str) -> list[dict]:
    """What a judge gives :func:`~rmr1_jax.eval.runs.run_generative` for each entry of
    :func:`~rmr1_jax.inference.judge.judge_pairs` run with ``samples=k > 1`` (whose
    ``judgment``, ``verdict``, ``finished`` and ``prob_a`` are lists of ``k``): ``verdict`` the
    aggregate, ``votes`` the ``k`` verdicts, ``judgment`` the ``k`` texts, ``vote`` the rule,
    and where probabilities were read ``vote_probs`` and ``prob_a`` (their mean)."""
    out = []
    for o in outs:
        probs = o.get("prob_a")
        verdict, m = aggregate(rule, o["verdict"], probs)
        row = {"verdict": verdict, "votes": list(o["verdict"]), "judgment": list(o["judgment"]), "vote": rule}
        if probs is not None:
            row.update(vote_probs=list(probs), prob_a=m)
        out.append(row)
    return out


def _orders(row: dict) -> list[tuple[list, list | None]]:
    """Each judged order's ``(votes, probs or None)`` of a results row."""
    out = [(row["votes"], row.get("vote_probs"))]
    if "votes_swapped" in row:
        out.append((row["votes_swapped"], row.get("vote_probs_swapped")))
    return out


def samples_of(row: dict) -> int:
    """How many samples every order of a voted row holds (the fewest, if they differ)."""
    return min(len(v) for v, _ in _orders(row))


def at_k(row: dict, k: int) -> dict:
    """The row as a run of ``k`` samples would have written it: each order's ``verdict`` (and
    ``prob_a``, where probabilities were read) from its first ``k`` votes under the row's
    rule."""
    rule = row.get("vote", "majority")
    got = [aggregate(rule, v[:k], None if p is None else p[:k]) for v, p in _orders(row)]
    out = dict(row)
    both = isinstance(row.get("verdict"), list)
    out["verdict"] = [g[0] for g in got] if both else got[0][0]
    if row.get("vote_probs") is not None:
        out["prob_a"] = [g[1] for g in got] if both else got[0][1]
    return out


def ks_upto(k: int) -> list[int]:
    """The sample counts the report shows for a run of ``k``: 1, 2, 4, 8, 16, ... up to ``k``,
    and ``k`` itself."""
    out, j = [], 1
    while j < k:
        out.append(j)
        j *= 2
    return out + [k]


def accuracy_against_k(rows: Sequence[dict], no_verdict: str = "zero",
                       overall: Callable[[list[dict]], float | None] | None = None) -> dict | None:
    """Accuracy at every ``k'`` of :func:`ks_upto` from the voted rows (those with ``votes``;
    None when there are none): per ``k'``, ``accuracy`` (mean correctness of the pairs, the
    mean over orders where both were judged; missing verdicts and ties as ``no_verdict``
    says), ``no_verdict_rate`` (of the aggregated verdicts), ``position_consistency`` (pairs
    judged in both orders whose two aggregated verdicts name the same response; None without
    such pairs) and, with ``overall`` (a function of the rows at ``k'``), the benchmark's
    headline score. Returns ``{"vote", "samples", "n", "by_k": [...]}``."""
    from rmr1_jax.ab_positions import position_consistent
    from rmr1_jax.eval.correctness import example_correct

    voted = [r for r in rows if r.get("votes") is not None]
    if not voted:
        return None
    k = min(samples_of(r) for r in voted)
    rules = sorted({r.get("vote", "majority") for r in voted})
    table = []
    for kk in ks_upto(k):
        rk = [at_k(r, kk) if r.get("votes") is not None else r for r in rows]
        vk = [at_k(r, kk) for r in voted]
        verdicts = [v for r in vk for v in (r["verdict"] if isinstance(r["verdict"], list) else [r["verdict"]])]
        both = [r for r in vk if isinstance(r["verdict"], list) and len(r["verdict"]) == 2]
        table.append({
            "k": kk, "accuracy": sum(example_correct(r, no_verdict) for r in vk) / len(vk),
            "no_verdict_rate": sum(v is None for v in verdicts) / len(verdicts),
            "position_consistency": (sum(position_consistent(r["verdict"], r["winner"]) for r in both) / len(both)
                                     if both else None),
            "overall": overall(rk) if overall is not None else None})
    return {"vote": "/".join(rules), "samples": k, "n": len(voted), "by_k": table}


def plot(summary: dict, path: str, title: str, overall_name: str = "overall") -> str:
    """Accuracy against k (PNG, k on a log2 axis) of an :func:`accuracy_against_k` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmr1_jax.figures import save_figure

    t = summary["by_k"]
    ks = [r["k"] for r in t]
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.plot(ks, [100 * r["accuracy"] for r in t], "o-", label="accuracy")
    if any(r["overall"] is not None for r in t):
        ax.plot(ks, [float("nan") if r["overall"] is None else 100 * r["overall"] for r in t], "s--",
                label=overall_name)
    for x, r in zip(ks, t):
        ax.annotate(f"{100 * r['accuracy']:.1f}", (x, 100 * r["accuracy"]), fontsize=7, xytext=(0, 5),
                    textcoords="offset points", ha="center")
    ax.margins(y=0.15)  # room for the labels above the points
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="sampled judgments per pair and order (k)", ylabel="accuracy %",
           title=f"{title}\n{summary['vote']} vote over the first k samples, n = {summary['n']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)
