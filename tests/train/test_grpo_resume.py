"""Exact GRPO resume: a run stopped by SIGTERM in the middle of a rollout's mini-batches and
resumed gives bit for bit the parameters of the uninterrupted run (on CPU). The checkpoint taken
inside the rollout keeps the mini-batches not yet trained on, with the prompt position and the
rollout count, so the resumed run trains on exactly them and then samples the next rollout."""

import os

import jax
import numpy as np
import pytest
import yaml

from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.text import verdict
from rmr1_jax.demos.rmr1 import write_demo_prompts
from rmr1_jax.text.tokenizer import train_sentencepiece
from rmr1_jax.train.grpo import load_grpo_config, run_grpo
from sigterm_hook import sigterm_at_step

UPDATES = 3  # per rollout step
STOP_AT = 1  # inside the first rollout


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_resume")
    pairs = synthetic.generate_pairs(32, seed=5, kinds=("compare", "caps_word"))
    data = str(root / "pairs.jsonl")
    synthetic.write_pairs_jsonl(data, pairs)
    files, template = write_demo_prompts(str(root / "prompts"))  # the demo's short judge prompt
    traces = synthetic.make_distillation_examples(pairs, seed=0, template=template, style="compact")
    texts = [m["content"] for ex in traces for m in ex.messages] + [ex.target for ex in traces]
    tok_dir = str(root / "tok")
    train_sentencepiece(texts, tok_dir, vocab_size=400)
    return root, data, tok_dir, files


def _config(root, name, data, tok_dir, files):
    cfg = {
        "model": {"preset": "tiny", "dtype": "float32", "scan_layers": False},
        "mesh": {"data": 2, "fsdp": 4, "tensor": 1},
        "tokenizer": {"path": tok_dir},
        "prompt": {"variant": "instruct", "system_file": files["system"], "user_file": files["user"],
                   "user_multiturn_file": files["user_multiturn"]},
        "data": {"train": [data], "max_length": 384, "overlong": "skip"},
        "optim": {"lr": 1e-2, "schedule": "constant", "warmup_ratio": 0.0},
        # the entropy term gives every row a gradient, so the parameters move at each update
        "grpo": {"n": 2, "max_prompt_tokens": 384, "max_response_tokens": 8, "prompts_per_step": 6,
                 "minibatch_prompts": 2, "rollout_steps": 2, "logprob_batch": 6,
                 "kl_estimator": "k3", "kl_coef": 0.1, "entropy_coef": 0.01},
        "train": {"run_dir": str(root / name), "progress": False, "peak_flops": 1e12, "log_every": 1},
        "checkpoint": {"save_every": 1000, "keep": 3},
    }
    path = str(root / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


@pytest.fixture(autouse=True)
def graded_reward(monkeypatch):
    """Rewards that vary within each group (a random policy never writes a verdict)."""
    monkeypatch.setattr(verdict, "judgment_reward", lambda text, winner, opened_thinking=False:
                        1.0 if len(text) % 2 else -1.0)


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_sigterm_inside_a_rollout_resumes_bit_identical(setup):
    root, data, tok_dir, files = setup
    _, straight, result, _ = run_grpo(load_grpo_config(_config(root, "straight", data, tok_dir, files)),
                                      log=lambda *_: None)
    assert result.step == 2 * UPDATES and not result.stopped_early

    cfg_path = _config(root, "stopped", data, tok_dir, files)
    remove = sigterm_at_step(STOP_AT)  # seen by the loop after that step
    try:
        _, _, stopped, _ = run_grpo(load_grpo_config(cfg_path), log=lambda *_: None)
    finally:
        remove()
    assert stopped.stopped_early and stopped.step == STOP_AT
    with CheckpointManager(os.path.join(root, "stopped", "checkpoints"), read_only=True) as m:
        assert m.all_steps() == [STOP_AT]
        held = m.restore_source(STOP_AT, lambda shape: jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert len(held) == UPDATES - STOP_AT  # the rollout's mini-batches not trained on yet

    logs = []
    _, resumed, result, _ = run_grpo(load_grpo_config(cfg_path), log=logs.append)
    assert any("resumed from" in line and f"at step {STOP_AT}" in line for line in logs)
    assert result.step == 2 * UPDATES
    moved = False
    for a, b, c in zip(_leaves(straight), _leaves(resumed), _leaves(load_params_at_start(root, tok_dir))):
        assert np.array_equal(a, b)
        moved |= not np.array_equal(a, c)
    assert moved


def load_params_at_start(root, tok_dir):
    """The initial parameters (same preset, seed and tokenizer) to check the run moved them."""
    from rmr1_jax.schema import ModelSpec
    from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
    from rmr1_jax.text.tokenizer import load_tokenizer
    from rmr1_jax.train.setup import build_model

    _, params = build_model(ModelSpec(preset="tiny", dtype="float32", scan_layers=False),
                            make_mesh(MeshConfig(2, 2, 2)), load_tokenizer(tok_dir), seed=0)
    return params
