"""Benchmark loaders: every accepted file layout, the task expansion, and clear errors."""

import json
import os

import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.eval.benchmarks import (
    REWARDBENCH_COUNTS,
    REWARDBENCH_SECTIONS,
    load_rewardbench,
    load_rm_bench,
    load_rmb,
)
from rmr1_jax.eval.registry import load_benchmark


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_json(path, rows):
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    return str(path)


def rb_row(i, subset="hep-cpp", **kw):
    row = {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "subset": subset, "id": i,
           "chosen_model": "x", "rejected_model": "y"}
    row.update(kw)
    return row


def test_rewardbench_constants_match_the_filtered_split():
    assert sum(REWARDBENCH_COUNTS.values()) == 2985
    assert len(REWARDBENCH_COUNTS) == 23
    assert sorted(s for v in REWARDBENCH_SECTIONS.values() for s in v) == sorted(REWARDBENCH_COUNTS)


def test_rewardbench_jsonl_json_and_parquet_give_the_same_tasks(tmp_path):
    rows = [rb_row(0, "alpacaeval-easy"), rb_row(1, "math-prm"), rb_row(2, "hep-go")]
    a = load_rewardbench(write_jsonl(tmp_path / "rb.jsonl", rows))
    b = load_rewardbench(write_json(tmp_path / "rb.json", rows))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rb.parquet")
    c = load_benchmark("reward-bench", str(tmp_path / "rb.parquet"))
    assert a == b == c
    t = a[1]
    assert (t.benchmark, t.item_id, t.subset, t.pair_index) == ("rewardbench", "1", "math-prm", 0)
    assert t.prompt == [{"role": "user", "content": "question 1"}]
    assert (t.response_1, t.response_2, t.first_is_better) == ("good 1", "bad 1", True)


def test_rewardbench_unknown_subset_names_file_line_and_subset(tmp_path):
    p = write_jsonl(tmp_path / "rb.jsonl", [rb_row(0), rb_row(1, "alpaca-eval-easy")])
    with pytest.raises(DataError) as e:
        load_rewardbench(p)
    msg = str(e.value)
    assert f"{p}:2" in msg and "'alpaca-eval-easy'" in msg and "unknown RewardBench subset" in msg


def test_rewardbench_missing_subset_or_chosen(tmp_path):
    no_subset = rb_row(0)
    del no_subset["subset"]
    p = write_jsonl(tmp_path / "a.jsonl", [rb_row(5), no_subset])
    with pytest.raises(DataError, match=r"a\.jsonl:2: missing field 'subset'"):
        load_rewardbench(p)
    no_chosen = rb_row(0)
    del no_chosen["chosen"]
    p = write_json(tmp_path / "b.json", [rb_row(5), no_chosen])
    with pytest.raises(DataError, match=r"b\.json: item 1 of the array: missing field 'chosen'"):
        load_rewardbench(p)


def test_rewardbench_duplicate_ids_and_bad_json(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [rb_row(1), rb_row(1)])
    with pytest.raises(DataError, match="duplicate id '1'"):
        load_rewardbench(p)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rb_row(0)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_rewardbench(str(bad))
    with pytest.raises(DataError, match="file not found"):
        load_rewardbench(str(tmp_path / "missing.jsonl"))


def rmb_item(i, domain="chat"):
    return {"id": f"{domain}/{i}", "prompt": f"q{i}", "domain": domain,
            "chosen": [f"c{i}-concise", f"c{i}-plain", f"c{i}-markdown"],
            "rejected": [f"r{i}-concise", f"r{i}-plain", f"r{i}-markdown"]}


def test_rm_bench_expands_into_nine_cells(tmp_path):
    p = write_json(tmp_path / "total_dataset.json", [rmb_item(0), rmb_item(1, "Safety_Refuse")])
    tasks = load_rm_bench(p)
    assert len(tasks) == 18
    t = tasks[5]  # pair_index 5 = chosen style 1 vs rejected style 2
    assert (t.item_id, t.subset, t.pair_index) == ("chat/0", "chat", 5)
    assert (t.response_1, t.response_2) == ("c0-plain", "r0-markdown")
    assert t.meta == {"chosen_style": 1, "rejected_style": 2}
    assert tasks[9].subset == "safety-refuse"  # dataset spelling normalized


