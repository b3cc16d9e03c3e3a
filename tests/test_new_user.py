"""What a newcomer with their own data meets first: a quiet CPU run, and errors that name the
option, file or field at fault."""

from __future__ import annotations

import json
import os

import pytest

from rmr1_jax.cli.platforms import skip_absent_tpu


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    from rmr1_jax.text.tokenizer import train_sentencepiece

    texts = ["Which reply is better? A said four, B said five."] * 4 + ["The answer is four."] * 4
    out = str(tmp_path_factory.mktemp("tok"))
    train_sentencepiece(texts, out, vocab_size=400)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from rmr1_jax.text.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)


def _write_rows(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


PAIRS = [{"prompt": f"What is 2 + {i}?", "chosen": str(2 + i), "rejected": str(3 + i)} for i in range(3)]


# ---------------------------------------------------------------------------------------------
# 1. A CPU run is quiet: no libtpu probe without a TPU, no TFDS download banner
# ---------------------------------------------------------------------------------------------


def _host(tmp_path, *nodes) -> str:
    root = tmp_path / "host"
    for node in nodes:
        (root / node).parent.mkdir(parents=True, exist_ok=True)
        (root / node).write_text("0x1ae0" if node.endswith("vendor") else "")
    root.mkdir(exist_ok=True)
    return str(root)


def test_cpu_host_with_libtpu_skips_the_tpu_probe(tmp_path):
    env = {"TPU_LIBRARY_PATH": "/opt/libtpu.so"}
    assert skip_absent_tpu(env, root=_host(tmp_path)) is True
    assert env["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("nodes,env", [
    (("dev/accel0",), {}),  # TPU v4 VM
    (("dev/vfio/0",), {}),  # TPU v5e/v6e VM
    (("sys/bus/pci/devices/0000:00:04.0/vendor",), {}),  # a Google TPU on the PCI bus
    (("dev/nvidiactl",), {}),  # a GPU host: JAX picks CUDA
    ((), {"JAX_PLATFORMS": ""}),  # the user's own choice, even "any"
    ((), {"JAX_FORCE_TPU_INIT": "1"}),
    ((), {"TPU_WORKER_HOSTNAMES": "10.0.0.2"}),
], ids=["accel", "vfio", "pci", "gpu", "jax_platforms", "force_tpu", "tpu_env"])
def test_tpu_gpu_and_explicit_choices_are_left_to_jax(tmp_path, nodes, env):
    env = {"TPU_LIBRARY_PATH": "/opt/libtpu.so", **env}
    before = dict(env)
    assert skip_absent_tpu(env, root=_host(tmp_path, *nodes)) is False
    assert env == before


def test_without_libtpu_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    env = {}
    assert skip_absent_tpu(env, root=_host(tmp_path)) is False and env == {}


def test_record_build_prints_no_download_banner(tmp_path, tok, capfd):
    from rmr1_jax.data.records import RecordOptions, build_records

    path = _write_rows(tmp_path / "pairs.jsonl", PAIRS)
    lines = []
    build_records(str(tmp_path / "cache"), {"train": [path]}, tok, None,
                  RecordOptions(kind="pair", max_length=256), log=lines.append)
    out, err = capfd.readouterr()
    assert "Downloading and preparing" not in out + err
    assert "downloaded and prepared" not in out + err
    assert lines == ["data[train]: 3 written of 3 rows"]


# ---------------------------------------------------------------------------------------------
# 2. A k the rule pool cannot hold: one error naming the option and the pool's size
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def four_rule_scores(tmp_path):
    import numpy as np

    from rmr1_jax.rules.pool import Rule, write_pool
    from rmr1_jax.rules.score_files import PairScores, write_pair_scores

    rng = np.random.default_rng(0)
    pairs = PairScores([{"id": f"p{i}", "winner": "AB"[i % 2]} for i in range(8)], rng.random((8, 4)),
                       rng.random((8, 4)), rng.random((8, 4)), np.array([1, 0] * 4, np.int8))
    scores, pool = str(tmp_path / "scores.jsonl"), str(tmp_path / "pool.jsonl")
    write_pair_scores(scores, pairs)
    write_pool(pool, [Rule(f"mine-{i}", f"Prefer the response that follows rule {i}.") for i in range(4)])
    return scores, pool


