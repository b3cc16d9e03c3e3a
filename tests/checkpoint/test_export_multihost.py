"""HF export from parameters sharded over two JAX processes, and import of multi-file checkpoints.

Two local processes (4 CPU devices each, loopback, gloo) load a random Qwen2 with its weights
spread over an fsdp axis of 8 devices across both, export it with ``save_hf`` (several
safetensors files with an index; bfloat16; a warm float32 export under tracemalloc) and convert
an Orbax checkpoint with ``orbax_to_hf``. Every export must equal a single-process export tensor
for tensor, bit for bit, load in transformers with its logits, be written by process 0 alone
(one directory each, nothing left over) and never hold more than one whole tensor on a host. The
model is wider than ``hf_models``' (vocab 4096, hidden 128: largest tensor 2 MiB of ~6.4 MiB) so
that "one tensor" and "the model" are far apart.
"""

from __future__ import annotations

import json
import os
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hf_models  # noqa: E402
from mp_launch import start_job  # noqa: E402

import rmr1_jax as rj  # noqa: E402
from rmr1_jax.checkpoint import hf_export  # noqa: E402
from rmr1_jax.errors import CheckpointError  # noqa: E402
from rmr1_jax.parallel import make_mesh  # noqa: E402

SHARD_BYTES = 1_500_000  # the several-files export: embeddings, LM head and the layers in files of their own
IDS = np.random.default_rng(0).integers(0, 4096, (2, 16))


def _qwen2(path, seed=0, max_shard_size=None, vocab=4096, intermediate=256, layers=4):
    """A random Qwen2 (q/k/v biases, untied head) of hidden 128, saved to ``path``
    (``max_shard_size``: as several files with an index)."""
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=128, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, tie_word_embeddings=False,
        initializer_range=hf_models.INIT_RANGE, bos_token_id=1, eos_token_id=2, use_sliding_window=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    hf_models.randomize(model, seed)
    model.eval()
    model.save_pretrained(path, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    return model


def _logits(model):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(IDS)).logits.float().numpy()


def _tensors(d) -> dict[str, tuple]:
    """{name: (file, safetensors dtype, shape, raw bytes as uint8)} of every tensor of an HF directory."""
    out = {}
    for fn in sorted(f for f in os.listdir(d) if f.endswith(".safetensors")):
        with safe_open(os.path.join(d, fn), "np") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = (fn, f.get_slice(k).get_dtype(), t.shape, np.ascontiguousarray(t).view(np.uint8).copy())
    return out


def _assert_same_tensors(got_dir, want_dir, same_files=True):
    got, want = _tensors(got_dir), _tensors(want_dir)
    assert sorted(got) == sorted(want)
    for k in want:
        g, w = got[k], want[k]
        assert g[1:3] == w[1:3], (k, g[1:3], w[1:3])
        assert np.array_equal(g[3], w[3]), f"{got_dir}: tensor {k} differs from the single-process export"
        if same_files:
            assert g[0] == w[0], k


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    d = str(root / "hf")
    return _qwen2(d), d


@pytest.mark.multiprocess
def test_two_process_export_equals_single_process(source, tmp_path):
    tm, hf_dir = source
    ckpt = str(tmp_path / "orbax")
    from rmr1_jax.checkpoint.convert import hf_to_orbax

    hf_to_orbax(hf_dir, ckpt)
    root = tmp_path / "mp"
    root.mkdir()
    worker = os.path.join(os.path.dirname(__file__), "export_worker.py")
    job = start_job(worker, [hf_dir, ckpt, root], processes=2, devices=4)
    try:  # the worker's last export fails on purpose: every process exits 2
        job.wait(timeout=240)
    except AssertionError as e:
        assert "still running" not in str(e), str(e)  # none left waiting in a collective
    assert [p.returncode for p in job.procs] == [2, 2]
    res, cli_res = [], []
    for pid in range(2):
        with open(root / f"result.{pid}.json") as f:
            res.append(json.load(f))
        with open(root / f"cli.{pid}.json") as f:
            cli_res.append(json.load(f))

    # one directory per export, written by process 0 alone: no temporary or second copy anywhere
    assert sorted(os.listdir(root)) == ["bf16", "cli.0.json", "cli.1.json", "converted", "f32-files",
                                        "f32-measured", "result.0.json", "result.1.json"]
    # the same files and bytes as a single-process export of the same sharded parameters
    ref = tmp_path / "single"
    model, params = rj.load_hf(hf_dir, mesh=make_mesh((1, 8, 1)))
    rj.save_hf(model, params, str(ref / "f32-files"), dtype="float32", max_shard_bytes=SHARD_BYTES)
    rj.save_hf(model, params, str(ref / "bf16"), dtype="bfloat16")
    rj.save_hf(model, params, str(ref / "f32"), dtype="float32")
    files = sorted(os.listdir(root / "f32-files"))
    assert files == sorted(os.listdir(ref / "f32-files"))
    assert len([f for f in files if f.endswith(".safetensors")]) >= 4 and "model.safetensors.index.json" in files
    for name in ("model.safetensors.index.json", "config.json", "generation_config.json"):
        with open(root / "f32-files" / name) as a, open(ref / "f32-files" / name) as b:
            assert json.load(a) == json.load(b), name
    _assert_same_tensors(root / "f32-files", ref / "f32-files")
    _assert_same_tensors(root / "bf16", ref / "bf16")
    _assert_same_tensors(root / "f32-measured", ref / "f32")
    _assert_same_tensors(root / "converted", ref / "f32")
    # transformers reads the exports and computes the source model's logits
    want = _logits(tm)
    for name in ("f32-files", "converted"):
        np.testing.assert_allclose(_logits(transformers.AutoModelForCausalLM.from_pretrained(root / name)), want,
                                   atol=1e-4, err_msg=name)
    bf16 = transformers.AutoModelForCausalLM.from_pretrained(root / "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert np.abs(_logits(bf16) - want).max() < 0.05 * np.abs(want).max()

    # host memory: process 0 held one whole tensor at a time, process 1 never held one
    tensors = _tensors(ref / "f32")
    largest = max(t[3].nbytes for t in tensors.values())
    assert res[0]["full_tensors"] == 5 * len(tensors)  # five exports (one failing), each tensor gathered once
    assert res[0]["max_live"] == largest
    assert res[1]["full_tensors"] == 0 and res[1]["max_live"] == 0
    model_bytes = sum(t[3].nbytes for t in tensors.values())
    assert model_bytes > 3 * largest
    assert res[0]["traced_peak"] < 1.75 * largest, (res[0]["traced_peak"], largest)
    assert res[1]["traced_peak"] < 0.5 * largest, (res[1]["traced_peak"], largest)
    # process 0 alone saw the directory in the way; both processes raised, in one line each
    assert "already exists and is not empty" in res[0]["refused"]
    assert "process 0 refused" in res[1]["refused"]
    assert "already exists and is not empty" in res[0]["refused_convert"]
    assert "process 0 refused" in res[1]["refused_convert"]
    # a write error on process 0 mid-export (its disk full): both processes raise, nothing is left
    assert "No space left on device" in res[0]["failed"] and "failed.partial-" in res[0]["failed"]
    assert "process 0 failed to write" in res[1]["failed"]
    assert all("\n" not in r["refused"] + r["refused_convert"] + r["failed"] for r in res)
    # a failure that is not an OSError on process 0 (its last write step): both exit 2, one line each
    assert [r["rc"] for r in cli_res] == [2, 2]
    lines = [r["stderr"].strip().splitlines() for r in cli_res]
    assert all(len(ln) == 1 and ln[0].startswith("rmr1 convert: error: ") for ln in lines), lines
    assert "ValueError: chat template cannot be written (second line)" in lines[0][0], lines
    assert "process 0 failed to write the export" in lines[1][0], lines
    # the conversion carries the tokenizer it was given, with its chat template in tokenizer_config.json
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(root / "converted"))


