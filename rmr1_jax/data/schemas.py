"""Record schemas and their validation.

Three input shapes are accepted, each a JSON object per line (or a Parquet row):

* **RM-R1 pair**: ``{"context_messages": [{role, content}, ...], "winner": "model_a"|"model_b"}``.
  The messages are already a full judge prompt (both responses inside). In RM-R1's
  distillation files ``winner`` instead holds the target trace text; such rows are traces.
* **Generic pair**: ``{"prompt": str | messages, "chosen": str | messages,
  "rejected": str | messages}``, optional ``id``, ``task_type`` ("Reasoning"/"Chat") and
  ``principles`` (a list of non-empty strings to judge by, e.g. RAMO's selected rules for the
  pair: rendered into the judge prompt, :func:`~rmr1_jax.text.prompts.render_principles`). The
  judge prompt is built later, with the A/B positions assigned by :func:`assign_positions`.
* **Trace**: ``{"messages": [..., {"role": "assistant", "content": TRACE}]}`` whose last
  assistant turn is the training target, optionally with ``winner`` ("A"/"B"/"model_a"/...).

Validation errors carry the file and line (see :mod:`rmr1_jax.data.readers`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from rmr1_jax import ab_positions
from rmr1_jax.errors import DataError
from rmr1_jax.text.prompts import JudgeTemplate, Message, build_judge_messages
from rmr1_jax.text.verdict import normalize_winner

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class PreferencePair:
    """A prompt (conversation so far) and two candidate assistant replies."""

    id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    task_type: str | None = None
    principles: list[str] | None = None  # what the judge judges this pair by (None: the template alone)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["principles"] is None:
            del d["principles"]
        return d


@dataclasses.dataclass
class JudgeExample:
    """A rendered judge conversation: ``messages`` up to (not including) the judge's reply.

    ``winner`` is the correct verdict ("A"/"B") when known; ``target`` is the judge reply to
    learn (distillation); ``chosen_position`` records where the chosen response was placed
    when the example came from a generic pair.
    """

    id: str
    messages: list[Message]
    winner: Literal["A", "B"] | None = None
    target: str | None = None
    task_type: str | None = None
    chosen_position: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _messages(value: Any, field: str, default_role: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"field {field!r} is empty")
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"field {field!r} must be a non-empty string or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"field {field!r}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"field {field!r}[{i}] has unknown role {m['role']!r} (expected one of {ROLES})")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise DataError(f"field {field!r}[{i}] has empty or non-string content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _record_id(row: dict, fallback: str) -> str:
    rid = row.get("id", row.get("example_id"))
    return str(rid) if rid is not None else fallback


def parse_pair(row: dict, fallback_id: str) -> PreferencePair:
    """``{prompt, chosen, rejected}`` (strings or message lists), or the Skywork / HH layout
    without ``prompt``: ``chosen`` and ``rejected`` are whole conversations that share the
    turns up to the last user message, which become the prompt."""
    if "prompt" not in row and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        row = _split_conversations(row)
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            raise DataError(f"missing field {key!r}")
    task_type = row.get("task_type")
    if task_type is not None and task_type not in ("Reasoning", "Chat"):
        raise DataError(f"field 'task_type' must be 'Reasoning' or 'Chat', got {task_type!r}")
    prompt = _messages(row["prompt"], "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise DataError("field 'prompt' must end with a user message")
    return PreferencePair(
        id=_record_id(row, fallback_id),
        prompt=prompt,
        chosen=_messages(row["chosen"], "chosen", "assistant"),
        rejected=_messages(row["rejected"], "rejected", "assistant"),
        task_type=task_type,
        principles=parse_principles(row.get("principles")),
    )


def parse_principles(value) -> list[str] | None:
    """A row's ``principles``: absent (None) or a non-empty list of non-empty strings (each
    stripped); anything else is a DataError."""
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(isinstance(x, str) and x.strip() for x in value)):
        raise DataError(f"field 'principles' must be a non-empty list of non-empty strings, got {value!r:.80}")
    return [x.strip() for x in value]


def _split_conversations(row: dict) -> dict:
    chosen = _messages(row["chosen"], "chosen", "user")
    rejected = _messages(row["rejected"], "rejected", "user")
    last_user = max((i for i, m in enumerate(chosen) if m["role"] == "user"), default=-1)
    if last_user < 0:
        raise DataError("missing field 'prompt' (and 'chosen' has no user turn to take it from)")
    if chosen[: last_user + 1] != rejected[: last_user + 1]:
        raise DataError("'chosen' and 'rejected' do not share the conversation up to the last user turn "
                        "(give 'prompt' explicitly)")
    if last_user + 1 >= min(len(chosen), len(rejected)):
        side = "chosen" if last_user + 1 >= len(chosen) else "rejected"
        raise DataError(f"field {side!r} has no assistant reply after the last user turn")
    return {**row, "prompt": chosen[: last_user + 1], "chosen": chosen[last_user + 1:],
            "rejected": rejected[last_user + 1:]}


def parse_judge_record(row: dict, fallback_id: str) -> JudgeExample:
    """An RM-R1 ``context_messages`` row or a ``messages`` trace row."""
    if "context_messages" in row:
        msgs = _messages(row["context_messages"], "context_messages", "user")
        if "winner" not in row:
            raise DataError("missing field 'winner'")
        winner = row["winner"]
        if not isinstance(winner, str) or not winner.strip():
            raise DataError("field 'winner' is empty")
        label = row.get("label", row.get("verdict"))
        try:
            return JudgeExample(_record_id(row, fallback_id), msgs, winner=normalize_winner(winner))
        except ValueError:
            pass
        if len(winner) < 16:  # neither a label nor a plausible trace
            raise DataError(f"field 'winner' must be model_a, model_b, A or B (or a trace text), got {winner!r}")
        return JudgeExample(_record_id(row, fallback_id), msgs, target=winner,
                            winner=_label(label) if label is not None else None)
    if "messages" in row:
        msgs = _messages(row["messages"], "messages", "user")
        if msgs[-1]["role"] != "assistant":
            raise DataError("field 'messages' must end with the assistant turn to learn")
        label = row.get("winner", row.get("label"))
        return JudgeExample(_record_id(row, fallback_id), msgs[:-1], target=msgs[-1]["content"],
                            winner=_label(label) if label is not None else None,
                            task_type=row.get("task_type"))
    raise DataError("record has none of 'context_messages', 'messages' or 'prompt'/'chosen'/'rejected'")


def _label(value) -> str:
    try:
        return normalize_winner(value)
    except ValueError:
        raise DataError(f"unknown winner value {value!r} (expected model_a, model_b, A or B)") from None


def assign_positions(pair: PreferencePair, index: int, seed: int) -> tuple[list[Message], list[Message], str]:
    """Place chosen/rejected at A/B by record index, alternating from the seed's start
    (:func:`rmr1_jax.ab_positions.alternate_at_a`): the labels stay balanced to within one in
    every prefix of the stream. Returns (a, b, winner)."""
    return ab_positions.place(pair.chosen, pair.rejected, ab_positions.alternate_at_a(index, ab_positions.seeded_start(seed)))


def pair_to_example(pair: PreferencePair, index: int, seed: int,
                    template: JudgeTemplate | None = None, swap: bool = False) -> JudgeExample:
    """Render a preference pair as a judge example, placing chosen/rejected at A/B with
    :func:`assign_positions` (balanced, seeded); ``swap`` renders the opposite placement
    (and label, :func:`rmr1_jax.ab_positions.swap`). The pair's ``principles`` go into the
    prompt after the replies (:func:`~rmr1_jax.text.prompts.build_judge_messages`)."""
    a, b, winner = assign_positions(pair, index, seed)
    if swap:
        a, b, winner = ab_positions.swap(a, b, winner)
    return JudgeExample(
        id=pair.id,
        messages=build_judge_messages(pair.prompt, a, b, template, principles=pair.principles),
        winner=winner,
        task_type=pair.task_type,
        chosen_position=winner,
    )


@dataclasses.dataclass
class RuleExample:
    """A rule-adapter example: the pair as one text in labeled sections, and the R-hot set of
    the rules selected for it."""

    id: str
    text: str
    labels: object  # numpy [R] uint8


def rule_adapter_text(prompt: list[Message], a: list[Message], b: list[Message]) -> str:
    """The adapter's input: the conversation, response A and response B in labeled sections."""
    def body(msgs):
        return "\n".join(f"{m['role'].capitalize()}: {m['content']}" if len(msgs) > 1 or m["role"] != "assistant"
                         else m["content"] for m in msgs)

    return f"[Conversation]\n{body(prompt)}\n\n[Response A]\n{body(a)}\n\n[Response B]\n{body(b)}"


