"""Chain-of-Rubrics (CoR) judge prompts.

A judge prompt shows the client's request and two candidate replies ("Chatbot A" and
"Chatbot B") and asks for a CoR judgment that ends with ``<answer>[[A]]</answer>`` or
``<answer>[[B]]</answer>``. Two built-in variants are shipped, worded for this project:

* ``instruct``: the protocol is a system message; the user message holds only the labeled
  blocks (client question, Chatbot A's response, Chatbot B's response).
* ``reasoning``: for models that think in ``<think>...</think>`` before answering
  (DeepSeek-R1-Distill style). No system message; one user message with a short judge
  instruction, the labeled blocks and a closing instruction on the answer format.

Each template has a single-turn user text (placeholders ``{question}``, ``{response_a}``,
``{response_b}``) and a multi-turn one (``{conversation_a}``, ``{conversation_b}``: the whole
conversation as each chatbot had it, one turn per line). Only those exact placeholders are
replaced, in one pass, so other braces (JSON examples, ``{name}`` text) in a template and any
braces inside the substituted texts are left alone. The system text is used verbatim.

A released checkpoint was trained on one exact wording; :meth:`JudgeTemplate.from_files`
loads any of the texts from files so that wording can be reproduced.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from rmr1_jax.errors import ConfigError, DataError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}

VARIANTS = ("instruct", "reasoning")
SINGLE_TURN_PLACEHOLDERS = ("question", "response_a", "response_b")
MULTI_TURN_PLACEHOLDERS = ("conversation_a", "conversation_b")

# ---------------------------------------------------------------------------------------------
# Built-in wording
# ---------------------------------------------------------------------------------------------

INSTRUCT_SYSTEM = """\
You are a careful, impartial judge. A client sent a request to two chatbots, A and B, and you \
must decide which chatbot's reply serves the client better. Work through these steps, using \
the tags exactly as shown.

1. Classify the task. If it has an answer that can be checked (mathematics, coding, factual \
or specialist knowledge, multi-step logic), write <type>Reasoning</type>. Otherwise (open \
conversation, rewriting, advice, sensitive or unsafe requests, general helpfulness), write \
<type>Chat</type>.

2. For a Reasoning task, first work out the correct answer yourself inside \
<solution>...</solution>. Then, inside <eval>...</eval>, check each chatbot's reply against \
your own solution.

3. For a Chat task, first set out the criteria that matter for this request inside \
<rubric>...</rubric>, giving each criterion a weight (the weights add up to 100%). Inside the \
rubric, add <justify>...</justify> explaining why you chose these criteria and weights. Then, \
inside <eval>...</eval>, assess each reply against the rubric.

4. In <eval>, support every claim with evidence from the replies: copy a passage word for \
word with <quote_A>...</quote_A> or <quote_B>...</quote_B>, or condense it with \
<summary_A>...</summary_A> or <summary_B>...</summary_B>.

5. Close with your verdict and write nothing after it: <answer>[[A]]</answer> if Chatbot A's \
reply is better, or <answer>[[B]]</answer> if Chatbot B's reply is better. Ties are not \
allowed; you must choose one.

The order in which the replies appear, their length and the chatbots' names must not sway \
your decision."""

_SINGLE_BLOCKS = """\
### Client question
{question}
### End of client question

### Chatbot A's response (start)
{response_a}
### Chatbot A's response (end)

### Chatbot B's response (start)
{response_b}
### Chatbot B's response (end)"""

_MULTI_BLOCKS = """\
The client had a separate conversation with each chatbot. Both conversations are shown in \
full, one turn per line; judge the chatbots' replies in them.

### Conversation with Chatbot A (start)
{conversation_a}
### Conversation with Chatbot A (end)

### Conversation with Chatbot B (start)
{conversation_b}
### Conversation with Chatbot B (end)"""

INSTRUCT_USER = _SINGLE_BLOCKS
INSTRUCT_USER_MULTITURN = _MULTI_BLOCKS