def _rmr1(capsys, *argv) -> tuple[int, str]:
    from rmr1_jax.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_k_larger_than_the_pool_names_the_option(tmp_path, four_rule_scores, capsys):
    scores, pool = four_rule_scores
    out, diag = str(tmp_path / "out.jsonl"), str(tmp_path / "diag.json")
    code, err = _rmr1(capsys, "rules", "select", "--scores", scores, "--rules", pool, "--out", out)
    assert code == 2
    assert err == "rmr1 rules: error: --k 5: k must be an integer from 1 to the pool size (4 rules)\n"
    # the diagnostics' --ks used to drop 5 and 8 without a word; --k and --ks are said in one line,
    # before the labels are written
    code, err = _rmr1(capsys, "rules", "label", "--scores", scores, "--rules", pool, "--out", out,
                      "--diagnostics", diag, "--ks", "3", "5", "8")
    assert code == 2
    assert err == ("rmr1 rules: error: --k 5; --ks 5 8: k must be an integer from 1 to the pool size "
                   "(4 rules)\n")
    assert not os.path.exists(out) and not os.path.exists(diag)
    code, err = _rmr1(capsys, "rules", "label", "--scores", scores, "--rules", pool, "--out", out, "--k", "3",
                      "--diagnostics", diag, "--ks", "2", "3", "--n-boot", "10")
    assert code == 0 and err == ""
    assert sorted({r["k"] for r in json.load(open(diag)) if r["k"] is not None}) == [2, 3]


# ---------------------------------------------------------------------------------------------
# 3. A wrong model.hf_dir is named as such, not as a missing tokenizer path
# ---------------------------------------------------------------------------------------------


def test_wrong_hf_dir_is_named_not_the_tokenizer(tmp_path, tok_dir):
    from rmr1_jax.errors import ConfigError
    from rmr1_jax.schema import ModelSpec, TokenizerSpec
    from rmr1_jax.train.setup import load_tokenizer_for

    gone = str(tmp_path / "my-modle")
    with pytest.raises(ConfigError, match=f"^model.hf_dir: {gone} not found$"):
        load_tokenizer_for(TokenizerSpec(), ModelSpec(hf_dir=gone))
    model_only = tmp_path / "random-hf-model"  # what save_pretrained writes for a model alone
    model_only.mkdir()
    (model_only / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"^model.hf_dir: {model_only} has no tokenizer \(tokenizer.json or "
                                          r"tokenizer.model\) and tokenizer.path is not set"):
        load_tokenizer_for(TokenizerSpec(), ModelSpec(hf_dir=str(model_only)))
    # the newcomer's own tokenizer beside the model: fine
    assert load_tokenizer_for(TokenizerSpec(path=tok_dir), ModelSpec(hf_dir=gone)).vocab_size > 0


def test_checkpoint_whose_run_hf_dir_moved_names_it(tmp_path):
    import numpy as np

    from rmr1_jax.checkpoint.introspect import load_checkpoint_tokenizer
    from rmr1_jax.checkpoint.manager import CheckpointManager
    from rmr1_jax.errors import UserError

    ckpt, gone = str(tmp_path / "ckpt"), str(tmp_path / "moved-model")
    with CheckpointManager(ckpt, async_save=False) as mgr:
        mgr.save(0, {"params": {"w": np.zeros(2, np.float32)}}, config={"model": {"hf_dir": gone}}, force=True)
    with pytest.raises(UserError, match=f"^{ckpt}: its run read the tokenizer from model.hf_dir {gone}, which is "
                                        f"not found; pass --tokenizer$"):
        load_checkpoint_tokenizer(ckpt)


