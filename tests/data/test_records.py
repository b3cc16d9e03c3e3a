"""Record building (validation, tokenization, TFDS build/reuse) and the grain input pipeline.

Everything runs on a small SentencePiece tokenizer trained on synthetic judge texts and on
files written by :mod:`rmr1_jax.worlds.judging_tasks`.
"""

from __future__ import annotations

import collections
import copy
import json
import os

import numpy as np
import pytest

from rmr1_jax.data import records as rec_mod
from rmr1_jax.worlds import judging_tasks as syn
from rmr1_jax.data.pipeline import CheckpointableIterator, eval_batches, sft_dataset
from rmr1_jax.data.records import RecordOptions, build_records, tokenize_example, to_judge_example
from rmr1_jax.data.schemas import assign_positions
from rmr1_jax.errors import DataError
from rmr1_jax.text.prompts import JudgeTemplate
from rmr1_jax.text.tokenizer import train_sentencepiece

TEMPLATE = JudgeTemplate.builtin("instruct")
END = "<|im_end|>"
GEN_PROMPT = "<|im_start|>assistant\n"
BIG = 4096  # longer than any synthetic record


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    pairs = syn.generate_pairs(60, seed=1)
    exs = syn.make_distillation_examples(pairs, seed=1, template=TEMPLATE)
    texts = [TEMPLATE.system] + [m["content"] for e in exs for m in e.messages] + [e.target for e in exs]
    return train_sentencepiece(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=800)


def _trace_rows(n: int, seed: int = 3) -> list[dict]:
    exs = syn.make_distillation_examples(syn.generate_pairs(n, seed=seed), seed=seed, template=TEMPLATE)
    return list(syn.trace_rows(exs))


def _pair_rows(n: int, seed: int = 4) -> list[dict]:
    return list(syn.pair_rows(syn.generate_pairs(n, seed=seed)))


def _write(path, rows) -> str:
    """Write rows (dicts as JSON, str as the raw line, bytes as raw bytes) one per line."""
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, dict):
                r = json.dumps(r)
            if isinstance(r, str):
                r = r.encode("utf-8")
            f.write(r + b"\n")
    return str(path)


def _write_parquet(path, rows) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def _build(tmp_path, tok, paths, kind="sft", **opts):
    opts.setdefault("max_length", BIG)
    return build_records(str(tmp_path / "cache"), {"train": list(paths)}, tok, TEMPLATE,
                         RecordOptions(kind=kind, **opts), log=lambda s: None)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _by_id(source) -> dict[str, dict]:
    out = {}
    for r in _records(source):
        out[_text(r["id"])] = r
    assert len(out) == len(source), "record ids are not unique"
    return out


def _user_msg(text="Which reply is better?"):
    return {"role": "user", "content": text}


