"""The rows a trained model is given from a file, checked before anything runs: a failure names
``file:line`` and what is wrong, and nothing has been scored or judged yet.

* ``rmr1 judge`` (:func:`read_pairs`): ``{"prompt", "a", "b"}`` (``"response_a"`` /
  ``"response_b"`` are read as ``"a"`` / ``"b"``); also, one shape a file
  (:func:`read_judge_rows`), pointwise ``{"prompt", "response", "reference"}`` and listwise
  ``{"prompt", "responses": [...]}`` rows; any of them may carry ``"principles"``, a non-empty
  list of non-empty strings to judge that row by;
* ``rmr1 score-rm`` (:func:`read_score_rows`, one shape per row, :func:`row_kind`):
  ``{"text"}``, ``{"prompt", "response"}``, ``{"prompt", "a", "b"}`` or a preference pair as
  training reads it, ``{"prompt", "chosen", "rejected"}``;
* ``rmr1 rules score`` (:func:`read_rule_rows`): ``{"prompt", "response"}``;
* ``rmr1 generate`` (:func:`read_generate_rows`): ``{"prompt"}``.

A prompt is a string (one user message) or a list of ``{"role", "content"}`` messages ending
with a user turn (:func:`check_prompt`). Other fields are kept: each output row is its input
row plus what the model adds. Files are read by :func:`rmr1_jax.data.readers.read_rows`
(JSON Lines, or Parquet). No JAX here."""

from __future__ import annotations

from typing import Sequence

from rmr1_jax.data.readers import read_rows
from rmr1_jax.errors import DataError


def check_prompt(prompt, where: str) -> None:
    """A prompt is a non-empty string (one user message) or a non-empty list of ``{"role",
    "content"}`` messages that does not end with the assistant's turn (the response to score or
    judge is given apart from its prompt)."""
    if isinstance(prompt, str):
        if prompt:
            return
        raise DataError(f"{where}: 'prompt' is empty")
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a string or a non-empty list of messages")
    for m in prompt:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: every 'prompt' message needs string 'role' and 'content', got {m!r:.80}")
    if prompt[-1]["role"] == "assistant":
        raise DataError(f"{where}: 'prompt' ends with an assistant turn; give the conversation up to the user's "
                        f"last turn as the prompt and the assistant's reply as the response")


def conversation(prompt, response: str | None = None) -> list[dict]:
    """The messages of a prompt (a string is one user message; a list of ``{"role", "content"}``
    messages is copied), with ``response`` appended as the assistant's message."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


def _rows(path: str, check, nothing: str = "no rows to score") -> list:
    """``check(row, "file:line", line)`` of every row of ``path``; a file without rows is an error."""
    rows = [check(row, f"{path}:{n}", n) for n, row in read_rows(path, what="input file")]
    if not rows:
        raise DataError(f"{path}: {nothing} (the file is empty)")
    return rows


# ============================================================================ rmr1 judge


def pair_of(row: dict, where: str) -> tuple:
    """``(prompt, a, b)`` of a pair row (``"response_a"`` / ``"response_b"`` read as ``"a"`` /
    ``"b"``), checked, with its ``"principles"`` when it has them (:func:`_principles`)."""
    p, a, b = row.get("prompt", ""), row.get("a", row.get("response_a")), row.get("b", row.get("response_b"))
    if not (isinstance(p, (str, list)) and p and isinstance(a, (str, list)) and a and
            isinstance(b, (str, list)) and b):
        raise DataError(f"{where}: a pair row needs non-empty 'prompt', 'a' and 'b'")
    check_prompt(p, where)
    _principles(row, where)
    return p, a, b


def read_pairs(path: str) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every pair row of a JSONL file, each checked by :func:`pair_of`;
    a file without rows is an error."""
    def check(row, where, n):
        pair_of(row, where)
        return n, row

    return _rows(path, check, "no pairs to judge")


