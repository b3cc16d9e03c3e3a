"""Exact resume: 2N steps in one run equal N steps, a stop, and N more steps resumed from
the checkpoint: bit-identical parameters (data position, optimizer state and RNG restored)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.text.prompts import JudgeTemplate
from rmr1_jax.text.tokenizer import train_sentencepiece
from rmr1_jax.train.sft import load_distill_config, run_distill

N = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    pairs = synthetic.generate_pairs(64, seed=3, kinds=("add", "compare", "caps_word"))
    template = JudgeTemplate.builtin("reasoning")
    traces = synthetic.make_distillation_examples(pairs, seed=0, template=template, style="compact")
    data = str(root / "traces.jsonl")
    synthetic.write_traces_jsonl(data, traces)
    texts = [m["content"] for ex in traces for m in ex.messages] + [ex.target for ex in traces]
    tok_dir = str(root / "tok")
    train_sentencepiece(texts, tok_dir, vocab_size=400)
    return root, data, tok_dir


def _config(root, name, data, tok_dir):
    cfg = {
        "model": {"preset": "tiny", "dtype": "float32", "scan_layers": True},
        "mesh": {"data": 2, "fsdp": 2, "tensor": 2},
        "tokenizer": {"path": tok_dir},
        "prompt": {"variant": "reasoning"},
        "data": {"train": [data], "max_length": 768, "overlong": "skip"},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"run_dir": str(root / name), "global_batch": 4, "micro_batch": 2, "max_steps": 2 * N,
                  "progress": False, "peak_flops": 1e12, "log_every": 1},
        "checkpoint": {"save_every": 2, "keep": 5},
    }
    path = str(root / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    root, data, tok_dir = setup
    _, params, result, _ = run_distill(load_distill_config(_config(root, "straight", data, tok_dir)),
                                       log=lambda *_: None)
    assert result.step == 2 * N
    return _leaves(params)


@pytest.mark.parametrize("mode", ["sigterm", "kill"])
def test_stop_and_resume_is_bit_identical(setup, uninterrupted, mode):
    root, data, tok_dir = setup
    cfg_path = _config(root, f"resumed-{mode}", data, tok_dir)
    child = os.path.join(os.path.dirname(__file__), "resume_child.py")
    proc = subprocess.run([sys.executable, child, cfg_path, mode, str(N)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    ckpt_dir = os.path.join(str(root / f"resumed-{mode}"), "checkpoints")
    from rmr1_jax.checkpoint.manager import CheckpointManager

    with CheckpointManager(ckpt_dir, read_only=True) as m:
        steps = m.all_steps()
    if mode == "sigterm":
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert steps[-1] == N, steps
    else:
        assert proc.returncode == 17, proc.stderr[-3000:]
        assert max(steps) <= N and N - 2 in steps, steps  # step N may not have committed
    _, params, result, _ = run_distill(load_distill_config(cfg_path), log=lambda *_: None)
    assert result.step == 2 * N
    for a, b in zip(uninterrupted, _leaves(params)):
        assert np.array_equal(a, b)
