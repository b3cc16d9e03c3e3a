"""Chat templates: render Hugging Face Jinja chat templates, and mark the tokens SFT trains on.

:func:`render_chat` gives the same string as transformers'
``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` for the same template, messages,
special tokens and keyword arguments. To get there it reproduces transformers' rendering setup:

* a sandboxed, immutable Jinja environment with ``trim_blocks`` and ``lstrip_blocks`` on and the
  ``loopcontrols`` extension (``{% break %}`` / ``{% continue %}``) loaded;
* the globals ``raise_exception(msg)``, ``strftime_now(fmt)``, ``dict(...)`` and ``namespace(...)``
  (the last refusing underscore-prefixed attribute names);
* a ``tojson`` filter that is plain :func:`json.dumps` (no HTML escaping, non-ASCII kept) taking
  ``ensure_ascii``, ``indent``, ``separators`` and ``sort_keys``;
* a ``{% generation %}...{% endgeneration %}`` tag that renders its body unchanged, so templates
  written for assistant masks still parse;
* the template variables ``messages``, ``tools`` and ``documents`` (``None`` unless given),
  ``add_generation_prompt``, the tokenizer's named special tokens (``bos_token``, ``eos_token``,
  ...) and then the caller's keyword arguments, which win over special tokens of the same name;
* the messages cleaned the same way: keys whose value is ``None`` are dropped, everything is copied
  into plain dicts / lists / scalars, and a message's reasoning given as ``reasoning_content``,
  ``thinking`` or ``reasoning`` is visible under ``reasoning_content`` and ``thinking``.

Any failure while compiling or rendering a template (a Jinja syntax error, ``raise_exception``, an
undefined attribute used wrongly, a sandbox violation) raises :class:`~rmr1_jax.errors.UserError`
with a one-line message.

:data:`DEFAULT_CHAT_TEMPLATE` is a plain ChatML template used for tokenizers that ship none.

:func:`assistant_spans` tokenizes a conversation and returns the loss mask for supervised
fine-tuning: 1 on the last assistant turn's content and its end-of-turn token, 0 elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rmr1_jax.errors import UserError

__all__ = ["DEFAULT_CHAT_TEMPLATE", "assistant_spans", "compile_chat_template", "render_chat"]

# Plain ChatML: every turn is "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt
# opens an assistant turn. Used for tokenizers that ship no template of their own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Names under which a message may carry its reasoning; templates read the first.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# --------------------------------------------------------------------------------------------
# The Jinja environment
# --------------------------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}body{% endgeneration %}`` renders ``body`` as if the tag were absent."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own ``tojson`` HTML-escapes <, >, & and ' and forces ASCII; chat templates expect the
    # plain json.dumps output that transformers produces.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _DictFactory:
    """``dict(...)`` / ``dict.fromkeys(...)`` inside templates, without exposing the ``dict`` type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _check_namespace_attr(name):
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat templates may not set underscore-prefixed namespace attributes ({name!r})")


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` that refuses attribute names starting with an underscore."""

    def __init__(*args, **kwargs):  # noqa: N805 - same calling convention as jinja2.utils.Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_namespace_attr(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_namespace_attr(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _Namespace
    return env


_ENV = _make_environment()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@functools.lru_cache(maxsize=64)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template (cached). A syntax error raises UserError naming the line."""
    if not isinstance(template, str):
        raise UserError(f"chat template must be a string, got {type(template).__name__}")
    try:
        return _ENV.from_string(template)
    except TemplateSyntaxError as e:
        raise UserError(f"chat template syntax error at line {e.lineno}: {_one_line(e.message or e)}") from None
    except TemplateError as e:
        raise UserError(f"chat template does not compile: {_one_line(e)}") from None


# --------------------------------------------------------------------------------------------
# Template data
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A copy of ``value`` made of JSON-like types only (what the sandboxed template may see).

    str/int/float subclasses (enums, numpy scalars) are reduced to the base type, mappings become
    dicts, lists and tuples are copied, dataclasses and pydantic models become dicts; anything
    else becomes an inert ``"<TypeName>"`` placeholder.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # numpy scalar / 0-d array
        return _plain(item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise UserError(f"chat messages must be a list of dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise UserError("cannot apply a chat template to an empty conversation")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise UserError(f"chat message {i} must be a dict, got {type(message).__name__}")
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_KEYS if message.get(k) is not None), None)
        if reasoning is not None:
            # "thinking" keeps the message's own value if it has one; "reasoning_content" is the alias
            # templates read, so it always carries the reasoning.
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render ``messages`` with a Jinja chat template, exactly as transformers does.

    Args:
        template: the Jinja source; ``None`` uses :data:`DEFAULT_CHAT_TEMPLATE`.
        messages: a list of ``{"role": ..., "content": ..., ...}`` dicts.
        add_generation_prompt: append the header that opens an assistant turn.
        special_tokens: the tokenizer's named special tokens (``{"bos_token": "<s>", ...}``).
        **kwargs: further template variables (``tools``, ``documents``, ``date_string``,
            ``enable_thinking``, ...); they override special tokens of the same name.

    Raises:
        UserError: the template does not compile or fails while rendering (one-line message).
    """
    compiled = compile_chat_template(DEFAULT_CHAT_TEMPLATE if template is None else template)
    chat = _prepare_messages(messages)
    variables: dict[str, Any] = {str(k): str(v) for k, v in (special_tokens or {}).items() if v is not None}
    variables.update(kwargs)
    variables = _plain(variables)
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    variables["messages"] = chat
    variables["add_generation_prompt"] = add_generation_prompt
    try:
        return compiled.render(**variables)
    except TemplateError as e:  # includes raise_exception, undefined errors and sandbox violations
        raise UserError(f"chat template error: {_one_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise UserError(f"chat template failed: {type(e).__name__}: {_one_line(e)}") from None


# --------------------------------------------------------------------------------------------
# Loss mask for supervised fine-tuning
# --------------------------------------------------------------------------------------------


def assistant_spans(
    tokenizer, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a loss mask selecting the last assistant turn.

    The conversation must end with an assistant message. Two strings are rendered with the
    tokenizer's chat template: the prompt (``messages[:-1]`` with ``add_generation_prompt=True``)
    and the whole conversation. The whole render must start with the prompt render (else
    UserError: the template rewrites earlier turns depending on what follows, and no clean split
    exists). The ids are ``encode(prompt) + encode(rest)``, which is exactly what the model sees
    when it generates the reply to that prompt.

    In ``rest`` the mask is 1 from its first token up to and including the end-of-turn token that
    closes the assistant content (the first id of ``tokenizer.eos_ids`` after any such ids the
    content itself contains) and 0 after it (e.g. the newline ChatML puts after ``<|im_end|>``).
    Every prompt token has mask 0.

    Returns:
        ``(ids, loss_mask)``, two lists of ints of the same length.

    Raises:
        UserError: empty conversation, last message not from the assistant, prompt not a prefix
            of the full render, or no end-of-turn token after the assistant content.
    """
    if not messages:
        raise UserError("assistant_spans: the conversation is empty")
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        role = last.get("role") if isinstance(last, Mapping) else type(last).__name__
        raise UserError(f"assistant_spans: the last message must have role 'assistant', got {role!r}")
    if len(messages) == 1:
        prompt = ""
    else:
        prompt = tokenizer.apply_chat_template(list(messages[:-1]), add_generation_prompt=True, **template_kwargs)
    full = tokenizer.apply_chat_template(list(messages), add_generation_prompt=False, **template_kwargs)
    if not full.startswith(prompt):
        raise UserError(
            "assistant_spans: the chat template renders the conversation without the prompt as its prefix "
            f"(prompt ends {prompt[-40:]!r}, full render there reads {full[max(0, len(prompt) - 40):len(prompt)]!r}); "
            "cannot separate the last assistant turn"
        )
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    reply_ids = tokenizer.encode(full[len(prompt):])

    stops = set(tokenizer.eos_ids)
    content = last.get("content")
    skip = sum(1 for t in tokenizer.encode(content) if t in stops) if isinstance(content, str) and content else 0
    end = None
    for i, tok in enumerate(reply_ids):
        if tok in stops:
            if skip == 0:
                end = i
                break
            skip -= 1
    if end is None:
        raise UserError(
            "assistant_spans: no end-of-turn token (one of ids "
            f"{sorted(stops)}) after the last assistant message in the rendered conversation"
        )
    ids = prompt_ids + reply_ids
    mask = [0] * len(prompt_ids) + [1] * (end + 1) + [0] * (len(reply_ids) - end - 1)
    return ids, mask