def parse_rule_example(row: dict, fallback_id: str, num_rules: int) -> RuleExample:
    """``{prompt, a, b, rule_indices}`` or ``{prompt, a, b, labels}`` (also ``response_a`` /
    ``response_b``; strings or message lists); ``rule_indices`` are 0-based positions in the
    pool of ``num_rules`` rules (the head's width, ``model.num_labels``), ``labels`` an R-long
    list of 0/1 (numbers or booleans, not both). A row with both (what ``rmr1 rules select`` /
    ``label`` write) must have ``labels`` as long as the head and equal to the R-hot set of
    ``rule_indices``: ``labels`` is one entry per rule of the pool the row was selected from,
    so a length that differs from the head's is a head of the wrong width for that pool."""
    import numpy as np

    a = row.get("a", row.get("response_a"))
    b = row.get("b", row.get("response_b"))
    for key, v in (("prompt", row.get("prompt")), ("a", a), ("b", b)):
        if v is None:
            raise DataError(f"missing field {key!r}")
    prompt = _messages(row["prompt"], "prompt", "user")
    a, b = _messages(a, "a", "assistant"), _messages(b, "b", "assistant")
    if "rule_indices" not in row and "labels" not in row:
        raise DataError("missing field 'rule_indices' (or 'labels')")
    hot = _rule_labels(row["labels"], num_rules) if "labels" in row else None
    labels = np.zeros(num_rules, np.uint8)
    if "rule_indices" in row:
        idx = row["rule_indices"]
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise DataError("field 'rule_indices' must be a list of integers")
        bad = [i for i in idx if not 0 <= i < num_rules]
        if bad:
            raise DataError(f"field 'rule_indices' has {bad[0]}, outside the pool of {num_rules} rules "
                            f"(model.num_labels)")
        labels[idx] = 1
        if hot is not None and not np.array_equal(hot, labels):
            raise DataError(f"fields 'labels' and 'rule_indices' disagree: 'labels' marks rules "
                            f"{np.flatnonzero(hot).tolist()}, 'rule_indices' {sorted(set(idx))}")
    else:
        labels[:] = hot
    return RuleExample(_record_id(row, fallback_id), rule_adapter_text(prompt, a, b), labels)


