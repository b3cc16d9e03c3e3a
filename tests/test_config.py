"""Recipes, config validation errors, ``key=value`` overrides and the CLI's one-line errors."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from rmr1_jax.config import apply_overrides, from_dict, load_yaml
from rmr1_jax.errors import ConfigError
from rmr1_jax.train.grpo import GRPOConfig, load_grpo_config
from rmr1_jax.train.sft import DistillConfig, load_distill_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.join(ROOT, "configs", "distill")
GRPO = os.path.join(ROOT, "configs", "grpo")
TINY_DISTILL = os.path.join(DISTILL, "tiny.yaml")
TINY_GRPO = os.path.join(GRPO, "tiny.yaml")

# The published RM-R1 hyperparameters each recipe must carry.
DISTILL_LR = {"qwen2.5-7b-instruct": 5e-6, "qwen2.5-14b-instruct": 3e-6, "qwen2.5-32b-instruct": 2e-6}
GRPO_LR = {"qwen2.5-7b-instruct": 1e-6, "qwen2.5-14b-instruct": 7e-7, "qwen2.5-32b-instruct": 5e-7,
           "deepseek-r1-distill-qwen-7b": 1e-6, "deepseek-r1-distill-qwen-14b": 1e-6,
           "deepseek-r1-distill-qwen-32b": 8e-7}


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def test_every_recipe_is_covered():
    assert {_name(p) for p in glob.glob(os.path.join(DISTILL, "*.yaml"))} == set(DISTILL_LR) | {"tiny"}
    assert {_name(p) for p in glob.glob(os.path.join(GRPO, "*.yaml"))} == set(GRPO_LR) | {"tiny"}


def _distill_overrides(name):
    """What a big recipe leaves to the command line (as its header says): validation requires
    a data.train file and a model source (model.preset / hf_dir / init_checkpoint)."""
    return ["data.train=[/data/train.jsonl]", "model.hf_dir=/ckpt/model"]


def _grpo_overrides(name):
    model = "model.init_checkpoint=/ckpt/stage1" if name.startswith("qwen") else "model.hf_dir=/ckpt/model"
    return ["data.train=[/data/train.jsonl]", model]


@pytest.mark.parametrize("name", sorted(DISTILL_LR))
def test_distill_recipe_loads_with_published_hyperparameters(name):
    path = os.path.join(DISTILL, f"{name}.yaml")
    # Without its command-line settings a big recipe is rejected with a clear message.
    with pytest.raises(ConfigError, match="data.train"):
        load_distill_config(path, ["model.hf_dir=/ckpt/model"])
    with pytest.raises(ConfigError, match="model.hf_dir"):
        load_distill_config(path, ["data.train=[x.jsonl]"])
    cfg = load_distill_config(path, _distill_overrides(name))
    assert isinstance(cfg, DistillConfig)
    assert cfg.data.train == ["/data/train.jsonl"] and cfg.model.hf_dir == "/ckpt/model"
    o, t, d = cfg.optim, cfg.train, cfg.data
    assert o.lr == pytest.approx(DISTILL_LR[name], rel=1e-12)
    assert o.schedule == "cosine" and o.warmup_ratio == 0.03 and o.warmup_steps is None
    assert (o.b1, o.b2) == (0.9, 0.95) and o.weight_decay == 0.0 and o.grad_clip == 1.0
    assert t.global_batch == 128 and t.epochs == 1.0 and t.max_steps is None
    assert t.global_batch % (t.micro_batch or t.global_batch) == 0
    assert d.max_length == 12288 and d.pack is True
    assert cfg.model.dtype == "bfloat16"
    assert cfg.prompt.variant == "instruct"


def _check_grpo_hparams(cfg: GRPOConfig, name: str):
    g, o = cfg.grpo, cfg.optim
    assert g.n == 7 and g.temperature == 1.0 and g.top_p == 1.0 and g.top_k == 0
    assert g.clip_low == 0.2 and g.clip_high == 0.2
    assert g.kl_estimator == "k3" and g.kl_coef == 0.001
    assert g.prompts_per_step == 1024 and g.minibatch_prompts == 128 and g.ppo_epochs == 1
    assert g.max_prompt_tokens == 4096 and g.max_response_tokens == 8192
    assert g.loss_agg == "token_mean" and g.entropy_coef == 0.0 and g.advantage == "group_norm"
    assert o.schedule == "constant" and o.warmup_ratio == 0.0 and o.warmup_steps is None
    assert o.lr == pytest.approx(GRPO_LR[name], rel=1e-12)
    assert o.grad_clip == 1.0 and o.weight_decay == 0.0
    assert cfg.prompt.variant == ("reasoning" if name.startswith("deepseek") else "instruct")
    # micro_batch must divide the rows of one update: minibatch_prompts x n
    mb = cfg.train.micro_batch
    assert mb is None or (g.minibatch_prompts * g.n) % mb == 0


@pytest.mark.parametrize("name", sorted(GRPO_LR))
def test_grpo_recipe_carries_published_hyperparameters(name):
    """The recipe's values, typed and key-checked (without the cross-field validation)."""
    path = os.path.join(GRPO, f"{name}.yaml")
    cfg = from_dict(GRPOConfig, apply_overrides(load_yaml(path), _grpo_overrides(name)), path)
    _check_grpo_hparams(cfg, name)


