"""Which attention kernel a forward pass uses, and the TPU one: Splash attention (Pallas).

``model.attention_impl``:

* ``None`` / ``"auto"``: the best for the backend the step compiles for: Splash on TPU (when
  the sequence is a multiple of 128 tokens), cuDNN's fused kernel on NVIDIA GPUs for bf16 /
  fp16 compute, plain XLA otherwise (CPU: the blocked causal form, the reference);
* ``"xla"``, ``"cudnn"``, ``"splash"``: that one (``"splash"`` off TPU runs the Pallas kernel
  in interpret mode: slow, for tests).

Splash computes causal attention with padding and packed-segment masks from segment ids
(a token attends to earlier tokens of its own segment; padding is segment 0, whose rows are
discarded), never forming the [T, T] mask or scores in HBM. Grouped-query attention runs the
kernel's multi-query form once per key/value head. Under a mesh, the kernel runs per device
through ``shard_map``: rows over (data, fsdp), key/value heads over ``tensor``.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn", "splash")
SPLASH_MULTIPLE = 128


def platform() -> str:
    """The platform a step is being compiled for: :func:`compile_platform` when set (ahead of
    time compilation for a TPU from a CPU host), else the default backend."""
    return _TARGET.get("platform") or jax.default_backend()


_TARGET: dict = {}


@contextlib.contextmanager
def compile_platform(name: str | None):
    """``with compile_platform("tpu"):`` traces choose kernels for that platform."""
    prev = _TARGET.get("platform")
    _TARGET["platform"] = name
    try:
        yield
    finally:
        _TARGET["platform"] = prev


def resolve(impl: str | None, seq_len: int, dtype) -> str:
    """The kernel ``impl`` means for a self-attention over ``seq_len`` tokens in ``dtype``."""
    impl = impl or "auto"
    if impl != "auto":
        return impl
    p = platform()
    if p == "tpu" and seq_len % SPLASH_MULTIPLE == 0:
        return "splash"
    if p in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def _block(t: int) -> int:
    return next(b for b in (512, 256, 128) if t % b == 0)


@functools.lru_cache(maxsize=32)
def _kernel(t: int, group: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b = _block(t)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(group)])
    # cached across programs: its mask arrays must be constants, not tracers of whichever jit
    # first asks for this kernel (a later program would find them leaked)
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_btnh, k_btkh, v_btkh, segments_bt, scale: float):
    """Causal attention within segments: [B, T, N, H] queries over [B, T, K, H] keys and values
    (N = K x G), ``segments_bt`` [B, T] int (0: padding). Returns [B, T, N, H]."""
    from rmr1_jax.parallel.sharding import active_mesh, logical_to_spec

    b, t, n, h = q_btnh.shape
    k = k_btkh.shape[2]
    g = n // k
    if t % SPLASH_MULTIPLE:
        raise ValueError(f"splash attention needs a sequence length that is a multiple of {SPLASH_MULTIPLE}, "
                         f"not {t}")
    interpret = platform() != "tpu"
    q = (q_btnh * jnp.asarray(scale, q_btnh.dtype)).reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
    kk = k_btkh.transpose(0, 2, 1, 3)  # [B, K, T, H]
    vv = v_btkh.transpose(0, 2, 1, 3)
    seg = segments_bt.astype(jnp.int32)

    def local(q, kk, vv, seg):
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        kernel = _kernel(t, g, interpret)

        def one(q_gth, k_th, v_th, s_t):
            return kernel(q_gth, k_th, v_th, segment_ids=sk.SegmentIds(q=s_t, kv=s_t))

        per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over K
        return jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q, kk, vv, seg)  # over B

    mesh, rules = active_mesh()
    if mesh is None or mesh.size == 1:
        out = local(q, kk, vv, seg)
    else:
        from jax.sharding import PartitionSpec as P

        rows = logical_to_spec(("act_batch",), (b,), mesh, rules)[0]
        heads = logical_to_spec(("act_kv_heads",), (k,), mesh, rules)[0]
        spec5, spec4 = P(rows, heads, None, None, None), P(rows, heads, None, None)
        out = _shard_map(local, mesh, (spec5, spec4, spec4, P(rows, None)), spec5)(q, kk, vv, seg)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q_btnh.dtype)


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)
