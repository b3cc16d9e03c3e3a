"""A pair with its responses at positions A and B: where each response is shown, the same pair
in the other order, and position consistency.

Every A/B rule of the package is defined here once:

* placement - :func:`alternate_at_a` from :func:`seeded_start` (training data: alternating,
  so the labels stay balanced), :func:`coin_at_a` (evaluation: a seeded coin flip per task
  that does not depend on the task's position in the file), and :func:`place`;
* the other order - :func:`flip` (a label or verdict read in the swapped order) and
  :func:`swap`;
* both orders - :func:`position_consistent` and :func:`both_orders_metrics`.

Pure functions of their arguments, importing nothing of the package: ``data``, ``train``,
``eval`` and ``inference`` (which generates the verdicts, :mod:`rmr1_jax.inference.judge`)
all place and flip with these.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

_OTHER = {"A": "B", "B": "A", None: None}


# ============================================================================ placement


def seeded_start(seed: int) -> int:
    """The first placement (0 or 1) of :func:`alternate_at_a` for a seed: a hash, so every
    seed picks its own start, the same one on every machine."""
    return int(hashlib.sha256(f"positions:{seed}".encode()).hexdigest(), 16) % 2


def alternate_at_a(index: int, start: int = 0) -> bool:
    """Whether item ``index`` of a stream shows its chosen response at A: alternating from
    ``start`` (0: the first item has it at A), which keeps the two labels balanced to within
    one in every prefix of the stream."""
    return (index + start) % 2 == 0


def coin_at_a(seed: int, benchmark: str, item_id, pair_index) -> bool:
    """A seeded coin flip per task: whether its first response is shown at A. It depends only
    on ``(seed, benchmark, item_id, pair_index)``, so a resumed or reordered run shows every
    task the same way."""
    h = hashlib.sha256(f"ab:{seed}:{benchmark}:{item_id}:{pair_index}".encode()).digest()
    return h[0] % 2 == 0


def place(first: T, second: T, first_at_a: bool) -> tuple[T, T, str]:
    """``(response_a, response_b, position of first)``: ``first`` at A when ``first_at_a``,
    else at B. With ``first`` the chosen response the position is the right verdict."""
    return (first, second, "A") if first_at_a else (second, first, "B")


# ============================================================================ the other order


def flip(label: str | None) -> str | None:
    """The other position: ``"A"`` <-> ``"B"``; ``None`` (no verdict) stays ``None``. Maps a
    winner to the swapped order, and a verdict given in the swapped order back to the
    original one."""
    return _OTHER[label]


def swap(a: T, b: T, winner: str) -> tuple[T, T, str]:
    """The same pair in the other order: B's response at A and the other label."""
    return b, a, flip(winner)


# ============================================================================ both orders


def position_consistent(verdicts: Sequence[str | None], winners: Sequence[str]) -> bool:
    """Whether the two judgments of one pair (``verdicts`` in the two orders, each as shown)
    both gave a verdict and picked the same response. ``winners``: where one and the same
    response (the better one, or any fixed one) was shown in each order."""
    picks = [v == w for v, w in zip(verdicts, winners)]
    return all(v is not None for v in verdicts) and picks[0] == picks[1]


def both_orders_metrics(rows: Sequence[dict], winners: Sequence[str],
                        groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Held-out metrics of pairs judged in both orders. ``rows``: what
    :func:`~rmr1_jax.inference.judge.judge_pairs` returns with ``both_orders`` (verdicts in the original labels);
    ``winners``: the right verdict of each pair in its original order.

    ``accuracy`` is over all ``2 n`` judgments (no verdict counts as wrong),
    ``no_verdict_rate`` the share of them without a verdict, ``position_consistency`` the
    share of pairs whose two judgments pick the same response; with ``groups`` (one name per
    pair) ``by_group`` holds the accuracy per group, in sorted order."""
    n = max(len(rows), 1)
    verdicts = [v for r in rows for v in (r["verdict"], r["verdict_swapped"])]
    scores = [(r["verdict"] == w) + (r["verdict_swapped"] == w) for r, w in zip(rows, winners)]
    out: dict[str, Any] = {"accuracy": sum(scores) / (2 * n),
                           "no_verdict_rate": sum(v is None for v in verdicts) / (2 * n),
                           "position_consistency": sum(r["consistent"] for r in rows) / n}
    if groups is not None:
        by: dict[str, list[int]] = {}
        for g, sc in zip(groups, scores):
            by.setdefault(g, []).append(sc)
        out["by_group"] = {k: sum(v) / (2 * len(v)) for k, v in sorted(by.items())}
    return out
