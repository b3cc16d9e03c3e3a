"""The Rule Adapter's apply mode (``rmr1_jax.rules.apply``) against transformers: a random tiny
multi-label adapter exported as an HF ``Qwen2ForSequenceClassification`` directory; the rules
it selects must be the top-k of transformers' logits on the same rendered pair (one user
message through the chat template, each pair run alone, unpadded), and each label must follow
from numpy sums of the selected rules' scores."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from cli_runs import handle
from rmr1_jax.checkpoint.hf import save_hf
from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.data.schemas import rule_adapter_text
from rmr1_jax.errors import DataError, UserError
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import init_params
from rmr1_jax.models.presets import preset
from rmr1_jax.parallel import make_mesh
from rmr1_jax.rules.apply import apply_file, predict_rules
from rmr1_jax.text.tokenizer import load_tokenizer, train_sentencepiece

R, K = 12, 3
MARGIN = 1e-3  # logit gap around every top-k boundary: far above the JAX / torch difference (~1e-5)
WORDS = ("please help me write a polite letter to my landlord about the broken heater and ask "
         "for a repair date soon while staying calm honest and kind to everyone").split()


def _sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(n))


def _msgs(x, role):
    return [{"role": role, "content": x}] if isinstance(x, str) else x


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """(hf_dir, torch classifier, our tokenizer): a random adapter with a widened score head."""
    root = tmp_path_factory.mktemp("adapter")
    tok = train_sentencepiece([_sentence(i, 12) for i in range(60)], str(root / "tok"), vocab_size=300)
    cfg = preset("tiny", head="multilabel", num_labels=R, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                 eos_token_id=tok.eos_id, bos_token_id=None)
    model = DecoderLM(cfg)
    params = init_params(model, jax.random.key(3))
    params["score"] = params["score"] * 30.0  # spread the logits so the top-k has clear margins
    hf_dir = save_hf(model, params, str(root / "hf"), dtype="float32", tokenizer_dir=str(root / "tok"))
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert torch_model.config.problem_type == "multi_label_classification"
    return hf_dir, torch_model, load_tokenizer(hf_dir)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh()


def _torch_logits(adapter, rows, keep_last=None) -> np.ndarray:
    """[N, R] transformers logits of each pair's rendered text, one unpadded row at a time."""
    _, torch_model, tok = adapter
    out = []
    for row in rows:
        text = rule_adapter_text(_msgs(row["prompt"], "user"), _msgs(row.get("a", row.get("response_a")), "assistant"),
                                 _msgs(row.get("b", row.get("response_b")), "assistant"))
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=False))
        ids = ids[-keep_last:] if keep_last else ids
        with torch.no_grad():
            out.append(torch_model(input_ids=torch.tensor([ids])).logits[0].numpy())
    return np.stack(out)


def _topk(logits, k=K):
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    # every gap among the first k + 1 sorted logits is clear: the order cannot flip between frameworks
    top = -np.sort(-logits, axis=1)[:, :k + 1]
    assert np.all(top[:, :-1] - top[:, 1:] > MARGIN), top
    return idx


PAIRS = [
    {"prompt": "help me", "a": "sure", "b": "no"},
    {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": _sentence(1, 25)}],
     "response_a": _sentence(2, 30), "response_b": _sentence(3, 18)},
]


def test_predicted_rules_are_transformers_top_k(adapter, mesh):
    hf_dir, _, tok = adapter
    model, params = load_model(hf_dir, "multilabel", mesh=mesh)
    logits = _torch_logits(adapter, PAIRS)
    got = predict_rules(model, params, tok, PAIRS, K, mesh=mesh, batch_size=8)
    assert got.dtype == np.int64 and got.shape == (2, K)
    np.testing.assert_array_equal(got, _topk(logits))
    # k = R: the adapter's whole ranking of the rules is transformers'
    np.testing.assert_array_equal(predict_rules(model, params, tok, PAIRS, R, mesh=mesh, batch_size=8),
                                  _topk(logits, R))
    # a pair over max_length is one line naming it, or keeps its last max_length tokens
    with pytest.raises(DataError, match=r"^row 2: the adapter input is \d+ tokens, longer than max_length=96") as e:
        predict_rules(model, params, tok, PAIRS, K, mesh=mesh, max_length=96)
    assert "\n" not in str(e.value)
    cut = predict_rules(model, params, tok, PAIRS[1:], K, mesh=mesh, max_length=96, overlong="truncate")
    np.testing.assert_array_equal(cut, _topk(_torch_logits(adapter, PAIRS[1:], keep_last=96)))


def _write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _files(tmp_path, n_rules=R):
    """A pairs file (pair 3 has the same response twice: a sure tie) and a per-response score
    file whose scores are multiples of 1/4, so the sums are exact."""
    rng = np.random.default_rng(0)
    pairs = [{"id": f"p{i}", "prompt": _sentence(i, 4 + 3 * i), "a": _sentence(i + 7, 6 + i), "b": _sentence(i + 11, 5),
              "winner": ["A", "B", None, "A", "B", "A"][i]} for i in range(6)]
    pairs[3]["b"] = pairs[3]["a"]
    seen, scores = {}, []
    for p in pairs:
        for side in ("a", "b"):
            if (p["prompt"], p[side]) not in seen:
                seen[(p["prompt"], p[side])] = rng.integers(-4, 5, n_rules) / 4
                scores.append({"prompt": p["prompt"], "response": p[side], "scores": seen[(p["prompt"], p[side])].tolist(),
                               "relevance": rng.random(n_rules).tolist()})
    sa = np.stack([seen[(p["prompt"], p["a"])] for p in pairs])
    sb = np.stack([seen[(p["prompt"], p["b"])] for p in pairs])
    return pairs, sa, sb, _write(tmp_path / "pairs.jsonl", pairs), _write(tmp_path / "scores.jsonl", scores)


