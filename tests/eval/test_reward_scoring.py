"""Scalar reward-model scoring (``rmr1_jax.inference.reward``, ``rmr1 score-rm``, and
``rmr1 eval`` with a scalar checkpoint) against transformers' ``*ForSequenceClassification``:
random tiny Qwen2 and Llama classifiers saved with a SentencePiece tokenizer; every score must
equal transformers' logit for the same token ids, each row run alone (no padding)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

import hf_models
from rmr1_jax import cli
from rmr1_jax.errors import UserError
from rmr1_jax.checkpoint.introspect import checkpoint_head
from rmr1_jax.inference.reward import RewardScorer, load_reward_model
from rmr1_jax.inference.rows import conversation
from rmr1_jax.parallel import make_mesh
from rmr1_jax.text.tokenizer import load_tokenizer, train_sentencepiece

from test_eval_runners import rewardbench_file

TOL = 1e-4
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
         "and answer every question about numbers like 37 or 72").split()


def _sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


# Rows of every shape; row 6 is long enough (> 64 tokens) to land in a second length bucket.
ROWS = [
    {"id": "r0", "prompt": "Which is larger, 37 or 72?", "response": "72 is larger."},
    {"id": "r1", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": _sentence(1, 6)}],
     "a": _sentence(2, 5), "b": _sentence(3, 12)},
    {"text": "a plain text scored verbatim"},
    {"prompt": _sentence(4, 3), "response": _sentence(5, 9), "meta": {"k": [1, 2]}},
    {"prompt": "q", "a": "same", "b": "same"},
    {"text": _sentence(6, 4)},
    {"prompt": _sentence(7, 30), "response": _sentence(8, 40)},
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": _sentence(9, 5)}], "response": "fine"},
    {"text": _sentence(10, 2)},
]


def _write_jsonl(path, rows, blank_after=None):
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r) + "\n")
            if i == blank_after:
                f.write("\n")
    return str(path)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rmtok")
    texts = [_sentence(i, 12) for i in range(60)] + ["Which is larger, 37 or 72? 72 is larger. Be brief."]
    train_sentencepiece(texts, str(root / "tok"), vocab_size=400)
    return str(root / "tok")


def _classifier(path, kind, tok, seed, *, causal=False):
    config = {"qwen2": hf_models.qwen2_config, "llama3": hf_models.llama3_config}[kind]()
    config.vocab_size = tok.vocab_size
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tok.pad_id, tok.eos_id, None
    config.num_labels = 1
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSequenceClassification
    model = auto.from_config(config, dtype=torch.float32)
    hf_models.randomize(model, seed)
    model.eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def rms(tmp_path_factory, tok_dir):
    """{name: (torch model, HF dir with tokenizer files)}."""
    root = tmp_path_factory.mktemp("rms")
    tok = load_tokenizer(tok_dir)
    out = {}
    for seed, (name, kind, causal) in enumerate([("qwen2", "qwen2", False), ("llama3", "llama3", False),
                                                  ("causal", "qwen2", True)]):
        d = str(root / name)
        out[name] = (_classifier(d, kind, tok, seed, causal=causal), d)
        for fn in os.listdir(tok_dir):
            shutil.copy(os.path.join(tok_dir, fn), d)
    return out


def _hf_score(tm, ids):
    with torch.no_grad():
        return float(tm(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0, 0])


def _expected(tm, tok, row):
    """transformers' score(s) of an input row: each sequence alone, the same token ids."""
    def conv_ids(prompt, response):
        return tok.encode(tok.apply_chat_template(conversation(prompt, response), add_generation_prompt=False))

    if "text" in row:
        return {"score": _hf_score(tm, tok.encode(row["text"]))}
    if "response" in row:
        return {"score": _hf_score(tm, conv_ids(row["prompt"], row["response"]))}
    return {"score_a": _hf_score(tm, conv_ids(row["prompt"], row["a"])),
            "score_b": _hf_score(tm, conv_ids(row["prompt"], row["b"]))}


