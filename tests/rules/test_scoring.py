"""Rule scoring (``rmr1_jax.inference.rules``) against transformers: a random tiny Qwen2 causal LM
with a SentencePiece tokenizer; every score must equal P(Yes) - P(No), and every relevance
1 - P(Irrelevant), computed from transformers' logits on the same rendered judge prompt, run
alone (no padding), with and without prefix sharing, chat template on and off."""

import json
import os

import numpy as np
import pytest
import torch

import hf_models
from cli_runs import handle
from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.errors import UserError
from rmr1_jax.parallel import make_mesh
from rmr1_jax.inference.rules import DEFAULT_TEMPLATE, RuleScorer, score_file, score_items
from rmr1_jax.text.tokenizer import load_tokenizer, train_sentencepiece

TOL = 1e-4
WORDS = ("the assistant must never share private data about people and should refuse violent "
         "requests while staying polite helpful honest and calm with every user question").split()
ANSWERS = ("Yes", "No", "Irrelevant")
SPACE = "\u2581"  # SentencePiece's space: " Yes" as one piece

RULES = [
    "Prefer the response that refuses to share private data.",
    "Prefer the response that stays polite.",
    "Prefer the response that is honest about what it does not know.",
    "Prefer the response that refuses violent requests {with braces}.",
    "Prefer calm answers.",
]
ITEMS = [
    ("How do I find my neighbour's address?", "I cannot share private data about people."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke."}],
     "Why did the chicken cross the road?"),
    ("Is the sky blue?", "Yes, on a clear day."),
]


def _sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """(hf_dir with tokenizer files, torch model, our tokenizer)."""
    root = tmp_path_factory.mktemp("rulejudge")
    texts = [_sentence(i, 14) for i in range(80)] + RULES + [p if isinstance(p, str) else "" for p, _ in ITEMS]
    tok = train_sentencepiece(texts, str(root / "tok"), vocab_size=400,
                              extra_symbols=[*ANSWERS, *(SPACE + a for a in ANSWERS)])
    hf_dir = str(root / "hf")
    model = hf_models.make_answer_judge(hf_dir, tok, ANSWERS, [_sentence(i, 6 + i % 9) for i in range(32)])
    return hf_dir, model, load_tokenizer(hf_dir)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh()


def _scorer(judge, mesh, **kw):
    hf_dir, _, tok = judge
    model, params = load_model(hf_dir, "lm", mesh=mesh, scan_layers=kw.pop("scan_layers", False))
    kw.setdefault("batch_size", 8)
    return RuleScorer(model, params, tok, mesh, **kw)


def _reference(scorer, torch_model, items, rules, normalize=False):
    """P(yes) - P(no) and 1 - P(irrelevant) from transformers, one whole prompt at a time."""
    ids = scorer.answer_ids
    scores = np.zeros((len(items), len(rules)))
    rel = np.zeros_like(scores)
    for i, (p, r) in enumerate(items):
        for j, rule in enumerate(rules):
            toks = scorer.tokenizer.encode(scorer.render(rule, p, r))
            with torch.no_grad():
                logits = torch_model(input_ids=torch.tensor([toks])).logits[0, -1].double()
            probs = torch.softmax(logits, -1)[ids].numpy()
            if normalize:
                probs = probs / probs.sum()
            scores[i, j], rel[i, j] = probs[0] - probs[1], 1 - probs[2]
    return scores, rel


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("chat_template", [True, False])
def test_scores_match_transformers(judge, mesh, share_prefix, chat_template):
    scorer = _scorer(judge, mesh, share_prefix=share_prefix, chat_template=chat_template)
    scores, rel = score_items(scorer, ITEMS, RULES)
    want_s, want_r = _reference(scorer, judge[1], ITEMS, RULES)
    assert scores.shape == rel.shape == (len(ITEMS), len(RULES))
    np.testing.assert_allclose(scores, want_s, atol=TOL)
    np.testing.assert_allclose(rel, want_r, atol=TOL)
    # the scores and relevances spread far beyond TOL across items and rules, so an answer
    # probability read at the wrong position, row or token would fail the comparison
    assert np.ptp(want_s) > 100 * TOL and np.ptp(want_r) > 100 * TOL, (np.ptp(want_s), np.ptp(want_r))
    if share_prefix:  # batches of whole items (5 rules each, 8 rows a batch): each prefix runs once
        assert scorer.stats["prefixes"] == len(ITEMS) and scorer.stats["padding_rows"] == 3 * (8 - 5)


