"""Synthetic verifiable tasks: labels checked by an independent oracle, traces, files, seeds."""

import collections
import json

import pytest

import rmr1_jax as rj
from rmr1_jax.data.readers import read_records
from rmr1_jax.data.schemas import PreferencePair, parse_judge_record, parse_pair
from rmr1_jax.errors import ConfigError
from rmr1_jax.text.prompts import INSTRUCT, REASONING
from rmr1_jax.worlds import judging_tasks as syn


def _text(messages):
    return messages[-1]["content"]


@pytest.mark.parametrize("kind", syn.DEFAULT_KINDS)
def test_oracle_agrees_with_labels_and_traces_parse(kind):
    """2,000 pairs of each kind at difficulty 1 (and a few hundred at 2 and 3): the oracle,
    which only reads the question and the replies, picks the stored chosen reply in both
    placements, and the oracle trace's verdict parses to the winner."""
    for difficulty, n in ((1, 2000), (2, 300), (3, 300)):
        pairs = syn.generate_pairs(n, seed=11, kinds=(kind,), difficulty=difficulty)
        assert len(pairs) == n
        for p in pairs:
            assert p.task_type == ("Reasoning" if kind in syn.REASONING_KINDS else "Chat")
            assert _text(p.chosen) != _text(p.rejected)
            assert syn.oracle_verdict(p, p.chosen, p.rejected) == "A"
            assert syn.oracle_verdict(p, p.rejected, p.chosen) == "B"
            for a, b, w in ((p.chosen, p.rejected, "A"), (p.rejected, p.chosen, "B")):
                trace = syn.oracle_trace(p, a, b, w)
                assert rj.parse_verdict(trace) == w
                assert trace.startswith(f"<type>{p.task_type}</type>")


def test_trace_structure_and_length():
    pairs = syn.generate_pairs(900, seed=5)
    exs = syn.make_distillation_examples(pairs, seed=5, template=INSTRUCT)
    lengths = collections.defaultdict(list)
    for p, ex in zip(pairs, exs):
        t = ex.target
        assert rj.parse_verdict(t) == ex.winner
        for tag in ("<eval>", "</eval>", "<quote_A>", "<summary_A>", "<quote_B>", "<summary_B>"):
            assert t.count(tag) == 1, (tag, t)
        if p.task_type == "Reasoning":
            assert "<solution>" in t and "</solution>" in t and "<rubric>" not in t
        else:
            assert "<rubric>" in t and "<justify>" in t and "<solution>" not in t
            assert t.index("<justify>") < t.index("</rubric>")
        lengths[p.id.rsplit("-", 1)[1]].append(len(t))
    all_lengths = [n for v in lengths.values() for n in v]
    print(f"\ntrace length: max {max(all_lengths)}, mean {sum(all_lengths) / len(all_lengths):.0f}; per kind "
          + ", ".join(f"{k} {max(v)}" for k, v in sorted(lengths.items())))
    assert sum(all_lengths) / len(all_lengths) < 400
    assert max(all_lengths) < 480


def test_trace_rejects_contradicting_label():
    p = syn.generate_pairs(1, seed=0, kinds=("add",))[0]
    with pytest.raises(ValueError, match="oracle"):
        syn.oracle_trace(p, p.chosen, p.rejected, "B")
    assert rj.parse_verdict(syn.oracle_trace(p, p.rejected, p.chosen)) == "B"  # None: oracle's own verdict


def test_oracle_reads_replies_not_labels():
    """Swap the stored labels: the oracle still finds the correct reply."""
    p = PreferencePair("x", [{"role": "user", "content": "What is 17 + 25?"}],
                       chosen=[{"role": "assistant", "content": "17 + 25 = 32."}],
                       rejected=[{"role": "assistant", "content": "17 + 25 = 42."}])
    assert syn.oracle_verdict(p, p.chosen, p.rejected) == "B"
    q = PreferencePair("y", [{"role": "user", "content": "Answer in exactly three words: describe rain."}],
                       chosen=[{"role": "assistant", "content": "Wet, grey."}],
                       rejected=[{"role": "assistant", "content": "Wet, grey, cold."}])
    assert syn.oracle_verdict(q, "Wet, grey.", "Wet, grey, cold.") == "B"
    with pytest.raises(ValueError):
        syn.oracle_verdict(q, "Wet, grey, cold.", "Cold, wet, grey.")  # both obey: undecidable


def test_kind_mix_and_ids():
    pairs = syn.generate_pairs(95, seed=2)
    kinds = collections.Counter(p.id.rsplit("-", 1)[1] for p in pairs)
    assert set(kinds) == set(syn.DEFAULT_KINDS)
    assert max(kinds.values()) - min(kinds.values()) <= 1
    assert len({p.id for p in pairs}) == len(pairs)
    types = collections.Counter(p.task_type for p in pairs)
    assert types["Reasoning"] > 0 and types["Chat"] > 0