@pytest.mark.parametrize("name", sorted(GRPO_LR))
def test_grpo_recipe_loads(name):
    path = os.path.join(GRPO, f"{name}.yaml")
    cfg = load_grpo_config(path, _grpo_overrides(name))
    _check_grpo_hparams(cfg, name)


def test_tiny_recipes_load_as_written():
    d = load_distill_config(TINY_DISTILL)
    assert d.data.train == ["runs/demo/data/distill_traces.jsonl"] and d.model.preset == "demo"
    g = load_grpo_config(TINY_GRPO)
    assert g.grpo.n == 8 and g.grpo.both_orders and g.grpo.minibatch_prompts == 16 and g.optim.b2 == 0.99


# ---------------------------------------------------------------------------------------------
# Errors: each a ConfigError naming the file and the dotted key
# ---------------------------------------------------------------------------------------------


def _write(tmp_path, text: str, name="recipe.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BASE = "data:\n  train: [t.jsonl]\nmodel:\n  preset: tiny\n"


@pytest.mark.parametrize("extra,key,what", [
    ("bogus: 1\n", "'bogus'", "unknown key"),
    ("optim:\n  lrr: 1.0\n", "'optim.lrr'", "unknown key"),
    ("grpo:\n  n: 7\n", "'grpo'", "unknown key"),  # a GRPO-only section in a distill recipe
    ("optim:\n  lr: abc\n", "optim.lr", "must be a number"),
    ("train:\n  global_batch: 1.5\n", "train.global_batch", "must be an integer"),
    ("train:\n  progress: maybe\n", "train.progress", "must be true or false"),
    ("data:\n  train: t.jsonl\n", "data.train", "must be a list"),
    ("optim: 3\n", "optim", "must be a mapping"),
    ("optim:\n  schedule: step\n", "optim.schedule", "is not one of"),
    ("train:\n  micro_batch: 3\n  global_batch: 16\n", "train.micro_batch", "must divide"),
    ("train:\n  micro_batch: abc\n", "train.micro_batch", "does not match"),
])
def test_bad_recipe_file(tmp_path, extra, key, what):
    text = BASE.replace("data:\n  train: [t.jsonl]\n", "") if extra.startswith("data:") else BASE
    path = _write(tmp_path, text + extra)
    with pytest.raises(ConfigError) as ei:
        load_distill_config(path)
    msg = str(ei.value)
    assert msg.startswith(path) and key in msg and what in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("loader,recipe,override,key,what", [
    (load_distill_config, TINY_DISTILL, "lrr=1", "'lrr'", "unknown key"),
    (load_distill_config, TINY_DISTILL, "optim.lrr=1", "'optim.lrr'", "unknown key"),
    (load_distill_config, TINY_DISTILL, "optim.lr=abc", "optim.lr", "must be a number"),
    (load_distill_config, TINY_DISTILL, "train.global_batch=1.5", "train.global_batch", "must be an integer"),
    (load_distill_config, TINY_DISTILL, "train.micro_batch=3", "train.micro_batch", "must divide"),
    (load_distill_config, TINY_DISTILL, "data.overlong=cut", "data.overlong", "is not one of"),
    (load_distill_config, TINY_DISTILL, "optim.lr=0", "optim.lr", "must be positive"),
    (load_grpo_config, TINY_GRPO, "grpo.kl_estimator=k9", "grpo.kl_estimator", "is not one of"),
    (load_grpo_config, TINY_GRPO, "grpo.minibatch_prompts=7", "grpo.minibatch_prompts", "must divide"),
    (load_grpo_config, TINY_GRPO, "grpo.n=1", "grpo.n", "at least 2"),
    (load_grpo_config, TINY_GRPO, "grpo.minibatch_prompts=1", "grpo.both_orders", "even"),
    (load_grpo_config, TINY_GRPO, "grpo.rollout_dtype=bf17", "grpo.rollout_dtype", "not a floating-point dtype"),
    (load_grpo_config, TINY_GRPO, "grpo.rollout_dtype=int8", "grpo.rollout_dtype", "not a floating-point dtype"),
    (load_grpo_config, TINY_GRPO, "mesh.sideways=2", "'mesh.sideways'", "unknown key"),
    (load_grpo_config, TINY_GRPO, "sampling.max_slots=0", "sampling.max_slots", "at least 1"),
    (load_grpo_config, TINY_GRPO, "sampling.kv_pages=1", "sampling.kv_pages", "at least 2"),
    (load_grpo_config, TINY_GRPO, "sampling.slots=4", "'sampling.slots'", "unknown key"),
])
def test_bad_override(loader, recipe, override, key, what):
    with pytest.raises(ConfigError) as ei:
        loader(recipe, [override])
    msg = str(ei.value)
    assert msg.startswith(recipe) and key in msg and what in msg, msg
    assert "\n" not in msg


def test_rollout_dtype_needs_recomputed_old_logprobs():
    assert load_grpo_config(TINY_GRPO, ["grpo.rollout_dtype=bfloat16"]).grpo.rollout_dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"grpo\.old_logprobs must be 'recompute'"):
        load_grpo_config(TINY_GRPO, ["grpo.rollout_dtype=bfloat16", "grpo.old_logprobs=sampler"])