def test_apply_file_labels_from_the_selected_rules(adapter, mesh, tmp_path, capsys):
    hf_dir = adapter[0]
    pairs, sa, sb, pairs_path, scores_path = _files(tmp_path)
    idx = _topk(_torch_logits(adapter, pairs))
    want_a = np.take_along_axis(sa, idx, axis=1).sum(1)
    want_b = np.take_along_axis(sb, idx, axis=1).sum(1)
    tie = want_a == want_b
    assert tie[3] and tie.sum() < len(pairs) - 2  # the planted tie, and real labels elsewhere
    out = str(tmp_path / "labels.jsonl")
    s = apply_file(hf_dir, scores_path, out, k=K, pairs_path=pairs_path, mesh=mesh, batch_size=8)
    rows = [json.loads(line) for line in open(out)]
    kept = [i for i in range(len(pairs)) if not tie[i]]  # ties="skip": no row
    assert [r["id"] for r in rows] == [pairs[i]["id"] for i in kept]
    for r, i in zip(rows, kept):
        a_wins = bool(want_a[i] > want_b[i])
        assert (r["strategy"], r["k"], r["rule_indices"]) == ("adapter", K, idx[i].tolist())
        assert r["labels"] == np.isin(np.arange(R), idx[i]).astype(int).tolist()
        assert (r["score_a"], r["score_b"], r["tie"]) == (want_a[i], want_b[i], False)
        assert r["rule_winner"] == ("A" if a_wins else "B")
        assert (r["chosen"], r["rejected"]) == ((pairs[i]["a"], pairs[i]["b"]) if a_wins else (pairs[i]["b"], pairs[i]["a"]))
        assert r["winner"] == pairs[i]["winner"]
    gold = [i for i in kept if pairs[i]["winner"] is not None]
    agree = np.mean([("A" if want_a[i] > want_b[i] else "B") == pairs[i]["winner"] for i in gold])
    assert s == {"strategy": "adapter", "k": K, "pairs": 6, "ties": int(tie.sum()), "written": len(kept),
                 "gold_pairs": len(gold), "agreement": pytest.approx(agree), "ties_handling": "skip"}
    # the command: one line; ties given to B are written too, with the pool's ids
    pool = _write(tmp_path / "pool.jsonl", [{"id": f"r{j}", "text": f"Prefer rule {j}."} for j in range(R)])
    out_b = str(tmp_path / "labels_b.jsonl")
    handle("rules", "apply", "--ckpt", hf_dir, "--scores", scores_path, "--pairs", pairs_path, "--out", out_b,
           "--k", str(K), "--ties", "b", "--rules", pool, "--batch-size", "8")
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"adapter (k={K}): 6 pairs, {int(tie.sum())} ties; wrote 6 ") and "\n" not in line
    rows_b = [json.loads(line) for line in open(out_b)]
    assert rows_b[3]["tie"] and rows_b[3]["rule_winner"] == "B"
    assert rows_b[0]["rule_ids"] == [f"r{j}" for j in idx[0]]


def test_one_line_errors(adapter, tmp_path, capsys):
    hf_dir = adapter[0]
    _, _, _, pairs_path, scores_path = _files(tmp_path)
    out = str(tmp_path / "out.jsonl")
    (tmp_path / "wide").mkdir()
    _, _, _, wide_pairs, wide_scores = _files(tmp_path / "wide", n_rules=R + 1)
    with pytest.raises(UserError, match=f"predicts {R} rules, but the score vectors have {R + 1}") as e:
        apply_file(hf_dir, wide_scores, out, pairs_path=wide_pairs)
    assert "\n" not in str(e.value)
    for k in (0, R + 1):
        with pytest.raises(UserError, match=rf"^--k {k}: k must be an integer from 1 to the pool size \({R} rules\)$"):
            apply_file(hf_dir, scores_path, out, k=k, pairs_path=pairs_path)
    vec = [0.0] * R
    bare = _write(tmp_path / "pairwise.jsonl", [
        {"prompt": "p", "a": "x", "b": "y", "scores_a": vec, "scores_b": vec, "relevance": vec},
        {"id": "no-texts", "scores_a": vec, "scores_b": vec, "relevance": vec}])
    with pytest.raises(DataError, match=f"^{bare}:2: cannot show this pair to the rule adapter: missing field 'prompt'$"):
        apply_file(hf_dir, bare, out)
    assert not (tmp_path / "out.jsonl").exists()
    # scores from a custom pool and no --rules: the pool is named as the fix, not the score vectors
    with pytest.raises(DataError, match=r"scored with a custom rule pool \(its score vectors have 12 values, the "
                                        r"built-in pool has 100 rules\) and no --rules given: pass --rules FILE"):
        # the old spelling --adapter still works, with a note
        handle("rules", "apply", "--adapter", hf_dir, "--scores", scores_path, "--pairs", pairs_path, "--out", out)
    assert "--adapter is deprecated" in capsys.readouterr().err