def _check_against_transformers(out_rows, tm, tok, in_rows, lines):
    assert [r["line"] for r in out_rows] == lines
    scores = []
    for got, row in zip(out_rows, in_rows):
        assert {k: v for k, v in got.items() if k not in ("line", "score", "score_a", "score_b", "preferred")} == row
        for key, want in _expected(tm, tok, row).items():
            assert abs(got[key] - want) < TOL, (key, got, want)
            scores.append(want)
        if "a" in row:
            a, b = got["score_a"], got["score_b"]
            assert got["preferred"] == ("a" if a > b else "b" if b > a else "tie")
    assert float(np.std(scores)) > 0.05  # rows really differ: a wrong pooled position would show


@pytest.mark.parametrize("name,mesh", [("qwen2", None), ("llama3", "2,2,2")])
def test_score_rm_matches_transformers(name, mesh, rms, tok_dir, tmp_path, capsys):
    tm, d = rms[name]
    tok = load_tokenizer(tok_dir)
    inp = _write_jsonl(tmp_path / "in.jsonl", ROWS, blank_after=2)  # a blank line: line numbers skip it
    out = str(tmp_path / "out.jsonl")
    argv = ["score-rm", "--ckpt", d, "--in", inp, "--out", out, "--batch-size", "8"]
    assert cli.main(argv + (["--mesh", mesh] if mesh else [])) == 0
    assert f"scored {len(ROWS)} rows" in capsys.readouterr().out
    lines = [1, 2, 3] + [i + 2 for i in range(3, len(ROWS))]
    _check_against_transformers(_read(out), tm, tok, ROWS, lines)
    assert _read(out)[4]["preferred"] == "tie"  # two identical responses


def test_score_rm_resumes_and_repairs_a_cut_off_line(rms, tmp_path, capsys):
    _, d = rms["qwen2"]
    half = _write_jsonl(tmp_path / "half.jsonl", ROWS[:4])
    whole = _write_jsonl(tmp_path / "whole.jsonl", ROWS)
    out, fresh = str(tmp_path / "out.jsonl"), str(tmp_path / "fresh.jsonl")
    base = ["score-rm", "--ckpt", d, "--batch-size", "4"]
    assert cli.main(base + ["--in", half, "--out", out]) == 0
    with open(out, "a") as f:
        f.write('{"text": "cut off by a cra')  # an interrupted write
    assert cli.main(base + ["--in", whole, "--out", out]) == 0
    assert f"scored {len(ROWS) - 4} rows (4 already in" in capsys.readouterr().out
    assert cli.main(base + ["--in", whole, "--out", fresh]) == 0
    got, want = _read(out), _read(fresh)
    assert [r["line"] for r in got] == list(range(1, len(ROWS) + 1))  # no duplicates, input order
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k] == pytest.approx(w[k], abs=1e-6) if isinstance(g[k], float) else g[k] == w[k]
    assert cli.main(base + ["--in", whole, "--out", out]) == 0  # all done: nothing appended
    assert "scored 0 rows" in capsys.readouterr().out and len(_read(out)) == len(ROWS)
    # an output written for another input is refused, and left as it is
    other = _write_jsonl(tmp_path / "other.jsonl", [{"text": "something else"}] + ROWS[1:])
    before = open(out).read()
    assert cli.main(base + ["--in", other, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another input" in err[0] and open(out).read() == before


@pytest.mark.parametrize("line,needle", [
    ("not json", "invalid JSON"),
    (json.dumps({"prompt": "q"}), "has 'text', or 'prompt' with 'response'"),
    (json.dumps({"text": "t", "prompt": "q", "response": "r"}), "this one has prompt, response, text"),
    (json.dumps({"prompt": "q", "a": "x", "b": 3}), "'b' must be a string"),
    (json.dumps({"prompt": [{"role": "user"}], "response": "r"}), "string 'role' and 'content'"),
    (json.dumps([1, 2]), "row is not a JSON object"),
])
def test_bad_rows_are_one_line(line, needle, rms, tmp_path, capsys):
    _, d = rms["qwen2"]
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[2]) + "\n" + line + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["score-rm", "--ckpt", d, "--in", str(inp), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{inp}:3" in err[0] and needle in err[0], err
    assert not out.exists()  # rows are checked before anything is scored


def test_long_rows_error_or_truncate_from_the_left(rms, tok_dir, tmp_path, capsys):
    tm, d = rms["qwen2"]
    tok = load_tokenizer(tok_dir)
    text = _sentence(3, 40)
    ids = tok.encode(text)
    assert len(ids) > 40
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"text": "short"}, {"text": text}])
    out = str(tmp_path / "out.jsonl")
    base = ["score-rm", "--ckpt", d, "--in", inp, "--out", out, "--max-length", "40"]
    assert cli.main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{inp}:2" in err[0] and "max_length=40" in err[0]
    assert cli.main(base + ["--overlong", "truncate"]) == 0
    assert _read(out)[1]["score"] == pytest.approx(_hf_score(tm, ids[-40:]), abs=TOL)


