"""One rendering from training to scoring to export.

A reward model trained from a preset with ``tokenizer.path`` (the small ChatML BPE fixture) and
a ``tokenizer.chat_template_file`` of its own, whose file is deleted after training:

* the checkpoint carries the template's text: ``load_checkpoint_tokenizer`` and ``score-rm``'s
  loader render with it (also when the tokenizer is named explicitly);
* ``rmr1 convert orbax-to-hf`` writes the run's tokenizer and that template into
  ``tokenizer_config.json``: transformers' ``AutoTokenizer`` renders (and tokenizes) exactly as we
  do, and the command names the export's dtype;
* a checkpoint with no tokenizer to be found is refused in one line, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import pytest
import transformers
import yaml

from rmr1_jax import cli
from rmr1_jax.checkpoint.convert import checkpoint_metadata, orbax_to_hf
from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.errors import CheckpointError
from rmr1_jax.checkpoint.introspect import load_checkpoint_tokenizer
from rmr1_jax.parallel.mesh import make_mesh
from rmr1_jax.text.tokenizer import load_tokenizer
from rmr1_jax.train import runner

CHATML = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "text", "fixtures", "chatml")
TEMPLATE = ("{%- for m in messages %}### {{ m.role | upper }}:\n{{ m.content }}{{ eos_token }}\n{% endfor %}"
            "{%- if add_generation_prompt %}### ASSISTANT:\n{% endif %}")
MSGS = [{"role": "system", "content": "Judge the replies."}, {"role": "user", "content": "Say HI in caps."},
        {"role": "assistant", "content": "HI"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint directory, tokenizer directory, the rendering training used)."""
    root = tmp_path_factory.mktemp("tpl")
    tok_dir = str(root / "tok")
    shutil.copytree(CHATML, tok_dir)
    template_file = root / "judge.jinja"
    template_file.write_text(TEMPLATE)
    data = str(root / "pairs.jsonl")
    synthetic.write_pairs_jsonl(data, synthetic.generate_pairs(16, seed=3, kinds=("caps_word",)))
    cfg = {"model": {"preset": "tiny", "dtype": "float32", "scan_layers": False}, "mesh": {"data": -1},
           "tokenizer": {"path": tok_dir, "chat_template_file": str(template_file)},
           "data": {"train": [data], "max_length": 128, "overlong": "truncate"},
           "optim": {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0},
           "train": {"run_dir": str(root / "run"), "global_batch": 8, "max_steps": 1, "progress": False,
                     "peak_flops": 1e12},
           "checkpoint": {"save_every": 1, "keep": 1, "async_save": False}}
    with open(root / "rm.yaml", "w") as f:
        yaml.safe_dump(cfg, f)
    out = runner.run(runner.load_config("reward-model", str(root / "rm.yaml")), "reward-model", log=lambda *_: None)
    rendered = out.tokenizer.apply_chat_template(MSGS)
    assert rendered.startswith("### SYSTEM:\nJudge the replies.<|im_end|>")  # training rendered with the file
    os.remove(template_file)  # the checkpoint must hold the template's text, not a path to it
    return str(root / "run" / "checkpoints"), tok_dir, rendered


def test_a_checkpoint_renders_with_the_template_it_trained_with(trained):
    from rmr1_jax.inference.reward import load_reward_model

    ckpt, tok_dir, rendered = trained
    assert load_tokenizer(tok_dir).apply_chat_template(MSGS) != rendered  # the files' own template differs
    assert load_checkpoint_tokenizer(ckpt).apply_chat_template(MSGS) == rendered
    assert load_checkpoint_tokenizer(ckpt, tok_dir).apply_chat_template(MSGS) == rendered  # --tokenizer too
    scorer = load_reward_model(ckpt, make_mesh(devices=jax.devices()[:1]))  # what score-rm scores with
    assert scorer.tokenizer.apply_chat_template(MSGS) == rendered


def test_the_export_carries_the_runs_tokenizer_and_template_into_transformers(trained, tmp_path, capsys):
    ckpt, tok_dir, rendered = trained
    out = str(tmp_path / "hf")
    assert cli.main(["convert", "orbax-to-hf", "--ckpt", ckpt, "--out", out]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "bfloat16" in line and "--dtype float32" in line, line
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == TEMPLATE
    ours = load_checkpoint_tokenizer(ckpt)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for gen in (False, True):
        assert theirs.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=gen) == \
            ours.apply_chat_template(MSGS, add_generation_prompt=gen)
    assert theirs.encode(rendered, add_special_tokens=False) == ours.encode(rendered)
    assert load_checkpoint_tokenizer(out).apply_chat_template(MSGS) == rendered  # our readers of the export
    # float32: the command says nothing about score equality (it holds)
    assert cli.main(["convert", "orbax-to-hf", "--ckpt", ckpt, "--out", str(tmp_path / "f32"), "--dtype",
                     "float32"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "float32" in line and "--dtype float32" not in line, line


def test_an_export_without_a_tokenizer_is_refused_in_one_line(tmp_path, capsys):
    model, params = load_model("tiny", mesh=make_mesh(devices=jax.devices()[:1]), dtype="float32", vocab_size=300)
    ckpt = str(tmp_path / "bare")
    with CheckpointManager(ckpt, max_to_keep=None, async_save=False) as mgr:
        mgr.save(1, {"params": params}, metadata=checkpoint_metadata(model.cfg), force=True)  # no run config
    out = str(tmp_path / "hf")
    with pytest.raises(CheckpointError) as e:
        orbax_to_hf(ckpt, out)
    msg = str(e.value)
    assert "\n" not in msg and "no tokenizer" in msg and "--tokenizer DIR" in msg, msg
    assert not os.path.exists(out)
    assert cli.main(["convert", "orbax-to-hf", "--ckpt", ckpt, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tokenizer" in err[0], err
    # a tokenizer larger than the model's vocabulary is not its tokenizer
    with pytest.raises(CheckpointError, match="more than the model's vocabulary of 300"):
        orbax_to_hf(ckpt, out, tokenizer_dir=CHATML)
    assert not os.path.exists(out)
