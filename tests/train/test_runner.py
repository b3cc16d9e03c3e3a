"""The one runner: objectives found by name, a new objective plugged in as a small object,
the derived sizes printed and never written into the config, and ``mesh.rules`` reaching the
parameters' shardings."""

import dataclasses
import os

import jax
import pytest
import yaml

from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.errors import ConfigError
from rmr1_jax.parallel.sharding import DEFAULT_RULES, merge_rules
from rmr1_jax.text.prompts import JudgeTemplate
from rmr1_jax.text.tokenizer import train_sentencepiece
from rmr1_jax.train import runner
from rmr1_jax.train.sft import OBJECTIVE as DISTILL


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    pairs = synthetic.generate_pairs(32, seed=5, kinds=("caps_word",))
    traces = synthetic.make_distillation_examples(pairs, seed=0, template=JudgeTemplate.builtin("reasoning"),
                                                  style="compact")
    data = str(root / "traces.jsonl")
    synthetic.write_traces_jsonl(data, traces)
    tok_dir = str(root / "tok")
    train_sentencepiece([m["content"] for ex in traces for m in ex.messages] + [ex.target for ex in traces],
                        tok_dir, vocab_size=400)
    return root, data, tok_dir


def _recipe(root, name, data, tok_dir, **mesh):
    cfg = {"model": {"preset": "tiny", "dtype": "float32", "scan_layers": False},
           "mesh": {"data": 1, "fsdp": 8, "tensor": 1, **mesh},
           "tokenizer": {"path": tok_dir}, "prompt": {"variant": "reasoning"}, "data": {"train": [data], "max_length": 768, "overlong": "skip"},
           "train": {"run_dir": str(root / name), "global_batch": 8, "max_steps": 2, "progress": False,
                     "peak_flops": 1e12, "log_every": 1},
           "checkpoint": {"save_every": 100, "keep": 1, "async_save": False}}
    path = str(root / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def test_builtin_objectives_are_found_by_name():
    assert runner.get_objective("distill").name == "distill"
    assert runner.get_objective("grpo").name == "grpo"
    with pytest.raises(ConfigError, match="unknown objective 'nope' .*distill.*grpo"):
        runner.get_objective("nope")


class CountingDistill:
    """A new objective in a few lines: distillation's records and loss, with its own metric."""

    name = "counting-distill"
    config_cls = DISTILL.config_cls
    head = "lm"

    def __init__(self):
        self.batches = 0

    def records(self, cfg):
        return DISTILL.records(cfg)

    def plan(self, job):
        plan = DISTILL.plan(job)
        inner, outer = plan.batches, self

        class Counted:
            holds_arrays = False

            def next_batch(self, params):
                outer.batches += 1
                return inner.next_batch(params)

            def pop_metrics(self):
                return {"batches_drawn": float(outer.batches)}

            state, restore = inner.state, inner.restore
            held_arrays, restore_held = inner.held_arrays, inner.restore_held

        return dataclasses.replace(plan, batches=Counted(), sizes={"custom": "yes"})


def test_a_registered_objective_runs_on_the_runner_with_mesh_rules(files):
    root, data, tok_dir = files
    obj = runner.register_objective(CountingDistill())
    assert "counting-distill" in runner.objective_names()
    logs = []
    cfg = runner.load_config("counting-distill", _recipe(root, "custom", data, tok_dir, rules={"embed": None}))
    out = runner.run(cfg, "counting-distill", log=logs.append)
    assert out.result.step == 2 and obj.batches == 2
    assert out.result.last_metrics["batches_drawn"] == 2.0
    text = "\n".join(logs)
    assert "optimizer steps 2, rows per step 8, micro-batches per step 1" in text and "custom yes" in text
    # mesh.rules {"embed": null}: no parameter is split over fsdp along its embedding dimension
    spec = out.params["embed_tokens"].sharding.spec
    assert "fsdp" not in jax.tree.leaves(tuple(spec))
    # the default table splits the embedding dimension over fsdp
    default = runner.run(runner.load_config("distill", _recipe(root, "default", data, tok_dir)), "distill",
                         log=lambda *_: None)
    assert "fsdp" in jax.tree.leaves(tuple(default.params["embed_tokens"].sharding.spec))


def test_derived_global_batch_is_printed_not_written_into_the_config(files):
    root, data, tok_dir = files
    path = _recipe(root, "derived", data, tok_dir)
    with open(path) as f:
        raw = yaml.safe_load(f)
    del raw["train"]["global_batch"]  # distillation's default (128) is derived
    raw["train"]["max_steps"] = 1
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    logs = []
    runner.run(runner.load_config("distill", path), "distill", log=logs.append)
    assert "rows per step 128" in "\n".join(logs)
    with open(os.path.join(root, "derived", "config.yaml")) as f:
        assert yaml.safe_load(f)["train"]["global_batch"] is None


def test_mesh_rules_override_the_table_and_bad_entries_name_the_key(files):
    table = dict(merge_rules({"embed": None, "mlp": ["fsdp", "tensor"], "vocab": "fsdp"}))
    assert table["embed"] is None and table["mlp"] == ("fsdp", "tensor") and table["vocab"] == ("fsdp",)
    assert {k: v for k, v in table.items() if k not in ("embed", "mlp", "vocab")} == \
        {k: v for k, v in DEFAULT_RULES if k not in ("embed", "mlp", "vocab")}
    root, data, tok_dir = files
    with pytest.raises(ConfigError, match=r"mesh\.rules\.embd: unknown logical axis"):
        runner.load_config("distill", _recipe(root, "bad1", data, tok_dir, rules={"embd": None}))
    with pytest.raises(ConfigError, match=r"mesh\.rules\.mlp: 'model' is not a mesh axis"):
        runner.load_config("distill", _recipe(root, "bad2", data, tok_dir, rules={"mlp": ["model"]}))
