"""Verdict parsing and the verifiable judgment reward.

The rule implemented here (the strict one):

1. Reasoning-model output: everything up to the last ``</think>`` is ignored, so a verdict
   mentioned while thinking never counts. An opened ``<think>`` that is never closed means the
   output was cut off while thinking: no verdict.
2. What remains must contain exactly one ``<answer>...</answer>`` block, and nothing but
   whitespace may follow it (the output *ends* with its verdict; truncated output has no
   closing tag and so no verdict).
3. Inside the block there must be exactly one ``[[A]]`` or ``[[B]]`` and nothing else but
   whitespace. Tags and letters are matched case-insensitively; whitespace inside the block
   and around the brackets is allowed.

Anything else (both verdicts, repeated answer blocks, empty output, text after the answer)
is no verdict, ``None``. The RL reward is +1 for the right verdict and -1 for anything else,
so a malformed or truncated output scores like a wrong one (no separate format reward).
"""

from __future__ import annotations

import re

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_VERDICT = re.compile(r"^\s*\[\[\s*([AB])\s*\]\]\s*$", re.IGNORECASE)

_WINNERS = {"a": "A", "b": "B", "model_a": "A", "model_b": "B"}


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``None`` (no single well-formed final verdict). See module doc."""
    if not text:
        return None
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    elif _THINK_OPEN.search(text):
        return None
    if len(_ANSWER_OPEN.findall(text)) != 1:
        return None
    blocks = list(_ANSWER.finditer(text))
    if len(blocks) != 1:
        return None
    block = blocks[0]
    if text[block.end():].strip():
        return None
    m = _VERDICT.match(block.group(1))
    return m.group(1).upper() if m else None


def normalize_winner(winner: str) -> str:
    """``"A"``/``"B"``/``"model_a"``/``"model_b"`` (any case) -> ``"A"`` or ``"B"``."""
    key = str(winner).strip().lower()
    if key not in _WINNERS:
        raise ValueError(f"winner {winner!r} must be one of A, B, model_a, model_b")
    return _WINNERS[key]


def judgment_reward(text: str | None, winner: str) -> float:
    """+1.0 when ``text`` ends with exactly one verdict naming ``winner``, else -1.0."""
    return 1.0 if parse_verdict(text) == normalize_winner(winner) else -1.0
