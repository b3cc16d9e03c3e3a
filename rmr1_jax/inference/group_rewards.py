"""A pairwise judge as the reward of policy RL: the verdicts on pairs of a prompt's G policy
samples turned into one scalar per sample.

A **match** puts two responses to one prompt before the judge, in both A/B orders (two judge
calls, sent side by side so the generation engine's prefix cache shares their common head). A
response wins the match when the judge prefers it in both orders; when the verdicts disagree
(the response at A wins both times, or the one at B: position-inconsistent) or a judgment ends
without a verdict, the match is a tie. Points: 1 for a win, 1/2 for a tie, 0 for a loss.

The schemes (``SCHEMES``):

* ``reference``: each sample against the prompt's reference answer (from the data); the
  sample's reward is its points, 0, 1/2 or 1. ``2 G`` judge calls.
* ``round_robin``: every pair of the group; the reward is the sample's win rate, its points over
  its ``G - 1`` matches. ``G (G - 1)`` judge calls.
* ``knockout``: a bracket seeded by ``seed``: ``R = ceil(log2 G)`` rounds; when ``G`` is not a
  power of two the first ``2^R - G`` samples of the seeded order pass round 1 without a match
  (a bye); a tie advances one of the two by a seeded coin. The reward is the share of the rounds
  the sample got through, ``(round reached - 1) / R``: 1 for the winner, 0 for a first-round
  loser. ``G - 1`` matches, ``2 (G - 1)`` judge calls, in ``R`` rounds.

With verdict probabilities (``judge_fn`` returning ``(verdict, P([[A]]))``; see
:mod:`rmr1_jax.inference.verdict_prob`) a match is soft: a side's points are the probability
that it is the better one, its mean over the two orders, so ties give way to degrees; a
knockout advances the side above 1/2.

A scalar reward model needs none of this: its score is the reward, and GRPO normalizes it
within the group as it does any reward.

:func:`score_groups` runs a scheme over many groups at once: each round's matches of every
group go to the judge in one call (``judge_fn``, e.g. :func:`rmr1_jax.inference.judge.judge_pairs`
through the engine; in a multi-process job where each process judges its own groups,
``judge_pairs(..., shared=False)``), and it reports the judge calls and the share of matches
that were position-inconsistent or had no verdict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

REFERENCE = -1  # the reference answer's place in a match
SCHEMES = ("reference", "round_robin", "knockout")

WIN, TIE, LOSS = 1.0, 0.5, 0.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A match's result from its two verdicts: ``winner`` (a sample index, :data:`REFERENCE`, or
    None for a tie), and why a tie is one. With verdict probabilities, ``prob_first``: the
    probability that ``first`` (the side shown at A first) is the better one."""

    winner: int | None
    inconsistent: bool = False  # the verdicts named the same position in both orders
    no_verdict: bool = False  # a judgment ended without a verdict
    verdicts: tuple = ()  # (verdict_ij, verdict_ji) as judged, each in its own order's labels
    first: int | None = None
    prob_first: float | None = None


def match_outcome(i: int, j: int, verdict_ij: str | None, verdict_ji: str | None,
                  prob_ij: float | None = None, prob_ji: float | None = None) -> Outcome:
    """The match of ``i`` and ``j``: ``verdict_ij`` with ``i`` at A and ``j`` at B, ``verdict_ji``
    with them swapped (each ``"A"``, ``"B"`` or None).

    With the verdict probabilities ``prob_ij`` and ``prob_ji`` (P([[A]]) where each judgment wrote
    its verdict; None where it wrote none), the match is soft: ``i`` is the better one with
    probability the mean over the orders that have one (``prob_ij`` and ``1 - prob_ji``), and wins
    when that is above 1/2 (exactly 1/2, or no probability at all: a tie). The inconsistent and
    no-verdict flags still report the letters."""
    verdicts = (verdict_ij, verdict_ji)
    if prob_ij is not None or prob_ji is not None:
        ps = [p for p in (prob_ij, None if prob_ji is None else 1.0 - prob_ji) if p is not None]
        p = sum(ps) / len(ps)
        letters = match_outcome(i, j, verdict_ij, verdict_ji)
        winner = i if p > 0.5 else j if p < 0.5 else None
        return dataclasses.replace(letters, winner=winner, first=i, prob_first=p)
    if verdict_ij not in ("A", "B") or verdict_ji not in ("A", "B"):
        return Outcome(None, no_verdict=True, verdicts=verdicts)
    first = i if verdict_ij == "A" else j
    second = j if verdict_ji == "A" else i
    if first != second:
        return Outcome(None, inconsistent=True, verdicts=verdicts)
    return Outcome(first, verdicts=verdicts)