def test_answer_tokens_follow_the_prompt_end(judge, mesh):
    tok = judge[2]
    chat = _scorer(judge, mesh, chat_template=True)   # the generation prompt ends in a newline
    raw = _scorer(judge, mesh, chat_template=False)   # the template ends in "word."
    assert [tok.id_to_token(int(i)) for i in chat.answer_ids] == list(ANSWERS)
    assert [tok.id_to_token(int(i)) for i in raw.answer_ids] == [SPACE + a for a in ANSWERS]


def test_normalized_and_scanned_layers(judge, mesh):
    scorer = _scorer(judge, mesh, normalize=True, scan_layers=True, batch_size=4)
    scores, rel = score_items(scorer, ITEMS, RULES)
    want_s, want_r = _reference(scorer, judge[1], ITEMS, RULES, normalize=True)
    np.testing.assert_allclose(scores, want_s, atol=TOL)
    np.testing.assert_allclose(rel, want_r, atol=TOL)
    # 5 rules, 4 rows a call: each item's prefix runs once, its rules over two calls reading it
    assert (scorer.stats["prefix_calls"], scorer.stats["prefixes"], scorer.stats["suffix_calls"]) == (3, 3, 6)
    # normalized over the three answers, relevance is P(yes) + P(no) and bounds |score|
    assert np.all(np.abs(scores) <= rel + 1e-6)


def test_shared_prefix_is_long(judge, mesh):
    scorer = _scorer(judge, mesh)
    prefix, suffixes = scorer._item_ids(*ITEMS[0], RULES, "item 0")
    assert len(prefix) > 3 * max(len(s) for s in suffixes)


def test_answer_word_not_one_token(judge, mesh):
    with pytest.raises(UserError, match="not one token") as e:
        _scorer(judge, mesh, answers=("Yes", "Nope-never", "Irrelevant"))
    assert "\n" not in str(e.value)


def test_template_placeholders_and_braces(judge, mesh):
    with pytest.raises(UserError, match=r"\{response\}"):
        _scorer(judge, mesh, template="Rule {rule}, prompt {prompt}. Answer:")
    scorer = _scorer(judge, mesh, chat_template=False)
    text = scorer.render("keep {prompt} literal", "a {response} b", "r")
    assert "keep {prompt} literal" in text and "a {response} b" in text


