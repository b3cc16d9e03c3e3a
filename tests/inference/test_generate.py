"""``rmr1 generate`` and ``rj.generate`` against transformers: a random tiny Qwen2 saved with the
ChatML tokenizer fixture (tests/text/fixtures/chatml, which transformers' ``AutoTokenizer``
loads). Greedy completions must be transformers' greedy ``generate`` for the same token ids,
raw texts as they are and messages as transformers' ``apply_chat_template`` renders them; the
output file resumes after a cut to the file an uninterrupted run writes; other settings, bad
rows are refused in one line (the two-process job: tests/parallel/test_multihost_commands.py)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import hf_models
import rmr1_jax as rj
from rmr1_jax import cli
from rmr1_jax.inference.generate import load_generator
from rmr1_jax.parallel import make_mesh

MAX_NEW = 8
TEXTS = ["the quick brown fox", "a", "Which is better: 37 or 72? Answer in one word, please."]
MESSAGES = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}], "id": "m0"},
    {"prompt": "Count to three.", "meta": {"k": [1, 2]}},  # a text: one user message
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and now?"}]},
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(HF directory with the ChatML tokenizer files, the torch model, transformers' tokenizer)."""
    d = str(tmp_path_factory.mktemp("gen") / "hf")
    model, theirs = hf_models.make_chatml_qwen2(d, seed=3)
    return d, model, theirs


def _write(path, rows):
    with open(path, "w") as f:
        f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _eos(ckpt):
    from rmr1_jax.text.tokenizer import load_tokenizer

    return load_tokenizer(ckpt[0]).eos_ids


def _hf_greedy(model, ids, eos):
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=MAX_NEW,
                             eos_token_id=eos, pad_token_id=eos[0])
    return out[0, len(ids):].tolist()


def _hf_logprobs(model, ids, generated):
    full = np.array([ids + generated])
    logits = hf_models.hf_logits(model, full, np.ones_like(full))[0].astype(np.float64)
    lsm = logits - logits.max(-1, keepdims=True)
    lsm -= np.log(np.exp(lsm).sum(-1, keepdims=True))
    return [lsm[len(ids) - 1 + j, t] for j, t in enumerate(generated)]


def _generate(ckpt, inp, out, *flags):
    return cli.main(["generate", "--ckpt", ckpt[0], "--in", inp, "--out", out, "--max-new-tokens", str(MAX_NEW),
                     *flags])


def test_greedy_raw_texts_are_transformers_greedy_generate(ckpt, tmp_path, capsys):
    _, model, theirs = ckpt
    inp = _write(tmp_path / "in.jsonl", [{"prompt": t, "n": i} for i, t in enumerate(TEXTS)])
    out = str(tmp_path / "out.jsonl")
    assert _generate(ckpt, inp, out, "--raw", "--temperature", "0", "--max-slots", "2", "--page-size", "4") == 0
    assert "generated 3 rows x 1 completions" in capsys.readouterr().out
    rows = _read(out)
    eos = _eos(ckpt)
    for i, (row, text) in enumerate(zip(rows, TEXTS)):
        assert row["prompt"] == text and row["n"] == i and row["line"] == i + 1
        ids = theirs.encode(text, add_special_tokens=False)
        ref = _hf_greedy(model, ids, eos)
        assert row["token_ids"] == [ref], f"row {i}"
        np.testing.assert_allclose(row["logprobs"][0], _hf_logprobs(model, ids, ref), atol=1e-4)
        assert row["finished"] == [ref[-1] in eos]
        assert row["completions"] == [theirs.decode(ref, skip_special_tokens=True)]


def test_messages_are_rendered_with_the_chat_template(ckpt, tmp_path):
    _, model, theirs = ckpt
    inp = _write(tmp_path / "in.jsonl", MESSAGES)
    out = str(tmp_path / "out.jsonl")
    assert _generate(ckpt, inp, out, "--temperature", "0", "--n", "2") == 0
    eos = _eos(ckpt)
    for row, src in zip(_read(out), MESSAGES):
        msgs = [{"role": "user", "content": src["prompt"]}] if isinstance(src["prompt"], str) else src["prompt"]
        text = theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ref = _hf_greedy(model, theirs.encode(text, add_special_tokens=False), eos)
        assert row["token_ids"] == [ref, ref]  # greedy: both samples alike
        assert {k: v for k, v in row.items() if k in src} == src