def points(outcome: Outcome, k: int) -> float:
    """What the match gave ``k``, one of its two sides: 1, 1/2 or 0 by the verdicts, or with
    verdict probabilities the probability that ``k`` is the better one."""
    if outcome.prob_first is not None:
        return outcome.prob_first if k == outcome.first else 1.0 - outcome.prob_first
    return TIE if outcome.winner is None else WIN if outcome.winner == k else LOSS


class _Group:
    """One prompt's samples under a scheme: the matches still to judge and the rewards."""

    def __init__(self, scheme: str, size: int, has_reference: bool, seed: int):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown pairwise reward scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
        if scheme == "reference" and not has_reference:
            raise ValueError("the reference scheme needs a reference answer for every prompt")
        if scheme != "reference" and size < 2:
            raise ValueError(f"the {scheme} scheme needs at least 2 samples a prompt, not {size}")
        self.scheme, self.size = scheme, size
        self.rng = np.random.default_rng(seed)
        self.outcomes: list[tuple[int, int, Outcome]] = []
        self.rewards: np.ndarray | None = None
        if scheme == "reference":
            self.pending = [(k, REFERENCE) for k in range(size)]
        elif scheme == "round_robin":
            self.pending = [(i, j) for i in range(size) for j in range(i + 1, size)]
        else:
            self.rounds = max(1, math.ceil(math.log2(size)))
            order = [int(k) for k in self.rng.permutation(size)]
            byes = 2 ** self.rounds - size
            self.reached = np.ones(size)  # the round each sample got to (1-based)
            self.alive, rest = order[:byes], order[byes:]
            self.round = 1
            self.pending = list(zip(rest[0::2], rest[1::2]))
            for k in self.alive:  # a bye: through round 1 without a match
                self.reached[k] = 2

    def record(self, results: Sequence[Outcome]) -> None:
        """The pending matches' outcomes, in order; then the next round's matches, or the rewards."""
        done = list(zip(self.pending, results))
        self.outcomes += [(i, j, o) for (i, j), o in done]
        self.pending = []
        if self.scheme == "reference":
            self.rewards = np.array([points(o, k) for (k, _), o in done])
        elif self.scheme == "round_robin":
            total = np.zeros(self.size)
            for (i, j), o in done:
                total[i] += points(o, i)
                total[j] += points(o, j)
            self.rewards = total / (self.size - 1)
        else:
            for (i, j), o in done:
                w = o.winner if o.winner is not None else (i if self.rng.random() < 0.5 else j)
                self.reached[w] = self.round + 1
                self.alive.append(w)
            self.round += 1
            if len(self.alive) == 1:
                self.rewards = (self.reached - 1) / self.rounds
            else:
                self.pending = list(zip(self.alive[0::2], self.alive[1::2]))
                self.alive = []


