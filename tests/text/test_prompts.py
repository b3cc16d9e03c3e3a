"""Judge prompt templates: substitution, custom files, single/multi-turn rendering, variants."""

import pytest

from rmr1_jax.data.schemas import PreferencePair, pair_to_example
from rmr1_jax.errors import ConfigError, DataError
from rmr1_jax.text.prompts import (
    INSTRUCT,
    REASONING,
    JudgeTemplate,
    build_judge_messages,
    fill,
)

U = lambda text: {"role": "user", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731
AS = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def test_fill_touches_only_exact_placeholders():
    text = 'Q: {question} {"verdict": "A"} {questions} {{question}} { question } {other}'
    out = fill(text, {"question": "why?"})
    assert out == 'Q: why? {"verdict": "A"} {questions} {why?} { question } {other}'


def test_substituted_text_is_not_rescanned():
    msgs = build_judge_messages([U("say {response_b}")], [AS("I said {question}")], [AS("B's {x}")])
    user = msgs[-1]["content"]
    assert "say {response_b}" in user and "I said {question}" in user and "B's {x}" in user


def test_instruct_single_turn_layout():
    msgs = build_judge_messages([U("What is 2 + 2?")], [AS("4")], [AS("5")], INSTRUCT)
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    for tag in ("<type>Reasoning</type>", "<type>Chat</type>", "<solution>", "<eval>", "<rubric>",
                "<justify>", "<quote_A>", "<summary_A>", "<quote_B>", "<summary_B>",
                "<answer>[[A]]</answer>", "<answer>[[B]]</answer>"):
        assert tag in system, tag
    # labeled blocks, in order, each with start and end markers
    order = ["Client question", "What is 2 + 2?", "End of client question",
             "Chatbot A's response (start)", "4", "Chatbot A's response (end)",
             "Chatbot B's response (start)", "5", "Chatbot B's response (end)"]
    pos = [user.index(s) for s in order]
    assert pos == sorted(pos)
    assert "{" not in user


def test_reasoning_variant_has_no_system_message():
    msgs = build_judge_messages([U("Q?")], [AS("a")], [AS("b")], REASONING)
    assert [m["role"] for m in msgs] == ["user"]
    user = msgs[0]["content"]
    assert "Chatbot A's response (start)" in user and "Chatbot B's response (end)" in user
    assert user.rstrip().endswith("You must pick one.")
    assert "<answer>[[A]]</answer>" in user and "<answer>[[B]]</answer>" in user
    assert REASONING.system is None and INSTRUCT.system is not None


def test_system_prompt_of_the_pair_is_shown_in_single_turn():
    msgs = build_judge_messages([S("Answer in French."), U("Hello?")], [AS("Bonjour")], [AS("Hi")])
    user = msgs[-1]["content"]
    assert "Answer in French." in user and "Hello?" in user
    assert "Conversation with Chatbot A" not in user  # still the single-turn layout


@pytest.mark.parametrize("template", [INSTRUCT, REASONING])
def test_multiturn_rendering(template):
    prompt = [U("Hi"), AS("Hello! How can I help?"), U("What is 3 * 3?")]
    msgs = build_judge_messages(prompt, [AS("9")], [AS("6")], template)
    user = msgs[-1]["content"]
    a_block = user[user.index("Conversation with Chatbot A (start)"):user.index("Conversation with Chatbot A (end)")]
    b_block = user[user.index("Conversation with Chatbot B (start)"):user.index("Conversation with Chatbot B (end)")]
    # one turn per line, the whole conversation, then the end marker
    assert a_block.splitlines()[1:] == ["User: Hi", "Chatbot A: Hello! How can I help?", "User: What is 3 * 3?",
                                         "Chatbot A: 9", "### "]
    assert b_block.splitlines()[1:] == ["User: Hi", "Chatbot B: Hello! How can I help?", "User: What is 3 * 3?",
                                         "Chatbot B: 6", "### "]
    assert "Chatbot B" not in a_block.replace("Conversation with Chatbot A", "")
    assert "Chatbot A" not in b_block.replace("Conversation with Chatbot B", "")
    assert "{" not in user


def test_multi_message_response_uses_multiturn_layout():
    msgs = build_judge_messages([U("Tell me two things")], [AS("one"), AS("two")], [AS("both")])
    user = msgs[-1]["content"]
    assert "Chatbot A: one\nChatbot A: two" in user and "Chatbot B: both" in user


def test_prompt_must_end_with_user_turn():
    with pytest.raises(DataError, match="user turn"):
        build_judge_messages([U("q"), AS("a")], [AS("x")], [AS("y")])


def test_missing_placeholder_in_constructor():
    with pytest.raises(ConfigError, match=r"\{response_b\}"):
        JudgeTemplate("instruct", None, "{question} {response_a}", "{conversation_a} {conversation_b}")
    with pytest.raises(ConfigError, match=r"\{conversation_b\}"):
        JudgeTemplate("instruct", None, "{question} {response_a} {response_b}", "{conversation_a}")
    with pytest.raises(ConfigError, match="variant"):
        JudgeTemplate("chatty", None, "{question} {response_a} {response_b}", "{conversation_a} {conversation_b}")


def test_custom_template_files(tmp_path):
    sys_f, user_f, multi_f = tmp_path / "sys.txt", tmp_path / "user.txt", tmp_path / "multi.txt"
    sys_f.write_text("Judge {strictly}. Output JSON like {\"a\": 1}.\n")
    user_f.write_text("<Q>{question}</Q>\n<A>{response_a}</A>\n<B>{response_b}</B>\n{\"keep\": true}\n")
    multi_f.write_text("[{conversation_a}]\n[{conversation_b}]")
    t = JudgeTemplate.from_files("instruct", str(sys_f), str(user_f), str(multi_f))
    msgs = build_judge_messages([U("2+2?")], [AS("4")], [AS("5")], t)
    assert msgs[0] == {"role": "system", "content": 'Judge {strictly}. Output JSON like {"a": 1}.'}
    assert msgs[1]["content"] == '<Q>2+2?</Q>\n<A>4</A>\n<B>5</B>\n{"keep": true}'
    msgs = build_judge_messages([U("hi"), AS("yo"), U("2+2?")], [AS("4")], [AS("5")], t)
    assert msgs[1]["content"] == "[User: hi\nChatbot A: yo\nUser: 2+2?\nChatbot A: 4]\n" \
                                 "[User: hi\nChatbot B: yo\nUser: 2+2?\nChatbot B: 5]"


def test_partial_files_keep_builtin_texts(tmp_path):
    user_f = tmp_path / "user.txt"
    user_f.write_text("{question}|{response_a}|{response_b}")
    t = JudgeTemplate.from_files("reasoning", user_file=str(user_f))
    assert t.system is None and t.user_multiturn == REASONING.user_multiturn
    assert build_judge_messages([U("q")], [AS("a")], [AS("b")], t) == [{"role": "user", "content": "q|a|b"}]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert JudgeTemplate.from_files("instruct", system_file=str(empty)).system is None


def test_template_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match="nope.txt"):
        JudgeTemplate.from_files("instruct", user_file=str(missing))
    with pytest.raises(ConfigError, match="nope.txt"):
        JudgeTemplate.from_files("instruct", system_file=str(missing))
    bad = tmp_path / "bad_user.txt"
    bad.write_text("{question} and {response_a} only")
    with pytest.raises(ConfigError, match=r"bad_user.txt.*\{response_b\}"):
        JudgeTemplate.from_files("instruct", user_file=str(bad))
    bad_multi = tmp_path / "bad_multi.txt"
    bad_multi.write_text("{conversation_b}")
    with pytest.raises(ConfigError, match=r"bad_multi.txt.*\{conversation_a\}"):
        JudgeTemplate.from_files("reasoning", user_multiturn_file=str(bad_multi))