def test_rj_generate_is_the_engine_on_token_ids(ckpt):
    _, model, theirs = ckpt
    eos = _eos(ckpt)
    jmodel, params = rj.load_hf(ckpt[0])
    ids = [theirs.encode(t, add_special_tokens=False) for t in TEXTS]
    gen = rj.generate(jmodel, params, ids, rj.SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0),
                      eos_ids=eos, pad_id=eos[0], max_slots=2, prefill_chunk=4)
    for i, p in enumerate(ids):
        assert gen.tokens[i, :gen.lengths[i]].tolist() == _hf_greedy(model, p, eos)


def test_a_cut_output_resumes_to_the_uninterrupted_file(ckpt, tmp_path, capsys):
    rows = [{"prompt": f"prompt number {i}: " + "word " * i} for i in range(7)]
    inp = _write(tmp_path / "in.jsonl", rows)
    whole, cut = str(tmp_path / "whole.jsonl"), str(tmp_path / "cut.jsonl")
    sampling = ["--temperature", "1.0", "--top-k", "50", "--n", "2", "--seed", "5"]
    assert _generate(ckpt, inp, whole, *sampling, "--max-slots", "2") == 0  # 4 prompts per engine call
    text = open(whole).read()
    lines = text.splitlines(keepends=True)
    with open(cut, "w") as f:  # three rows written, the fourth cut off mid-line
        f.write("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    shutil.copy(whole + ".fingerprint.json", cut + ".fingerprint.json")
    capsys.readouterr()
    assert _generate(ckpt, inp, cut, *sampling) == 0  # other engine sizes: other batches, same samples
    assert "3 rows already in" in capsys.readouterr().out
    got, want = _read(cut), _read(whole)
    assert open(cut).read().splitlines()[:3] == text.splitlines()[:3]  # the rows kept, as they were
    assert [{k: v for k, v in r.items() if k != "logprobs"} for r in got] == \
        [{k: v for k, v in r.items() if k != "logprobs"} for r in want]
    for a, b in zip(got, want):  # other batch shapes: the same draws, log-probs up to rounding
        for x, y in zip(a["logprobs"], b["logprobs"]):
            np.testing.assert_allclose(x, y, atol=1e-5)
    assert len({tuple(map(tuple, r["token_ids"])) for r in _read(whole)}) == 7
    # another temperature on the same output is refused, naming what differs
    assert _generate(ckpt, inp, cut, "--temperature", "0.5", "--top-k", "50", "--n", "2", "--seed", "5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another set-up" in err[0] and "temperature 1.0 -> 0.5" in err[0], err
    assert _read(cut) == got  # untouched


@pytest.mark.parametrize("row, flags, msg", [
    ({"text": "no prompt"}, [], "expected a JSON object with 'prompt'"),
    ({"prompt": ""}, [], "'prompt' is empty"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, [],
     "ends with an assistant turn"),
    ({"prompt": [{"role": "user"}]}, [], "needs string 'role' and 'content'"),
    ({"prompt": [{"role": "user", "content": "hi"}]}, ["--raw"], "with --raw 'prompt' must be the text"),
    ('{"prompt": "cut', [], "invalid JSON"),
])
def test_a_bad_row_is_one_line_naming_file_and_line(ckpt, tmp_path, capsys, row, flags, msg):
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "fine"}, {"prompt": "also fine"}, row])
    out = str(tmp_path / "out.jsonl")
    assert _generate(ckpt, inp, out, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rmr1 generate: error: {inp}:3: ") and msg in err[0], err
    assert not os.path.exists(out)


def test_bad_settings_are_refused(ckpt, tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "fine"}])
    out = str(tmp_path / "out.jsonl")
    assert _generate(ckpt, inp, out, "--top-p", "0") == 2
    assert "top_p must lie in (0, 1]" in capsys.readouterr().err
    with pytest.raises(Exception, match="page_size must be at least 1"):
        load_generator(ckpt[0], make_mesh(), page_size=0)
    assert not os.path.exists(out)


def test_the_engine_size_flags_name_the_engines_defaults():
    from rmr1_jax.cli import build_parser
    from rmr1_jax.sampling.engine import EngineConfig

    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command").choices["generate"]
    helps = {a.dest: a.help for a in sub._actions}
    for name in ("max_slots", "page_size", "prefill_chunk"):
        assert helps[name].endswith(f"(default {getattr(EngineConfig(), name)})"), name
    assert "half the free" in helps["kv_pages"] and EngineConfig().kv_memory_fraction == 0.5
