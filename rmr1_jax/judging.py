"""Judging with generation: verdicts for batches of judge prompts, held-out verdict accuracy,
and position consistency (the same pair judged with A and B swapped)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rmr1_jax.sampling.sampler import Sampler, SamplingParams
from rmr1_jax.text.verdict import parse_verdict, prompt_opens_thinking


@dataclasses.dataclass
class Judgment:
    text: str
    verdict: str | None
    finished: bool
    num_tokens: int


def judge_prompts(sampler: Sampler, params, prompt_ids: Sequence[Sequence[int]], tokenizer, *, batch_size: int,
                  max_new_tokens: int, temperature: float = 0.0, rng=None) -> list[Judgment]:
    """Generate a judgment for each tokenized prompt, ``batch_size`` at a time (the last batch
    is padded with a copy of its first prompt so every batch compiles to one shape)."""
    out: list[Judgment] = []
    sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    plen = max((len(p) for p in prompt_ids), default=1)
    plen = -(-plen // 32) * 32
    for i in range(0, len(prompt_ids), batch_size):
        chunk = list(prompt_ids[i:i + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        g = sampler.generate(params, chunk, sp, rng=rng, tokenizer=tokenizer, prompt_length=plen)
        for j in range(real):
            opened = prompt_opens_thinking(tokenizer.decode(chunk[j]))  # output starts inside <think>
            out.append(Judgment(g.texts[j], parse_verdict(g.texts[j], opened) if g.finished[j] else None,
                                bool(g.finished[j]), int(g.lengths[j])))
    return out


def verdict_accuracy(judgments: Sequence[Judgment], winners: Sequence[str]) -> dict:
    """Accuracy (no verdict counts as wrong), and the share of outputs with no verdict."""
    n = len(judgments)
    correct = sum(j.verdict == w for j, w in zip(judgments, winners))
    missing = sum(j.verdict is None for j in judgments)
    return {"accuracy": correct / max(n, 1), "no_verdict_rate": missing / max(n, 1),
            "mean_tokens": float(np.mean([j.num_tokens for j in judgments])) if n else 0.0, "n": n}


def judge_pairs(judge, pairs, *, both_orders: bool = False, max_new_tokens: int = 1024,
                batch_size: int = 16, mesh=None) -> list[dict]:
    """Judge (prompt, response_a, response_b) triples (strings or message lists) greedily.
    Returns dicts with the judgment text and verdict, and with ``both_orders`` the verdict
    with A and B swapped (mapped back to the original labels) and position consistency."""
    from rmr1_jax.text.prompts import build_judge_messages

    tok, tpl = judge.tokenizer, judge.template
    if judge.sampler is None:  # one Sampler per judge: its compiled functions are reused across calls
        judge.sampler = Sampler(judge.model, eos_ids=tok.eos_ids, pad_id=tok.pad_id, mesh=mesh)
    sampler = judge.sampler

    def encode(p, a, b):
        return tok.encode(tok.apply_chat_template(build_judge_messages(p, a, b, tpl), add_generation_prompt=True))

    fwd = judge_prompts(sampler, judge.params, [encode(p, a, b) for p, a, b in pairs], tok,
                        batch_size=batch_size, max_new_tokens=max_new_tokens)
    out = [{"judgment": j.text, "verdict": j.verdict, "finished": j.finished} for j in fwd]
    if both_orders:
        swp = judge_prompts(sampler, judge.params, [encode(p, b, a) for p, a, b in pairs], tok,
                            batch_size=batch_size, max_new_tokens=max_new_tokens)
        flip = {"A": "B", "B": "A", None: None}
        for r, j in zip(out, swp):
            r["judgment_swapped"] = j.text
            r["verdict_swapped"] = flip[j.verdict]
            r["consistent"] = r["verdict"] is not None and r["verdict"] == r["verdict_swapped"]
    return out
