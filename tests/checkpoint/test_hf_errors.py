"""Bad HF directories: ``load_hf`` raises a one-line CheckpointError naming the file and/or
tensor at fault, and ``rmr1 convert hf-to-orbax`` exits non-zero with exactly that one line on
stderr and leaves no output behind. Also: ``save_hf`` never clobbers or half-writes a directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hf_models  # noqa: E402

import rmr1_jax as rj  # noqa: E402
from rmr1_jax.errors import CheckpointError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIGHTS = "model.safetensors"


def _edit_tensors(d, fn):
    path = os.path.join(d, WEIGHTS)
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _missing_config(d):
    os.remove(os.path.join(d, "config.json"))
    return ["config.json", "not found"]


def _bad_json(d):
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"model_type": "qwen2",\n  "hidden_size": 64,,\n}')
    return ["config.json", "JSON", "line 2"]


def _gpt2(d):
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return ["config.json", "gpt2", "unsupported"]


def _no_weights(d):
    os.remove(os.path.join(d, WEIGHTS))
    return [os.path.basename(d), "no model weights"]


def _pickle_only(d):
    # a realistic pickle checkpoint; the test never unpickles it, and neither may the loader
    sd = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(d, WEIGHTS)).items()}
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    os.remove(os.path.join(d, WEIGHTS))
    return ["pytorch_model.bin", "pickle"]


def _wrong_shape(d):
    name = "model.layers.1.self_attn.k_proj.weight"

    def edit(t):
        t[name] = np.zeros((16, 64), np.float32)  # should be [kv_heads * head_dim, hidden] = [32, 64]

    _edit_tensors(d, edit)
    return [WEIGHTS, name, "[16, 64]", "[32, 64]"]


def _missing_tensor(d):
    name = "model.layers.1.mlp.up_proj.weight"
    _edit_tensors(d, lambda t: t.pop(name))
    return [name, "missing"]


def _extra_tensor(d):
    name = "model.layers.0.self_attn.rel_bias.weight"
    _edit_tensors(d, lambda t: t.__setitem__(name, np.zeros((4,), np.float32)))
    return [WEIGHTS, name, "unexpected"]


def _float64_tensor(d):
    name = "model.norm.weight"
    _edit_tensors(d, lambda t: t.__setitem__(name, t[name].astype(np.float64)))
    return [WEIGHTS, name, "F64"]


def _truncated(d):
    path = os.path.join(d, WEIGHTS)
    with open(path, "rb") as f:
        head = f.read(100)
    with open(path, "wb") as f:
        f.write(head)
    return [WEIGHTS]


def _missing_shard(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[1]
    os.remove(os.path.join(d, shard))
    return [shard, "model.safetensors.index.json", "missing"]


def _corrupt_shard(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[1]
    path = os.path.join(d, shard)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-100])  # header intact, data cut short
    return [shard]


def _index_wrong_file(d):
    index_path = os.path.join(d, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    name = "model.embed_tokens.weight"
    wrong = next(fn for fn in files if fn != index["weight_map"][name])
    index["weight_map"][name] = wrong
    with open(index_path, "w") as f:
        json.dump(index, f)
    return [name, wrong]


def _index_malformed(d):
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": ["model.embed_tokens.weight"]}, f)
    return ["model.safetensors.index.json"]


def _config_not_object(d):
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("[]")
    return ["config.json"]


def _set_config(d, key, value):
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg[key] = value
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def _config_bad_value(d):
    _set_config(d, "num_key_value_heads", "2")
    return ["config.json", "num_key_value_heads"]


def _unsupported_activation(d):
    _set_config(d, "hidden_act", "gelu_pytorch_tanh")
    return ["config.json", "hidden_act", "gelu_pytorch_tanh"]


CASES = {
    "missing-config": _missing_config,
    "unsupported-activation": _unsupported_activation,
    "bad-json": _bad_json,
    "unsupported-arch": _gpt2,
    "no-weights": _no_weights,
    "pickle-only": _pickle_only,
    "wrong-shape": _wrong_shape,
    "missing-tensor": _missing_tensor,
    "extra-tensor": _extra_tensor,
    "float64-tensor": _float64_tensor,
    "truncated-safetensors": _truncated,
    "missing-shard": _missing_shard,
    # malformed shards, indexes and configs
    "corrupt-shard": _corrupt_shard,
    "index-wrong-file": _index_wrong_file,
    "index-malformed": _index_malformed,
    "config-not-object": _config_not_object,
    "config-bad-value": _config_bad_value,
}
SHARDED_CASES = {"missing-shard", "corrupt-shard", "index-wrong-file", "index-malformed"}


def _cases():
    return list(CASES)


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory):
    """{case: (directory, words its error must contain)}."""
    root = tmp_path_factory.mktemp("bad")
    good = str(root / "good")
    hf_models.make_qwen2(good, seed=5)
    sharded = str(root / "good-sharded")
    hf_models.make_sharded(sharded, kind="qwen2", seed=5)
    out = {}
    for case, make in CASES.items():
        d = str(root / case)
        shutil.copytree(sharded if case in SHARDED_CASES else good, d)
        words = make(d)
        out[case] = (d, words)
    return out


@pytest.fixture(scope="module")
def good_dir(bad_dirs):
    return os.path.join(os.path.dirname(next(iter(bad_dirs.values()))[0]), "good")


def _check_message(msg: str, words):
    assert "\n" not in msg.strip(), f"message is not one line: {msg!r}"
    for w in words:
        assert w in msg, f"{w!r} not in error message {msg!r}"


@pytest.mark.parametrize("case", _cases())
def test_load_hf_error(case, bad_dirs):
    d, words = bad_dirs[case]
    with pytest.raises(CheckpointError) as e:
        rj.load_hf(d)
    _check_message(str(e.value), words)


def test_load_hf_nonexistent_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        rj.load_hf(str(tmp_path / "nope"))


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(bad_dirs, tmp_path_factory):
    """Run ``rmr1 convert hf-to-orbax`` on every bad directory, all processes at once."""
    outs = tmp_path_factory.mktemp("cli-out")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    procs = {}
    for case, (d, _) in bad_dirs.items():
        out = str(outs / case)
        cmd = [sys.executable, "-m", "rmr1_jax.cli", "convert", "hf-to-orbax", "--ckpt", d, "--out", out]
        procs[case] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             env=env, cwd=REPO))
    # a good checkpoint, but --out is an existing plain file
    out = str(outs / "out-is-a-file")
    with open(out, "w") as f:
        f.write("data")
    good = os.path.join(os.path.dirname(next(iter(bad_dirs.values()))[0]), "good")
    cmd = [sys.executable, "-m", "rmr1_jax.cli", "convert", "hf-to-orbax", "--ckpt", good, "--out", out]
    procs["out-is-a-file"] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    text=True, env=env, cwd=REPO))
    results = {}
    for case, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        results[case] = (p.returncode, stdout, stderr, out)
    return results, str(outs)


@pytest.mark.parametrize("case", list(CASES))
def test_cli_hf_to_orbax_error(case, bad_dirs, cli_runs):
    results, outs = cli_runs
    rc, stdout, stderr, out = results[case]
    assert rc != 0, f"exit status 0; stdout={stdout!r}"
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    _check_message(lines[0], bad_dirs[case][1])
    # no output, not even a partial or temporary one next to it
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(outs) if p.startswith(case)]


def test_cli_out_is_an_existing_file(cli_runs):
    results, outs = cli_runs
    rc, stdout, stderr, out = results["out-is-a-file"]
    with open(out) as f:
        assert f.read() == "data"
    assert rc != 0
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "out-is-a-file" in lines[0], stderr[-2000:]


# --- export never clobbers ------------------------------------------------------------------


def _snapshot(d):
    out = {}
    for root, _, files in os.walk(d):
        for fn in files:
            p = os.path.join(root, fn)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


def test_save_hf_refuses_non_empty_dir(good_dir, tmp_path):
    model, params = rj.load_hf(good_dir, scan_layers=False)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "config.json").write_text("{}")
    before = _snapshot(out)
    with pytest.raises(CheckpointError) as e:
        rj.save_hf(model, params, str(out), dtype="float32")
    _check_message(str(e.value), [str(out), "not empty"])
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # no temporary sibling left

    # a plain file in the way is refused too, and kept
    f = tmp_path / "a-file"
    f.write_text("data")
    with pytest.raises(CheckpointError):
        rj.save_hf(model, params, str(f), dtype="float32")
    assert f.read_text() == "data"


def test_save_hf_failure_leaves_nothing(good_dir, tmp_path):
    model, params = rj.load_hf(good_dir, scan_layers=False)
    broken = {k: v for k, v in params.items() if k != "layers_1"}
    out = tmp_path / "export"
    with pytest.raises(CheckpointError) as e:
        rj.save_hf(model, broken, str(out), dtype="float32")
    _check_message(str(e.value), ["layers_1"])
    assert os.listdir(tmp_path) == []


def test_save_hf_into_empty_existing_dir(good_dir, tmp_path):
    """An existing but empty directory is fine (e.g. one made by a job scheduler)."""
    model, params = rj.load_hf(good_dir, scan_layers=False)
    out = tmp_path / "empty"
    out.mkdir()
    rj.save_hf(model, params, str(out), dtype="float32")
    assert {"config.json", "generation_config.json", WEIGHTS} <= set(os.listdir(out))
    assert sorted(os.listdir(tmp_path)) == ["empty"]
