"""`rmr1 eval` end to end on fixture benchmark files with a small judge exported as an HF
directory (random weights: what is checked is the pipeline, resume and re-scoring, not skill)."""

import json
import os

import jax
import pytest

from rmr1_jax import cli
from rmr1_jax.checkpoint.hf import save_hf
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.text.tokenizer import train_sentencepiece

from test_eval_runners import rewardbench_file


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    pairs = synthetic.generate_pairs(200, seed=1)
    texts = [p.prompt[-1]["content"] + " " + p.chosen[0]["content"] for p in pairs]
    tok = train_sentencepiece(texts, str(root / "tok"), vocab_size=512)
    cfg = preset("tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    model = DecoderLM(cfg)
    out = str(root / "hf")
    save_hf(model, init_params(model, jax.random.key(0)), out, dtype="float32", tokenizer_dir=str(root / "tok"))
    return out


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_eval_runs_resumes_and_rescores(tmp_path, judge_dir, capsys):
    data = rewardbench_file(tmp_path, n=12)
    out = str(tmp_path / "out")
    base = ["eval", "--benchmark", "rewardbench", "--ckpt", judge_dir, "--data", data, "--out-dir", out,
            "--max-new-tokens", "6", "--batch-size", "4"]
    assert cli.main(base + ["--limit", "5"]) == 0  # an "interrupted" run: 5 of 12 done
    assert len(_rows(os.path.join(out, "results.jsonl"))) == 5
    assert cli.main(base) == 0
    rows = _rows(os.path.join(out, "results.jsonl"))
    assert len(rows) == 12 and len({(r["item_id"], r["pair_index"]) for r in rows}) == 12
    text = capsys.readouterr().out
    assert "judged 7 new examples" in text
    assert "no verdict" in text.lower() or "no_verdict" in text.lower()
    assert any(f.endswith(".md") for f in os.listdir(out)) and any(f.endswith(".png") for f in os.listdir(out))
    # re-scoring the same results file gives the same scores
    assert cli.main(["eval", "score", "--benchmark", "rewardbench", "--results", os.path.join(out, "results.jsonl")]) == 0
    again = capsys.readouterr().out.strip().splitlines()[-1]
    assert again.split(" [")[0] in text
    # two results files side by side
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.jsonl").write_text(open(os.path.join(out, "results.jsonl")).read())
    assert cli.main(["eval", "score", "--benchmark", "rewardbench", "--results", os.path.join(out, "results.jsonl"),
                     str(other / "results.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "| out |" in table.replace("  ", " ") or ("out" in table and "other" in table)


def test_eval_bad_benchmark_file_is_one_line(tmp_path, judge_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "prompt": "q", "chosen": "a", "rejected": "b", "subset": "nope"}) + "\n")
    rc = cli.main(["eval", "--benchmark", "rewardbench", "--ckpt", judge_dir, "--data", str(bad),
                   "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.jsonl:1" in err[0] and "nope" in err[0]


def test_judge_pairs_refuse_a_prompt_that_ends_with_the_assistant(tmp_path, judge_dir, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n" + json.dumps(
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "a": "x", "b": "y"}) + "\n")
    rc = cli.main(["judge", "--ckpt", judge_dir, "--in", str(pairs), "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ends with an assistant turn" in err[0] and f"{pairs}:2:" in err[0], err


def test_judge_file_keeps_each_pair_with_its_judgment(tmp_path, judge_dir, capsys):
    """``rmr1 judge --in --out`` writes one row per pair: the input row (prompt, replies, any
    other field), its line, and the judgment with its verdict in both orders."""
    rows = [{"id": "p1", "prompt": "which is longer?", "a": "x", "b": "a much longer reply"},
            {"prompt": [{"role": "user", "content": "q"}], "response_a": "yes", "response_b": "no", "k": [1]}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "judged.jsonl"
    assert cli.main(["judge", "--ckpt", judge_dir, "--in", str(pairs), "--out", str(out), "--both-orders",
                     "--max-new-tokens", "3", "--batch-size", "2"]) == 0
    assert f"wrote 2 judgments to {out}" in capsys.readouterr().out
    got = _rows(out)
    for n, (row, want) in enumerate(zip(got, rows), 1):
        assert {k: row[k] for k in want} == want and row["line"] == n
        assert isinstance(row["judgment"], str) and row["verdict"] in ("A", "B", None)
        assert {"finished", "judgment_swapped", "verdict_swapped", "consistent"} <= row.keys()


def test_eval_votes_over_k_sampled_judgments(tmp_path, judge_dir, capsys, monkeypatch):
    """``--samples 4``: each prompt's 4 judgments come from one engine call (``n=4``), the rows
    keep 4 votes per order, and the report has the accuracy-against-k table and plot."""
    from rmr1_jax.sampling.engine import Engine

    calls = []
    generate = Engine.generate

    def spy(self, params, prompts, sp, *a, **kw):
        calls.append((len(prompts), sp.n, sp.temperature))
        return generate(self, params, prompts, sp, *a, **kw)

    monkeypatch.setattr(Engine, "generate", spy)
    out = str(tmp_path / "out")
    assert cli.main(["eval", "--benchmark", "rewardbench", "--ckpt", judge_dir, "--data",
                     rewardbench_file(tmp_path, n=3), "--out-dir", out, "--order", "both", "--samples", "4",
                     "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    assert calls == [(6, 4, 1.0)]  # 3 pairs x 2 orders, 4 samples each, in one call
    rows = _rows(os.path.join(out, "results.jsonl"))
    assert len(rows) == 3
    for r in rows:
        assert r["vote"] == "majority" and len(r["votes"]) == 4 and len(r["votes_swapped"]) == 4
        assert set(r["votes"] + r["votes_swapped"]) <= {"A", "B", None}
    text = capsys.readouterr().out
    assert "majority vote, accuracy at k = 1/2/4:" in text
    report = open(next(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".md"))).read()
    assert "### Accuracy against k" in report and "| k | Accuracy % |" in report
    assert any(f.endswith("accuracy-vs-k.png") for f in os.listdir(out))
    # a bad combination is one line
    assert cli.main(["eval", "--benchmark", "rewardbench", "--ckpt", judge_dir, "--data", "x.jsonl",
                     "--vote", "majority"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vote majority needs --samples K with K > 1" in err[0]
