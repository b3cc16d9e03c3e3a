"""Pointwise mode: one response scored by a pairwise judge against a reference answer.

A pairwise judge only ever says which of two responses is better, so a single response is
scored against an anchor: the row's reference answer. The two meet in one **match** of
:mod:`~rmr1_jax.inference.group_rewards` (its ``reference`` scheme): the judge sees the
response at A and the reference at B, then the other way round, and the response's score is
the match's points:

* **1**: the judge preferred the response to the reference in both orders ("better than the
  reference");
* **0**: it preferred the reference in both orders ("worse than the reference");
* **0.5**: anything else, a tie: the two verdicts named the same position (whatever sat at A, or
  at B, won both times: position-inconsistent, ``inconsistent``), or a judgment ended without a
  verdict (``no_verdict``). Read it as "the judge could not tell them apart".

A **rubric** is given as principles (``principles``: one list for every row, or a row's own
``"principles"``): the judge builds its Chain-of-Rubrics rubric from them
(:func:`~rmr1_jax.text.prompts.build_judge_messages`), so the score says whether the response
beats the reference *by those principles*. A rubric without a reference cannot be scored this
way (a row needs its ``reference``); a judge trained to compare has no absolute scale to score
one response on its own.

With ``prob`` each row also gets ``prob``, the verdict probability that the response is the
better of the two (P([[A]]) read where each judgment wrote its verdict, both orders' mean:
:mod:`~rmr1_jax.inference.verdict_prob`), a continuous score in [0, 1]; None when a judgment
has no verdict.

Every row's two judgments go to the generation engine in one call (:func:`score_responses`)::

    rows = score_responses(judge, [{"prompt": "2+2?", "response": "4", "reference": "Four."}])
    rows[0]["score"], rows[0]["outcome"]     # 1.0 "win" | 0.5 "tie" | 0.0 "loss"

``rmr1 judge --in FILE`` with ``{"prompt", "response", "reference"}`` rows (or ``--prompt``,
``--response`` and ``--reference``) runs :func:`score_rows`.
"""

from __future__ import annotations

from typing import Sequence

from rmr1_jax.ab_positions import flip
from rmr1_jax.inference.group_rewards import REFERENCE, match_outcome, points

#: Fields :func:`score_rows` adds to each input row (an input field of the same name is replaced).
OUTPUT_FIELDS = ("line", "score", "outcome", "inconsistent", "no_verdict", "judgment", "verdict", "finished",
                 "judgment_swapped", "verdict_swapped", "consistent", "prob_a", "prob_a_swapped", "prob",
                 "structured", "structured_swapped")
OUTCOMES = {1.0: "win", 0.5: "tie", 0.0: "loss"}


def _triple(row) -> tuple:
    if isinstance(row, dict):
        return row["prompt"], row["response"], row["reference"]
    prompt, response, reference = row
    return prompt, response, reference


def score_responses(judge, rows: Sequence, *, principles: list[str] | None = None, max_new_tokens: int = 1024,
                    batch_size: int = 16, prob: bool = False, structured: bool = False) -> list[dict]:
    """Score each row's response against its reference answer (rows: ``{"prompt", "response",
    "reference", "principles"?}`` dicts or ``(prompt, response, reference)`` triples): both
    orders of every row judged in one :func:`~rmr1_jax.inference.judge.judge_pairs` call.

    Returns one dict per row: ``score`` (1, 0.5 or 0, as the module docstring says),
    ``outcome`` (``"win"``, ``"tie"``, ``"loss"``), ``inconsistent``, ``no_verdict``, and
    :func:`judge_pairs`' fields with the response as ``a`` and the reference as ``b``:
    ``judgment``/``verdict`` (response at A), ``judgment_swapped``/``verdict_swapped`` (the
    reference at A; its verdict in the first order's labels, so ``"A"`` names the response in
    both), ``consistent``; with ``prob`` ``prob_a``, ``prob_a_swapped`` and ``prob`` (P(the
    response is better)); with ``structured`` ``structured``, ``structured_swapped``.
    ``principles``: what to judge by, for the rows without their own ``"principles"``."""
    from rmr1_jax.inference import judge as judge_mod

    triples = [_triple(r) for r in rows]
    per_row = [(r.get("principles") or principles) if isinstance(r, dict) else principles for r in rows]
    if not triples:
        return []
    out = judge_mod.judge_pairs(judge, triples, both_orders=True, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, prob=prob, structured=structured,
                                principles=per_row if any(p is not None for p in per_row) else None)
    scored = []
    for r in out:
        # the response is 0 and at A first; the swapped order showed the reference at A
        o = match_outcome(0, REFERENCE, r["verdict"], flip(r["verdict_swapped"]))
        score = points(o, 0)
        scored.append({"score": score, "outcome": OUTCOMES[score], "inconsistent": o.inconsistent,
                       "no_verdict": o.no_verdict, **r})
    return scored


def score_rows(judge, rows: Sequence[tuple[int, dict]], out_path: str | None = None, **kw) -> list[dict]:
    """What ``rmr1 judge`` does with pointwise rows ``(line, row)`` (checked, as
    :func:`~rmr1_jax.inference.rows.read_judge_rows` gives them): :func:`score_responses` (the
    same keywords), one output row per input row (its fields, ``line``, then the scores),
    written to ``out_path`` as JSONL by process 0 when given."""
    from rmr1_jax.inference.rows import output_rows

    return output_rows(rows, score_responses(judge, [row for _, row in rows], **kw), OUTPUT_FIELDS, out_path)


def describe(row: dict) -> str:
    """One line for the terminal: the score and the two verdicts behind it."""
    name = {"A": "the response", "B": "the reference", None: "no verdict"}
    why = " (position-inconsistent)" if row["inconsistent"] else " (no verdict)" if row["no_verdict"] else ""
    line = (f"score against the reference: {row['score']:g} ({row['outcome']}{why}) | preferred with the response "
            f"at A: {name[row['verdict']]}; with the reference at A: {name[row['verdict_swapped']]}")
    if "prob" in row:
        line += " | P(response better): " + ("none (no verdict)" if row["prob"] is None else f"{row['prob']:.3f}")
    return line
