"""The verdict rule, case by case (see rmr1_jax/text/verdict.py for the rule)."""

import pytest

import rmr1_jax as rj

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
