"""bf16 projections on XLA:CPU: the model's ``dense`` (bf16 x bf16 -> f32 dots, on CPU through
``cpu_bf16_matmul`` with its hand-written backward) vs a plain bf16 ``einsum`` (bf16 output,
autodiff backward), for one SwiGLU MLP of ``bench-100m`` (hidden 768, width 2048) forward +
backward at batch x seq tokens. Both compute the same function; the gradients are compared
before timing (bf16 rounding: relative max difference printed).

    python benchmarks/bf16_dense.py [--batch 4] [--seq 1024] [--repeats 5] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternate, append_json, busy_line, machine_info, machine_line, median, timed  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from rmr1_jax.models.layers import dense

    d, f = 768, 2048
    bf = jnp.bfloat16
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, args.seq, d)), bf)
    wg, wu = (jnp.asarray(rng.normal(size=(d, f)) * 0.02, jnp.float32) for _ in range(2))
    wd = jnp.asarray(rng.normal(size=(f, d)) * 0.02, jnp.float32)

    def mlp_ours(x, wg, wu, wd):
        h = jax.nn.silu(dense("btd,df->btf", x, wg, bf)) * dense("btd,df->btf", x, wu, bf)
        return jnp.sum(dense("btf,fd->btd", h, wd, bf).astype(jnp.float32))

    def mlp_plain(x, wg, wu, wd):
        h = jax.nn.silu(jnp.einsum("btd,df->btf", x, wg.astype(bf))) * jnp.einsum("btd,df->btf", x, wu.astype(bf))
        return jnp.sum(jnp.einsum("btf,fd->btd", h, wd.astype(bf)).astype(jnp.float32))

    grads = {name: jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3))) for name, fn in
             (("dense (ours)", mlp_ours), ("plain bf16 einsum", mlp_plain))}
    out = {name: jax.block_until_ready(g(x, wg, wu, wd)) for name, g in grads.items()}
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    diffs = [float(jnp.max(jnp.abs(f32(a) - f32(b)))) / float(jnp.max(jnp.abs(f32(b))))
             for a, b in zip(*out.values())]
    runners = {name: timed(lambda g=g: jax.block_until_ready(g(x, wg, wu, wd)), 1) for name, g in grads.items()}
    times, _, bb, ba = alternate(runners, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    print(f"SwiGLU MLP {d}x{f}, {args.batch} x {args.seq} tokens, bf16, forward + backward; {machine_line()}")
    for k, v in med.items():
        print(f"  {k:20s} {1e3 * v:8.1f} ms (median of {args.repeats})")
    ratio = med["plain bf16 einsum"] / med["dense (ours)"]
    print(f"  speed-up {ratio:.2f}x; gradients agree to {max(diffs):.1e} (relative max difference)")
    line = busy_line(bb, ba)
    if line:
        print(line)
    result = {"benchmark": "bf16_dense", "median_s": med, "times_s": times, "speedup": ratio,
              "grad_rel_diff": diffs, **machine_info()}
    append_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
