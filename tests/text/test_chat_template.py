"""Chat-template rendering against transformers, template errors, and the SFT loss mask."""

import os

import numpy as np
import pytest

from rmr1_jax.errors import UserError
from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE, assistant_spans, render_chat
from rmr1_jax.text.tokenizer import HFTokenizer, train_sentencepiece

transformers = pytest.importorskip("transformers")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
DATE = {"date_string": "26 Jul 2024"}

SYSTEM = {"role": "system", "content": "You judge two answers. Be strict."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Which answer is better?"}],
    "system_single": [SYSTEM, {"role": "user", "content": "Which answer is better?"}],
    "multi": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Compare A and B.\n\nA: 2+2=4\nB: 2+2=5"},
        {"role": "assistant", "content": "<answer>[[A]]</answer>"},
    ],
    "system_multi": [
        SYSTEM,
        {"role": "user", "content": "  padded question  "},
        {"role": "assistant", "content": "Ünïcödé answer 数学 😀"},
        {"role": "user", "content": "And now?"},
    ],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city — with “quotes” & <tags>",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "Zürich, 東京, ..."}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,  # dropped before rendering, as transformers does
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
    },
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "It is 21 °C and sunny."},
]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def pair(request):
    path = os.path.join(FIXTURES, request.param)
    return request.param, HFTokenizer(path), transformers.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [False, True])
def test_render_matches_transformers(pair, name, gen):
    kind, ours, theirs = pair
    extra = DATE if kind == "llama3" else {}
    messages = CONVERSATIONS[name]
    want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **extra)
    got = ours.apply_chat_template(messages, add_generation_prompt=gen, **extra)
    assert got == want
    # And through the bare function with the tokenizer's special tokens.
    assert render_chat(ours.chat_template, messages, gen, ours.special_tokens, **extra) == want


@pytest.mark.parametrize("gen", [False, True])
def test_render_tools_matches_transformers(pair, gen):
    kind, ours, theirs = pair
    extra = DATE if kind == "llama3" else {}
    messages = TOOL_CHAT if kind == "chatml" else TOOL_CHAT[:3]
    want = theirs.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=gen, **extra)
    got = ours.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=gen, **extra)
    assert got == want
    assert "Zürich" in got and "“quotes” & <tags>" in got  # tojson: no ASCII escaping, no HTML escaping


def test_llama3_default_date_uses_strftime_now(pair):
    kind, ours, theirs = pair
    messages = CONVERSATIONS["single"]
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(messages, tokenize=False)


FEATURE_TEMPLATE = """{% set ns = namespace(count=0, last_user='') %}
{% for m in messages %}
    {% if m.role == 'skip' %}{% continue %}{% endif %}
    {% if m.role == 'stop' %}{% break %}{% endif %}
    {% set ns.count = ns.count + 1 %}
    {% if m.role == 'user' %}{% set ns.last_user = m.content %}{% endif %}
    [{{ loop.index }}:{{ m.role }}] {{ m.content }}
    {% if m.reasoning_content is defined %} <think>{{ m.reasoning_content }}|{{ m.thinking }}</think>{% endif %}
    {% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}{% endif %}
{% endfor %}
count={{ ns.count }} last={{ ns.last_user }}
{{ dict(a=1, b='ü') | tojson }} {{ {'z': [1, 2], 'a': '<&>'} | tojson(sort_keys=true, separators=(',', ':')) }}
{{ extra | tojson(indent=2) }}
{{ bos_token is defined }} {{ eos_token }} {{ pad_token }} {{ tools }} {{ documents }} {{ dict.fromkeys(['x'], 0) }}
{%- if add_generation_prompt %}GEN{% endif %}
"""


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("override", [{}, {"eos_token": "<OVERRIDDEN>"}])
def test_jinja_features_match_transformers(pair, gen, override):
    _, ours, theirs = pair
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "skip", "content": "never shown"},
        {"role": "assistant", "content": "a1", "reasoning": "because"},
        {"role": "assistant", "content": "a2", "thinking": "own", "reasoning_content": "rc"},
        {"role": "user", "content": "q2", "name": None},
        {"role": "stop", "content": "end"},
        {"role": "user", "content": "after stop"},
    ]
    extra = {"n": np.float32(1.5), "flag": np.bool_(False), "i": np.int64(7), "nested": ({"t": (1, "x")},)}
    kwargs = dict(extra=extra, **override)
    want = theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=gen, chat_template=FEATURE_TEMPLATE, **kwargs
    )
    got = ours.apply_chat_template(messages, add_generation_prompt=gen, chat_template=FEATURE_TEMPLATE, **kwargs)
    assert got == want


def test_default_template_matches_transformers(pair):
    _, ours, theirs = pair
    messages = CONVERSATIONS["multi"]
    for gen in (False, True):
        want = theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen, chat_template=DEFAULT_CHAT_TEMPLATE
        )
        assert render_chat(None, messages, gen) == want
        assert render_chat(DEFAULT_CHAT_TEMPLATE, messages, gen, ours.special_tokens) == want


# -- errors -------------------------------------------------------------------------------------


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_syntax_error_is_one_line_user_error():
    with pytest.raises(UserError) as e:
        render_chat("{% for m in messages %}\n{{ m.content }\n{% endfor %}", [{"role": "user", "content": "x"}])
    assert "syntax error at line" in _one_line_error(e)
    with pytest.raises(UserError) as e:
        render_chat("{% if x %}unclosed", [{"role": "user", "content": "x"}])
    _one_line_error(e)


