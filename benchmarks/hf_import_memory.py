"""Peak host memory of ``rmr1_jax.load_hf`` on a ~1 GB checkpoint, in one file or several.

The importer promises to stream weights tensor by tensor, so that the memory it needs beyond
the parameters it returns stays near the size of the largest tensor, not the size of the model.
This script checks that promise:

1. writes a random Qwen2 checkpoint (``config.json`` + ``model.safetensors``, written with
   ``safetensors.numpy``; no torch) of about 1 GB in float32: hidden 2048, intermediate 5632,
   vocab 32000, 16 heads, 4 KV heads, untied LM head, ``--layers`` layers (default 3 -> ~1.07 GB);
   with ``--files N`` > 1 the same tensors go, in ``tensor_specs`` order, into N files of about
   equal size (``model-0000i-of-0000N.safetensors``) plus ``model.safetensors.index.json``;
2. for each requested checkpoint dtype and file count, starts a FRESH Python subprocess which imports jax and
   rmr1_jax, initializes the CPU backend (and runs a tiny jit), records the baseline RSS, then runs
   ``load_hf(dir, dtype="float32")`` while a thread samples RSS every ~5 ms (psutil); the peak is
   the larger of the sampled maximum and ``getrusage(RUSAGE_SELF).ru_maxrss``;
3. reports checkpoint size, largest tensor (as loaded, float32), bytes of the returned params,
   baseline and peak RSS, the transient overhead = peak - baseline - params bytes, and
   overhead / largest tensor (target: < 1.5);
4. deletes the temporary checkpoint.

On CPU the returned parameters themselves live in host RAM, so they are subtracted: the
target "peak below 1.5x the largest tensor plus the runtime baseline, not proportional to the
model" is read as ``overhead < 1.5 x largest tensor``.

    python benchmarks/hf_import_memory.py [--layers 3] [--ckpt-dtypes float32,bfloat16] [--files 1,4]
        [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 1024**2

HF_CONFIG = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=32000, hidden_size=2048,
    intermediate_size=5632, num_attention_heads=16, num_key_value_heads=4, hidden_act="silu",
    rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=4096, tie_word_embeddings=False,
    use_sliding_window=False, sliding_window=None, attention_dropout=0.0, use_cache=True,
)


# --- parent: write the checkpoint ----------------------------------------------------------


def write_checkpoint(out_dir: str, layers: int, dtype: str, seed: int = 0, files: int = 1) -> dict:
    """config.json + safetensors with the names/shapes of ``checkpoint.hf.tensor_specs``: one
    ``model.safetensors``, or ``files`` files of about equal size plus an index. The values do
    not depend on ``files`` (one random stream, in spec order)."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    from rmr1_jax.checkpoint.hf import tensor_specs
    from rmr1_jax.models.config import ModelConfig

    os.makedirs(out_dir, exist_ok=True)
    hf = dict(HF_CONFIG, num_hidden_layers=layers, torch_dtype=dtype)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    cfg = ModelConfig.from_hf_dict(hf)
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    specs = tensor_specs(cfg)
    sizes = [int(np.prod(s.hf_shape)) for s in specs]
    # file k takes the tensors whose middle lies in the k-th equal part of the total (a file left
    # empty by a tensor larger than a part is dropped)
    mids = np.cumsum([0] + sizes[:-1]) + np.asarray(sizes) / 2
    group = [min(files - 1, int(m * files // sum(sizes))) for m in mids]
    renumber = {g: i for i, g in enumerate(sorted(set(group)))}
    group, files = [renumber[g] for g in group], len(renumber)
    names = (["model.safetensors"] if files == 1 else
             [f"model-{i + 1:05d}-of-{files:05d}.safetensors" for i in range(files)])
    largest = max(zip(specs, sizes), key=lambda t: t[1])[0]
    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, name in enumerate(names):  # one file's tensors in memory at a time
        tensors = {}
        for s, g in zip(specs, group):
            if g != k:
                continue
            x = rng.standard_normal(s.hf_shape, dtype=np.float32)
            x *= 0.02
            tensors[s.hf_name] = x.astype(np_dtype, copy=False)
            weight_map[s.hf_name] = name
        save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        del tensors
    if files > 1:
        total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in names)
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return {
        "dtype": dtype,
        "files": files,
        "num_tensors": len(specs),
        "num_params": int(sum(sizes)),
        "largest_tensor": largest.hf_name,
        "largest_tensor_shape": list(largest.hf_shape),
        "largest_tensor_elems": int(np.prod(largest.hf_shape)),
        "file_bytes": sum(os.path.getsize(os.path.join(out_dir, n)) for n in names),
        "largest_file_bytes": max(os.path.getsize(os.path.join(out_dir, n)) for n in names),
    }


# --- child: measure one import in a fresh process -------------------------------------------


def child(path: str, interval_s: float) -> None:
    import gc
    import resource
    import threading

    import psutil

    proc = psutil.Process()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import rmr1_jax  # noqa: F401
    from rmr1_jax import load_hf

    from rmr1_jax.models.config import ModelConfig
    from rmr1_jax.models.decoder import DecoderLM
    from rmr1_jax.models.params import abstract_params

    jax.devices()
    jax.jit(lambda x: x + 1)(jnp.zeros((4,))).block_until_ready()  # backend + a first compile
    # (shape, dtype) of every final parameter: lets the sampler tell how much of the result is
    # already in place at each moment (for the "transient at peak" figure).
    final_kinds = {(tuple(x.shape), str(x.dtype)) for x in
                   jax.tree.leaves(abstract_params(DecoderLM(ModelConfig.from_hf_dir(path))))}
    gc.collect()
    time.sleep(0.2)
    baseline = proc.memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    peak = [baseline]
    transient = [0, 0, 0]  # max(rss - baseline - placed bytes), rss then, placed bytes then
    samples = [0]
    stop = threading.Event()

    def placed_bytes():
        return sum(a.nbytes for a in jax.live_arrays() if (tuple(a.shape), str(a.dtype)) in final_kinds)

    def sample():
        while not stop.is_set():
            rss = proc.memory_info().rss
            samples[0] += 1
            if rss > peak[0]:
                peak[0] = rss
            placed = placed_bytes()
            if rss - baseline - placed > transient[0]:
                transient[:] = [rss - baseline - placed, rss, placed]
            stop.wait(interval_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    model, params = load_hf(path, dtype="float32")
    jax.block_until_ready(params)
    load_s = time.perf_counter() - t0
    stop.set()
    th.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gc.collect()
    after = proc.memory_info().rss
    leaves = jax.tree.leaves(params)
    result = {
        "baseline_rss": baseline,
        "maxrss_before_load": maxrss_before,
        "sampled_peak_rss": peak[0],
        "ru_maxrss": maxrss,
        "peak_rss": max(peak[0], maxrss),
        "transient_at_peak": transient[0],
        "transient_rss": transient[1],
        "transient_placed_bytes": transient[2],
        "rss_after_load": after,
        "params_bytes": int(sum(x.nbytes for x in leaves)),
        "largest_param_bytes": int(max(x.nbytes for x in leaves)),
        "params_dtypes": sorted({str(x.dtype) for x in leaves}),
        "num_samples": samples[0],
        "load_s": load_s,
        "jax": jax.__version__,
        "numpy": np.__version__,
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_child(path: str, interval_s: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--interval", str(interval_s)]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=3, help="decoder layers (3 -> ~1.07 GB in float32)")
    ap.add_argument("--ckpt-dtypes", default="float32,bfloat16",
                    help="comma-separated checkpoint dtypes to test; each is loaded as float32")
    ap.add_argument("--files", default="1,4",
                    help="comma-separated safetensors file counts to test for each dtype (1: one model.safetensors)")
    ap.add_argument("--interval", type=float, default=0.005, help="RSS sampling interval, seconds")
    ap.add_argument("--tmp", default=None, help="parent directory for the temporary checkpoint")
    ap.add_argument("--json", default=None, help="append one JSON line per checkpoint dtype to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.interval)
        return []

    results = []
    root = tempfile.mkdtemp(prefix="rmr1-bench-import-", dir=args.tmp)
    try:
        cases = [(d.strip(), int(n)) for d in args.ckpt_dtypes.split(",") if d.strip()
                 for n in args.files.split(",") if n.strip()]
        for dtype, files in cases:
            ckpt = os.path.join(root, f"{dtype}-{files}")
            info = write_checkpoint(ckpt, args.layers, dtype, files=files)
            m = run_child(ckpt, args.interval)
            shutil.rmtree(ckpt)
            largest = info["largest_tensor_elems"] * 4  # as loaded (float32)
            overhead = m["peak_rss"] - m["baseline_rss"] - m["params_bytes"]
            r = {"benchmark": "hf_import_memory", "layers": args.layers, **info, **m,
                 "largest_tensor_bytes_loaded": largest, "overhead_bytes": overhead,
                 "overhead_over_largest": overhead / largest,
                 "peak_over_baseline_plus_largest": m["peak_rss"] / (m["baseline_rss"] + largest),
                 "target_met": overhead < 1.5 * largest,
                 "transient_over_largest": m["transient_at_peak"] / largest}
            results.append(r)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def mib(x):
        return f"{x / MiB:9.1f}"

    print(f"load_hf(dtype='float32') of a random Qwen2 checkpoint (hidden 2048, intermediate 5632, vocab 32000, "
          f"{args.layers} layers, untied head; one file, or N files + index), each in a fresh subprocess; RSS sampled every "
          f"{args.interval * 1000:.0f} ms + ru_maxrss. Sizes in MiB.")
    rows = [
        ("checkpoint files", lambda r: f"{r['files']:9d}"),
        ("checkpoint bytes", lambda r: mib(r["file_bytes"])),
        ("largest file", lambda r: mib(r["largest_file_bytes"])),
        ("parameters (count)", lambda r: f"{r['num_params'] / 1e6:8.1f}M"),
        ("largest tensor (f32)", lambda r: mib(r["largest_tensor_bytes_loaded"])),
        ("final params bytes", lambda r: mib(r["params_bytes"])),
        ("baseline RSS", lambda r: mib(r["baseline_rss"])),
        ("peak RSS (sampled)", lambda r: mib(r["sampled_peak_rss"])),
        ("peak RSS (ru_maxrss)", lambda r: mib(r["ru_maxrss"])),
        ("RSS after load", lambda r: mib(r["rss_after_load"])),
        ("overhead", lambda r: mib(r["overhead_bytes"])),
        ("overhead / largest", lambda r: f"{r['overhead_over_largest']:9.2f}"),
        ("target (< 1.5) met", lambda r: f"{str(r['target_met']):>9}"),
        ("strict transient **", lambda r: mib(r["transient_at_peak"])),
        ("strict / largest **", lambda r: f"{r['transient_over_largest']:9.2f}"),
        ("load time s", lambda r: f"{r['load_s']:9.1f}"),
    ]
    print(f"{'':<22}" + "".join(f"{_label(r):>18}" for r in results))
    for name, fmt in rows:
        print(f"{name:<22}" + "".join(f"{fmt(r):>18}" for r in results))
    print(f"(largest tensor: {results[0]['largest_tensor']} {results[0]['largest_tensor_shape']}; "
          f"overhead = peak - baseline - final params bytes; temporary checkpoint {root} removed: "
          f"{not os.path.exists(root)})" if results else "no results")
    print("** strict transient = max over samples of (RSS - baseline - bytes of the final parameters already "
          "in place at that moment, from jax.live_arrays()). The headline overhead subtracts ALL final params, "
          "so it under-states a peak that happens early in the load (before most params exist).")
    return results


def _label(r: dict) -> str:
    return f"ckpt {r['dtype']}" + (f" x{r['files']}" if r["files"] > 1 else "")


if __name__ == "__main__":
    main()
