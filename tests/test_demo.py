"""`rmr1 demo --quick`: every stage of the main job runs end to end (synthetic data, tokenizer,
distillation, GRPO, held-out judging, plots, TensorBoard logs, HF export that transformers
loads). The learning itself is measured by the full demo (README)."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

import cli_runs
from rmr1_jax import cli


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def new_user_dir(tmp_path_factory):
    """An empty working directory in which `rmr1 demo --quick` ran with its default, relative
    ``--out runs/demo``, as a new user runs it; the tests below run in it too."""
    yield from cli_runs.run_in_empty_dir(tmp_path_factory, "new_user", ["demo", "--quick"])


@pytest.fixture
def in_new_user_dir(new_user_dir, monkeypatch):
    monkeypatch.chdir(new_user_dir[0])
    return new_user_dir


def test_quick_demo_end_to_end(in_new_user_dir):
    out, text = "runs/demo", in_new_user_dir[1]
    assert "| after stage 1 (distillation) |" in text and "| after stage 2 (GRPO) |" in text
    assert "(each pair in both A/B orders)" in text  # the demo's GRPO judges both orders per step
    for f in ("stage1_loss.png", "stage2_curves.png", "results.json"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    assert os.listdir(os.path.join(out, "stage1", "tb")) and os.listdir(os.path.join(out, "stage2", "tb"))
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert 0.0 <= res["stage2"]["accuracy"] <= 1.0
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "judge_hf"))
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert np.isfinite(logits.numpy()).all()
    assert os.path.isfile(os.path.join(out, "judge_hf", "tokenizer.model"))


def test_quick_policy_demo_rewards_with_the_demos_judges(in_new_user_dir, capsys):
    """`rmr1 demo policy --quick` after `rmr1 demo --quick`, with the default relative paths:
    the base policy, a policy GRPO run rewarded by the stage-1 judge (an Orbax checkpoint) and
    one by the program's check (quick.yaml's two variants; the chance judge's coins are tested
    in tests/train/test_policy_grpo.py), the table, results.json and the plot; without the
    judges, one line naming what is missing."""
    assert cli.main(["demo", "policy", "--quick"]) == 0
    out = capsys.readouterr().out
    for row in ("| (base policy, before GRPO) |", "| judge after stage 1 (distillation) |",
                "| the program's check (ceiling) |"):
        assert row in out, row
    with open("runs/demo-policy/results.json") as f:
        res = json.load(f)
    assert all(0.0 <= res[v]["accuracy"] <= 1.0 for v in ("base", "stage1", "check"))
    assert os.path.getsize("runs/demo-policy/policy_accuracy.png") > 0
    assert cli.main(["demo", "policy", "--quick", "--judges", "elsewhere", "--out-dir", "runs/p2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "elsewhere" in err[0] and "rmr1 demo" in err[0], err


def test_distill_resume_and_convert_with_relative_paths(in_new_user_dir, capsys):
    """The shipped tiny recipe as written (relative run dir, data and tokenizer paths), a
    resume, `rmr1 convert` both ways on relative paths, then `rmr1 judge` on the checkpoint
    from another working directory (its saved config names absolute paths)."""
    recipe = os.path.join(REPO, "configs", "distill", "tiny.yaml")
    common = ["checkpoint.save_every=2", "train.progress=false", "train.peak_flops=1e12"]
    assert cli.main(["distill", recipe, "train.max_steps=2", *common]) == 0
    assert sorted(os.listdir("runs/distill-tiny/checkpoints")) == ["2"]
    assert cli.main(["distill", recipe, "train.max_steps=4", *common]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert sorted(os.listdir("runs/distill-tiny/checkpoints")) == ["2", "4"]
    assert cli.main(["convert", "orbax-to-hf", "--ckpt", "runs/distill-tiny/checkpoints", "--out", "export/hf",
                     "--dtype", "float32", "--tokenizer", "runs/demo/tokenizer"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained("export/hf")
    assert cli.main(["convert", "hf-to-orbax", "--ckpt", "export/hf", "--out", "export/orbax"]) == 0
    assert os.path.isdir("export/orbax/0")
    ckpt = os.path.abspath("runs/distill-tiny/checkpoints")
    os.chdir(os.path.dirname(REPO))  # elsewhere: the checkpoint still finds its tokenizer and prompts
    assert cli.main(["judge", "--ckpt", ckpt, "--prompt", "Say hi", "--a", "HI", "--b", "hi there",
                     "--max-new-tokens", "8"]) == 0
    assert "verdict:" in capsys.readouterr().out
    assert hf.config.vocab_size > 0


def test_demo_quotes_are_exact_token_copies_of_the_replies(tmp_path):
    """The demo tokenizer keeps tags, reply labels and line breaks as single pieces, so each
    trace's <quote_X> is token for token the reply as the prompt shows it."""
    import re

    from rmr1_jax.demos.rmr1 import PROTOCOL_SYMBOLS, write_demo_prompts
    from rmr1_jax.text.tokenizer import train_sentencepiece
    from rmr1_jax.worlds import judging_tasks

    _, template = write_demo_prompts(str(tmp_path / "prompts"))
    pairs = judging_tasks.generate_pairs(300, seed=0, kinds=("caps_word", "word_count"))
    traces = judging_tasks.make_distillation_examples(pairs, seed=0, template=template, style="compact")
    texts = [t for ex in traces for t in [m["content"] for m in ex.messages] + [ex.target]]
    tok = train_sentencepiece(texts, str(tmp_path / "tok"), vocab_size=600, extra_symbols=PROTOCOL_SYMBOLS)
    tag_ids = tok.encode("<quote_A></quote_A><quote_B></quote_B>")
    assert len(tag_ids) == 4  # one piece per tag
    for ex in traces[:100]:
        prompt = tok.encode(ex.messages[-1]["content"])
        target = tok.encode(ex.target)
        for label in "AB":
            quote = re.search(f"<quote_{label}>(.*?)</quote_{label}>", ex.target).group(1)
            ids = tok.encode(quote)
            assert _contains(target, tok.encode(f"<quote_{label}>") + ids + tok.encode(f"</quote_{label}>"))
            # in the prompt the reply follows "[X]" and a line break, and ends the line
            assert _contains(prompt, tok.encode(f"[{label}]\n") + ids)


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))