def test_grpo_sampling_section_sizes_the_engine_and_rollout_batch_is_deprecated():
    """``sampling:`` (the engine's :class:`EngineConfig`, a frozen dataclass) loads from the
    recipe and from overrides; ``grpo.rollout_batch`` still loads, with a warning that it is
    ignored."""
    from rmr1_jax.sampling.engine import EngineConfig

    cfg = load_grpo_config(TINY_GRPO, ["sampling.max_slots=8", "sampling.page_size=32", "sampling.kv_pages=64"])
    assert cfg.sampling == EngineConfig(max_slots=8, page_size=32, kv_pages=64)
    assert load_grpo_config(TINY_GRPO).sampling.max_slots == 64  # as the recipe says
    assert GRPOConfig().sampling == EngineConfig()
    with pytest.warns(FutureWarning, match="grpo.rollout_batch is deprecated and ignored.*sampling.max_slots"):
        load_grpo_config(TINY_GRPO, ["grpo.rollout_batch=8"])


@pytest.mark.parametrize("text,line", [
    ("optim:\n  lr: 1.0\n   b1: 0.9\n", 3),
    ("model:\n  preset: tiny\noptim:\n  lr: 1.0\n\tb1: 0.9\n", 5),
    ("optim:\n  lr: 1.0\n  b1: [0.9\ntrain:\n  seed: 1\n", 4),
])
def test_invalid_yaml_names_the_line(tmp_path, text, line):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_distill_config(path)
    msg = str(ei.value)
    assert msg.startswith(path) and "invalid YAML" in msg and f"line {line}" in msg, msg
    assert "\n" not in msg