def _rule_labels(lab, num_rules: int):
    """``labels`` of a rule-adapter row as a uint8 [num_rules] array; one DataError otherwise."""
    import numpy as np

    if not isinstance(lab, list):
        raise DataError(f"field 'labels' must be a list of {num_rules} zeros and ones, got {type(lab).__name__}")
    if len(lab) != num_rules:
        raise DataError(f"field 'labels' has {len(lab)} values (one per rule of the pool the row was selected "
                        f"from), but the adapter head has model.num_labels={num_rules} outputs: they must be equal")
    for i, v in enumerate(lab):
        if not isinstance(v, (bool, int, float)) or v not in (0, 1):
            raise DataError(f"field 'labels' must be a list of {num_rules} zeros and ones; 'labels'[{i}] is {v!r}")
    if len({isinstance(v, bool) for v in lab}) > 1:
        raise DataError("field 'labels' mixes booleans with numbers (write all 0/1 or all true/false)")
    return np.asarray(lab, dtype=np.uint8)


@dataclasses.dataclass
class PolicyPrompt:
    """A prompt for a policy to answer (``rmr1 policy-grpo``): the conversation so far, and
    what its samples are rewarded against: a ``reference`` answer (a judge's ``reference``
    scheme) and an ``answer`` a program checks (the verifiable reward, held-out accuracy)."""

    id: str
    prompt: list[Message]
    reference: str | None = None
    answer: str | None = None


def parse_policy_prompt(row: dict, fallback_id: str) -> PolicyPrompt:
    """``{prompt, reference?, answer?}``: ``prompt`` a string (one user message) or a message
    list; ``reference`` and ``answer`` strings (an ``answer`` that is a number is read as its
    text)."""
    if "prompt" not in row:
        raise DataError("missing field 'prompt'")
    prompt = _messages(row["prompt"], "prompt", "user")
    if prompt[-1]["role"] == "assistant":
        raise DataError("field 'prompt' ends with an assistant message: the policy answers the last user turn")
    out = {}
    for key in ("reference", "answer"):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise DataError(f"field {key!r} must be a non-empty string")
        out[key] = v
    return PolicyPrompt(_record_id(row, fallback_id), prompt, **out)