# Malformed rows: (name, row, substring the error must contain). The row is written on line 4.
BAD_ROWS = [
    ("bad_json", '{"messages": [{"role": "user", "content": "hi"}', "invalid JSON"),
    ("not_object_list", "[1, 2, 3]", "not a JSON object"),
    ("not_object_string", '"just a string"', "not a JSON object"),
    ("chosen_missing", {"prompt": "What is 2 + 2?", "rejected": "5"}, "missing field 'chosen'"),
    ("winner_missing", {"context_messages": [_user_msg()]}, "missing field 'winner'"),
    ("winner_tie_rmr1", {"context_messages": [_user_msg()], "winner": "tie"}, "'tie'"),
    ("winner_tie_trace", {"messages": [_user_msg(), {"role": "assistant", "content": "<answer>[[A]]</answer>"}],
                          "winner": "tie"}, "unknown winner value 'tie'"),
    ("empty_chosen", {"prompt": "What is 2 + 2?", "chosen": "", "rejected": "5"}, "'chosen' is empty"),
    ("empty_content", {"messages": [_user_msg(""), {"role": "assistant", "content": "x"}]}, "empty"),
    ("unknown_role", {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "unknown role 'bot'"),
    ("no_known_shape", {"question": "hi", "answer": "there"}, "none of"),
]
BAD_LINE = 4


def _file_with_bad_row(tmp_path, name, bad) -> str:
    good = _trace_rows(3)
    return _write(tmp_path / f"{name}.jsonl", [good[0], good[1], "", bad, good[2]])  # line 3 blank


# ---------------------------------------------------------------------------------------------
# Malformed input: clear errors with file and line, or counted skips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,bad,expect", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_malformed_row_raises_with_file_and_line(tmp_path, tok, name, bad, expect):
    path = _file_with_bad_row(tmp_path, name, bad)
    with pytest.raises(DataError) as ei:
        _build(tmp_path, tok, [path], on_error="raise")
    msg = str(ei.value)
    assert f"{path}:{BAD_LINE}:" in msg, msg
    assert expect in msg, msg
    assert "\n" not in msg


def test_invalid_utf8_row_raises_with_file_and_line(tmp_path, tok):
    good = _trace_rows(3)
    path = _write(tmp_path / "latin1.jsonl", [good[0], good[1], b'{"prompt": "caf\xe9"}', good[2]])
    with pytest.raises(DataError, match=f"{path}:3:"):
        _build(tmp_path, tok, [path], on_error="raise")
    _, stats = _build(tmp_path, tok, [path], on_error="skip")
    assert stats["train"]["written"] == 3


def test_error_in_second_file_names_that_file(tmp_path, tok):
    rows = _trace_rows(4)
    first = _write(tmp_path / "a.jsonl", rows[:2])
    second = _write(tmp_path / "b.jsonl", [rows[2], {"prompt": "q", "rejected": "r"}, rows[3]])
    with pytest.raises(DataError, match=f"{second}:2: missing field 'chosen'"):
        _build(tmp_path, tok, [first, second])


def _overlong_rows(tok):
    """(normal rows, a row whose trace is overlong, a row whose prompt is overlong, max_length)."""
    rows = _trace_rows(4)
    lengths = []
    for i, r in enumerate(rows):
        ex = to_judge_example(r, f"x:{i}", i, 0, TEMPLATE)
        lengths.append(len(tokenize_example(ex, tok, "sft")[0]))
    max_length = max(lengths) + 16
    long_trace = copy.deepcopy(rows[0])
    long_trace["id"] = "long-trace"
    long_trace["messages"][-1]["content"] += " and so on" * 150
    long_prompt = copy.deepcopy(rows[1])
    long_prompt["id"] = "long-prompt"
    long_prompt["messages"][1]["content"] += " more context" * 250
    return rows, long_trace, long_prompt, max_length


def test_overlong_record_raises_with_file_and_line(tmp_path, tok):
    rows, long_trace, _, max_length = _overlong_rows(tok)
    path = _write(tmp_path / "long.jsonl", [rows[0], rows[1], long_trace, rows[2]])
    with pytest.raises(DataError) as ei:
        _build(tmp_path, tok, [path], max_length=max_length, overlong="error")
    msg = str(ei.value)
    assert f"{path}:3:" in msg and f"max_length={max_length}" in msg and "longer than" in msg, msg


def test_missing_file_raises(tmp_path, tok):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not found") as ei:
        _build(tmp_path, tok, [missing])
    assert missing in str(ei.value)


def _parquet_rows(n_good: int = 5, bad_at: int | None = 3) -> list[dict]:
    rows = [{"id": r["id"], "messages": r["messages"], "winner": r["winner"], "task_type": r["task_type"]}
            for r in _trace_rows(n_good)]
    if bad_at is not None:
        bad = copy.deepcopy(rows[0])
        bad["id"] = "bad-role"
        bad["messages"][1]["role"] = "bot"
        rows.insert(bad_at - 1, bad)
    return rows


def test_parquet_bad_row_raises_with_file_and_row(tmp_path, tok):
    path = _write_parquet(tmp_path / "pairs.parquet", _parquet_rows(5, bad_at=3))
    with pytest.raises(DataError) as ei:
        _build(tmp_path, tok, [path], on_error="raise")
    msg = str(ei.value)
    assert f"{path}:3:" in msg and "unknown role 'bot'" in msg, msg


def test_parquet_skip_and_roundtrip(tmp_path, tok):
    path = _write_parquet(tmp_path / "pairs.parquet", _parquet_rows(5, bad_at=3))
    sources, stats = _build(tmp_path, tok, [path], on_error="skip")
    st = stats["train"]
    assert st["written"] == 5 and st["read"] == 5
    assert sum(st["skipped"].values()) == 1
    assert any("unknown role 'bot'" in k for k in st["skipped"])
    # The Parquet rows give exactly the records the same rows give as JSONL.
    jsonl = _write(tmp_path / "pairs.jsonl", [r for r in _parquet_rows(5, bad_at=None)])
    j_sources, _ = _build(tmp_path, tok, [jsonl], on_error="skip")
    p, j = _by_id(sources["train"]), _by_id(j_sources["train"])
    assert set(p) == set(j)
    for k in p:
        np.testing.assert_array_equal(p[k]["input_ids"], j[k]["input_ids"])
        np.testing.assert_array_equal(p[k]["loss_mask"], j[k]["loss_mask"])


def _mixed_file(tmp_path, tok):
    rows, long_trace, long_prompt, max_length = _overlong_rows(tok)
    lines = [rows[0]]
    for _, bad, _ in BAD_ROWS:
        lines.append(bad)
    lines += [rows[1], long_trace, rows[2], long_prompt, rows[3]]
    return _write(tmp_path / "mixed.jsonl", lines), max_length


def _check_skip_reasons(skipped: dict):
    assert sum(skipped.values()) == len(BAD_ROWS), skipped
    for name, _, expect in BAD_ROWS:
        assert any(expect in reason for reason in skipped), (name, expect, skipped)
    not_object = [n for r, n in skipped.items() if "not a JSON object" in r]
    assert not_object == [2], skipped  # both non-object rows under one reason


def test_skip_counts_reasons_and_overlong_skips(tmp_path, tok):
    path, max_length = _mixed_file(tmp_path, tok)
    sources, stats = _build(tmp_path, tok, [path], on_error="skip", overlong="skip", max_length=max_length)
    st = stats["train"]
    _check_skip_reasons(st["skipped"])
    assert st["read"] == 6  # 4 normal + 2 overlong rows parse fine
    assert st["written"] == 4 and len(sources["train"]) == 4
    assert st["overlong_skipped"] == 2 and st["truncated"] == 0
    assert st["max_tokens"] <= max_length
    assert not {"long-trace", "long-prompt"} & set(_by_id(sources["train"]))


def test_skip_with_truncate(tmp_path, tok):
    path, max_length = _mixed_file(tmp_path, tok)
    sources, stats = _build(tmp_path, tok, [path], on_error="skip", overlong="truncate", max_length=max_length)
    st = stats["train"]
    _check_skip_reasons(st["skipped"])
    # The long trace is cut to max_length; the long prompt cannot be (nothing left to learn).
    assert st["written"] == 5 and st["truncated"] == 1 and st["overlong_skipped"] == 1
    recs = _by_id(sources["train"])
    assert "long-prompt" not in recs
    cut = recs["long-trace"]
    assert len(cut["input_ids"]) == len(cut["loss_mask"]) == max_length == st["max_tokens"]
    assert cut["loss_mask"][-1] == 1 and 0 < int(cut["prompt_len"]) < max_length


def test_all_rows_bad_raises_no_usable_records(tmp_path, tok):
    path = _write(tmp_path / "bad.jsonl", [bad for _, bad, _ in BAD_ROWS])
    with pytest.raises(DataError, match="no usable records") as ei:
        _build(tmp_path, tok, [path], on_error="skip")
    assert path in str(ei.value)


def test_all_rows_overlong_raises_no_usable_records(tmp_path, tok):
    path = _write(tmp_path / "short.jsonl", _trace_rows(3))
    with pytest.raises(DataError, match="no usable records"):
        _build(tmp_path, tok, [path], max_length=16, overlong="skip")


# Rule-adapter rows that do not fit the head or contradict themselves, on line 2 (line 1 fits a
# head of 3 or 4): (name, row, model.num_labels, substring). Each passed silently before.
_RULE_ROW = {"prompt": "Help me.", "a": "Sure.", "b": "No."}
BAD_RULE_ROWS = [
    ("head_wider_than_pool", {**_RULE_ROW, "rule_indices": [0, 2], "labels": [1, 0, 1]}, 4,
     "field 'labels' has 3 values (one per rule of the pool the row was selected from), but the adapter head "
     "has model.num_labels=4 outputs"),
    ("labels_longer_than_head", {**_RULE_ROW, "rule_indices": [0, 2], "labels": [1, 0, 1, 0]}, 3,
     "field 'labels' has 4 values"),
    ("labels_not_rule_indices", {**_RULE_ROW, "rule_indices": [0, 2], "labels": [0, 1, 0]}, 3,
     "fields 'labels' and 'rule_indices' disagree"),
    ("booleans_and_floats", {**_RULE_ROW, "labels": [True, 0.0, 1.0]}, 3, "field 'labels' mixes booleans with numbers"),
]


@pytest.mark.parametrize("name,bad,num_labels,expect", BAD_RULE_ROWS, ids=[b[0] for b in BAD_RULE_ROWS])
def test_bad_rule_adapter_row_raises_with_file_and_line(tmp_path, tok, name, bad, num_labels, expect):
    path = _write(tmp_path / f"{name}.jsonl", [{**_RULE_ROW, "rule_indices": [0]}, bad])
    with pytest.raises(DataError) as ei:
        _build(tmp_path, tok, [path], kind="rules", num_labels=num_labels)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:2: ") and expect in msg and "\n" not in msg, msg


def test_sft_needs_a_trace(tmp_path, tok):
    """A generic pair has no judge reply to learn: a clear error for SFT, fine for prompts."""
    path = _write(tmp_path / "pairs.jsonl", _pair_rows(3))
    with pytest.raises(DataError, match=f"{path}:1: .*no target"):
        _build(tmp_path, tok, [path], kind="sft")
    _, stats = _build(tmp_path, tok, [path], kind="prompt")
    assert stats["train"]["written"] == 3


# ---------------------------------------------------------------------------------------------
# What the records hold
# ---------------------------------------------------------------------------------------------


def test_sft_loss_mask_covers_exactly_the_trace(tmp_path, tok):
    rows = _trace_rows(8)
    # RM-R1 distillation rows: the judge prompt in context_messages, the trace in "winner".
    rmr1 = [{"id": f"rmr1-{i}", "context_messages": r["messages"][:-1], "winner": r["messages"][-1]["content"]}
            for i, r in enumerate(_trace_rows(4, seed=9))]
    path = _write(tmp_path / "traces.jsonl", rows + rmr1)
    sources, stats = _build(tmp_path, tok, [path])
    assert stats["train"]["written"] == len(rows) + len(rmr1)
    recs = _by_id(sources["train"])
    for r in rows + rmr1:
        rec = recs[r["id"]]
        msgs = r["messages"] if "messages" in r else r["context_messages"] + [
            {"role": "assistant", "content": r["winner"]}]
        trace = msgs[-1]["content"]
        ids, mask = np.asarray(rec["input_ids"]), np.asarray(rec["loss_mask"])
        assert ids.shape == mask.shape
        on = np.flatnonzero(mask)
        assert on.size and np.all(np.diff(on) == 1), "loss mask is not one contiguous span"
        assert tok.decode(ids[mask == 1]) == trace + END
        assert int(rec["prompt_len"]) == on[0]
        assert tok.decode(ids[: on[0]]) == tok.apply_chat_template(msgs[:-1], add_generation_prompt=True)
        assert tok.decode(ids[: on[0]]).endswith(GEN_PROMPT)
        assert tok.decode(ids) == tok.apply_chat_template(msgs)
        assert _text(rec["winner"]) == (r.get("winner", "") if "messages" in r else "")


def _chosen_block(decoded: str) -> tuple[str, str]:
    """The A and B response texts of a rendered single-turn judge prompt."""
    def between(start, end):
        i = decoded.index(start) + len(start)
        return decoded[i: decoded.index(end, i)]

    return (between("### Chatbot A's response (start)\n", "\n### Chatbot A's response (end)"),
            between("### Chatbot B's response (start)\n", "\n### Chatbot B's response (end)"))


def test_prompt_records_end_with_generation_prompt_and_carry_winner(tmp_path, tok):
    pairs = _pair_rows(9)
    judge = [{"id": "rmr1-a", "context_messages": [_user_msg("Judge: A or B?")], "winner": "model_a"},
             {"id": "rmr1-b", "context_messages": [_user_msg("Judge: A or B?")], "winner": "model_b"}]
    path = _write(tmp_path / "prompts.jsonl", pairs + judge)
    sources, stats = _build(tmp_path, tok, [path], kind="prompt")
    assert stats["train"]["written"] == len(pairs) + len(judge)
    recs = _by_id(sources["train"])
    for rid, want in (("rmr1-a", "A"), ("rmr1-b", "B")):
        r = recs[rid]
        assert _text(r["winner"]) == want
        assert tok.decode(r["input_ids"]) == tok.apply_chat_template([_user_msg("Judge: A or B?")],
                                                                     add_generation_prompt=True)
    for p in pairs:
        r = recs[p["id"]]
        text = tok.decode(r["input_ids"])
        assert text.endswith(GEN_PROMPT)
        assert text.count(GEN_PROMPT) == 1
        assert int(r["prompt_len"]) == len(r["input_ids"])
        assert len(r["loss_mask"]) == 0
        assert _text(r["winner"]) in ("A", "B")
        assert TEMPLATE.system in text


def _positions(tmp_path, tok, path, seed) -> tuple[list[str], dict[str, str]]:
    """Winners in file order and the pair id -> winner map, checking each against the text."""
    pairs = {p["id"]: p for p in map(json.loads, open(path))}
    sources, _ = build_records(str(tmp_path / f"cache-{seed}"), {"train": [path]}, tok, TEMPLATE,
                               RecordOptions(kind="prompt", max_length=BIG, position_seed=seed), log=lambda s: None)
    recs = _by_id(sources["train"])
    for rid, r in recs.items():
        a, b = _chosen_block(tok.decode(r["input_ids"]))
        chosen = pairs[rid]["chosen"][0]["content"]
        rejected = pairs[rid]["rejected"][0]["content"]
        assert {a, b} == {chosen, rejected}
        assert _text(r["winner"]) == ("A" if a == chosen else "B"), rid
    order = [_text(recs[rid]["winner"]) for rid in pairs]
    return order, {rid: _text(r["winner"]) for rid, r in recs.items()}


def test_positions_balanced_recorded_and_seeded(tmp_path, tok):
    path = _write(tmp_path / "pairs.jsonl", _pair_rows(21))
    order0, _ = _positions(tmp_path, tok, path, seed=0)
    counts = collections.Counter(order0)
    assert abs(counts["A"] - counts["B"]) <= 1, counts
    for k in range(1, len(order0) + 1):  # balanced in every prefix too
        c = collections.Counter(order0[:k])
        assert abs(c["A"] - c["B"]) <= 1
    # Same seed, same placement (fresh cache directory: a real rebuild).
    assert _positions(tmp_path / "again", tok, path, seed=0)[0] == order0
    # A seed whose first placement differs flips the first record (and, alternating, all).
    first = syn.generate_pairs(1, seed=4)[0]
    other = next(s for s in range(1, 64) if assign_positions(first, 0, s)[2] != assign_positions(first, 0, 0)[2])
    order1, _ = _positions(tmp_path, tok, path, seed=other)
    assert order1[0] != order0[0]
    assert order1 == [{"A": "B", "B": "A"}[w] for w in order0]


def test_both_orders_stores_the_swapped_prompt(tmp_path, tok):
    """``both_orders``: each pair's record also holds the prompt with A and B swapped, whose
    right verdict is the other letter; already rendered judge prompts cannot be swapped."""
    rows = _pair_rows(7)
    path = _write(tmp_path / "pairs.jsonl", rows)
    sources, stats = build_records(str(tmp_path / "both"), {"train": [path]}, tok, TEMPLATE,
                                   RecordOptions(kind="prompt", max_length=BIG, both_orders=True), log=lambda s: None)
    assert stats["train"]["written"] == len(rows)
    for row in rows:
        r = _by_id(sources["train"])[row["id"]]
        a, b = _chosen_block(tok.decode(r["input_ids"]))
        sa, sb = _chosen_block(tok.decode(r["input_ids_swapped"]))
        assert (sa, sb) == (b, a)
        chosen = row["chosen"][0]["content"]
        assert _text(r["winner"]) == ("A" if a == chosen else "B")
        assert tok.decode(r["input_ids_swapped"]).endswith(GEN_PROMPT)
    # without the option the field is empty
    plain, _ = _build(tmp_path / "plain", tok, [path], kind="prompt")
    assert all(len(plain["train"][i]["input_ids_swapped"]) == 0 for i in range(len(rows)))
    judge = _write(tmp_path / "judge.jsonl",
                   [{"id": "j", "context_messages": [_user_msg("Judge: A or B?")], "winner": "model_a"}])
    with pytest.raises(DataError, match=r"judge\.jsonl:1: both A/B orders need a prompt/chosen/rejected pair"):
        build_records(str(tmp_path / "both-judge"), {"train": [judge]}, tok, TEMPLATE,
                      RecordOptions(kind="prompt", max_length=BIG, both_orders=True), log=lambda s: None)


# ---------------------------------------------------------------------------------------------
# Build reuse
# ---------------------------------------------------------------------------------------------


def test_build_reused_when_unchanged_and_rebuilt_when_file_changes(tmp_path, tok, monkeypatch):
    calls = []
    real = rec_mod._examples

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(rec_mod, "_examples", counting)
    rows = _trace_rows(6)
    path = _write(tmp_path / "t.jsonl", rows[:5] + ['{"broken'])
    cache = tmp_path / "cache"
    _, stats1 = _build(tmp_path, tok, [path], on_error="skip")
    assert len(calls) == 1
    (d1,) = os.listdir(cache)
    mtime = os.stat(cache / d1).st_mtime_ns
    tree1 = sorted((p, os.stat(os.path.join(p, f)).st_mtime_ns) for p, _, fs in os.walk(cache / d1) for f in fs)

    src2, stats2 = _build(tmp_path, tok, [path], on_error="skip")
    assert len(calls) == 1, "an unchanged build was generated again"
    assert os.listdir(cache) == [d1] and os.stat(cache / d1).st_mtime_ns == mtime
    assert sorted((p, os.stat(os.path.join(p, f)).st_mtime_ns)
                  for p, _, fs in os.walk(cache / d1) for f in fs) == tree1
    assert stats2 == stats1 and stats2["train"]["skipped"]  # the reused build still reports skips
    assert len(src2["train"]) == 5

    # Changing the file (new content, new size and mtime) rebuilds into a new directory.
    _write(path, rows)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    src3, stats3 = _build(tmp_path, tok, [path], on_error="skip")
    assert len(calls) == 2
    assert len(os.listdir(cache)) == 2
    assert stats3["train"]["written"] == 6 and not stats3["train"]["skipped"] and len(src3["train"]) == 6

    # Changing an option rebuilds too.
    _build(tmp_path, tok, [path], on_error="skip", position_seed=1)
    assert len(calls) == 3


# ---------------------------------------------------------------------------------------------
# The grain pipeline
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_source(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    path = _write(d / "traces.jsonl", _trace_rows(40, seed=21))
    sources, stats = build_records(str(d / "cache"), {"train": [path]}, tok, TEMPLATE,
                                   RecordOptions(max_length=BIG), log=lambda s: None)
    src = sources["train"]
    assert len(src) == 40
    return src, stats["train"]["max_tokens"]


def _key(ids) -> tuple:
    return tuple(int(i) for i in ids)


def _row_records(batch) -> list[tuple]:
    """Records of an unpacked batch (one per row; all-padding rows left out)."""
    out = []
    for ids, seg in zip(batch["input_ids"], batch["segment_ids"]):
        if seg.any():
            out.append(_key(ids[seg > 0]))
    return out


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_sft_dataset_packs_with_segments_and_pad(tok, sft_source):
    src, max_tokens = sft_source
    by_ids = {_key(r["input_ids"]): np.asarray(r["loss_mask"]) for r in _records(src)}
    length = 3 * max_tokens
    ds = sft_dataset(src, batch_size=2, max_length=length, seed=0, pad_id=tok.pad_id, epochs=1, pack=True)
    batches = list(ds)
    assert batches
    seen, multi, padded = [], 0, 0
    for b in batches:
        assert set(b) == {"input_ids", "segment_ids", "positions", "loss_mask"}
        for k in b:
            assert b[k].shape == (2, length), (k, b[k].shape)
        for ids, seg, pos, mask in zip(b["input_ids"], b["segment_ids"], b["positions"], b["loss_mask"]):
            n_seg = int(seg.max())
            assert n_seg >= 1
            multi += n_seg >= 2
            used = int(np.sum(seg > 0))
            assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0), "padding is not at the end"
            assert np.all(np.diff(seg[:used]) >= 0)
            assert sorted(set(seg[:used].tolist())) == list(range(1, n_seg + 1))
            # padding: the tokenizer's pad id (not 0), segment 0, no loss
            assert tok.pad_id != 0
            assert np.all(ids[used:] == tok.pad_id) and np.all(mask[used:] == 0)
            padded += used < length
            for s in range(1, n_seg + 1):
                sel = seg == s
                np.testing.assert_array_equal(pos[sel], np.arange(int(sel.sum())))  # restarts at 0
                key = _key(ids[sel])
                assert key in by_ids, "a packed segment is not a record"
                np.testing.assert_array_equal(mask[sel], by_ids[key])
                seen.append(key)
    assert multi > 0, "no row packed more than one record"
    assert padded > 0
    assert len(seen) == len(set(seen))
    assert len(seen) <= len(by_ids) and len(seen) >= len(by_ids) - 2 * 3  # only a dropped remainder missing


def test_sft_dataset_unpacked_pads_each_record(tok, sft_source):
    src, max_tokens = sft_source
    ds = sft_dataset(src, batch_size=4, max_length=max_tokens + 8, seed=0, pad_id=tok.pad_id, epochs=1,
                     pack=False)
    for b in ds:
        for ids, seg, pos, mask in zip(b["input_ids"], b["segment_ids"], b["positions"], b["loss_mask"]):
            n = int(seg.sum())
            assert set(np.unique(seg).tolist()) <= {0, 1}
            np.testing.assert_array_equal(pos[:n], np.arange(n))
            assert np.all(ids[n:] == tok.pad_id) and np.all(mask[n:] == 0)


def test_host_sharding_disjoint_and_complete(tok, sft_source):
    src, max_tokens = sft_source
    every = {_key(r["input_ids"]) for r in _records(src)}
    per_host = []
    for p in range(2):
        ds = sft_dataset(src, batch_size=1, max_length=max_tokens, seed=5, pad_id=tok.pad_id, epochs=1, pack=False,
                         process_index=p, process_count=2)
        recs = [k for b in ds for k in _row_records(b)]
        assert len(recs) == len(set(recs))
        per_host.append(set(recs))
    assert not per_host[0] & per_host[1]
    assert per_host[0] | per_host[1] == every
    assert abs(len(per_host[0]) - len(per_host[1])) <= 1


def test_iterator_state_resumes_exactly(tok, sft_source):
    src, max_tokens = sft_source
    kw = dict(batch_size=2, max_length=2 * max_tokens, seed=3, pad_id=tok.pad_id, epochs=None, pack=True)
    it = CheckpointableIterator(sft_dataset(src, **kw))
    _take(it, 8)
    state = json.loads(json.dumps(it.state()))  # what goes into a checkpoint
    expected = _take(it, 5)  # crosses into the second epoch (40 records, ~2 per row, 2 rows per batch)
    fresh = CheckpointableIterator(sft_dataset(src, **kw))
    fresh.restore(state)
    got = _take(fresh, 5)
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for k in e:
            np.testing.assert_array_equal(e[k], g[k])
    # restoring into the same iterator works as well
    it.restore(state)
    for e, g in zip(expected, _take(it, 5)):
        np.testing.assert_array_equal(e["input_ids"], g["input_ids"])


def test_shuffle_is_seeded(tok, sft_source):
    src, max_tokens = sft_source

    def order(seed, shuffle=True):
        ds = sft_dataset(src, batch_size=1, max_length=max_tokens, seed=seed, pad_id=tok.pad_id, epochs=1,
                         pack=False, shuffle=shuffle)
        return [k for b in ds for k in _row_records(b)]

    a, b, c = order(0), order(0), order(1)
    assert a == b
    assert a != c and sorted(a) == sorted(c)
    assert order(0, shuffle=False) == [_key(r["input_ids"]) for r in _records(src)]


def test_eval_batches_in_order_with_padded_last_batch(tok, sft_source):
    src, max_tokens = sft_source
    length = max_tokens + 4
    batches = list(eval_batches(src, batch_size=6, max_length=length, pad_id=tok.pad_id))
    assert len(batches) == 7  # 40 records: 6 full batches and one of 4 + 2 padding rows
    for b in batches:
        for k in ("input_ids", "segment_ids", "positions", "loss_mask"):
            assert b[k].shape == (6, length)
    rows = [{k: b[k][i] for k in b} for b in batches for i in range(6)]
    for i, r in enumerate(_records(src)):
        n = len(r["input_ids"])
        np.testing.assert_array_equal(rows[i]["input_ids"][:n], r["input_ids"])
        np.testing.assert_array_equal(rows[i]["loss_mask"][:n], r["loss_mask"])
        assert np.all(rows[i]["segment_ids"][:n] == 1) and np.all(rows[i]["segment_ids"][n:] == 0)
        assert np.all(rows[i]["input_ids"][n:] == tok.pad_id)
    for r in rows[40:]:
        assert np.all(r["input_ids"] == tok.pad_id)
        assert not r["segment_ids"].any() and not r["loss_mask"].any() and not r["positions"].any()

    limited = list(eval_batches(src, batch_size=6, max_length=length, pad_id=tok.pad_id, limit=7))
    assert len(limited) == 2 and int(limited[1]["segment_ids"].any(axis=1).sum()) == 1

    hosts = [[k for b in eval_batches(src, batch_size=6, max_length=length, pad_id=tok.pad_id, process_index=p,
                                      process_count=2) for k in _row_records(b)] for p in range(2)]
    assert not set(hosts[0]) & set(hosts[1])
    assert set(hosts[0]) | set(hosts[1]) == {_key(r["input_ids"]) for r in _records(src)}