def test_determinism_by_seed():
    a = [p.to_json() for p in syn.generate_pairs(200, seed=7, difficulty=2)]
    b = [p.to_json() for p in syn.generate_pairs(200, seed=7, difficulty=2)]
    c = [p.to_json() for p in syn.generate_pairs(200, seed=8, difficulty=2)]
    assert a == b
    assert a[:50] == [p.to_json() for p in syn.generate_pairs(50, seed=7, difficulty=2)]  # prefix-stable
    qa, qc = [_text(p["prompt"]) for p in a], [_text(p["prompt"]) for p in c]
    assert sum(x != y for x, y in zip(qa, qc)) > 150
    ea = syn.make_distillation_examples(syn.generate_pairs(50, seed=7), seed=1)
    eb = syn.make_distillation_examples(syn.generate_pairs(50, seed=7), seed=1)
    assert [e.to_json() for e in ea] == [e.to_json() for e in eb]


def test_difficulty_scales_sizes():
    def max_number(d):
        qs = [_text(p.prompt) for p in syn.generate_pairs(200, seed=1, kinds=("add", "compare"), difficulty=d)]
        return max(int(tok) for q in qs for tok in q.replace("?", " ").replace(",", " ").split() if tok.isdigit())

    assert max_number(1) < 100 < max_number(2) < 1000 < max_number(3)
    words = lambda d: max(len(_text(p.chosen).split()) for p in syn.generate_pairs(  # noqa: E731
        100, seed=1, kinds=("word_count",), difficulty=d))
    assert words(1) < words(3)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown kind"):
        syn.generate_pairs(3, seed=0, kinds=("add", "poetry"))
    with pytest.raises(ConfigError, match="difficulty"):
        syn.generate_pairs(3, seed=0, difficulty=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_balanced_and_seeded(seed):
    pairs = syn.generate_pairs(101, seed=4)
    exs = syn.make_judge_examples(pairs, seed=seed, template=REASONING)
    diff = 0
    for ex in exs:  # balanced to within one in every prefix
        assert ex.target is None and ex.chosen_position == ex.winner
        diff += 1 if ex.winner == "A" else -1
        assert abs(diff) <= 1
    again = syn.make_judge_examples(pairs, seed=seed, template=REASONING)
    assert [e.winner for e in again] == [e.winner for e in exs]
    # the winner really is where the chosen reply was placed
    for p, ex in zip(pairs, exs):
        blocks = ex.messages[-1]["content"]
        start = blocks.index("Chatbot A's response (start)\n") + len("Chatbot A's response (start)\n")
        a = blocks[start:blocks.index("\n### Chatbot A's response (end)")]
        assert a == _text(p.chosen if ex.winner == "A" else p.rejected)


def test_seed_changes_first_position():
    firsts = {syn.make_judge_examples(syn.generate_pairs(1, seed=0), seed=s)[0].winner for s in range(16)}
    assert firsts == {"A", "B"}


def test_jsonl_round_trip(tmp_path):
    pairs = syn.generate_pairs(40, seed=9)
    n = syn.write_pairs_jsonl(str(tmp_path / "pairs.jsonl"), pairs)
    assert n == 40
    back = list(read_records(str(tmp_path / "pairs.jsonl"), parse_pair))
    assert [p.to_json() for p in back] == [p.to_json() for p in pairs]

    exs = syn.make_distillation_examples(pairs, seed=9, template=INSTRUCT)
    syn.write_traces_jsonl(str(tmp_path / "traces.jsonl"), exs)
    first = json.loads((tmp_path / "traces.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"messages", "winner"} and first["messages"][-1]["role"] == "assistant"
    back = list(read_records(str(tmp_path / "traces.jsonl"), parse_judge_record))
    for ex, got in zip(exs, back):
        assert got.id == ex.id and got.messages == ex.messages and got.target == ex.target
        assert got.winner == ex.winner and got.task_type == ex.task_type
        assert rj.parse_verdict(got.target) == got.winner

    judge = syn.make_judge_examples(pairs, seed=9, template=REASONING)
    syn.write_judge_jsonl(str(tmp_path / "judge.jsonl"), judge)
    back = list(read_records(str(tmp_path / "judge.jsonl"), parse_judge_record))
    assert [(g.id, g.messages, g.winner, g.target) for g in back] == [(e.id, e.messages, e.winner, None) for e in judge]

    with pytest.raises(ValueError, match="no target"):
        syn.write_traces_jsonl(str(tmp_path / "bad.jsonl"), judge)


def test_records_pipeline_accepts_generic_rows():
    """The data pipeline's generic-pair path renders these rows the same way."""
    from rmr1_jax.data.records import to_judge_example

    p = syn.generate_pairs(3, seed=1)[2]
    ex = to_judge_example(p.to_json(), "f:1", 2, 5, INSTRUCT)
    ref = syn.make_judge_examples(syn.generate_pairs(3, seed=1), seed=5, template=INSTRUCT)[2]
    assert ex.to_json() == ref.to_json()
