"""Listwise mode: n responses to one prompt ranked by a pairwise judge.

The responses meet in matches of two (:mod:`~rmr1_jax.inference.group_rewards`): each match
judged in both orders, won by a response only when the judge prefers it in both, a tie (half a
point each) when the two verdicts name the same position (position-inconsistent) or one has no
verdict. Two schemes (``scheme``):

* ``round_robin``: every pair, ``n (n - 1)`` judgments in one engine call; a response's score is
  its win rate, its points over its ``n - 1`` matches (1: it won every match; equal scores are
  possible).
* ``knockout``: a bracket seeded by ``seed`` (byes when ``n`` is not a power of two; a tied match
  sends one of the two on by a seeded coin), ``2 (n - 1)`` judgments in ``ceil(log2 n)`` engine
  calls; the score is the share of rounds a response got through, 1 for the bracket's winner
  alone. Cheaper, and it ranks the top only: first-round losers all score 0.

The **ranking** orders the responses by score, best first, equal scores in the order given.
Many prompts are ranked together (:func:`rank_groups`): each round's matches of every prompt go
to the engine in one call. Principles to judge by (``principles``, or an item's own
``"principles"``) go into every judgment of the item, as ``rmr1 judge --principles`` does::

    out = rank_responses(judge, "Name a prime.", ["7", "8", "9"], scheme="round_robin")
    out["scores"], out["ranking"]  # e.g. [1.0, 0.25, 0.25] (7 won both matches, 8 and 9 tied), [0, 1, 2]

``rmr1 judge --in FILE`` with ``{"prompt", "responses": [...]}`` rows runs :func:`rank_rows`.
"""

from __future__ import annotations

from typing import Sequence

from rmr1_jax.ab_positions import flip
from rmr1_jax.inference.group_rewards import score_groups

SCHEMES = ("round_robin", "knockout")
#: Fields :func:`rank_rows` adds to each input row.
OUTPUT_FIELDS = ("line", "scheme", "scores", "ranking", "matches", "judge_calls", "inconsistent", "no_verdict")


def _item(item) -> tuple:
    if isinstance(item, dict):
        return item["prompt"], list(item["responses"]), item.get("principles")
    prompt, responses = item
    return prompt, list(responses), None


def ranking(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` best first; equal scores keep their order."""
    return sorted(range(len(scores)), key=lambda k: (-scores[k], k))


def rank_groups(judge, items: Sequence, *, scheme: str = "round_robin", seed: int = 0,
                principles: list[str] | None = None, max_new_tokens: int = 1024, batch_size: int = 16) -> list[dict]:
    """Rank each item's responses (items: ``{"prompt", "responses", "principles"?}`` dicts or
    ``(prompt, responses)`` pairs, at least 2 responses each) under ``scheme``, every round's
    judgments of every item in one :func:`~rmr1_jax.inference.judge.judge_pairs` call.

    Returns one dict per item: ``scheme``, ``scores`` (one per response, in [0, 1]),
    ``ranking`` (:func:`ranking`), ``matches`` (in the order judged: ``{"i", "j", "verdict",
    "verdict_swapped", "winner", "inconsistent", "no_verdict"}``, ``verdict`` with ``i`` at A,
    ``verdict_swapped`` with ``j`` at A read back in the first order's labels, so ``"A"``
    names ``i`` in both; ``winner`` ``i``, ``j`` or None for a tie), ``judge_calls``, and the
    counts of ``inconsistent`` and ``no_verdict`` matches. ``seed``: the knockout brackets
    (item ``g`` draws from ``(seed, g)``)."""
    from rmr1_jax.inference import judge as judge_mod

    if scheme not in SCHEMES:
        raise ValueError(f"unknown listwise scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    parsed = [_item(it) for it in items]
    if not parsed:
        return []

    def judge_fn(triples):  # a triple's prompt is its item's index
        pairs = [(parsed[g][0], a, b) for g, a, b in triples]
        per_pair = [parsed[g][2] or principles for g, _, _ in triples]
        rows = judge_mod.judge_pairs(judge, pairs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     principles=per_pair if any(p is not None for p in per_pair) else None)
        return [r["verdict"] for r in rows]

    got = score_groups(scheme, list(range(len(parsed))), [p[1] for p in parsed], judge_fn, seed=seed)
    out = []
    for rewards, outcomes in zip(got.rewards, got.outcomes):
        scores = [float(x) for x in rewards]
        matches = [{"i": i, "j": j, "verdict": o.verdicts[0], "verdict_swapped": flip(o.verdicts[1]),
                    "winner": o.winner, "inconsistent": o.inconsistent, "no_verdict": o.no_verdict}
                   for i, j, o in outcomes]
        out.append({"scheme": scheme, "scores": scores, "ranking": ranking(scores), "matches": matches,
                    "judge_calls": 2 * len(matches), "inconsistent": sum(m["inconsistent"] for m in matches),
                    "no_verdict": sum(m["no_verdict"] for m in matches)})
    return out


def rank_responses(judge, prompt, responses: Sequence[str], *, scheme: str = "round_robin", seed: int = 0,
                   principles: list[str] | None = None, max_new_tokens: int = 1024, batch_size: int = 16) -> dict:
    """The responses to one prompt ranked: :func:`rank_groups` of one item."""
    return rank_groups(judge, [(prompt, responses)], scheme=scheme, seed=seed, principles=principles,
                       max_new_tokens=max_new_tokens, batch_size=batch_size)[0]


def rank_rows(judge, rows: Sequence[tuple[int, dict]], out_path: str | None = None, **kw) -> list[dict]:
    """What ``rmr1 judge`` does with listwise rows ``(line, row)`` (checked, as
    :func:`~rmr1_jax.inference.rows.read_judge_rows` gives them): :func:`rank_groups` (the same
    keywords), one output row per input row (its fields, ``line``, then the ranking), written to
    ``out_path`` as JSONL by process 0 when given."""
    from rmr1_jax.inference.rows import output_rows

    return output_rows(rows, rank_groups(judge, [row for _, row in rows], **kw), OUTPUT_FIELDS, out_path)


def describe(row: dict) -> str:
    """One line for the terminal: the ranking with its scores, and what the matches gave."""
    best = ", ".join(f"#{k} {row['scores'][k]:.3g}" for k in row["ranking"])
    return (f"{row['scheme'].replace('_', ' ')} ranking (response #index score, best first): {best} | "
            f"{len(row['matches'])} matches in both orders, {row['inconsistent']} position-inconsistent, "
            f"{row['no_verdict']} without a verdict")