JUDGE_SHAPES = {"pair": "{prompt, a, b}", "pointwise": "{prompt, response, reference}",
                "listwise": "{prompt, responses: [...]}"}


def _principles(row: dict, where: str) -> None:
    p = row.get("principles")
    if p is not None and not (isinstance(p, list) and p and all(isinstance(x, str) and x.strip() for x in p)):
        raise DataError(f"{where}: 'principles' must be a non-empty list of non-empty strings")


def output_rows(rows: Sequence[tuple[int, dict]], results: Sequence[dict], fields: Sequence[str],
                out_path: str | None = None) -> list[dict]:
    """One output row per input row ``(line, row)``: its fields (but ``fields``, which the
    result replaces), ``line``, then its result; written to ``out_path`` as JSONL by process 0
    when given."""
    from rmr1_jax.data.readers import write_jsonl
    from rmr1_jax.parallel.agreement import on_process_zero

    out = [{**{k: v for k, v in row.items() if k not in fields}, "line": n, **r} for (n, row), r in zip(rows, results)]
    if out_path:
        on_process_zero(write_jsonl, out_path, out, share=False)
    return out


def judge_row_kind(row, where: str) -> str:
    """Which ``rmr1 judge`` row ``row`` is, checked: ``"pair"`` (:func:`pair_of`),
    ``"pointwise"`` (``{"prompt", "response", "reference"}``: one response scored against a
    reference answer) or ``"listwise"`` (``{"prompt", "responses": [at least 2]}``); every row
    may carry ``"principles"``, a list of strings to judge by."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, one of {', '.join(JUDGE_SHAPES.values())}")
    has = [k for k, keys in (("listwise", ("responses",)), ("pointwise", ("response", "reference")),
                             ("pair", ("a", "b", "response_a", "response_b"))) if any(x in row for x in keys)]
    if len(has) > 1:
        raise DataError(f"{where}: a row is one of {', '.join(JUDGE_SHAPES.values())}; this one mixes "
                        f"{' and '.join(has)} fields")
    kind = has[0] if has else "pair"
    if kind == "pair":
        pair_of(row, where)
        return kind
    _principles(row, where)
    if kind == "pointwise":
        for key in ("response", "reference"):
            if not (isinstance(row.get(key), str) and row[key]):
                why = " (a pairwise judge scores a response only against another one)" if key not in row else ""
                raise DataError(f"{where}: a pointwise row needs a non-empty string {key!r}{why}")
    else:
        rs = row["responses"]
        if not (isinstance(rs, list) and len(rs) >= 2 and all(isinstance(r, str) and r for r in rs)):
            raise DataError(f"{where}: 'responses' must be a list of at least 2 non-empty strings")
    if not row.get("prompt"):
        raise DataError(f"{where}: a {kind} row needs a non-empty 'prompt'")
    check_prompt(row["prompt"], where)
    return kind


def read_judge_rows(path: str) -> tuple[str, list[tuple[int, dict]]]:
    """``(kind, [(line number, row), ...])`` of an ``rmr1 judge --in`` file: every row checked
    by :func:`judge_row_kind`, all of one kind (the first row's); a file without rows is an error."""
    kinds: list[tuple[int, str]] = []

    def check(row, where, n):
        kind = judge_row_kind(row, where)
        if kinds and kind != kinds[0][1]:
            raise DataError(f"{where}: a {kind} row in a file of {kinds[0][1]} rows (line {kinds[0][0]}); one "
                            f"shape a file: {', '.join(f'{k} {v}' for k, v in JUDGE_SHAPES.items())}")
        kinds.append((n, kind))
        return n, row

    rows = _rows(path, check, "nothing to judge")
    return kinds[0][1], rows


# ============================================================================ rmr1 score-rm


def row_kind(row, where: str) -> str:
    """``"text"``, ``"response"``, ``"pair"`` or ``"preference"``: which input shape ``row`` is
    (``{"text"}``, ``{"prompt", "response"}``, ``{"prompt", "a", "b"}``, or a preference pair
    as training reads it, ``{"prompt", "chosen", "rejected"}``); anything else is a DataError
    at ``where``."""
    shapes = "'text', or 'prompt' with 'response', 'a' and 'b', or 'chosen' and 'rejected'"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with {shapes}, got {type(row).__name__}")
    has = {k for k in ("text", "prompt", "response", "a", "b", "chosen", "rejected") if k in row}
    if has == {"prompt", "chosen", "rejected"} or (has == {"chosen", "rejected"}):
        preference_conversations(row, where)
        return "preference"
    if has == {"text"}:
        kind, fields = "text", ("text",)
    elif has == {"prompt", "response"}:
        kind, fields = "response", ("response",)
    elif has == {"prompt", "a", "b"}:
        kind, fields = "pair", ("a", "b")
    else:
        raise DataError(f"{where}: a row has {shapes}; this one has {', '.join(sorted(has)) or 'none of them'}")
    for f in fields:
        if not isinstance(row[f], str):
            raise DataError(f"{where}: {f!r} must be a string, got {type(row[f]).__name__}")
    if kind == "text" and not row["text"]:
        raise DataError(f"{where}: 'text' is empty")
    if kind != "text":
        check_prompt(row["prompt"], where)
    return kind


def preference_conversations(row: dict, where: str) -> list[list[dict]]:
    """The two conversations (prompt + chosen, prompt + rejected) of a preference-pair row,
    parsed as training parses it."""
    from rmr1_jax.data.schemas import parse_pair

    try:
        pair = parse_pair(row, where)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    return [pair.prompt + pair.chosen, pair.prompt + pair.rejected]


def read_score_rows(path: str) -> list[tuple[int, dict, str]]:
    """``(line number, row, kind)`` of every row of a ``score-rm`` input file, each checked by
    :func:`row_kind`; a file without rows is an error."""
    return _rows(path, lambda row, where, n: (n, row, row_kind(row, where)))


# ============================================================================ rmr1 rules score


def check_rule_row(row: dict, where: str) -> None:
    """A ``rules score`` row: ``{"prompt", "response"}`` (other fields kept)."""
    if "prompt" not in row or "response" not in row:
        raise DataError(f"{where}: expected a JSON object with 'prompt' and 'response'")
    if not isinstance(row["response"], str):
        raise DataError(f"{where}: 'response' must be a string")
    check_prompt(row["prompt"], where)


def read_rule_rows(path: str) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every row of a ``rules score`` input file, each checked by
    :func:`check_rule_row`; a file without rows is an error."""
    def check(row, where, n):
        check_rule_row(row, where)
        return n, row

    return _rows(path, check)


# ============================================================================ rmr1 generate


def check_generate_row(row: dict, where: str, raw: bool = False) -> None:
    """A ``generate`` row: ``{"prompt"}``, a non-empty text or (not with ``raw``) a list of
    ``{"role", "content"}`` messages ending before the reply to generate; other fields kept."""
    if "prompt" not in row:
        raise DataError(f"{where}: expected a JSON object with 'prompt' (a text, or a list of {{role, content}} "
                        f"messages)")
    p = row["prompt"]
    if raw and not isinstance(p, str):
        raise DataError(f"{where}: with --raw 'prompt' must be the text to send, not {type(p).__name__}")
    if isinstance(p, list) and p and isinstance(p[-1], dict) and p[-1].get("role") == "assistant":
        raise DataError(f"{where}: 'prompt' ends with an assistant turn; the reply is generated after the "
                        f"conversation's last user turn (drop the assistant's last message)")
    check_prompt(p, where)


def read_generate_rows(path: str, raw: bool = False) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every row of a ``generate`` input file, each checked by
    :func:`check_generate_row`; a file without rows is an error."""
    def check(row, where, n):
        check_generate_row(row, where, raw)
        return n, row

    return _rows(path, check, "no prompts to generate from")