def test_causal_lm_and_unknown_tokenizer_are_one_line_errors(rms, tok_dir, tmp_path, capsys):
    _, causal = rms["causal"]
    assert checkpoint_head(causal) == ("lm", 1) and checkpoint_head(rms["llama3"][1]) == ("scalar", 1)
    inp = _write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    assert cli.main(["score-rm", "--ckpt", causal, "--in", inp, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "causal LM" in err[0] and "scalar" in err[0]


def test_orbax_reward_model_scores_like_its_hf_source(rms, tok_dir, tmp_path, capsys):
    tm, d = rms["llama3"]
    ckpt = str(tmp_path / "ckpt")
    assert cli.main(["convert", "hf-to-orbax", "--ckpt", d, "--out", ckpt]) == 0
    assert checkpoint_head(ckpt) == ("scalar", 1)
    inp = _write_jsonl(tmp_path / "in.jsonl", ROWS[:5])
    out = str(tmp_path / "out.jsonl")
    assert cli.main(["score-rm", "--ckpt", ckpt, "--in", inp, "--out", out]) == 2  # no run config names a tokenizer
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tokenizer" in err[0]
    assert cli.main(["score-rm", "--ckpt", ckpt, "--in", inp, "--out", out, "--tokenizer", tok_dir]) == 0
    _check_against_transformers(_read(out), tm, load_tokenizer(tok_dir), ROWS[:5], [1, 2, 3, 4, 5])


def test_scorer_api_and_a_tokenizer_without_pad(rms, tok_dir):
    tm, d = rms["qwen2"]
    mesh = make_mesh()
    scorer = load_reward_model(d, mesh, batch_size=8, max_length=100)
    tok = scorer.tokenizer
    prompts = [[{"role": "user", "content": "Which is larger, 37 or 72?"}]] * 2
    got = scorer.score(prompts, ["72", "37"])
    want = [_hf_score(tm, tok.encode(tok.apply_chat_template(conversation(p, r)))) for p, r in
            zip(prompts, ["72", "37"])]
    np.testing.assert_allclose(got, want, atol=TOL)
    assert scorer.score_texts(["72"]) == pytest.approx([_hf_score(tm, tok.encode("72"))], abs=TOL)
    assert [scorer._width(n) for n in (1, 64, 65, 99)] == [64, 64, 100, 100]

    class NoPad:
        pad_id = None

        def encode_batch(self, texts):
            return tok.encode_batch(texts)

    bare = RewardScorer(scorer.model, scorer.params, NoPad(), mesh, batch_size=2, bucket=1)
    # one row, its batch filled up with a copy of it: nothing to pad
    assert bare.score_texts(["72 is larger."]) == pytest.approx(scorer.score_texts(["72 is larger."]), abs=TOL)
    with pytest.raises(UserError) as e:
        bare.score_texts(["a", "a longer text"])
    assert "no pad id" in str(e.value) and "\n" not in str(e.value)


def test_eval_rewardbench_with_a_scalar_checkpoint(rms, tmp_path, capsys):
    _, d = rms["qwen2"]
    data = rewardbench_file(tmp_path, n=6)
    out = str(tmp_path / "out")
    assert cli.main(["eval", "--benchmark", "rewardbench", "--ckpt", d, "--data", data, "--out-dir", out,
                     "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "scored 6 new examples" in text and "RewardBench" in text
    rows = _read(os.path.join(out, "results.jsonl"))
    assert len(rows) == 6
    assert all(len(r["scores"]) == 2 and all(isinstance(s, float) for s in r["scores"]) for r in rows)
    assert any(f.endswith(".md") for f in os.listdir(out)) and any(f.endswith(".json") for f in os.listdir(out))
    # the results file keeps what wrote it: another model resuming it is refused, the file left as it is
    before = open(os.path.join(out, "results.jsonl")).read()
    assert cli.main(["eval", "--benchmark", "rewardbench", "--ckpt", rms["llama3"][1], "--data", data,
                     "--out-dir", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was written by another set-up (model" in err[0], err
    assert open(os.path.join(out, "results.jsonl")).read() == before


def test_eval_rewardbench2_with_a_scalar_checkpoint(rms, tok_dir, tmp_path, capsys):
    tm, d = rms["qwen2"]
    tok = load_tokenizer(tok_dir)
    items = [{"id": str(i), "prompt": _sentence(i, 4), "subset": s, "chosen": [_sentence(i + 1, 3)],
              "rejected": [_sentence(i + k, 2 + k) for k in (2, 3, 4)]}
             for i, s in enumerate(["Factuality", "Precise IF", "Math", "Safety", "Focus"])]
    items += [{"id": "ref:1", "prompt": "q", "subset": "Ties", "chosen": ["72"], "rejected": ["37", "12"]},
              {"id": "tied:1", "prompt": "q", "subset": "Ties", "chosen": ["72", "seventy two"],
               "rejected": ["37"]}]
    data = _write_jsonl(tmp_path / "rb2.jsonl", items)
    out = str(tmp_path / "out")
    assert cli.main(["eval", "--benchmark", "rewardbench2", "--ckpt", d, "--data", data, "--out-dir", out,
                     "--batch-size", "8"]) == 0
    text = capsys.readouterr().out
    assert "scored 7 new prompts" in text and "RewardBench 2" in text and "overall" in text
    rows = {r["item_id"]: r for r in _read(os.path.join(out, "results.jsonl"))}
    first = items[0]
    want = [_hf_score(tm, tok.encode(tok.apply_chat_template(conversation(first["prompt"], c))))
            for c in first["chosen"] + first["rejected"]]
    np.testing.assert_allclose(rows["0"]["scores"], want, atol=TOL)
    with open(os.path.join(out, "summary-rewardbench2.json")) as f:
        assert json.load(f)["overall"] is not None
    line = [ln for ln in text.splitlines() if ln.startswith("RewardBench 2")][0]
    assert cli.main(["eval", "score", "--benchmark", "rewardbench2", "--results",
                     os.path.join(out, "results.jsonl")]) == 0
    assert line.split(": ", 1)[1] in capsys.readouterr().out


def test_resume_refuses_another_model_or_length_limit_and_empty_inputs(rms, tmp_path, capsys):
    """What produced an output file is kept beside it (<out>.fingerprint.json): resuming with
    another model, or another limit that changes scores, is one line naming what differs, and the
    file stays as it was. An empty input is an error, not an empty success; a prompt that ends
    with the assistant's turn is refused."""
    (_, qwen), (_, llama) = rms["qwen2"], rms["llama3"]
    half = _write_jsonl(tmp_path / "half.jsonl", ROWS[:4])
    out = str(tmp_path / "out.jsonl")
    assert cli.main(["score-rm", "--ckpt", qwen, "--in", half, "--out", out]) == 0
    before = open(out).read()
    for extra, needle in ((["--ckpt", llama], "model"), (["--ckpt", qwen, "--max-length", "64"], "max_length")):
        assert cli.main(["score-rm", *extra, "--in", half, "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was written by another set-up" in err[0] and needle in err[0], err
        assert open(out).read() == before
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli.main(["score-rm", "--ckpt", qwen, "--in", str(empty), "--out", str(tmp_path / "e.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{empty}: no rows to score" in err[0]
    turn = _write_jsonl(tmp_path / "turn.jsonl", [{"prompt": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}],
                                                  "response": "r"}])
    assert cli.main(["score-rm", "--ckpt", qwen, "--in", turn, "--out", str(tmp_path / "t.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{turn}:1: 'prompt' ends with an assistant turn" in err[0]