_REASONING_INTRO = """\
Act as an impartial judge. Read the client's request and the two chatbot replies below, \
decide which reply serves the client better, and explain your judgment. For a question \
with a checkable answer, solve it yourself before comparing; otherwise weigh the replies \
against the criteria that matter most for the request.

"""

_REASONING_OUTRO = """

Finish with your verdict and nothing after it: <answer>[[A]]</answer> if Chatbot A's reply \
is better, or <answer>[[B]]</answer> if Chatbot B's reply is better. You must pick one."""

REASONING_USER = _REASONING_INTRO + _SINGLE_BLOCKS + _REASONING_OUTRO
REASONING_USER_MULTITURN = _REASONING_INTRO + _MULTI_BLOCKS + _REASONING_OUTRO


# ---------------------------------------------------------------------------------------------
# Template object and substitution
# ---------------------------------------------------------------------------------------------


def _check_placeholders(text: str, required: Sequence[str], source: str) -> None:
    if not isinstance(text, str):
        raise ConfigError(f"{source}: template text must be a string, got {type(text).__name__}")
    for name in required:
        if "{" + name + "}" not in text:
            raise ConfigError(f"{source}: template is missing the placeholder {{{name}}}")


def fill(text: str, values: dict[str, str]) -> str:
    """Replace each exact ``{name}`` for ``name`` in ``values``; nothing else is touched, and
    substituted text is not scanned again (a reply containing ``{response_b}`` stays as is)."""
    if not values:
        return text
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in values))
    return pattern.sub(lambda m: values[m.group(0)[1:-1]], text)


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
    """The wording of a judge prompt (see module docstring).

    ``system`` is the system message (``None``: no system message); ``user`` renders a
    single-turn pair, ``user_multiturn`` a pair whose prompt has earlier turns.
    """

    variant: str
    system: str | None
    user: str
    user_multiturn: str

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"judge template variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError(f"JudgeTemplate.system must be a string or None, got {type(self.system).__name__}")
        _check_placeholders(self.user, SINGLE_TURN_PLACEHOLDERS, f"{self.variant} template (user)")
        _check_placeholders(self.user_multiturn, MULTI_TURN_PLACEHOLDERS,
                            f"{self.variant} template (user_multiturn)")

    @classmethod
    def builtin(cls, variant: str) -> "JudgeTemplate":
        if variant == "instruct":
            return INSTRUCT
        if variant == "reasoning":
            return REASONING
        raise ConfigError(f"judge template variant must be one of {list(VARIANTS)}, got {variant!r}")

    @classmethod
    def from_files(cls, variant: str, system_file: str | None = None, user_file: str | None = None,
                   user_multiturn_file: str | None = None) -> "JudgeTemplate":
        """The built-in template of ``variant`` with any of its texts replaced by a file's.

        Files are read as UTF-8 and used exactly, except that one final newline (which most
        editors add) is dropped. An empty or whitespace-only ``system_file`` means no system
        message. A missing file, or a user file without its placeholders, is a
        :class:`ConfigError` naming the file.
        """
        base = cls.builtin(variant)
        system = base.system
        if system_file is not None:
            system = _read_template(system_file)
            if not system.strip():
                system = None
        user = base.user
        if user_file is not None:
            user = _read_template(user_file)
            _check_placeholders(user, SINGLE_TURN_PLACEHOLDERS, user_file)
        user_multi = base.user_multiturn
        if user_multiturn_file is not None:
            user_multi = _read_template(user_multiturn_file)
            _check_placeholders(user_multi, MULTI_TURN_PLACEHOLDERS, user_multiturn_file)
        return cls(variant, system, user, user_multi)

    def render_single(self, question: str, response_a: str, response_b: str) -> str:
        return fill(self.user, {"question": question, "response_a": response_a, "response_b": response_b})

    def render_multiturn(self, conversation_a: str, conversation_b: str) -> str:
        return fill(self.user_multiturn, {"conversation_a": conversation_a, "conversation_b": conversation_b})


