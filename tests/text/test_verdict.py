"""The verdict rule, case by case (see rmr1_jax/text/verdict.py for the rule)."""

import os

import pytest

import rmr1_jax as rj
from rmr1_jax.text import verdict

CASES = [
    # (output, expected verdict)
    ("<type>Chat</type> ... <answer>[[A]]</answer>", "A"),
    ("reasoning\n<answer>[[B]]</answer>\n", "B"),
    ("<answer> [[ b ]] </answer>", "B"),
    ("<ANSWER>[[a]]</Answer>  \n\t", "A"),
    ("", None),
    (None, None),
    ("no verdict at all", None),
    ("<answer>[[A]] or [[B]]</answer>", None),  # both verdicts
    ("<answer>[[A]][[A]]</answer>", None),  # repeated inside one block
    ("<answer>[[A]]</answer><answer>[[A]]</answer>", None),  # repeated blocks
    ("<answer>[[A]]</answer>\n<answer>[[B]]</answer>", None),
    ("<answer>[[A]]</answer> and some trailing text", None),  # does not end with the verdict
    ("<answer>[[A]]", None),  # truncated before the closing tag
    ("<answer>[[C]]</answer>", None),
    ("<answer>A</answer>", None),
    ("<answer></answer>", None),
    ("[[A]]", None),  # bare brackets are not an answer block
    # reasoning models: only what follows the last </think> counts
    ("<think>maybe <answer>[[B]]</answer></think>\n<answer>[[A]]</answer>", "A"),
    ("<think>the answer is [[B]] surely", None),  # cut off while thinking
    ("<think>I pick <answer>[[A]]</answer>", None),  # verdict only inside unfinished think
    ("<think>I pick <answer>[[A]]</answer></think>", None),  # verdict only inside think
    ("thinking without an opening tag</think><answer>[[B]]</answer>", "B"),  # template opened it
    ("<think>a</think><think>b</think> <answer>[[B]]</answer>", "B"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_verdict(text, expected):
    assert rj.parse_verdict(text) == expected


@pytest.mark.parametrize("winner", ["A", "a", "model_a", "MODEL_A"])
def test_reward_right_and_wrong(winner):
    assert rj.judgment_reward("<answer>[[A]]</answer>", winner) == 1.0
    assert rj.judgment_reward("<answer>[[B]]</answer>", winner) == -1.0


def test_reward_failure_cases_score_minus_one():
    for text, expected in CASES:
        if expected is None:
            assert rj.judgment_reward(text, "A") == -1.0
            assert rj.judgment_reward(text, "B") == -1.0


def test_bad_winner_label():
    with pytest.raises(ValueError, match="winner"):
        rj.judgment_reward("<answer>[[A]]</answer>", "tie")


# --- a generation prompt that opens the thinking section ---------------------------------------

DEEPSEEK_TEMPLATE = os.path.join(os.path.dirname(__file__), "fixtures", "deepseek_r1_distill", "chat_template.jinja")


def _deepseek_judge_prompt():
    """The reasoning-variant judge prompt rendered as DeepSeek-R1-Distill-Qwen's chat template
    (the checkpoints' tokenizer_config.json) renders a generation prompt."""
    from rmr1_jax.text.chat_template import render_chat
    from rmr1_jax.text.prompts import JudgeTemplate, build_judge_messages

    with open(DEEPSEEK_TEMPLATE) as f:
        template = f.read()
    messages = build_judge_messages("Which is larger, 37 or 72?", "72", "37", JudgeTemplate.builtin("reasoning"))
    return render_chat(template, messages, add_generation_prompt=True,
                       special_tokens={"bos_token": "<｜begin▁of▁sentence｜>"})


def test_deepseek_generation_prompt_opens_thinking():
    prompt = _deepseek_judge_prompt()
    assert prompt.endswith("<｜Assistant｜><think>\n")
    assert verdict.prompt_opens_thinking(prompt)
    assert not verdict.prompt_opens_thinking("<｜User｜>question<｜Assistant｜>")
    assert not verdict.prompt_opens_thinking("<think>\nold reasoning</think>\nanswer<｜User｜>q<｜Assistant｜>")


@pytest.mark.parametrize("output,expected", [
    # stopped (or cut off) before "</think>": all of it is thinking, whatever it mentions
    ("72 is larger, so <answer>[[A]]</answer>", None),
    ("Hmm. <answer>[[B]]</answer> no wait", None),
    # the thinking closed, then the verdict
    ("72 is larger.\n</think>\n\n<answer>[[A]]</answer>", "A"),
    ("<answer>[[B]]</answer> first guess... </think><answer>[[A]]</answer>", "A"),
])
def test_verdict_when_the_prompt_opened_thinking(output, expected):
    opened = verdict.prompt_opens_thinking(_deepseek_judge_prompt())
    assert verdict.parse_verdict(output, opened_thinking=opened) == expected
    want = 1.0 if expected == "A" else -1.0
    assert rj.judgment_reward(output, "A", opened_thinking=opened) == want
