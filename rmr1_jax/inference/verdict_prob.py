"""The probability of a judge's verdict, read from the model rather than from the sampled
letter.

For a judgment that ends with a verdict (:func:`~rmr1_jax.text.verdict.parse_verdict`), the
text up to the verdict's ``[[`` is followed once by ``A]]`` and once by ``B]]``; one
teacher-forced forward over both continuations (after the judge prompt) gives each its
log-probability, and

    P(A) = exp(log p(A]]) ) / (exp(log p(A]])) + exp(log p(B]])))

the model's preference between the two verdicts at the place it gave one. A judgment with no
verdict has no probability (None). Judged in both orders, the probability that the response
shown first at A is the better one is the mean of its P(A) in the first order and its P(B) in
the second (:func:`both_orders_probability`). The probabilities are calibrated or not: the eval
report measures that. They are also a cheap scalar reward (no sampling beyond the judgment).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rmr1_jax.text.verdict import verdict_prefix

CANDIDATES = ("A]]", "B]]")


def _bucket(n: int, step: int = 64) -> int:
    return -(-n // step) * step


_FORWARDS: dict = {}  # id(model) -> (model, its compiled log-prob forward): compiled once per judge


def _forward(model):
    from rmr1_jax.models.logprobs import response_logprobs

    if id(model) not in _FORWARDS:
        _FORWARDS[id(model)] = (model, jax.jit(
            lambda prm, ids, mask: response_logprobs(model, prm, {"input_ids": ids, "attention_mask": mask})))
    return _FORWARDS[id(model)][1]


def verdict_probabilities(model, params, tokenizer, prompt_ids: Sequence[Sequence[int]], judgments: Sequence[str],
                          *, opened: Sequence[bool] | None = None, batch_size: int = 16, mesh=None,
                          shared: bool = True) -> list[float | None]:
    """P(A) for each judgment (generated after its tokenized prompt), None where it has no
    verdict. ``opened``: per prompt, whether it opened a thinking section (see
    :func:`~rmr1_jax.inference.judge.prompts_open_thinking`). ``batch_size`` judgments (two rows
    each) per forward. In a multi-process job, ``shared``: every process passes the same
    judgments; ``shared=False`` (with the ``mesh`` the parameters live on): each passes its own,
    the forwards' count and widths are agreed and each process's rows go to its own devices."""
    opened = opened if opened is not None else [False] * len(judgments)
    rows, spans, where = [], [], []
    for i, (p, text, o) in enumerate(zip(prompt_ids, judgments, opened)):
        prefix = verdict_prefix(text, o)
        if prefix is None:
            continue
        a, b = ([*p, *tokenizer.encode(prefix + c)] for c in CANDIDATES)
        d = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        rows += [a, b]
        spans += [(d, len(a)), (d, len(b))]
        where.append(i)
    out: list[float | None] = [None] * len(judgments)
    own = not shared and jax.process_count() > 1
    if not rows and not own:
        return out
    fwd, step = _forward(model), 2 * batch_size
    starts = list(range(0, len(rows), step))
    widths = [_bucket(max(map(len, rows[s:s + step]))) for s in starts]
    if own:  # every process runs as many forwards, of the same widths, whatever rows it holds
        from rmr1_jax.parallel.hostlocal import agree_max

        count = int(agree_max([len(starts)])[0])
        widths = [int(w) for w in agree_max(widths + [1] * (count - len(starts)))]
        starts += [len(rows)] * (count - len(starts))
    lps = []
    for s, width in zip(starts, widths):
        chunk = rows[s:s + step]
        ids = np.zeros((step, width), np.int32)
        mask = np.zeros((step, width), np.int32)
        for k, r in enumerate(chunk):
            ids[k, :len(r)], mask[k, :len(r)] = r, 1
        mask[len(chunk):, 0] = 1  # padding rows: one attended token
        if own:
            from rmr1_jax.parallel.hostlocal import fetch, process_rows, to_global

            g = to_global({"ids": ids, "mask": mask}, mesh)
            logp = np.asarray(fetch(fwd(params, g["ids"], g["mask"]))[process_rows(g["ids"])], np.float64)
        else:
            logp = np.asarray(fwd(params, ids, mask), np.float64)
        for k, (d, n) in enumerate(spans[s:s + step]):
            lps.append(logp[k, d - 1:n - 1].sum())  # position t scores token t + 1
    for j, i in enumerate(where):
        la, lb = lps[2 * j], lps[2 * j + 1]
        out[i] = float(1.0 / (1.0 + np.exp(lb - la)))
    return out


def both_orders_probability(p_first_order: float | None, p_second_order: float | None) -> float | None:
    """The probability that the response shown at A in the first order is the better one: the
    mean of its P(A) there and its P(B) = 1 - P(A) in the swapped order; one order's alone when
    the other has no verdict, None when neither has."""
    vals = [v for v in (p_first_order, None if p_second_order is None else 1.0 - p_second_order) if v is not None]
    return float(np.mean(vals)) if vals else None