def test_pair_to_example_records_positions():
    pair = PreferencePair("p1", [U("Q?")], [AS("good")], [AS("bad")], task_type="Chat")
    winners = []
    for i in range(6):
        ex = pair_to_example(pair, i, seed=3, template=INSTRUCT)
        assert ex.id == "p1" and ex.task_type == "Chat" and ex.chosen_position == ex.winner
        user = ex.messages[-1]["content"]
        a = user[user.index("Chatbot A's response (start)"):user.index("Chatbot A's response (end)")]
        assert ("good" in a) == (ex.winner == "A")
        winners.append(ex.winner)
    assert winners.count("A") == 3
    assert pair_to_example(pair, 0, seed=3).messages == pair_to_example(pair, 0, 3, INSTRUCT).messages


def test_principles_are_given_after_the_replies_numbered():
    from rmr1_jax.text.prompts import PRINCIPLES_INTRO, build_judge_messages

    plain = build_judge_messages("Q?", "a", "b")
    msgs = build_judge_messages("Q?", "a", "b", principles=["Refuse harmful help.", " Be honest. "])
    assert msgs[0] == plain[0] and msgs[1]["content"].startswith(plain[1]["content"])
    assert msgs[1]["content"][len(plain[1]["content"]):] == (
        "\n\n### Principles (start)\n" + PRINCIPLES_INTRO + "\n1. Refuse harmful help.\n2. Be honest.\n"
        "### Principles (end)")
    assert build_judge_messages("Q?", "a", "b", principles=[]) == plain
    with pytest.raises(DataError, match="principles must be non-empty strings"):
        build_judge_messages("Q?", "a", "b", principles=["ok", " "])


def test_rmr1_judge_reads_its_principles_file(tmp_path, capsys):
    from rmr1_jax import cli
    from rmr1_jax.cli.jobs import read_principles

    f = tmp_path / "rules.txt"
    f.write_text("# safety\nRefuse harmful help.\n\n  Be honest.\n")
    assert read_principles(str(f)) == ["Refuse harmful help.", "Be honest."]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    for path, msg in ((tmp_path / "missing.txt", "principles file not found"), (tmp_path / "empty.txt", "no principles")):
        assert cli.main(["judge", "--ckpt", str(tmp_path), "--prompt", "q", "--a", "x", "--b", "y",
                         "--principles", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and msg in err[0]
