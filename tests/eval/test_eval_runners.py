"""Running models over benchmark files: scalar and generative runners, A/B ordering, resuming
an interrupted run."""

import dataclasses
import json

import pytest

from rmr1_jax.eval.benchmarks import load_rewardbench, load_rm_bench, load_rmb
from rmr1_jax.eval.runs import ScalarRewardModel, first_shown_as_a, run_generative, run_scalar
from rmr1_jax.eval.results import ResultsWriter, read_results
from rmr1_jax.eval.scoring import score_results

from test_eval_benchmarks import released_rmb_tree, write_json, write_jsonl


class LengthRM:
    """A trivial scalar reward model: longer responses score higher."""

    def __init__(self, fail_after_calls=None):
        self.calls = 0
        self.scored = 0
        self.fail_after_calls = fail_after_calls

    def score(self, prompts, responses):
        assert len(prompts) == len(responses)
        assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated preemption")
        self.calls += 1
        self.scored += len(responses)
        return [float(len(r)) for r in responses]


def longer_judge(batch):
    """A generative judge that names the longer response (no verdict on equal lengths)."""
    return [None if len(a) == len(b) else ("A" if len(a) > len(b) else "B") for _, a, b in batch]


def rewardbench_file(tmp_path, n=12):
    subsets = ["alpacaeval-easy", "mt-bench-hard", "donotanswer", "math-prm", "hep-cpp", "hep-rust"]
    rows = []
    for i in range(n):
        chosen, rejected = "c" * (5 + i % 3), "r" * 6  # chosen longer for i % 3 == 2, equal for i % 3 == 1
        rows.append({"id": i, "prompt": f"q{i}", "chosen": chosen, "rejected": rejected,
                     "subset": subsets[i % len(subsets)]})
    return write_jsonl(tmp_path / "rb.jsonl", rows)


def test_length_model_is_a_scalar_reward_model():
    assert isinstance(LengthRM(), ScalarRewardModel)


def test_run_scalar_rm_bench_end_to_end(tmp_path):
    # lengths: rejected concise 1 < chosen concise 2 < rejected plain 3 < chosen plain 4 < chosen markdown 5
    # < rejected markdown 6, so a length-loving model is right exactly when the chosen one is longer
    item = {"id": "chat/1", "prompt": "q", "domain": "chat",
            "chosen": ["xx", "xxxx", "xxxxx"], "rejected": ["x", "xxx", "xxxxxx"]}
    tasks = load_rm_bench(write_json(tmp_path / "rm.json", [item]))
    res = str(tmp_path / "res.jsonl")
    stats = run_scalar(LengthRM(), tasks, res, batch_size=4, model_name="len")
    assert (stats.total, stats.written, stats.skipped) == (9, 9, 0)
    rows = read_results(res)
    assert rows[5]["scores"] == [4.0, 6.0] and rows[5]["correct"] == 0.0  # plain chosen vs markdown rejected
    s = score_results("rm-bench", res)
    chat = s["domains"]["chat"]
    # hard (chosen plainer): 2<3, 2<6, 4<6 all wrong; normal: 2>1, 4>3, 5<6; easy: 4>1, 5>1, 5>3
    assert (chat["hard"], chat["normal"], chat["easy"]) == (0.0, pytest.approx(2 / 3), 1.0)
    assert s["model"] == "len" and s["model_type"] == "scalar"