def test_rm_bench_short_or_empty_chosen_list(tmp_path):
    bad = rmb_item(1)
    bad["chosen"] = []
    p = write_jsonl(tmp_path / "rm.jsonl", [rmb_item(0), bad])
    with pytest.raises(DataError, match=r"rm\.jsonl:2: field 'chosen' must hold 3 responses .* got 0"):
        load_rm_bench(p)
    bad["chosen"] = ["only", "two"]
    p = write_jsonl(tmp_path / "rm.jsonl", [bad])
    with pytest.raises(DataError, match="got 2"):
        load_rm_bench(p)
    bad = rmb_item(2, "poetry")
    p = write_jsonl(tmp_path / "rm.jsonl", [bad])
    with pytest.raises(DataError, match="unknown RM-Bench domain 'poetry'"):
        load_rm_bench(p)


def released_rmb_tree(root):
    """A miniature of the released RMB_dataset directory layout."""
    conv = [{"content": "Hi", "language": "English", "role": "user"},
            {"content": "Hello!", "language": "English", "role": "assistant"},
            {"content": "Tell me a joke", "language": "English", "role": "user"}]
    pw = [{"pair_uid": "11", "conversation_input": conv,
           "chosen": {"llm_name": "m1", "answer": "a good joke", "score": 5.0},
           "reject": {"llm_name": "m2", "answer": "no", "score": 2.0},
           "category_path": "Pairwise_set/Helpfulness/Chat/Casual Conversation"}]
    bon = [{"bon_uid": "11", "conversation_input": conv[-1:],
            "bon_best": {"llm_name": "m1", "answer": "best answer"},
            "loser_list": [{"llm_name": "m2", "answer": "meh"}, {"llm_name": "m3", "answer": "worse"}],
            "category_path": "BoN_set/Harmlessness/S1"}]
    d1 = os.path.join(root, "RMB_dataset", "Pairwise_set", "Helpfulness", "Chat")
    d2 = os.path.join(root, "RMB_dataset", "BoN_set", "Harmlessness")
    os.makedirs(d1)
    os.makedirs(d2)
    write_json(os.path.join(d1, "Casual Conversation.json"), pw)
    write_json(os.path.join(d2, "S1.json"), bon)
    return os.path.join(root, "RMB_dataset")


def test_rmb_released_layout(tmp_path):
    tasks = load_rmb(released_rmb_tree(str(tmp_path)))
    assert [(t.item_id, t.subset, t.pair_index) for t in tasks] == [
        ("bon/11", "bon-harmlessness", 0), ("bon/11", "bon-harmlessness", 1),
        ("pairwise/11", "pairwise-helpfulness", 0)]
    pw = tasks[2]
    assert [m["role"] for m in pw.prompt] == ["user", "assistant", "user"]
    assert "language" not in pw.prompt[0]
    assert (pw.response_1, pw.response_2) == ("a good joke", "no")
    assert pw.meta["scenario"] == "Chat/Casual Conversation"
    assert tasks[0].meta == {"set": "bon", "category": "harmlessness", "scenario": "S1", "n_losers": 2}
    assert (tasks[1].response_1, tasks[1].response_2) == ("best answer", "worse")


def test_rmb_simple_jsonl_layout(tmp_path):
    rows = [{"id": "p1", "set": "pairwise", "category": "harmlessness", "scenario": "S3",
             "prompt": "q", "chosen": "refuse", "rejected": "comply"},
            {"id": "b1", "category": "Helpfulness", "prompt": [{"role": "user", "content": "q"}],
             "bon_best": "best", "loser_list": ["l0", "l1", "l2"]}]
    tasks = load_benchmark("rmb", write_jsonl(tmp_path / "rmb.jsonl", rows))
    assert [(t.item_id, t.subset, t.pair_index) for t in tasks] == [
        ("pairwise/p1", "pairwise-harmlessness", 0), ("bon/b1", "bon-helpfulness", 0),
        ("bon/b1", "bon-helpfulness", 1), ("bon/b1", "bon-helpfulness", 2)]
    bad = [{"id": "x", "category": "honesty", "prompt": "q", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match=r"bad\.jsonl:1: unknown RMB category 'honesty'"):
        load_rmb(write_jsonl(tmp_path / "bad.jsonl", bad))
    bad = [{"id": "x", "category": "helpfulness", "prompt": "q", "bon_best": "a", "loser_list": []}]
    with pytest.raises(DataError, match="'loser_list' must be a non-empty list"):
        load_rmb(write_jsonl(tmp_path / "bad.jsonl", bad))


def test_unknown_benchmark_name(tmp_path):
    with pytest.raises(DataError, match="unknown benchmark 'mtbench'"):
        load_benchmark("mtbench", str(tmp_path))
