"""Chain-of-Rubrics judgments to JSON, against hand-worked judgments: every part read as
written, quotes checked word for word against the response they name, and each missing or
malformed part reported by field, never guessed."""

from __future__ import annotations

from rmr1_jax.text.structured import structure

A = "Paris is the capital of France. It lies on the Seine."
B = "The capital of France is Lyon."

CHAT = """<type>Chat</type>
<rubric>
1. Accuracy (60%): the capital named must be right.
2. Clarity (40%): short and plain.
<justify>A factual question: accuracy matters most.</justify>
</rubric>
<eval>
Chatbot A says <quote_A>Paris is the capital of France.</quote_A> which is right.
Chatbot B claims <quote_B>The capital of France is Lyon.</quote_B>, wrong. <summary_B>B names the wrong city.</summary_B>
</eval>
<answer>[[A]]</answer>"""

REASONING = """<think>let me see</think><type>Reasoning</type>
<solution>7 x 6 = 42</solution>
<eval><quote_A>It is 42</quote_A> matches; <quote_B>41</quote_B> does not.</eval>
<answer>[[B]]</answer>"""


def test_a_well_formed_chat_judgment():
    s = structure(CHAT, A, B)
    assert s["errors"] == [] and s["task_type"] == "Chat" and s["verdict"] == "A"
    assert [(r["criterion"], r["weight"]) for r in s["rubric"]] == [("Accuracy", 60.0), ("Clarity", 40.0)]
    assert s["justification"] == "A factual question: accuracy matters most." and s["solution"] is None
    assert [(e["response"], e["kind"], e.get("verbatim")) for e in s["evidence"]] == [
        ("A", "quote", True), ("B", "quote", True), ("B", "summary", None)]


def test_quotes_not_in_their_response_and_a_reasoning_judgment():
    s = structure(REASONING, "It is 42, since 6 sevens are 42.", "The answer is 40.")
    assert s["task_type"] == "Reasoning" and s["solution"] == "7 x 6 = 42" and s["verdict"] == "B"
    assert [e["verbatim"] for e in s["evidence"]] == [True, False]
    assert s["errors"] == ["quote_B[0]: not found word for word in response B: '41'"]
    # quoting B's text as A's is not A's quote
    swapped = structure(CHAT, B, A)
    assert [e.get("verbatim") for e in swapped["evidence"]] == [False, False, None]
    assert len(swapped["errors"]) == 2 and swapped["errors"][0].startswith("quote_A[0]: not found")


def test_each_malformed_part_is_reported_by_field_not_guessed():
    bad = CHAT.replace("(40%)", "(30%)").replace("<justify>A factual question: accuracy matters most.</justify>", "")
    s = structure(bad, A, B)
    assert s["errors"] == ["justify: no <justify>...</justify> block", "rubric: the weights add up to 90%, not 100%"]
    assert s["justification"] is None and [r["weight"] for r in s["rubric"]] == [60.0, 30.0]
    s = structure("<type>Opinion</type> <eval>fine</eval> <answer>[[A]]</answer> trailing", A, B)
    assert s["task_type"] is None and s["verdict"] is None and s["rubric"] == [] and s["solution"] is None
    assert s["errors"] == ["type: 'Opinion' is neither Reasoning nor Chat",
                           "eval: no <quote_A/B> or <summary_A/B> evidence",
                           "verdict: no single final <answer>[[A]]</answer> or <answer>[[B]]</answer>"]
    s = structure("cut off", A, B)
    assert s["errors"][:2] == ["type: no <type>...</type> block", "eval: no <eval>...</eval> block"]
    two = structure("<type>Chat</type><type>Chat</type>", A, B)
    assert two["errors"][0] == "type: 2 <type> blocks, expected one"