def test_run_scalar_rewardbench_ties_and_resume(tmp_path):
    tasks = load_rewardbench(rewardbench_file(tmp_path))
    full = str(tmp_path / "full.jsonl")
    run_scalar(LengthRM(), tasks, full, batch_size=4)
    ref = score_results("rewardbench", full)
    # i % 3: 0 -> chosen shorter (0), 1 -> equal length (tie, 0.5), 2 -> chosen longer (1)
    assert [r["correct"] for r in read_results(full)][:3] == [0.0, 0.5, 1.0]
    assert ref["subsets"]["alpacaeval-easy"]["accuracy"] == 0.0  # ids 0 and 6: chosen shorter
    assert ref["subsets"]["mt-bench-hard"]["accuracy"] == 0.5  # ids 1 and 7: ties
    assert ref["subsets"]["donotanswer"]["accuracy"] == 1.0  # ids 2 and 8: chosen longer
    assert score_results("rewardbench", full, scalar_tie=0.0)["subsets"]["mt-bench-hard"]["accuracy"] == 0.0

    # interrupted after one batch of 4, with a half-written line left behind
    part = str(tmp_path / "part.jsonl")
    with pytest.raises(KeyboardInterrupt):
        run_scalar(LengthRM(fail_after_calls=1), tasks, part, batch_size=4)
    with open(part, "a") as f:
        f.write('{"benchmark": "rewardbench", "item_id": "4", "subs')
    assert len(read_results(part)) == 4
    again = LengthRM()
    stats = run_scalar(again, tasks, part, batch_size=4)
    assert (stats.skipped, stats.written) == (4, 8)
    assert again.scored == 16  # only the 8 missing examples, both responses each
    assert sorted(int(r["item_id"]) for r in read_results(part)) == list(range(12))
    resumed = score_results("rewardbench", part)
    assert resumed["sections"] == ref["sections"] and resumed["overall"] == ref["overall"]
    assert run_scalar(LengthRM(), tasks, part).written == 0  # nothing left to do


def test_run_generative_random_order_is_seeded(tmp_path):
    tasks = load_rewardbench(rewardbench_file(tmp_path, n=40))
    a, b, c = (str(tmp_path / f"{x}.jsonl") for x in "abc")
    stats = run_generative(longer_judge, tasks, a, seed=3, batch_size=7)
    run_generative(longer_judge, tasks, b, seed=3, batch_size=5)
    run_generative(longer_judge, tasks, c, seed=4)
    rows_a, rows_b, rows_c = read_results(a), read_results(b), read_results(c)
    winners = [r["winner"] for r in rows_a]
    assert winners == [r["winner"] for r in rows_b]  # same seed, same positions, whatever the batching
    assert winners != [r["winner"] for r in rows_c]
    assert 10 <= winners.count("A") <= 30
    assert winners == ["A" if first_shown_as_a(t, 3) else "B" for t in tasks]
    # the longer-response judge agrees with the length model wherever lengths differ
    for r in rows_a:
        i = int(r["item_id"])
        assert r["correct"] == {0: 0.0, 1: 0.0, 2: 1.0}[i % 3]
        assert (r["verdict"] is None) == (i % 3 == 1)
    assert stats.no_verdict == sum(i % 3 == 1 for i in range(40))
    zero, half = score_results("rewardbench", a, "zero"), score_results("rewardbench", a, "half")
    assert half["overall"] > zero["overall"]
    assert zero["n_no_verdict"] == stats.no_verdict


def test_run_generative_both_orders_position_bias(tmp_path):
    tasks = load_rewardbench(rewardbench_file(tmp_path))
    calls = []

    def always_a(batch):
        calls.append(len(batch))
        return ["A"] * len(batch)

    out = str(tmp_path / "both.jsonl")
    stats = run_generative(always_a, tasks, out, order="both", batch_size=5)
    assert calls == [10, 10, 4]  # both orders of a pair go in the same call
    assert stats.position_consistency == 0.0
    rows = read_results(out)
    assert all(r["winner"] == ["A", "B"] and r["correct"] == 0.5 for r in rows)
    s = score_results("rewardbench", out)
    assert s["position_consistency"] == 0.0 and s["n_both_orders"] == 12
    assert all(v["accuracy"] == 0.5 for v in s["subsets"].values())
    stats = run_generative(longer_judge, tasks, str(tmp_path / "b2.jsonl"), order="both")
    assert stats.position_consistency == pytest.approx(8 / 12)  # equal-length pairs get no verdict