# ---------------------------------------------------------------------------------------------
# 4. A --ckpt that is no model directory: say what it lacks
# ---------------------------------------------------------------------------------------------


def test_ckpt_without_config_or_steps_names_both(tmp_path, capsys):
    weights_only = tmp_path / "my-model"  # weights, but neither config.json nor an Orbax step
    weights_only.mkdir()
    (weights_only / "model.safetensors").write_bytes(b"")
    code, err = _rmr1(capsys, "judge", "--ckpt", str(weights_only), "--prompt", "hi", "--a", "x", "--b", "y")
    assert code == 2
    assert err == (f"rmr1 judge: error: {weights_only}: no checkpoint found (no committed step in it, and no "
                   f"config.json: neither an Orbax checkpoint nor a Hugging Face model directory)\n")
    run = tmp_path / "run"  # a training run's directory instead of its checkpoints/
    (run / "checkpoints").mkdir(parents=True)
    code, err = _rmr1(capsys, "judge", "--ckpt", str(run), "--prompt", "hi", "--a", "x", "--b", "y")
    assert code == 2 and err.endswith(f"; a training run keeps its checkpoints in {run / 'checkpoints'})\n")


# ---------------------------------------------------------------------------------------------
# 5. Fields a training row has that its shape does not read: one line per file
# ---------------------------------------------------------------------------------------------


def test_unknown_fields_are_named_once_per_file(tmp_path, tok):
    from rmr1_jax.data.records import RecordOptions, build_records

    mine = _write_rows(tmp_path / "mine.jsonl", [
        {**PAIRS[0], "source": "hh", "system_prompt": "Be brief."},
        {**PAIRS[1], "source": "hh"},
        {**PAIRS[2], "task-type": "Chat"}])
    clean = _write_rows(tmp_path / "clean.jsonl", PAIRS)
    # a rules label file feeds train-rm as it is: its bookkeeping is known, not ignored
    labeled = _write_rows(tmp_path / "labels.jsonl", [
        {**p, "a": p["chosen"], "b": p["rejected"], "winner": "A", "strategy": "topk_discrepancy", "k": 2,
         "rule_indices": [0, 1], "rule_ids": ["r0", "r1"], "labels": [1, 1], "score_a": 1.0, "score_b": 0.0,
         "rule_winner": "A", "tie": False} for p in PAIRS])
    lines = []
    build_records(str(tmp_path / "cache"), {"train": [mine, clean, labeled]}, tok, None,
                  RecordOptions(kind="pair", max_length=256), log=lines.append)
    note = (f"data[train]: {mine}: ignored fields source, system_prompt, task-type (a pair row reads prompt, "
            f"chosen, rejected, task_type, id, example_id)")
    assert lines == ["data[train]: 9 written of 9 rows", note]
    lines.clear()  # a reused build says it again
    build_records(str(tmp_path / "cache"), {"train": [mine, clean, labeled]}, tok, None,
                  RecordOptions(kind="pair", max_length=256), log=lines.append)
    assert lines[1:] == [note]


# ---------------------------------------------------------------------------------------------
# 6. The resolved config names what decides the model
# ---------------------------------------------------------------------------------------------


def test_resolved_config_names_hf_dir_not_the_default_preset(tmp_path, capsys):
    import yaml

    gone = str(tmp_path / "my-model")
    recipe = tmp_path / "rm.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"hf_dir": gone}, "data": {"train": [_write_rows(tmp_path / "pairs.jsonl", PAIRS)]},
        "train": {"run_dir": str(tmp_path / "run"), "global_batch": 2, "max_steps": 1}}))
    from rmr1_jax.cli import main

    code = main(["train-rm", str(recipe)])
    out, err = capsys.readouterr()
    assert code == 2 and err == f"rmr1 train-rm: error: model.hf_dir: {gone} not found\n"
    printed = yaml.safe_load(out.split("resolved config:\n", 1)[1])
    assert printed["model"]["preset"] is None and printed["model"]["hf_dir"] == gone
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["preset"] is None
