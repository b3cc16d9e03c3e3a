"""A Chain-of-Rubrics judgment as JSON: what the judge claimed, checked against what it judged.

The judge prompt (:mod:`rmr1_jax.text.prompts`) asks for ``<type>Reasoning|Chat</type>``; for
a Reasoning task a ``<solution>``, for a Chat task a ``<rubric>`` of weighted criteria with a
``<justify>``; an ``<eval>`` whose evidence is ``<quote_A>``/``<quote_B>`` (passages copied word
for word) or ``<summary_A>``/``<summary_B>``; and the verdict ``<answer>[[A]]</answer>``.
:func:`structure` reads each part as written and reports what is missing or wrong field by
field (``errors``); it never fills a gap with a guess:

* ``task_type``: ``"Reasoning"`` or ``"Chat"`` (one ``<type>`` block), else None and an error;
* ``rubric``: the criteria of a Chat rubric, one per line that gives a weight as a percentage
  (``1. Accuracy (40%): ...``, ``- Tone: 20%``): ``{"criterion", "weight", "text"}``; the
  weights must add up to 100 (an error says by how much they miss); ``justification`` the
  ``<justify>`` text;
* ``solution``: a Reasoning task's own solution;
* ``evidence``: each quote or summary in ``<eval>``, in order, with the response it names
  (``"A"``/``"B"``); a quote carries ``verbatim``: whether it occurs, character for character,
  in that response (an error names each one that does not);
* ``verdict``: :func:`~rmr1_jax.text.verdict.parse_verdict`'s.
"""

from __future__ import annotations

import re

from rmr1_jax.text.verdict import parse_verdict

_FLAGS = re.IGNORECASE | re.DOTALL


def _blocks(tag: str, text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"<{tag}>(.*?)</{tag}>", text, _FLAGS)]


def _one(tag: str, text: str, errors: list[str], *, needed: bool) -> str | None:
    found = _blocks(tag, text)
    if len(found) == 1:
        return found[0].strip()
    if found:
        errors.append(f"{tag}: {len(found)} <{tag}> blocks, expected one")
    elif needed:
        errors.append(f"{tag}: no <{tag}>...</{tag}> block")
    return None


_WEIGHT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])?\s*(?P<name>.*?)\s*(?:\(|:|-|\u2013|\u2014)?\s*\d+(?:\.\d+)?\s*%")


def _rubric(text: str, errors: list[str]) -> tuple[list[dict], str | None]:
    justification = _one("justify", text, errors, needed=True)
    body = re.sub(r"<justify>.*?</justify>", "", text, flags=_FLAGS)
    items = []
    for line in body.splitlines():
        weights = _WEIGHT.findall(line)
        if not weights:
            continue
        if len(weights) > 1:
            errors.append(f"rubric: a line gives {len(weights)} weights: {line.strip()!r}")
            continue
        m = _ITEM.match(line)
        name = (m.group("name") if m else "").strip(" :-*\u2013\u2014(").strip()
        if not name:
            errors.append(f"rubric: a weight without a criterion: {line.strip()!r}")
            continue
        items.append({"criterion": name, "weight": float(weights[0]), "text": line.strip()})
    if not items:
        errors.append("rubric: no criterion with a weight (e.g. '1. Accuracy (40%): ...')")
    else:
        total = sum(i["weight"] for i in items)
        if abs(total - 100.0) > 1e-6:
            errors.append(f"rubric: the weights add up to {total:g}%, not 100%")
    return items, justification


def structure(judgment: str, response_a: str, response_b: str, *, opened_thinking: bool = False) -> dict:
    """The judgment's parts as a dict (see the module), with ``errors``: one line per field that
    is missing or malformed, or per quote not found in its response."""
    errors: list[str] = []
    text = judgment or ""
    closes = list(re.finditer(r"</think>", text, re.IGNORECASE))
    if closes:  # a reasoning model's thinking is not the judgment
        text = text[closes[-1].end():]
    kind = _one("type", text, errors, needed=True)
    task_type = None
    if kind is not None:
        task_type = {"reasoning": "Reasoning", "chat": "Chat"}.get(kind.lower())
        if task_type is None:
            errors.append(f"type: {kind!r} is neither Reasoning nor Chat")
    rubric, justification, solution = [], None, None
    if task_type == "Chat":
        body = _one("rubric", text, errors, needed=True)
        if body is not None:
            rubric, justification = _rubric(body, errors)
    elif task_type == "Reasoning":
        solution = _one("solution", text, errors, needed=True)
    evaluation = _one("eval", text, errors, needed=True)
    evidence = []
    if evaluation is not None:
        responses = {"A": response_a, "B": response_b}
        counts = {}
        for m in re.finditer(r"<(quote|summary)_([AB])>(.*?)</\1_\2>", evaluation, _FLAGS):
            kind_, who, body = m.group(1).lower(), m.group(2).upper(), m.group(3).strip()
            key = f"{kind_}_{who}"
            counts[key] = counts.get(key, 0) + 1
            item = {"response": who, "kind": kind_, "text": body}
            if kind_ == "quote":
                item["verbatim"] = bool(body) and body in responses[who]
                if not item["verbatim"]:
                    errors.append(f"{key}[{counts[key] - 1}]: not found word for word in response {who}: "
                                  f"{body[:60]!r}")
            evidence.append(item)
        if not evidence:
            errors.append("eval: no <quote_A/B> or <summary_A/B> evidence")
    verdict = parse_verdict(judgment, opened_thinking)
    if verdict is None:
        errors.append("verdict: no single final <answer>[[A]]</answer> or <answer>[[B]]</answer>")
    return {"task_type": task_type, "rubric": rubric, "justification": justification, "solution": solution,
            "eval": evaluation, "evidence": evidence, "verdict": verdict, "errors": errors}