def test_run_generative_resume_and_judgment_objects(tmp_path):
    @dataclasses.dataclass
    class J:
        text: str
        verdict: str | None

    tasks = load_rewardbench(rewardbench_file(tmp_path))
    state = {"calls": 0, "judged": 0}

    def judge(batch, fail_at=None):
        if fail_at is not None and state["calls"] == fail_at:
            raise RuntimeError("preempted")
        state["calls"] += 1
        state["judged"] += len(batch)
        return [J(f"<answer>[[{v}]]</answer>" if v else "...", v) for v in longer_judge(batch)]

    out = str(tmp_path / "g.jsonl")
    with pytest.raises(RuntimeError):
        run_generative(lambda b: judge(b, fail_at=2), tasks, out, batch_size=3, keep_text=True)
    assert len(read_results(out)) == 6
    state["judged"] = 0
    stats = run_generative(judge, tasks, out, batch_size=3, keep_text=True)
    assert (stats.skipped, stats.written, state["judged"]) == (6, 6, 6)
    ref = str(tmp_path / "ref.jsonl")
    run_generative(longer_judge, tasks, ref, batch_size=12)
    key = lambda rows: sorted((r["item_id"], r["winner"], r["verdict"]) for r in rows)  # noqa: E731
    assert key(read_results(out)) == key(read_results(ref))
    assert read_results(out)[2]["judgment"].startswith("<answer>")
    assert score_results("rewardbench", out)["overall"] == score_results("rewardbench", ref)["overall"]
    # dicts shaped like judge.judge_pairs output work too
    dict_out = str(tmp_path / "d.jsonl")
    run_generative(lambda b: [{"judgment": "t", "verdict": v} for v in longer_judge(b)], tasks, dict_out,
                   keep_text=True)
    assert key(read_results(dict_out)) == key(read_results(ref)) and read_results(dict_out)[0]["judgment"] == "t"


def test_run_rmb_released_tree_end_to_end(tmp_path):
    tasks = load_rmb(released_rmb_tree(str(tmp_path)))
    out = str(tmp_path / "rmb.jsonl")
    with ResultsWriter(out, "rmb") as w:
        run_scalar(LengthRM(), tasks, w)
    rows = read_results(out)
    assert rows[0]["meta"]["n_losers"] == 2
    s = score_results("rmb", out)
    # "best answer" (11 chars) beats "meh" and "worse"; "a good joke" beats "no"
    assert s["sections"]["bon-harmlessness"] == 1.0 and s["sections"]["pairwise-helpfulness"] == 1.0
    assert s["overall"] is None and not s["complete"]  # two of the four groups are absent
    assert json.loads(open(out).readline())["benchmark"] == "rmb"


def test_bad_judge_outputs(tmp_path):
    tasks = load_rewardbench(rewardbench_file(tmp_path, n=3))
    with pytest.raises(ValueError, match="returned 1 verdicts for 3"):
        run_generative(lambda b: ["A"], tasks, str(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match="expected 'A', 'B' or None"):
        run_generative(lambda b: ["tie"] * len(b), tasks, str(tmp_path / "y.jsonl"))
    with pytest.raises(ValueError, match="non-finite"):
        run_scalar(type("M", (), {"score": lambda self, p, r: [float("nan")] * len(r)})(), tasks,
                   str(tmp_path / "z.jsonl"))


def test_verdict_probabilities_reach_the_results_and_the_calibration_report(tmp_path):
    """A judge whose outputs carry ``prob_a`` (``rmr1 eval --prob``): each row keeps them (one per
    order), the summary's calibration is computed over every order's (P(A), A better) and the
    report has its section and reliability plot."""
    import os

    from rmr1_jax.eval.calibration import summarize
    from rmr1_jax.eval.report import write_report

    tasks = load_rewardbench(rewardbench_file(tmp_path))

    def judge(batch):  # prefers the longer response, surer the larger the gap
        out = []
        for _, a, b in batch:
            p = 0.5 + 0.4 * (len(a) - len(b)) / max(len(a), len(b), 1)
            out.append({"verdict": "A" if p > 0.5 else "B" if p < 0.5 else None, "prob_a": p if p != 0.5 else None})
        return out

    out = str(tmp_path / "prob.jsonl")
    run_generative(judge, tasks, out, order="both", batch_size=5)
    rows = read_results(out)
    assert all(isinstance(r["prob_a"], list) and len(r["prob_a"]) == 2 for r in rows)
    s = score_results("rewardbench", out)
    assert s["calibration"] == summarize(rows) and s["calibration"]["n"] == sum(
        v is not None for r in rows for v in r["prob_a"])
    paths = write_report(s, str(tmp_path / "report"))
    assert any(p.endswith("-reliability.png") and os.path.exists(p) for p in paths["png"])
    with open(paths["md"]) as f:
        assert "Calibration of the verdict probabilities" in f.read()
    plain = str(tmp_path / "plain.jsonl")
    run_generative(longer_judge, tasks, plain, order="both")
    assert "calibration" not in score_results("rewardbench", plain)
