"""Benchmark formulas checked against numbers worked out by hand, the no-verdict and tie
rules, results-file robustness, and the report files."""

import json

import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.eval.report import compare, summary_line, write_report
from rmr1_jax.eval.run import score_and_report
from rmr1_jax.eval.results import ResultsWriter, done_keys, read_results
from rmr1_jax.eval.scoring import score_results, score_rows


def gen(bench, item, subset, ok, *, pair=0, winner="A", meta=None):
    """A generative result row: ok True/False/None (None = no verdict)."""
    other = "B" if winner == "A" else "A"
    row = {"benchmark": bench, "item_id": str(item), "subset": subset, "pair_index": pair,
           "winner": winner, "verdict": None if ok is None else (winner if ok else other)}
    if meta:
        row["meta"] = meta
    return row


def rewardbench_rows():
    """Per subset: (number correct, number wrong, number without verdict)."""
    spec = {
        "alpacaeval-easy": (2, 0, 0), "mt-bench-easy": (1, 1, 0),  # Chat
        "mt-bench-hard": (0, 1, 0), "llmbar-natural": (1, 0, 0),  # Chat Hard
        "donotanswer": (0, 0, 1), "xstest-should-respond": (2, 0, 0),  # Safety
        "math-prm": (1, 1, 0), "hep-cpp": (4, 0, 0), "hep-go": (1, 1, 0), "hep-java": (0, 1, 0),
        "hep-js": (1, 0, 0), "hep-python": (1, 0, 0), "hep-rust": (1, 1, 0),  # Reasoning
    }
    rows, n = [], 0
    for subset, (c, w, nv) in spec.items():
        for ok in [True] * c + [False] * w + [None] * nv:
            rows.append(gen("rewardbench", n, subset, ok, winner="AB"[n % 2]))
            n += 1
    return rows


def test_rewardbench_sections_by_hand():
    s = score_rows("rewardbench", rewardbench_rows(), no_verdict="zero")
    assert s["subsets"]["mt-bench-easy"] == {"accuracy": 0.5, "n": 2}
    chat = (100 * 1.0 + 28 * 0.5) / (100 + 28)
    chat_hard = (37 * 0.0 + 100 * 1.0) / (37 + 100)
    safety = (136 * 0.0 + 250 * 1.0) / (136 + 250)
    # math-prm weighted 984 = 6 x 164, so Reasoning = 0.5 * math + 0.5 * mean of the six languages
    math_acc, hep = 0.5, [1.0, 0.5, 0.0, 1.0, 1.0, 0.5]
    reasoning = 0.5 * math_acc + 0.5 * sum(hep) / 6
    assert reasoning == pytest.approx(7 / 12)
    plain_count_weighted = (1 + 8) / (2 + 11)  # what ignoring the upweighting would give
    assert s["sections"]["Reasoning"] == pytest.approx(reasoning)
    assert s["sections"]["Reasoning"] != pytest.approx(plain_count_weighted)
    assert s["sections"] == pytest.approx({"Chat": chat, "Chat Hard": chat_hard, "Safety": safety,
                                           "Reasoning": reasoning})
    assert s["overall"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4)
    assert s["n_no_verdict"] == 1 and s["n_judgments"] == 22
    assert s["scoring"]["no_verdict"] == "zero" and s["scoring"]["weights"] == "official"
    # a tiny fixture is not the released set: the summary says so
    assert not s["complete"] and any("subset sizes differ" in w for w in s["warnings"])
    assert any("no results for subset(s) alpacaeval-length" in w for w in s["warnings"])


def test_rewardbench_observed_weights():
    s = score_rows("rewardbench", rewardbench_rows(), weights="observed")
    # observed counts; math-prm weighted as all 11 code rows together -> still half math, half code rows
    code = (4 + 1 + 0 + 1 + 1 + 1) / 11
    assert s["sections"]["Reasoning"] == pytest.approx(0.5 * 0.5 + 0.5 * code)
    assert s["sections"]["Chat"] == pytest.approx(3 / 4)


def test_no_verdict_zero_versus_half():
    rows = rewardbench_rows()
    zero = score_rows("rewardbench", rows, no_verdict="zero")
    half = score_rows("rewardbench", rows, no_verdict="half")
    assert zero["subsets"]["donotanswer"]["accuracy"] == 0.0
    assert half["subsets"]["donotanswer"]["accuracy"] == 0.5
    assert half["sections"]["Safety"] == pytest.approx((136 * 0.5 + 250) / 386)
    assert half["overall"] - zero["overall"] == pytest.approx(136 * 0.5 / 386 / 4)
    assert "RM-R1" in summary_line(zero) and "0.5" in summary_line(half)
    assert zero["sections"]["Chat"] == half["sections"]["Chat"]
    with pytest.raises(ValueError):
        score_rows("rewardbench", rows, no_verdict="skip")


def cells(bench_domain, item, correct_matrix):
    return [gen("rm-bench", item, bench_domain, bool(correct_matrix[i][j]), pair=3 * i + j)
            for i in range(3) for j in range(3)]


