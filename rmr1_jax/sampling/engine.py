"""The generation engine: a paged KV cache and continuous batching.

Up to ``max_slots`` sequences decode at once, each in a slot whose KV cache is a list of
fixed-size pages from one pool (:mod:`rmr1_jax.models.paged_attention`). Decoding runs in
compiled calls of up to ``decode_steps`` steps over every slot (a call returns as soon as a slot
ends while sequences wait); between calls the host takes the new
tokens, ends sequences (EOS, the budget, stop strings), returns their pages to the pool and
admits waiting sequences into the freed slots, so a short judgment never waits for the batch's
longest one.

A prompt's tokens before its last are prefilled once, in chunks of ``prefill_chunk`` tokens for
up to ``prefill_rows`` prompts a call, into pages its ``n`` samples then all read (a partly
filled last page is copied per sample, the only copy); each sample's first decode step runs the
prompt's last token. Pages are taken as sequences grow; when the pool runs dry the sequence
admitted last gives its pages back and is later prefilled again from its prompt and the tokens
it had (recomputation, as vLLM preempts), so the pool bounds memory, not correctness.

On a mesh with data-parallel axes (``data``, ``fsdp``) each of its ``D`` shards is an engine of
its own: ``max_slots`` slots and a page pool in the shard's devices' memory, scheduled on the
host; the compiled calls run every shard at once (``shard_map`` over those axes, the weights
gathered over ``fsdp`` once per call, ``tensor`` left to the compiler), so a mesh decodes ``D``
times the sequences one shard does. A waiting prompt goes to whichever shard frees a slot first.
Every process runs the same schedule over every process's prompts and keeps its own rows.

Sampling is that of :class:`rmr1_jax.sampling.sampler.Sampler`: a row's ``t``-th token draws
with key ``fold_in(fold_in(rng, t), row_id)``, log-probs are ``log_softmax(logits / T)`` of the
chosen tokens. A row's samples therefore depend on neither the slot it ran in, nor when it was
admitted, nor a preemption: the engine gives the static sampler's tokens for the same seed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.models.paged_attention import NULL_PAGE, PagedCache, copy_pages, init_pages, page_bytes, resolve
from rmr1_jax.parallel.hostlocal import agree_max, gather_rows
from rmr1_jax.sampling.pages import PagePool
from rmr1_jax.sampling.sampler import (Generation, SamplingParams, check_budgets, check_prompt_index,
                                       cpu_decode_compiler_options, decode_params, decode_variant, sample_tokens)
from rmr1_jax.sampling.scheduler import Schedule


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes of the engine (``sampling:`` in a recipe)."""

    max_slots: int = 32  # sequences decoding at once (on each data-parallel shard of the mesh)
    page_size: int = 16  # tokens a page holds
    kv_pages: int | None = None  # pages in a shard's pool, the null page included (None: see below)
    kv_memory_fraction: float = 0.5  # without kv_pages on an accelerator: this share of free memory
    prefill_chunk: int = 256  # prompt tokens per prompt per prefill call
    prefill_rows: int = 4  # prompts per prefill call
    prefill_budget: int = 2048  # prompt tokens prefilled between two decode calls while slots decode
    decode_steps: int | None = None  # decode steps per compiled call (None: 1/8 of the budget, 16 to 64)
    attention: str = "auto"  # paged attention kernel: auto, xla, ragged, interpret
    prefix_cache: bool = True  # prompts that start alike read the same prefilled pages

    def __post_init__(self):
        for name in ("max_slots", "page_size", "prefill_chunk", "prefill_rows", "prefill_budget"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampling.{name} must be at least 1, not {getattr(self, name)}")
        if self.kv_pages is not None and self.kv_pages < 2:
            raise ValueError(f"sampling.kv_pages must be at least 2 (page 0 is the null page), not {self.kv_pages}")


class Engine:
    """Continuous-batching generation for one model; :meth:`generate` has the
    :class:`~rmr1_jax.sampling.sampler.Sampler`'s signature and results."""

    def __init__(self, model, eos_ids: Sequence[int], pad_id: int, mesh=None, config: EngineConfig | None = None,
                 cache_dtype: str | None = None, weights_dtype: str | None = None):
        if model.cfg.is_classifier:
            raise ValueError(f"the generation engine needs an LM head, not {model.cfg.head!r}")
        self.model = model
        self.config = config or EngineConfig()
        self.weights_dtype = jnp.dtype(weights_dtype) if weights_dtype else None
        self._decode_model = decode_variant(model, self.weights_dtype)
        self.eos = frozenset(int(e) for e in eos_ids)
        self._eos_ids = jnp.asarray(sorted(self.eos), jnp.int32)
        self.pad_id = int(pad_id)
        self.mesh = mesh
        cfg = self._decode_model.cfg
        self.cache_dtype = jnp.dtype(cache_dtype or cfg.dtype)
        self._pages, self._num_pages = None, 0  # the device pool, kept across calls
        tensor = mesh.shape.get("tensor", 1) if mesh is not None else 1
        # the pool's key/value heads split over tensor where they divide (the XLA path)
        self._head_split = tensor if cfg.num_key_value_heads % tensor == 0 else 1
        self.impl = resolve(self.config.attention, cfg.dim_head, tensor > 1)  # the kernel, and so the pool's layout
        self._prepare = jax.jit(lambda p: decode_params(p, model.cfg, self.weights_dtype))
        self.axes = shard_axes(mesh)  # the mesh axes the slots are split over
        # the per-shard programs are manual over those and every axis of one device (nothing
        # left for the compiler to split, which a Mosaic kernel cannot be); tensor stays automatic
        self._manual = frozenset(a for a in (mesh.axis_names if mesh is not None else ())
                                 if a in self.axes or mesh.shape[a] == 1)
        self.shards = shard_count(mesh)
        self._shard_sh = self._rep_sh = None  # where per-shard and replicated inputs go
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec as P

            self._shard_sh = NamedSharding(mesh, P(self.axes) if self.axes else P())
            self._rep_sh = NamedSharding(mesh, P())
        self._prefill = self._spmd(self._prefill_impl, ("params", "pages") + ("shard",) * 4, "pages",
                                   donate_argnums=(1,))
        self._copy = self._spmd(self._copy_impl, ("pages", "shard", "shard"), "pages", donate_argnums=(0,))
        self._decoders: dict = {}
        self.stats: dict = {}

    # ----- compiled programs: per shard, each array's leading axis its shard's (size 1) -----

    def _cache(self, pages, table, write_at, q_pos):
        return PagedCache(pages, table, write_at, q_pos, self.impl)

    def _prefill_impl(self, params, pages, ids, q_pos, write_at, table):
        """Write the K/V of [1, R, C] prompt tokens into their pages (no head: the prompt's last
        token runs in the first decode step)."""
        _, cache = self._decode_model.apply({"params": params}, ids[0],
                                            cache=self._cache(pages, table[0], write_at[0], q_pos[0]),
                                            return_hidden=True)
        return cache.pages

    @staticmethod
    def _copy_impl(pages, src, dst):
        """Every layer's page ``dst[0, i]`` a copy of its page ``src[0, i]`` (padding: 0 to 0)."""
        return tuple(copy_pages(p, src[0], dst[0]) for p in pages)

    def _any(self, flag):
        """Whether ``flag`` holds on any shard."""
        if not self.axes:
            return flag
        return jax.lax.psum(flag.astype(jnp.int32), self.axes) > 0

    def _decode_impl(self, params, pages, table, cur, pos, gen, max_gen, active, row_id, rng_data, refill, *,
                     steps: int, greedy: bool, temperature: float, top_k: int, top_p: float):
        """Up to ``steps`` decode steps of every slot of the shard ([1, S] arrays): slot s feeds
        ``cur[s]`` at position ``pos[s]`` and draws its ``gen[s]``-th token, until EOS or
        ``max_gen[s]`` tokens; idle and ended slots write to the null page and draw nothing. The
        call returns early, after the step in which ``refill`` of some shard's slots have ended
        (sequences wait for them), or every slot of every shard has. Returns (pages, tokens
        [1, S, steps], log-probs [1, S, steps], steps run); a slot's tokens of the call are
        those up to its end or the last step run."""
        ps = self.config.page_size
        table, cur, pos, gen, max_gen, active, row_id = (x[0] for x in (table, cur, pos, gen, max_gen, active, row_id))
        s = cur.shape[0]
        rng = jax.random.wrap_key_data(rng_data)

        def cond(c):
            i, done = c[0], c[5]
            ended = jnp.sum(done & active)
            return (i < steps) & ~self._any(ended >= refill[0]) & self._any(~jnp.all(done))

        def body(c):
            i, pages, cur, pos, gen, done, toks, lps = c
            live = active & ~done
            page = jnp.take_along_axis(table, (pos // ps)[:, None], axis=1)[:, 0]
            write_at = jnp.where(live, page * ps + pos % ps, NULL_PAGE * ps)
            logits, cache = self._decode_model.apply(
                {"params": params}, cur[:, None], cache=self._cache(pages, table, write_at[:, None], pos[:, None]))
            tok, lp = sample_tokens(logits[:, -1], rng, gen, row_id, greedy, temperature, top_k, top_p)
            tok = jnp.where(live, tok, self.pad_id)
            lp = jnp.where(live, lp, 0.0)
            toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
            lps = jax.lax.dynamic_update_slice(lps, lp[:, None], (0, i))
            is_eos = live & jnp.any(tok[:, None] == self._eos_ids[None, :], axis=-1)
            gen = gen + live
            done = done | is_eos | (live & (gen >= max_gen))
            return (i + 1, cache.pages, jnp.where(live, tok, cur), pos + live, gen, done, toks, lps)

        init = (jnp.int32(0), pages, cur, pos, gen, ~active, jnp.full((s, steps), self.pad_id, jnp.int32),
                jnp.zeros((s, steps), jnp.float32))
        n, pages, *_, toks, lps = jax.lax.while_loop(cond, body, init)
        return pages, toks[None], lps[None], n

    def _spmd(self, fn, in_specs, out_specs, **jit_kw):
        """``fn`` compiled to run on every shard at once: ``in_specs``/``out_specs`` name each
        argument and result "shard" (leading axis over the shards), "pages", "rep" (the same on
        every shard) or "params"; the results come back replicated, the pages sharded."""
        if not self.axes:
            return jax.jit(fn, **jit_kw)
        from jax.sharding import PartitionSpec as P

        specs = {"shard": P(self.axes), "rep": P(), "params": P(), "pages": self._pages_spec()}

        def pick(kinds):
            return tuple(pick(k) for k in kinds) if isinstance(kinds, tuple) else specs[kinds]

        def call(*args, **static):  # static arguments bound before the per-shard body
            return jax.shard_map(functools.partial(fn, **static), mesh=self.mesh, in_specs=pick(in_specs),
                                 out_specs=pick(out_specs), axis_names=self._manual, check_vma=False)(*args)

        def out(k):  # what the host reads comes back whole on every process
            return self.pages_sharding() if k == "pages" else self._rep_sh

        shardings = tuple(out(k) for k in out_specs) if isinstance(out_specs, tuple) else out(out_specs)
        return jax.jit(call, out_shardings=shardings, **jit_kw)

    def _pages_spec(self, placed: bool = False):
        """The pool's partition: its page axis over the shards; ``placed``, where it lives: on
        the XLA path its key/value heads also over ``tensor`` (the compiler splits the attention
        by head), so a device holds its share of its shard's heads."""
        from jax.sharding import PartitionSpec as P

        axes = self.axes or None
        if self.impl != "xla":
            return P(axes)
        heads = "tensor" if placed and self._head_split > 1 else None
        return P(heads, axes)

    # ----- the calls the scheduler makes (each updates the device pool in place) -----

    def _put(self, kinds: str, *arrays):
        """Host arrays (the same on every process) as the calls' inputs, ``kinds`` one letter
        each: ``s`` a leading axis over the shards, ``r`` replicated."""
        if self.mesh is None:
            return arrays
        out = []
        for kind, a in zip(kinds, arrays):
            a = np.asarray(a)
            sh = self._shard_sh if kind == "s" else self._rep_sh
            out.append(jax.make_array_from_callback(a.shape, sh, lambda idx, a=a: a[idx]))
        return tuple(out)

    @staticmethod
    def _get(x) -> np.ndarray:
        """A replicated output on this host."""
        return np.asarray(x.addressable_data(0)) if hasattr(x, "addressable_data") else np.asarray(x)

    def prefill(self, params, ids, q_pos, write_at, table):
        """[D, R, C] prompt tokens of each shard's prefill rows into their pages."""
        self._pages = self._prefill(params, self._pages, *self._put("ssss", ids, q_pos, write_at, table))

    def copy_pages(self, src, dst):
        """[D, m] pages of each shard copied within it."""
        self._pages = self._copy(self._pages, *self._put("ss", src, dst))

    def decode_fn(self, rows: int, tuned: bool = True):
        """The compiled decode call (:meth:`_decode_impl`) for ``rows`` slots a shard, with the
        Sampler's XLA options for that many rows (on CPU with float32 weights and few rows, dots
        outside YNNPACK; ``tuned=False``: none, for tracing it inside another function); its
        arguments as :meth:`decode` places them."""
        opts = (cpu_decode_compiler_options(self._decode_model.cfg.dtype, rows) if tuned else None) or {}
        key = tuple(sorted(opts.items()))
        if key not in self._decoders:
            self._decoders[key] = self._spmd(
                self._decode_impl, ("params", "pages") + ("shard",) * 7 + ("rep", "shard"),
                ("pages", "shard", "shard", "rep"), donate_argnums=(1,), compiler_options=opts or None,
                static_argnames=("steps", "greedy", "temperature", "top_k", "top_p"))
        return self._decoders[key]

    def decode(self, params, table, cur, pos, gen, max_gen, active, row_id, rng_data, refill, **static):
        """``(tokens [D, S, steps], log-probs, steps run)`` of one decode call of every shard's
        [D, S] slots (see :meth:`_decode_impl`)."""
        args = self._put("sssssssrs", table, cur, pos, gen, max_gen, active, row_id, rng_data, refill)
        self._pages, toks, lps, ran = self.decode_fn(table.shape[1])(params, self._pages, *args, **static)
        return self._get(toks), self._get(lps), int(self._get(ran))

    def shard_sharding(self):
        """Where an array with a leading axis over the shards lives (None without a mesh)."""
        return self._shard_sh

    def pages_sharding(self):
        """Where the device pool lives (None without a mesh)."""
        if self.mesh is None:
            return None
        from jax.sharding import NamedSharding

        return NamedSharding(self.mesh, self._pages_spec(placed=True))

    def device_page_bytes(self) -> int:
        """Bytes one page of a shard's pool takes on each of its devices (every layer, keys and
        values; the heads split over ``tensor`` on the XLA path)."""
        cfg = self._decode_model.cfg
        split = self._head_split if self.impl == "xla" else 1
        return page_bytes(cfg.num_hidden_layers, self.config.page_size, cfg.num_key_value_heads, cfg.dim_head,
                          self.cache_dtype) // split

    def _pool_maker(self, num_pages: int):
        """A function making the device pool of ``num_pages`` pages a shard."""
        cfg = self._decode_model.cfg
        return functools.partial(init_pages, cfg.num_hidden_layers, num_pages * self.shards, self.config.page_size,
                                 cfg.num_key_value_heads, cfg.dim_head, self.cache_dtype, self.impl)

    def pool_shapes(self, num_pages: int):
        """The device pool's abstract arrays for ``num_pages`` pages a shard."""
        return jax.eval_shape(self._pool_maker(num_pages))

    # ----- the pool -----

    def _pool_size(self, slots: int, width: int) -> int:
        """Pages a shard's pool holds for this call: ``kv_pages``, else a share of free
        accelerator memory, else (CPU) enough for every slot and prefill row at its longest
        (nothing preempted)."""
        c = self.config
        if c.kv_pages is not None:
            return c.kv_pages
        need = 1 + (slots + c.prefill_rows) * width
        stats = None
        try:
            stats = jax.local_devices()[0].memory_stats()
        except Exception:  # a backend without memory statistics
            stats = None
        if stats and "bytes_limit" in stats:
            free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
            need = max(2, min(need, int(free * c.kv_memory_fraction) // self.device_page_bytes()))
        # every process must size the pool alike (one schedule runs on each): the smallest
        return -int(agree_max([-need])[0])

    def pools(self, slots: int, width: int) -> list[PagePool]:
        """A fresh page pool per shard for a call of ``slots`` slots a shard whose sequences take
        up to ``width`` pages (the device pages kept from the last call when the size agrees)."""
        num_pages = self._pool_size(slots, width)
        if self._pages is None or self._num_pages != num_pages:
            make = self._pool_maker(num_pages)
            self._pages = None  # the old pool's memory back before the new one is made
            # each shard's pages on its devices (replicated when the slots are not split); without
            # a mesh committed to the default device, as every call's output pages are, so the
            # first calls of a generate compile the programs later ones run
            self._pages = (jax.device_put(make(), jax.devices()[0]) if self.mesh is None
                           else jax.jit(make, out_shardings=self.pages_sharding())())
            self._num_pages = num_pages
        return [PagePool(num_pages, self.config.page_size) for _ in range(self.shards)]

    def release(self) -> None:
        """Give the device KV pool back (the engine keeps it between calls; the next call makes
        it again). On an accelerator the pool takes a share of the memory free at the call
        (``kv_memory_fraction``): a job that needs that memory between calls (GRPO's log-prob
        passes and updates) releases it."""
        self._pages, self._num_pages = None, 0

    @property
    def holds_pool(self) -> bool:
        return self._pages is not None

    # ----- generation -----

    def generate(self, params, prompts: Sequence[Sequence[int]], sp: SamplingParams, rng=None, tokenizer=None,
                 prompt_length: int | None = None, prompt_index: Sequence[int] | None = None,
                 budgets: Sequence[int] | None = None, shared: bool = False) -> Generation:
        """Generate ``sp.n`` samples for each token-id prompt (rows prompt-major, as the
        Sampler's). ``tokenizer`` decodes for stop strings and texts; ``prompt_index`` keys the
        draws and ``budgets`` bounds each prompt's tokens as in :meth:`Sampler.generate`;
        ``prompt_length`` is accepted and unused.

        In a multi-process job each process passes its own prompts and gets their rows (the
        prompts of every process form one schedule, keyed by their place in process order), or,
        with ``shared``, every process passes the same prompts (a file, an evaluation set; checked)
        and gets every row."""
        del prompt_length
        if sp.stop_strings and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode with")
        if not prompts:
            raise ValueError("nothing to generate: no prompts")
        if any(len(p) == 0 for p in prompts):
            raise ValueError(f"prompt {next(i for i, p in enumerate(prompts) if len(p) == 0)} is empty")
        rng = jax.random.key(0) if rng is None else rng
        if shared and prompt_index is None:  # the same prompts everywhere: keyed by their place
            prompt_index = np.arange(len(prompts), dtype=np.int64)
        prompt_index = check_prompt_index(prompt_index, len(prompts))
        budgets = check_budgets(budgets, len(prompts), sp.max_new_tokens)
        own = None
        if jax.process_count() > 1:
            if self.mesh is None:
                raise ValueError("generation in a multi-process job needs the Engine's mesh")
            if shared:
                _check_shared(prompts, prompt_index, budgets)
            else:
                prompts, prompt_index, budgets, own = _gather_prompts(prompts, prompt_index, budgets, sp.n)
        if self.weights_dtype is not None or self.model.cfg.scan_layers:
            params = self._prepare(params)
        typed = jnp.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key)
        rng_data = np.asarray(jax.random.key_data(rng) if typed else rng)
        run = Schedule(self, params, prompts, prompt_index, budgets, sp, rng_data, tokenizer, own)
        run.loop()
        self.stats = run.stats()
        return run.result()


def shard_axes(mesh) -> tuple[str, ...]:
    """The mesh axes the engine splits its slots over: the data-parallel ones longer than 1."""
    if mesh is None:
        return ()
    return tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1)


def shard_count(mesh) -> int:
    """How many shards the engine splits its slots over on ``mesh``."""
    return int(np.prod([mesh.shape[a] for a in shard_axes(mesh)]))


def _check_shared(prompts, prompt_index, budgets) -> None:
    """A ValueError unless every process passed the same prompts, indices and budgets."""
    import hashlib

    h = hashlib.sha256(repr(([list(map(int, p)) for p in prompts], np.asarray(prompt_index).tolist(),
                             np.asarray(budgets).tolist())).encode()).digest()
    digest = [int.from_bytes(h[i:i + 4], "little") >> 2 for i in (0, 4)]  # two 30-bit ints (agreed as int32)
    if (agree_max(digest) != digest).any() or (-agree_max([-d for d in digest]) != digest).any():
        raise ValueError("shared generation: the processes passed different prompts, indices or budgets")


def _gather_prompts(prompts, prompt_index, budgets, n: int):
    """Every process's prompts, indices and budgets, in process order, on every process (one
    schedule runs alike on each), and this process's rows of the result (prompt-major)."""
    k = len(prompts)
    if int(agree_max([k])[0]) != k or -int(agree_max([-k])[0]) != k:
        raise ValueError("every process must pass the same number of prompts")
    width = int(agree_max([max(len(p) for p in prompts)])[0])
    ids = np.zeros((k, width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    lens = np.asarray([len(p) for p in prompts], np.int32)
    ids, lens, index, budgets = (gather_rows(x) for x in (ids, lens, np.asarray(prompt_index, np.int64),
                                                          np.asarray(budgets)))
    every = [ids[i, : lens[i]].tolist() for i in range(len(lens))]
    p = jax.process_index()
    return every, index, budgets, np.arange(p * k * n, (p + 1) * k * n)
