"""Verdict parsing and the verifiable judgment reward.

The rule implemented here (the strict one):

1. Reasoning-model output: everything up to the last ``</think>`` is ignored, so a verdict
   mentioned while thinking never counts. An opened ``<think>`` that is never closed means the
   output was cut off while thinking: no verdict. The generation prompt may have opened the
   section itself (DeepSeek-R1-Distill chat templates end it with ``<think>\n``, so the output
   never contains ``<think>``): with ``opened_thinking=True`` (see
   :func:`prompt_opens_thinking`) an output without ``</think>`` is all thinking, no verdict.
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


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether a rendered generation prompt leaves a ``<think>`` section open, so that the
    judge's output starts inside it."""
    opens = [m.start() for m in _THINK_OPEN.finditer(prompt_text or "")]
    closes = [m.start() for m in _THINK_CLOSE.finditer(prompt_text or "")]
    return bool(opens) and (not closes or opens[-1] > closes[-1])


def parse_verdict(text: str | None, opened_thinking: bool = False) -> str | None:
    """``"A"``, ``"B"`` or ``None`` (no single well-formed final verdict). See module doc.
    ``opened_thinking``: the prompt opened the thinking section (the output starts in it)."""
    if not text:
        return None
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    elif opened_thinking or _THINK_OPEN.search(text):
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


def verdict_prefix(text: str | None, opened_thinking: bool = False) -> str | None:
    """``text`` up to and including the ``[[`` of its verdict (the position where the judge
    wrote ``A`` or ``B``), or None when :func:`parse_verdict` finds no verdict in it."""
    if parse_verdict(text, opened_thinking) is None:
        return None
    closes = list(_THINK_CLOSE.finditer(text))
    start = closes[-1].end() if closes else 0
    block = next(_ANSWER.finditer(text, start))
    return text[:block.start(1) + block.group(1).index("[[") + 2]


def normalize_winner(winner: str) -> str:
    """``"A"``/``"B"``/``"model_a"``/``"model_b"`` (any case) -> ``"A"`` or ``"B"``."""
    key = str(winner).strip().lower()
    if key not in _WINNERS:
        raise ValueError(f"winner {winner!r} must be one of A, B, model_a, model_b")
    return _WINNERS[key]


def judgment_reward(text: str | None, winner: str, opened_thinking: bool = False) -> float:
    """+1.0 when ``text`` ends with exactly one verdict naming ``winner``, else -1.0."""
    return 1.0 if parse_verdict(text, opened_thinking) == normalize_winner(winner) else -1.0
