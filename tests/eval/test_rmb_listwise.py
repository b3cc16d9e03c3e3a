"""RMB's best-of-N items ranked listwise by a generative judge (``--benchmark rmb-bon``), against
hand-worked items: the judge prefers the longer response and says "A" when the two are equally
long (position-inconsistent in both orders: a tie)."""

from __future__ import annotations

import json

import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.eval.results import read_results
from rmr1_jax.eval.rmb_listwise import (load_rmb_bon, run_rmb_listwise, score_rmb_listwise, summary_line,
                                        summary_markdown)


def rmb_file(tmp_path):
    rows = [{"id": "h1", "category": "helpfulness", "scenario": "Chat", "prompt": "q1", "bon_best": "xxxx",
             "loser_list": ["x", "yy"]},
            {"id": "h2", "category": "helpfulness", "scenario": "Code", "prompt": "q2", "bon_best": "yy",
             "loser_list": ["zz", "x"]},
            {"id": "p1", "category": "helpfulness", "prompt": "q", "chosen": "a", "rejected": "b"},  # skipped
            {"id": "s1", "category": "harmlessness", "prompt": "q3", "bon_best": "x", "loser_list": ["zzz"]}]
    path = tmp_path / "rmb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class Judge:
    def __init__(self):
        self.calls = []

    def __call__(self, triples):
        self.calls.append(len(triples))
        return [{"verdict": "A" if len(a) >= len(b) else "B"} for _, a, b in triples]


def test_round_robin_ranks_each_items_candidates_labelled_not_official(tmp_path):
    items = load_rmb_bon(rmb_file(tmp_path))
    assert [(it.id, it.subset, it.completions) for it in items] == [
        ("bon/h1", "bon-helpfulness", ("xxxx", "x", "yy")), ("bon/h2", "bon-helpfulness", ("yy", "zz", "x")),
        ("bon/s1", "bon-harmlessness", ("x", "zzz"))]
    judge, res = Judge(), tmp_path / "out" / "results.jsonl"
    stats = run_rmb_listwise(judge, items, res, batch_size=8, model_name="j")
    assert judge.calls == [14] and stats.written == 3  # 3 + 3 + 1 matches, both orders, one call
    assert stats.both_orders == 7 and stats.consistent == 6  # yy vs zz: "A" in both orders
    rows = read_results(str(res))
    # h1: the best beats both losers; h2: yy and zz tie, both beat x: 0.75 each, the best not alone on top;
    # s1: the loser is longer
    assert [r["scores"] for r in rows] == [[1.0, 0.0, 0.5], [0.75, 0.75, 0.0], [0.0, 1.0]]
    assert [r["result"] for r in rows] == [1.0, 0.0, 0.0] and rows[1]["inconsistent"] == 1
    assert rows[1]["matches"][0] == [0, 1, "A", "B"]  # yy at A: "A"; zz at A: "A", read back as "B"
    s = score_rmb_listwise(str(res))
    assert s["sections"] == {"bon-helpfulness": 0.5, "bon-harmlessness": 0.0} and s["overall"] == 0.25
    assert s["beats_all"] == {"bon-helpfulness": 0.5, "bon-harmlessness": 0.0} and not s["official"]
    assert s["subsets"]["bon-helpfulness/Chat"] == {"accuracy": 1.0, "n": 1}
    assert s["inconsistent_rate"] == pytest.approx(1 / 7) and s["complete"]
    assert "**Not RMB's official scoring.**" in summary_markdown(s)
    assert summary_line(s, "j") == ("RMB best-of-N j: overall 25.0 (best ranked first alone: bon-helpfulness "
                                    "50.0, bon-harmlessness 0.0) [listwise round_robin, not the official scoring]")
    again = run_rmb_listwise(judge, items, res, batch_size=8)  # resumed: nothing left
    assert again.skipped == 3 and again.written == 0 and judge.calls == [14]
    with pytest.raises(DataError, match="ranked by 'round_robin', not 'rmb-bon' by 'knockout'"):
        run_rmb_listwise(judge, items, res, scheme="knockout")


def test_knockout_brackets_are_keyed_by_item_not_by_batch(tmp_path):
    items = load_rmb_bon(rmb_file(tmp_path))
    judge = Judge()
    run_rmb_listwise(judge, items, tmp_path / "a.jsonl", batch_size=8, scheme="knockout", seed=3)
    assert judge.calls == [6, 4]  # h1, h2: a bye and a match, then the final; s1: one match in round 1
    run_rmb_listwise(Judge(), items[::-1], tmp_path / "b.jsonl", batch_size=1, scheme="knockout", seed=3)
    a, b = (sorted((r["item_id"], r["scores"]) for r in read_results(str(tmp_path / f))) for f in ("a.jsonl", "b.jsonl"))
    assert a == b
    s = score_rmb_listwise(str(tmp_path / "a.jsonl"))
    assert s["listwise"] == "knockout" and s["beats_all"]["bon-helpfulness"] is None
    assert s["sections"]["bon-harmlessness"] == 0.0


def test_a_file_without_best_of_n_items_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "p1", "category": "helpfulness", "prompt": "q", "chosen": "a",
                                "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="no best-of-N items .*--benchmark rmb"):
        load_rmb_bon(str(path))


def test_rmr1_eval_scheme_reaches_the_listwise_run_and_only_it(tmp_path, monkeypatch):
    """`rmr1 eval --benchmark rmb-bon --scheme knockout` ranks by knockout (the judge and the
    file reading stood in for: the flag's way through run_benchmark is what is checked);
    --scheme with a pairwise benchmark is one error line."""
    from rmr1_jax.cli import main
    from rmr1_jax.eval import run as eval_run

    judge = Judge()
    monkeypatch.setattr(eval_run, "_inputs", lambda b, ckpt, data: ("generative", load_rmb_bon(rmb_file(tmp_path))))
    monkeypatch.setitem(eval_run._LOADERS, "generative", lambda ckpt, mesh, o: (
        judge, {"order": o["order"], "seed": o["seed"], "keep_text": o["keep_text"], "fingerprint": None}))
    out = tmp_path / "ko"
    assert main(["eval", "--ckpt", "j", "--data", "rmb", "--benchmark", "rmb-bon", "--scheme", "knockout",
                 "--out-dir", str(out)]) == 0
    rows = read_results(str(out / "results.jsonl"))
    assert {r["listwise"] for r in rows} == {"knockout"} and [r["judge_calls"] for r in rows] == [4, 4, 2]
    assert main(["eval", "--ckpt", "j", "--data", "rb", "--benchmark", "rewardbench", "--scheme", "knockout"]) == 2