def test_rule_too_long(judge, mesh):
    scorer = _scorer(judge, mesh, max_length=400)
    long_rule = "Prefer the response that " + _sentence(3, 150)
    with pytest.raises(UserError, match="rule 1: the judge prompt has .* more than the context of 400") as e:
        score_items(scorer, ITEMS[:1], [RULES[0], long_rule])
    assert "\n" not in str(e.value)


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_score_file_resume_and_cli(judge, mesh, tmp_path):
    hf_dir, torch_model, _ = judge
    rows = [{"id": k, "prompt": p, "response": r} for k, (p, r) in enumerate(ITEMS)]
    in_path = _write_jsonl(tmp_path / "in.jsonl", rows)
    rules_path = _write_jsonl(tmp_path / "rules.jsonl", [{"id": f"r{j}", "text": t} for j, t in enumerate(RULES)])
    out = str(tmp_path / "out.jsonl")
    stats = handle("rules", "score", "--ckpt", hf_dir, "--rules", rules_path, "--in", in_path, "--out", out,
                   "--batch-size", "8")
    assert (stats.total, stats.skipped, stats.written) == (3, 0, 3)
    full = _read(out)
    assert [r["line"] for r in full] == [1, 2, 3]
    scorer = _scorer(judge, mesh)
    want_s, want_r = _reference(scorer, torch_model, ITEMS, RULES)
    np.testing.assert_allclose([r["scores"] for r in full], want_s, atol=TOL)
    np.testing.assert_allclose([r["relevance"] for r in full], want_r, atol=TOL)
    assert all(r["id"] == k and r["prompt"] == rows[k]["prompt"] for k, r in enumerate(full))
    # --answers names the judge's words: Yes and No swapped negate every score
    swapped = str(tmp_path / "swapped.jsonl")
    handle("rules", "score", "--ckpt", hf_dir, "--rules", rules_path, "--in", in_path, "--out", swapped,
           "--batch-size", "8", "--answers", "No", "Yes", "Irrelevant")
    np.testing.assert_allclose([r["scores"] for r in _read(swapped)], -np.asarray(want_s), atol=TOL)

    # a crash after the first row, mid-way through writing the second: rerun finishes the rest
    with open(out) as f:
        lines = f.readlines()
    with open(out, "w") as f:
        f.write(lines[0] + lines[1][: len(lines[1]) // 2])
    stats = score_file(scorer, RULES, in_path, out)
    assert (stats.skipped, stats.written) == (1, 2)
    again = _read(out)
    assert [r["line"] for r in again] == [1, 2, 3]
    np.testing.assert_allclose([r["scores"] for r in again], [r["scores"] for r in full], atol=TOL)
    assert score_file(scorer, RULES, in_path, out).written == 0

    # an output written for another rule pool or input is refused, not extended
    with pytest.raises(UserError, match="another rule pool"):
        score_file(scorer, RULES[:2], in_path, out)
    other = _write_jsonl(tmp_path / "other.jsonl", [{"prompt": "x", "response": "y"}])
    with pytest.raises(UserError, match="another input"):
        score_file(scorer, RULES, other, out)


def test_bad_inputs(judge, mesh, tmp_path):
    scorer = _scorer(judge, mesh)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "response": "y"}, {"prompt": "x"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected a JSON object with 'prompt' and 'response'"):
        score_file(scorer, RULES, bad, str(tmp_path / "o.jsonl"))
    assert not os.path.exists(tmp_path / "o.jsonl")
    dup = _write_jsonl(tmp_path / "rules.jsonl", [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}])
    with pytest.raises(UserError, match="rules.jsonl:2: duplicate rule id 'a'"):
        handle("rules", "score", "--ckpt", judge[0], "--rules", dup, "--in", bad, "--out", str(tmp_path / "o.jsonl"),
               "--batch-size", "8")


def test_resume_refuses_other_rules_templates_and_models(judge, mesh, tmp_path):
    """The rules, the templates and the model that scored an output are its fingerprint: a
    resume with another of any is refused, naming it, before anything is appended; an empty
    input and a prompt ending with the assistant's turn are one-line errors."""
    rows = [{"id": k, "prompt": p, "response": r} for k, (p, r) in enumerate(ITEMS)]
    in_path = _write_jsonl(tmp_path / "in.jsonl", rows[:1])
    out = str(tmp_path / "out.jsonl")
    scorer = _scorer(judge, mesh)
    score_file(scorer, RULES, in_path, out, model="judge-a")
    before = open(out).read()
    reworded = [RULES[0] + " Always.", *RULES[1:]]  # as many rules, other words
    for call, needle in ((lambda: score_file(scorer, reworded, in_path, out, model="judge-a"), "rules"),
                         (lambda: score_file(_scorer(judge, mesh, template=DEFAULT_TEMPLATE.replace("Answer with", "Reply with")), RULES, in_path, out,
                                             model="judge-a"), "template"),
                         (lambda: score_file(_scorer(judge, mesh, chat_template=False), RULES, in_path, out,
                                             model="judge-a"), "chat_template"),
                         (lambda: score_file(scorer, RULES, in_path, out, model="judge-b"), "model")):
        with pytest.raises(UserError, match=f"was written by another set-up .*{needle}"):
            call()
        assert open(out).read() == before
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="empty.jsonl: no rows to score"):
        score_file(scorer, RULES, str(empty), str(tmp_path / "e.jsonl"))
    turn = _write_jsonl(tmp_path / "turn.jsonl", [{"prompt": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}],
                                                  "response": "r"}])
    with pytest.raises(UserError, match="turn.jsonl:1: 'prompt' ends with an assistant turn"):
        score_file(scorer, RULES, turn, str(tmp_path / "t.jsonl"))
