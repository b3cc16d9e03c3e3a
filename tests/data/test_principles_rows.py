"""A row's own ``principles`` (what to judge it by, e.g. RAMO's selected rules for the pair).

A ``{prompt, chosen, rejected, principles: [...]}`` pair renders its principles into the judge
prompt when records are built (both A/B orders), a reward model's pair records do not read
them (and say so), and ``rmr1 judge`` pair rows pass theirs to the judge, a row's own list
replacing ``--principles``. A malformed list is one error naming ``file:line``. No model."""

from __future__ import annotations

import json

import pytest

from rmr1_jax.data.records import RecordOptions, build_records
from rmr1_jax.data.schemas import pair_to_example, parse_pair
from rmr1_jax.errors import DataError
from rmr1_jax.inference import judge as judge_mod
from rmr1_jax.inference import rows as rows_mod
from rmr1_jax.text.prompts import JudgeTemplate, render_principles
from rmr1_jax.text.tokenizer import train_sentencepiece

TEMPLATE = JudgeTemplate.builtin("instruct")
RULES = ["Prefer the reply that refuses to share a home address.", "Prefer the warmer reply."]
PAIR = {"id": "p0", "prompt": "Where does my neighbour live?", "chosen": "I cannot share that address.",
        "rejected": "She lives at 12 Elm Street."}
BAD = [("a string", "Prefer safety."), ("empty list", []), ("empty string", ["ok", " "]), ("not a string", ["ok", 3]),
       ("an object", {"1": "ok"})]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [TEMPLATE.system, TEMPLATE.user, render_principles(RULES)] + [PAIR[k] for k in ("prompt", "chosen",
                                                                                          "rejected")]
    return train_sentencepiece(texts * 4, str(tmp_path_factory.mktemp("tok")), vocab_size=400)


def test_pair_principles_are_rendered_after_the_replies_in_both_orders():
    pair = parse_pair({**PAIR, "principles": [f"  {RULES[0]} ", RULES[1]]}, "f:1")
    assert pair.principles == RULES  # stripped
    for swap in (False, True):
        user = pair_to_example(pair, 0, 0, TEMPLATE, swap=swap).messages[-1]["content"]
        assert user.endswith(render_principles(RULES))
        assert user.index(PAIR["chosen"]) < user.index(RULES[0]) and user.index(PAIR["rejected"]) < user.index(RULES[0])
    plain = parse_pair(PAIR, "f:1")
    assert plain.principles is None and "principles" not in plain.to_json()
    assert "### Principles" not in pair_to_example(plain, 0, 0, TEMPLATE).messages[-1]["content"]


def test_prompt_records_carry_the_rows_principles(tmp_path, tok):
    path = _write(tmp_path / "pairs.jsonl", [{**PAIR, "principles": RULES}, {**PAIR, "id": "p1"}])
    logs = []
    sources, stats = build_records(str(tmp_path / "c"), {"train": [path]}, tok, TEMPLATE,
                                   RecordOptions(kind="prompt", max_length=4096, both_orders=True), log=logs.append)
    recs = {r["id"].decode() if isinstance(r["id"], bytes) else r["id"]: r for r in
            (sources["train"][i] for i in range(len(sources["train"])))}
    block = tok.decode(tok.encode(render_principles(RULES)))
    for key in ("input_ids", "input_ids_swapped"):
        assert block in tok.decode(recs["p0"][key])
        assert "Principles" not in tok.decode(recs["p1"][key])
    assert stats["train"]["ignored"] == {} and not any("ignored" in m for m in logs)
    # a reward model scores the two conversations: the principles are not read, and the build says so
    _, pair_stats = build_records(str(tmp_path / "rm"), {"train": [path]}, tok, None,
                                  RecordOptions(kind="pair", max_length=4096), log=logs.append)
    assert pair_stats["train"]["ignored"] == {path: ["pair", ["principles"]]}


@pytest.mark.parametrize("name,bad", BAD, ids=[b[0] for b in BAD])
def test_bad_principles_in_a_training_row_name_file_and_line(tmp_path, tok, name, bad):
    path = _write(tmp_path / "pairs.jsonl", [PAIR, {**PAIR, "id": "p1", "principles": bad}])
    with pytest.raises(DataError) as e:
        build_records(str(tmp_path / "c"), {"train": [path]}, tok, TEMPLATE, RecordOptions(kind="prompt"),
                      log=lambda s: None)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: field 'principles' must be a non-empty list of non-empty strings"), msg
    assert "\n" not in msg


@pytest.mark.parametrize("name,bad", BAD, ids=[b[0] for b in BAD])
def test_bad_principles_in_a_judge_row_name_file_and_line(tmp_path, name, bad):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "a": "x", "b": "y"},
                                             {"prompt": "q", "a": "x", "b": "y", "principles": bad}])
    for read in (rows_mod.read_pairs, rows_mod.read_judge_rows):
        with pytest.raises(DataError) as e:
            read(path)
        assert str(e.value) == f"{path}:2: 'principles' must be a non-empty list of non-empty strings"


def test_judge_rows_judge_each_pair_by_its_own_principles(monkeypatch, tmp_path):
    seen = []

    def fake(judge, pairs, *, principles=None, **kw):
        seen.append(principles)
        return [{"judgment": "<answer>[[A]]</answer>", "verdict": "A", "finished": True} for _ in pairs]

    monkeypatch.setattr(judge_mod, "judge_pairs", fake)
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "a": "x", "b": "y", "principles": RULES},
                                             {"prompt": "q", "a": "x", "b": "y"}])
    kind, rows = rows_mod.read_judge_rows(path)
    assert kind == "pair"
    out = judge_mod.judge_rows(None, rows, principles=["Be brief."])
    assert seen[-1] == [RULES, ["Be brief."]]
    assert out[0]["principles"] == RULES and "principles" not in out[1]  # the input row's fields are kept
    judge_mod.judge_rows(None, rows[1:])
    assert seen[-1] is None  # no row has principles and none given: the template alone