def _read_template(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: template file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: template path is a directory, expected a text file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: template file is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read template file ({e.strerror})") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text


INSTRUCT = JudgeTemplate("instruct", INSTRUCT_SYSTEM, INSTRUCT_USER, INSTRUCT_USER_MULTITURN)
REASONING = JudgeTemplate("reasoning", None, REASONING_USER, REASONING_USER_MULTITURN)


# ---------------------------------------------------------------------------------------------
# Rendering judge conversations
# ---------------------------------------------------------------------------------------------


def _as_messages(value, field: str, default_role: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{field} must be a string or a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{field}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise DataError(f"{field}[{i}] has unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise DataError(f"{field}[{i}] content must be a string")
    return list(value)


def _speaker(role: str, chatbot: str) -> str:
    return {"system": "System", "user": "User", "assistant": f"Chatbot {chatbot}"}[role]


def render_conversation(messages: Sequence[Message], chatbot: str) -> str:
    """One turn per line: ``User: ...``, ``Chatbot A: ...`` (``System: ...`` for a system turn)."""
    return "\n".join(f"{_speaker(m['role'], chatbot)}: {m['content']}" for m in messages)


def is_single_turn(prompt: Sequence[Message], response_a: Sequence[Message], response_b: Sequence[Message]) -> bool:
    """One user message (optionally after one system message) and one assistant reply each."""
    roles = [m["role"] for m in prompt]
    return (roles in (["user"], ["system", "user"])
            and [m["role"] for m in response_a] == ["assistant"]
            and [m["role"] for m in response_b] == ["assistant"])


def _single_turn_question(prompt: Sequence[Message]) -> str:
    if len(prompt) == 1:
        return prompt[0]["content"]
    # A system message shown to both chatbots is part of what they were asked to do.
    return (f"System instructions given to both chatbots:\n{prompt[0]['content']}\n\n"
            f"Client message:\n{prompt[1]['content']}")


PRINCIPLES_INTRO = ("Judge the replies by the principles below: build your rubric from them, weighing each by "
                    "how much it matters for this request.")


def render_principles(principles: Sequence[str]) -> str:
    """The block that gives the judge its principles (appended to the user turn)."""
    items = "\n".join(f"{i}. {p.strip()}" for i, p in enumerate(principles, 1))
    return f"### Principles (start)\n{PRINCIPLES_INTRO}\n{items}\n### Principles (end)"


def build_judge_messages(prompt, response_a, response_b, template: JudgeTemplate | None = None,
                         principles: Sequence[str] | None = None) -> list[Message]:
    """The judge conversation (system message when the template has one, then the user turn).
    ``principles``: what to judge by (RAMO's selected rules for the pair, or a user's list),
    given to the judge after the replies (:func:`render_principles`); none or empty: the
    template alone.

    ``prompt``: the conversation so far (list of ``{role, content}``, or a string for one user
    turn), ending with a user turn. ``response_a`` / ``response_b``: each chatbot's reply as a
    list of assistant messages (or a string). A prompt of one user message (optionally after
    a system message) with one-message replies uses the single-turn text; anything else the
    multi-turn text, which shows each chatbot's whole conversation.
    """
    template = template or INSTRUCT
    prompt = _as_messages(prompt, "prompt", "user")
    response_a = _as_messages(response_a, "response_a", "assistant")
    response_b = _as_messages(response_b, "response_b", "assistant")
    if prompt[-1]["role"] != "user":
        raise DataError("prompt must end with a user turn")
    if is_single_turn(prompt, response_a, response_b):
        user = template.render_single(_single_turn_question(prompt), response_a[0]["content"],
                                      response_b[0]["content"])
    else:
        user = template.render_multiturn(render_conversation(list(prompt) + list(response_a), "A"),
                                         render_conversation(list(prompt) + list(response_b), "B"))
    if principles:
        if not all(isinstance(p, str) and p.strip() for p in principles):
            raise DataError("principles must be non-empty strings")
        user = f"{user}\n\n{render_principles(principles)}"
    messages: list[Message] = []
    if template.system is not None:
        messages.append({"role": "system", "content": template.system})
    messages.append({"role": "user", "content": user})
    return messages