def test_top_level_must_be_a_mapping(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as ei:
        load_distill_config(path)
    assert str(ei.value).startswith(path)


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not found") as ei:
        load_distill_config(path)
    assert str(ei.value).startswith(path)


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def test_apply_overrides_parses_yaml_values_and_creates_sections():
    base = {"optim": {"lr": 1.0}, "keep": "me"}
    out = apply_overrides(base, [
        "data.train=[a.jsonl,b.jsonl]", "train.global_batch=64", "optim.lr=2.5e-6", "train.progress=false",
        "model.scan_layers=true", "model.preset=null", "a.b.c.d=deep", "s=hello world", "empty=", "eq=x=y",
        "n=-3",
    ])
    assert out == {
        "optim": {"lr": 2.5e-6}, "keep": "me",
        "data": {"train": ["a.jsonl", "b.jsonl"]}, "train": {"global_batch": 64, "progress": False},
        "model": {"scan_layers": True, "preset": None}, "a": {"b": {"c": {"d": "deep"}}},
        "s": "hello world", "empty": "", "eq": "x=y", "n": -3,
    }
    assert base == {"optim": {"lr": 1.0}, "keep": "me"}  # input untouched
    assert isinstance(out["train"]["global_batch"], int) and isinstance(out["optim"]["lr"], float)


def test_apply_overrides_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="'lr' is not a section"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=1"])


def test_overrides_through_load():
    cfg = load_distill_config(TINY_DISTILL, ["data.train=[a.jsonl,b.jsonl]", "optim.lr=2.0e-6",
                                             "train.max_steps=5", "train.progress=false", "train.micro_batch=8",
                                             "data.eval=[e.jsonl]", "mesh.fsdp=2", "checkpoint.dir=/tmp/ck"])
    assert cfg.data.train == ["a.jsonl", "b.jsonl"] and cfg.data.eval == ["e.jsonl"]
    assert cfg.optim.lr == 2e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 5 and cfg.train.progress is False and cfg.train.micro_batch == 8
    assert cfg.mesh.fsdp == 2 and cfg.checkpoint.dir == "/tmp/ck"
    assert cfg.optim.schedule == "cosine"  # untouched keys keep the recipe's values
    # an int is accepted where a float is expected
    assert load_distill_config(TINY_DISTILL, ["optim.lr=1"]).optim.lr == 1.0
    # sections absent from the recipe are created
    cfg = load_distill_config(None, ["data.train=[x.jsonl]", "tokenizer.path=/tok"])
    assert cfg.tokenizer.path == "/tok" and cfg.model.preset == "tiny"


@pytest.mark.parametrize("value,expected", [("2e-6", 2e-6), ("1e3", 1000.0), ("5E-7", 5e-7)])
def test_exponent_without_dot_is_a_number(value, expected):
    assert load_distill_config(TINY_DISTILL, [f"optim.lr={value}"]).optim.lr == expected


# ---------------------------------------------------------------------------------------------
# CLI: exit status 2, one line on stderr, no traceback
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_results():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cases = {
        "unknown_key": ["distill", "configs/distill/tiny.yaml", "optim.lrr=1"],
        "bad_type": ["distill", "configs/distill/tiny.yaml", "optim.lr=abc"],
        "missing_config": ["distill", "configs/distill/no-such-recipe.yaml"],
        "bad_literal": ["grpo", "configs/grpo/tiny.yaml", "grpo.kl_estimator=k9"],
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "rmr1_jax.cli", *args], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, args in cases.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[k] = (p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("case,needle", [
    ("unknown_key", "'optim.lrr'"),
    ("bad_type", "optim.lr='abc'"),
    ("missing_config", "configs/distill/no-such-recipe.yaml: config file not found"),
    ("bad_literal", "grpo.kl_estimator='k9'"),
])
def test_cli_config_errors(cli_results, case, needle):
    rc, stdout, stderr = cli_results[case]
    assert rc == 2, (rc, stdout, stderr)
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, stderr
    assert needle in lines[0] and lines[0].startswith("rmr1 "), lines[0]
    assert "Traceback" not in stderr and stdout == ""


def test_grpo_update_batch_is_derived_and_never_overwritten(tmp_path):
    """GRPO's update batch is grpo.minibatch_prompts x grpo.n: left unset it stays unset in the
    config (and its saved copy), and a train.global_batch set to another value is an error."""
    from rmr1_jax.train.grpo import load_grpo_config

    path = os.path.join(GRPO, "qwen2.5-7b-instruct.yaml")
    over = ["model.hf_dir=/ckpt/model", "data.train=[x.jsonl]"]
    cfg = load_grpo_config(path, over)
    assert cfg.train.global_batch is None and cfg.grpo.minibatch_prompts * cfg.grpo.n == 896
    assert load_grpo_config(path, over + ["train.global_batch=896"]).train.global_batch == 896
    with pytest.raises(ConfigError, match=r"train.global_batch=112 conflicts .* = 896"):
        load_grpo_config(path, over + ["train.global_batch=112"])
    with pytest.raises(ConfigError, match="train.micro_batch=100 must divide grpo.minibatch_prompts x grpo.n=896"):
        load_grpo_config(path, over + ["train.micro_batch=100"])


def test_help_and_version_answer_without_importing_jax():
    """``rmr1 --help`` and ``rmr1 --version`` build the whole parser without importing JAX (a
    fraction of a second, not the seconds JAX's import takes)."""
    import subprocess
    import sys

    code = ("import sys\nfrom rmr1_jax.cli import build_parser\nbuild_parser()\n"
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))[:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "rmr1_jax.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "rmr1 0.1.0"