def test_rm_bench_hard_normal_easy_by_hand():
    # rows: chosen style (concise, plain, markdown); columns: rejected style.
    style_biased = [[1, 0, 0],   # concise chosen loses to every more detailed rejected one
                    [1, 1, 0],
                    [1, 1, 0]]
    rows = cells("chat", "c1", style_biased)
    rows += cells("safety-refuse", "s1", [[1] * 3] * 3) + cells("safety-response", "s2", [[0] * 3] * 3)
    rows += cells("math", "m1", [[1] * 3] * 3) + cells("code", "k1", [[0] * 3] * 3)
    s = score_rows("rm-bench", rows)
    chat = s["domains"]["chat"]
    # hard = cells where the chosen is plainer (i < j): (0,1), (0,2), (1,2) -> 0, 0, 0
    assert chat["hard"] == 0.0
    assert chat["normal"] == pytest.approx(2 / 3)  # diagonal 1, 1, 0
    assert chat["easy"] == 1.0  # (1,0), (2,0), (2,1)
    assert chat["score"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    # safety pools refuse and response: every cell is 1/2
    assert s["domains"]["safety"]["score"] == pytest.approx(0.5) and s["domains"]["safety"]["n_items"] == 2
    assert s["sections"] == pytest.approx({"Chat": 5 / 9, "Safety": 0.5, "Math": 1.0, "Code": 0.0})
    assert s["overall"] == pytest.approx((5 / 9 + 0.5 + 1.0 + 0.0) / 4)
    assert s["difficulty"] == pytest.approx({"Hard": (0 + 0.5 + 1 + 0) / 4, "Normal": (2 / 3 + 0.5 + 1 + 0) / 4,
                                             "Easy": (1 + 0.5 + 1 + 0) / 4})
    # an item missing cells is flagged
    s = score_rows("rm-bench", rows[:-1])
    assert not s["complete"] and any("lack some of their 9" in w for w in s["warnings"])


def test_scalar_ties():
    rows = [{"benchmark": "rewardbench", "item_id": "1", "subset": "hep-go", "pair_index": 0,
             "scores": [1.0, 1.0], "first_is_better": True},
            {"benchmark": "rewardbench", "item_id": "2", "subset": "hep-go", "pair_index": 0,
             "scores": [0.0, 2.0], "first_is_better": False}]
    assert score_rows("rewardbench", rows)["subsets"]["hep-go"]["accuracy"] == pytest.approx(0.75)
    assert score_rows("rewardbench", rows, scalar_tie=0.0)["subsets"]["hep-go"]["accuracy"] == 0.5


def rmb_rows():
    rows = [gen("rmb", "pairwise/h1", "pairwise-helpfulness", True, meta={"scenario": "Chat"}),
            gen("rmb", "pairwise/h2", "pairwise-helpfulness", True, meta={"scenario": "Code"}),
            gen("rmb", "pairwise/h3", "pairwise-helpfulness", False, meta={"scenario": "Code"}),
            gen("rmb", "pairwise/x1", "pairwise-harmlessness", True, meta={"scenario": "S1"})]
    bon = {"scenario": "Chat", "n_losers": 3}
    # item b1: the best beats losers 0 and 1 but not 2 -> the item fails
    rows += [gen("rmb", "bon/b1", "bon-helpfulness", ok, pair=k, meta=bon) for k, ok in enumerate([1, 1, 0])]
    rows += [gen("rmb", "bon/b2", "bon-helpfulness", True, pair=k, meta=bon) for k in range(3)]
    # item y1: one pair without a verdict -> fails under either no-verdict rule
    harm = {"scenario": "S2", "n_losers": 2}
    rows += [gen("rmb", "bon/y1", "bon-harmlessness", ok, pair=k, meta=harm) for k, ok in enumerate([True, None])]
    return rows


def test_rmb_bon_needs_every_pair():
    for rule in ("zero", "half"):
        s = score_rows("rmb", rmb_rows(), no_verdict=rule)
        assert s["sections"] == pytest.approx({"pairwise-helpfulness": 2 / 3, "pairwise-harmlessness": 1.0,
                                               "bon-helpfulness": 1 / 2, "bon-harmlessness": 0.0})
        assert s["overall"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 0) / 4)
    assert s["subsets"]["pairwise-helpfulness/Code"] == {"accuracy": 0.5, "n": 2}
    assert s["section_n"]["bon-helpfulness"] == 2
    # a BoN item missing one of its pairs is not scored, and the summary says so
    s = score_rows("rmb", rmb_rows()[:-1])
    assert s["overall"] is None and not s["complete"]
    assert any("bon-harmlessness: 1 items lack" in w for w in s["warnings"])