@dataclasses.dataclass
class GroupRewards:
    """:func:`score_groups`' result: one reward array per group, and what it took."""

    rewards: list[np.ndarray]
    matches: int  # matches judged, all groups
    judge_calls: int  # judgments generated (two a match)
    rounds: int  # judge calls made in sequence (one batch each)
    inconsistent: int  # matches whose two verdicts named the same position
    no_verdict: int  # matches with a judgment without a verdict
    # each group's matches ``(i, j, Outcome)`` in the order judged (i at A first, then j at A)
    outcomes: list = dataclasses.field(default_factory=list)

    @property
    def inconsistent_rate(self) -> float:
        return self.inconsistent / self.matches if self.matches else 0.0

    @property
    def no_verdict_rate(self) -> float:
        return self.no_verdict / self.matches if self.matches else 0.0

    def metrics(self) -> dict[str, float]:
        """Numbers to log per step."""
        groups = max(1, len(self.rewards))
        return {"judge_calls": float(self.judge_calls), "judge_calls_per_group": self.judge_calls / groups,
                "judge_rounds": float(self.rounds), "judge_inconsistent_rate": self.inconsistent_rate,
                "judge_no_verdict_rate": self.no_verdict_rate}


def score_groups(scheme: str, prompts: Sequence[Any], responses: Sequence[Sequence[str]],
                 judge_fn: Callable[[list[tuple[Any, str, str]]], Sequence[str | None]], *,
                 references: Sequence[str] | None = None, seed: int = 0,
                 group_keys: Sequence[int] | None = None) -> GroupRewards:
    """Rewards for each prompt's responses under ``scheme``. ``judge_fn`` takes (prompt,
    response_a, response_b) triples and returns a verdict for each (``"A"``, ``"B"`` or None),
    or ``(verdict, P([[A]]))`` pairs for soft matches (:func:`match_outcome`); it is called once
    per round with every group's matches, each match as two triples in a row (the second with A
    and B swapped). ``references``: one per prompt (the reference scheme).
    ``seed``: the knockout brackets (group ``g`` draws from ``(seed, g)``, or ``(seed,
    group_keys[g])`` when given: a key that does not depend on where the group sits in the
    call, so that groups split over processes draw what one process would)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response groups")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    keys = list(range(len(prompts))) if group_keys is None else [int(k) for k in group_keys]
    if len(keys) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} group keys")
    groups = [_Group(scheme, len(r), references is not None, int(np.random.default_rng([seed, k]).integers(2 ** 31)))
              for k, r in zip(keys, responses)]

    def text(g, k):
        return references[g] if k == REFERENCE else responses[g][k]

    rounds = calls = 0
    while any(gr.pending for gr in groups):
        triples = []
        for g, gr in enumerate(groups):
            for i, j in gr.pending:
                triples += [(prompts[g], text(g, i), text(g, j)), (prompts[g], text(g, j), text(g, i))]
        verdicts = [v if isinstance(v, tuple) else (v, None) for v in judge_fn(triples)]
        if len(verdicts) != len(triples):
            raise ValueError(f"judge_fn returned {len(verdicts)} verdicts for {len(triples)} judgments")
        rounds, calls, at = rounds + 1, calls + len(triples), 0
        for gr in groups:
            results = []
            for i, j in gr.pending:
                (v_ij, p_ij), (v_ji, p_ji) = verdicts[at], verdicts[at + 1]
                results.append(match_outcome(i, j, v_ij, v_ji, p_ij, p_ji))
                at += 2
            if gr.pending:
                gr.record(results)
    outcomes = [o for gr in groups for _, _, o in gr.outcomes]
    return GroupRewards([gr.rewards for gr in groups], len(outcomes), calls, rounds,
                        sum(o.inconsistent for o in outcomes), sum(o.no_verdict for o in outcomes),
                        [gr.outcomes for gr in groups])


def judge_calls(scheme: str, size: int) -> int:
    """Judge calls a group of ``size`` samples takes under ``scheme`` (both orders of each match)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown pairwise reward scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    return 2 * {"reference": size, "round_robin": size * (size - 1) // 2, "knockout": size - 1}[scheme]