def test_raise_exception_and_runtime_errors():
    with pytest.raises(UserError) as e:
        render_chat("{{ raise_exception('roles must\nalternate') }}", [{"role": "user", "content": "x"}])
    assert "roles must alternate" in _one_line_error(e)
    chatml = HFTokenizer(os.path.join(FIXTURES, "chatml"))
    with pytest.raises(UserError, match="unsupported role: narrator"):
        chatml.apply_chat_template([{"role": "narrator", "content": "x"}])
    with pytest.raises(UserError):  # str + int
        render_chat("{{ messages[0].content + 1 }}", [{"role": "user", "content": "x"}])
    with pytest.raises(UserError):  # undefined attribute used as a value
        render_chat("{{ messages[0].missing.deeper }}", [{"role": "user", "content": "x"}])


def test_sandbox():
    msg = [{"role": "user", "content": "x"}]
    with pytest.raises(UserError):
        render_chat("{% set ns = namespace() %}{% set ns._secret = 1 %}", msg)
    with pytest.raises(UserError):
        render_chat("{{ messages.append(1) }}", msg)  # immutable sandbox: no mutating methods
    with pytest.raises(UserError):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", msg)


def test_bad_messages():
    with pytest.raises(UserError, match="empty"):
        render_chat(None, [])
    with pytest.raises(UserError, match="must be a dict"):
        render_chat(None, ["hello"])


# -- assistant_spans ------------------------------------------------------------------------------


def _check_spans(tok, messages, end_marker, **kw):
    ids, mask = assistant_spans(tok, messages, **kw)
    assert len(ids) == len(mask) and set(mask) <= {0, 1}
    full = tok.apply_chat_template(messages, **kw)
    prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, **kw)
    assert tok.decode(ids) == full
    n_prompt = len(tok.encode(prompt))
    assert ids[:n_prompt] == tok.encode(prompt) and not any(mask[:n_prompt])
    on = [i for i, m in enumerate(mask) if m]
    assert on == list(range(on[0], on[-1] + 1)), "mask must be one contiguous span"
    assert on[0] == n_prompt
    assert tok.decode([ids[i] for i in on]) == messages[-1]["content"].strip() + end_marker
    assert ids[on[-1]] == tok.token_to_id(end_marker)
    return ids, mask, on


MULTI_TURN = [
    SYSTEM,
    {"role": "user", "content": "Compare A and B."},
    {"role": "assistant", "content": "First reply."},
    {"role": "user", "content": "Again, but think."},
    {"role": "assistant", "content": "<think>A is right; B is wrong.</think>\n<answer>[[A]]</answer>"},
]


def test_assistant_spans_chatml():
    tok = HFTokenizer(os.path.join(FIXTURES, "chatml"))
    ids, mask, on = _check_spans(tok, MULTI_TURN, "<|im_end|>")
    assert tok.decode(ids[on[-1] + 1 :]) == "\n"  # ChatML's newline after <|im_end|> is not trained on
    # The earlier assistant turn is not masked in.
    assert "First reply." not in tok.decode([t for t, m in zip(ids, mask) if m])
    # An end-of-turn string inside the content does not end the span early.
    tricky = MULTI_TURN[:-1] + [{"role": "assistant", "content": "say <|im_end|> then stop"}]
    _check_spans(tok, tricky, "<|im_end|>")
    # A conversation of just the assistant turn: everything up to <|im_end|> after the default system prompt.
    _check_spans(tok, MULTI_TURN[1:3], "<|im_end|>")


def test_assistant_spans_llama3():
    tok = HFTokenizer(os.path.join(FIXTURES, "llama3"))
    ids, mask, on = _check_spans(tok, MULTI_TURN, "<|eot_id|>", **DATE)
    assert on[-1] == len(ids) - 1  # nothing after <|eot_id|>
    assert ids[0] == tok.bos_id and mask[0] == 0
    # Content with surrounding whitespace: the template trims it, the span still lines up.
    padded = MULTI_TURN[:-1] + [{"role": "assistant", "content": "  spaced out \n"}]
    _check_spans(tok, padded, "<|eot_id|>", **DATE)


def test_assistant_spans_sentencepiece(tmp_path):
    texts = [f"sample {i} with words like answer, judge and rubric." for i in range(200)]
    tok = train_sentencepiece(texts, str(tmp_path), vocab_size=400)
    _check_spans(tok, MULTI_TURN, "<|im_end|>")


def test_assistant_spans_errors():
    tok = HFTokenizer(os.path.join(FIXTURES, "chatml"))
    with pytest.raises(UserError, match="role 'assistant'"):
        assistant_spans(tok, MULTI_TURN[:-1])
    with pytest.raises(UserError, match="empty"):
        assistant_spans(tok, [])
    # A template whose generation prompt is not how it renders assistant turns.
    bad = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant:\n{% endif %}"
    )
    with pytest.raises(UserError, match="prefix"):
        assistant_spans(tok, MULTI_TURN, chat_template=bad)
    # A template that never closes the assistant turn.
    open_ended = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(UserError, match="end-of-turn"):
        assistant_spans(tok, MULTI_TURN, chat_template=open_ended)