def test_export_holds_one_tensor_at_a_time(source, tmp_path, monkeypatch):
    """Single process, parameters on an 8-device fsdp mesh: every gathered tensor is released
    before the next is gathered, and the whole export's host allocations (tracemalloc: the
    gathered tensor plus pieces of its HF-layout copy) stay well under two tensors."""
    _, hf_dir = source
    model, params = rj.load_hf(hf_dir, mesh=make_mesh((1, 8, 1)))
    rj.save_hf(model, params, str(tmp_path / "warm"), dtype="bfloat16")  # compiles, cached from here on
    live, gather = {"now": 0, "max": 0}, hf_export.gather_to_writer

    def tracked(x):
        import weakref

        out = gather(x)
        live["now"] += out.nbytes
        live["max"] = max(live["max"], live["now"])
        weakref.finalize(out, lambda n=out.nbytes: live.__setitem__("now", live["now"] - n))
        return out

    monkeypatch.setattr(hf_export, "gather_to_writer", tracked)
    monkeypatch.setattr(hf_export, "_WRITE_CHUNK_BYTES", 64 * 1024)
    tracemalloc.start()
    try:
        rj.save_hf(model, params, str(tmp_path / "export"), dtype="bfloat16", max_shard_bytes=SHARD_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    largest = 4096 * 128 * 4  # embed_tokens / lm_head as gathered (float32)
    assert live["max"] == largest and live["now"] == 0
    assert peak < 1.75 * largest, (peak, largest)
    _assert_same_tensors(tmp_path / "export", tmp_path / "warm", same_files=False)


def test_multi_file_import(tmp_path):
    """A checkpoint in several safetensors files with an index loads, gives transformers'
    logits, and reads tensor by tensor: a warm read's host allocations (tracemalloc: one file
    read, its layout copy, host buffers the CPU client releases asynchronously) stay a few
    tensors, far below the model (mostly layers here, so the largest tensor is a small part). A
    shard the index lists but the directory lacks is a one-line error naming that file."""
    d = str(tmp_path / "sharded")
    tm = _qwen2(d, seed=3, max_shard_size="8MB", vocab=512, intermediate=2048, layers=8)
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    assert len(shards) >= 4, shards
    model, params = rj.load_hf(d)
    logits = np.asarray(model.apply({"params": params}, IDS % 512))
    with torch.no_grad():
        want = tm(input_ids=torch.as_tensor(IDS % 512)).logits.numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4)

    from rmr1_jax.checkpoint.hf import read_hf_params

    del params
    read_hf_params(d, model.cfg)  # warm: the stacking compiles are cached
    tracemalloc.start()
    try:
        read_hf_params(d, model.cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    largest, model_bytes = 2048 * 128 * 4, sum(os.path.getsize(os.path.join(d, s)) for s in shards)
    assert model_bytes > 20 * largest
    assert peak < 5 * largest, (peak, largest, model_bytes)

    os.remove(os.path.join(d, shards[1]))
    with pytest.raises(CheckpointError) as e:
        rj.load_hf(d)
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(d, shards[1]) in msg and "missing" in msg, msg