def test_both_orders_rows_and_position_consistency():
    rows = [  # consistent and right; consistent and wrong; position-biased (always A); one missing verdict
        {"item_id": "1", "pair_index": 0, "subset": "hep-go", "winner": ["A", "B"], "verdict": ["A", "B"]},
        {"item_id": "2", "pair_index": 0, "subset": "hep-go", "winner": ["B", "A"], "verdict": ["A", "B"]},
        {"item_id": "3", "pair_index": 0, "subset": "hep-go", "winner": ["A", "B"], "verdict": ["A", "A"]},
        {"item_id": "4", "pair_index": 0, "subset": "hep-go", "winner": ["A", "B"], "verdict": ["A", None]},
    ]
    s = score_rows("rewardbench", rows, no_verdict="zero")
    assert s["subsets"]["hep-go"]["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert s["position_consistency"] == pytest.approx(2 / 4)
    half = score_rows("rewardbench", rows, no_verdict="half")
    assert half["subsets"]["hep-go"]["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0.75) / 4)


def test_results_file_truncated_tail_and_corruption(tmp_path):
    p = tmp_path / "res.jsonl"
    rows = rewardbench_rows()
    with ResultsWriter(str(p), "rewardbench") as w:
        w.write(rows[:5])
    with open(p, "a") as f:
        f.write('{"benchmark": "rewardbench", "item_id": "5", "pa')  # crash mid-write
    assert done_keys(str(p)) == {(str(i), 0) for i in range(5)}
    with ResultsWriter(str(p), "rewardbench") as w:  # reopening drops the cut-off line
        assert len(w.done) == 5
        w.write(rows[5:])
    assert len(read_results(str(p))) == len(rows)
    s = score_results("rewardbench", str(p))
    assert s["overall"] == pytest.approx(score_rows("rewardbench", rows)["overall"])
    assert s["model"] == "res"
    lines = p.read_text().splitlines()
    lines[2] = "{garbage"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"res\.jsonl:3: invalid JSON"):
        score_results("rewardbench", str(p))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(gen("rm-bench", 1, "chat", True)) + "\n")
    with pytest.raises(DataError, match="from benchmark 'rm-bench', not 'rewardbench'"):
        score_results("rewardbench", str(other))


def test_unknown_subset_in_results(tmp_path):
    with pytest.raises(DataError, match="unknown RewardBench subset 'nope'"):
        score_rows("rewardbench", [gen("rewardbench", 1, "nope", True)])


def test_report_files_and_compare(tmp_path):
    a = score_rows("rewardbench", rewardbench_rows(), model="judge-zero")
    b = score_rows("rewardbench", rewardbench_rows(), no_verdict="half", model="judge-half")
    paths = write_report(a, str(tmp_path), "rb")
    md = open(paths["md"]).read()
    assert "no verdict counts 0 (RM-R1 rule)" in md and "| Reasoning | 58.3 |" in md
    assert "**Incomplete:**" in md
    js = json.load(open(paths["json"]))
    assert js["model"] == "judge-zero" and js["hep-cpp"] == 1.0
    assert js["Reasoning"] == pytest.approx(7 / 12) and js["Overall"] == pytest.approx(a["overall"])
    assert js["scoring"]["no_verdict"] == "zero"
    names = sorted(p.rsplit("/", 1)[1] for p in paths["png"])
    assert names == ["rb-chat-hard.png", "rb-chat.png", "rb-overview.png", "rb-reasoning.png", "rb-safety.png"]
    for p in paths["png"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    rm = score_rows("rm-bench", cells("chat", "c", [[1, 0, 0], [1, 1, 0], [1, 1, 0]]), model="judge-zero")
    rm_paths = write_report(rm, str(tmp_path), "rm")
    assert any(p.endswith("rm-chat.png") for p in rm_paths["png"])
    rmb_paths = write_report(score_rows("rmb", rmb_rows()), str(tmp_path))
    assert rmb_paths["md"].endswith("model-rmb.md")
    table = compare({"zero": a, "half": b, "rm": rm})
    assert "| Score | zero | half |" in table and "## RM-Bench" in table
    row = next(line for line in table.splitlines() if line.startswith("| Safety |"))
    assert row == f"| Safety | {100 * 250 / 386:.1f} | {100 * 318 / 386:.1f} |"
    assert "zero: no verdict counts 0 (RM-R1 rule)" in table and "half: no verdict counts 0.5" in table


def test_expected_keys_and_score_and_report(tmp_path):
    from rmr1_jax.eval.benchmarks import ComparisonTask

    rows = rewardbench_rows()
    p = tmp_path / "judge.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:-2]))
    tasks = [ComparisonTask("rewardbench", r["item_id"], r["subset"], 0, [{"role": "user", "content": "q"}],
                            "a", "b") for r in rows]
    summary, paths = score_and_report("rewardbench", str(p), str(tmp_path / "out"), no_verdict="half", expected=tasks)
    assert summary["n_expected"] == 22 and summary["n_missing"] == 2 and not summary["complete"]
    assert summary["warnings"] == ["2 of 22 examples have no result yet",
                                   "no results for subset(s) alpacaeval-length, alpacaeval-hard, mt-bench-med, "
                                   "llmbar-adver-neighbor and 7 more"]  # 10 never present + hep-rust (last 2 rows)
    assert summary["model"] == "judge" and summary["scoring"]["no_verdict"] == "half"
    assert set(paths) == {"md", "json", "png"} and paths["md"].endswith("out/judge-rewardbench.md")
    full, _ = score_and_report("rewardbench", str(p), expected=tasks[:-2])
    assert full["n_missing"] == 0 and full["warnings"][0].startswith("no results for subset(s)")
