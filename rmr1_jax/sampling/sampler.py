"""Batched generation over the decoder's KV cache.

Prompts of different lengths are left-padded into one batch; positions come from the count of
real tokens and padding slots are never attended. One jitted prefill fills the cache, which is
then repeated ``n`` times for ``n`` samples per prompt (no repeated prefill). Decoding runs in
compiled chunks of ``chunk`` tokens (``lax.fori_loop``); between chunks the host checks stop
strings and stops early once every sequence has finished.

Returned log-probs are those of the distribution sampled from, before truncation:
``log_softmax(logits / T)`` of the chosen tokens at temperature ``T`` (``T = 1`` for greedy
decoding). They equal what a teacher-forced forward pass at the same temperature gives
(:func:`rmr1_jax.train.grpo.response_logprobs`), which GRPO uses as the old-policy log-probs.
Top-k and top-p sample from a truncated, renormalized distribution, but the returned log-probs
stay those of the whole tempered distribution (as verl and vLLM report them): a truncated
token then has a log-prob slightly below the probability it was sampled with.

Each row draws with its own key, ``fold_in(fold_in(rng, step), row_id)``, where ``row_id`` is
the row's canonical index ``prompt_index * n + sample``: by default process ``p``'s ``i``-th
prompt has ``prompt_index = p * k + i`` (``k`` prompts per process), its index in a
single-process run of the processes' prompts concatenated. So a prompt gets the same samples
wherever the mesh places its rows (a TPU slice's mesh may interleave the processes' devices)
and on any process count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.models.decoder import init_cache
from rmr1_jax.models.layers import matmul_f32
from rmr1_jax.models.params import unstack_layers
from rmr1_jax.parallel.hostlocal import agree_max, fetch, process_rows, to_global
from rmr1_jax.parallel.sharding import activation_sharding


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    n: int = 1  # samples per prompt
    stop_strings: tuple[str, ...] = ()


@dataclasses.dataclass
class Generation:
    """Per sequence (prompt-major: prompt i's samples are rows i*n ... i*n+n-1)."""

    tokens: np.ndarray  # [R, max_new] int32, pad after the end
    logprobs: np.ndarray  # [R, max_new] float32, 0 after the end
    lengths: np.ndarray  # [R] generated tokens kept (EOS included, stop-string tail excluded)
    finished: np.ndarray  # [R] bool: ended by EOS or a stop string (False = truncated)
    texts: list[str] | None = None


def check_prompt_index(prompt_index, prompts: int) -> np.ndarray:
    """Each prompt's canonical index as int64 [prompts]: ``prompt_index`` checked, or by
    default ``process_index * prompts + i`` (the prompt's index in one process's run of every
    process's prompts concatenated)."""
    if prompt_index is None:
        return jax.process_index() * prompts + np.arange(prompts, dtype=np.int64)
    index = np.asarray(prompt_index, np.int64).reshape(-1)
    if index.shape[0] != prompts:
        raise ValueError(f"prompt_index has {index.shape[0]} entries for {prompts} prompts")
    return index


def check_budgets(budgets, prompts: int, max_new_tokens: int) -> np.ndarray:
    """Per-prompt token budgets as int32 [prompts]: ``budgets`` checked (one per prompt, 1 to
    ``max_new_tokens``), or ``max_new_tokens`` for each."""
    if budgets is None:
        return np.full(prompts, max_new_tokens, np.int32)
    b = np.asarray(budgets, np.int64).reshape(-1)
    if b.shape[0] != prompts:
        raise ValueError(f"budgets has {b.shape[0]} entries for {prompts} prompts")
    if b.size and (b.min() < 1 or b.max() > max_new_tokens):
        raise ValueError(f"budgets must lie within 1 to max_new_tokens ({max_new_tokens}), not {b.min()} to {b.max()}")
    return b.astype(np.int32)


def _bucket(n: int, multiple: int = 32) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    length = length or _bucket(max(len(p) for p in prompts))
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than {length}")
        if len(p):
            ids[i, length - len(p):] = p
            mask[i, length - len(p):] = True
    return ids, mask


# XLA:CPU compiles dots into YNNPACK fusions by default. For the decode loop's float32 matmuls
# with few rows ([rows, D] x [D, F]) its Eigen path is faster: about 2x at 8 rows and 1.4x at 32
# (bench-100m on an AVX2 CPU: benchmarks/decode.py), even at 64, and YNNPACK wins from about
# 128 rows (9% at 192 rows of the demo model). bfloat16 decodes and the prefill keep YNNPACK.
_CPU_FEW_ROWS_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
FEW_ROWS = 64


@functools.lru_cache(maxsize=None)
def _xla_accepts_few_rows_options() -> bool:
    try:
        jax.jit(lambda x: x @ x, compiler_options=_CPU_FEW_ROWS_OPTIONS).lower(jnp.zeros((2, 2))).compile()
        return True
    except Exception:  # an XLA without the option: keep its defaults
        return False


def cpu_decode_compiler_options(dtype, rows: int) -> dict | None:
    """XLA compiler options for a compiled decode loop over ``rows`` sequences: on CPU with
    float32 weights and at most :data:`FEW_ROWS` rows, dots outside YNNPACK; otherwise none.
    ``None`` too where this XLA does not know the option."""
    from rmr1_jax.models.attention import platform

    if platform() != "cpu" or jnp.dtype(dtype) != jnp.float32 or rows > FEW_ROWS:
        return None
    return dict(_CPU_FEW_ROWS_OPTIONS) if _xla_accepts_few_rows_options() else None


def decode_variant(model, weights_dtype=None):
    """The model generation runs: unrolled layers without rematerialization, in
    ``weights_dtype`` when given. Decoding with scanned layers would slice each layer's weights
    and restack the KV cache through the scan at every step; unrolled, the cache is updated in
    place."""
    cfg = model.cfg
    changes = {}
    if cfg.scan_layers or cfg.remat_policy != "none":
        changes.update(scan_layers=False, remat_policy="none")
    if weights_dtype is not None:
        name = jnp.dtype(weights_dtype).name
        changes.update(dtype=name, param_dtype=name)
    return type(model)(dataclasses.replace(cfg, **changes)) if changes else model


def decode_params(params, cfg, weights_dtype=None):
    """Parameters for :func:`decode_variant`'s model: scanned layers split per layer,
    floating-point leaves cast to ``weights_dtype``. Traced once per generate call, outside the
    decode loop."""
    if cfg.scan_layers:
        params = unstack_layers(params, cfg.num_hidden_layers)
    if weights_dtype is not None:
        dt = jnp.dtype(weights_dtype)
        params = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return params


def sample_tokens(logits, rng, step, row_id, greedy: bool, temperature: float, top_k: int, top_p: float):
    """``(tokens [R], their log-probs [R])`` from logits [R, V]: row ``r`` draws with key
    ``fold_in(fold_in(rng, step[r]), row_id[r])`` (``step`` a scalar or [R]); log-probs are
    ``log_softmax(logits / T)`` of the chosen tokens (``T = 1`` for greedy decoding)."""
    scaled = logits.astype(jnp.float32) if greedy or temperature == 1.0 else \
        logits.astype(jnp.float32) / temperature
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    if greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        step = jnp.broadcast_to(jnp.asarray(step, jnp.int32), row_id.shape)
        draw = jax.vmap(lambda t, r, lg: jax.random.categorical(jax.random.fold_in(jax.random.fold_in(rng, t), r), lg))
        tok = draw(step, row_id, _filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)
    return tok, jnp.take_along_axis(logp_all, tok[:, None], axis=-1)[:, 0]


def _filter_logits(logits, temperature, top_k, top_p):
    logits = logits / jnp.maximum(temperature, 1e-6)
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def default_chunk(max_new_tokens: int) -> int:
    """Decode steps per compiled call by default: 1/8 of the budget, within 16 to 64. The loop
    runs at most that many steps past the one where every sequence has ended."""
    return min(64, max(16, -(-max_new_tokens // 8)))


def decode_schedule(max_new_tokens: int, chunk: int | None = None) -> tuple[int, int]:
    """(steps per compiled chunk, number of chunks) for a budget: equal chunks of at most
    ``chunk`` (default :func:`default_chunk`) that tile it, so one chunk is compiled and at
    most ``n_chunks - 1`` steps run past ``max_new_tokens``."""
    n_chunks = -(-max_new_tokens // (chunk or default_chunk(max_new_tokens)))
    return -(-max_new_tokens // n_chunks), n_chunks


class Sampler:
    """Reusable, compiled generation for one model. Compiles once per (batch, prompt length
    bucket, max_new_tokens, sampling settings)."""

    def __init__(self, model, eos_ids: Sequence[int], pad_id: int, mesh=None, chunk: int | None = None,
                 cache_dtype: str | None = None, weights_dtype: str | None = None,
                 compiler_options: dict | None = None):
        """``weights_dtype`` (e.g. ``"bfloat16"``): decode with the floating-point weights cast
        to this dtype once per ``generate`` call and activations in it too (logits and
        log-probs stay float32). Halves the weight bytes read per decoded token; the returned
        log-probs are then those of the cast model, not the float32 one.

        ``compiler_options``: XLA options for the compiled decode loop, for every batch; by
        default :func:`cpu_decode_compiler_options` per batch (on CPU with float32 weights and
        few rows, dots outside YNNPACK); ``{}`` for XLA's defaults.

        ``chunk``: decode steps per compiled call; between calls the host checks whether every
        sequence has ended. Default: 1/8 of ``max_new_tokens``, within 16 to 64."""
        self.model = model
        # Decoding runs the unrolled layer stack whatever the training layout: with scanned
        # layers every decode step would slice each layer's weights and restack the KV cache
        # through the scan; unrolled, the cache is updated in place. Scanned parameters are
        # split per layer once per generate call (outside the decode loop).
        self._unstack = model.cfg.scan_layers
        self.weights_dtype = jnp.dtype(weights_dtype) if weights_dtype else None
        self._decode_model = decode_variant(model, self.weights_dtype)
        self.eos_ids = jnp.asarray(sorted(set(int(e) for e in eos_ids)), jnp.int32)
        self.pad_id = int(pad_id)
        self.mesh = mesh
        self.chunk = chunk
        self.cache_dtype = cache_dtype
        self._prepare = jax.jit(self._prepare_impl)
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("n", "max_len"))
        self.compiler_options = None if compiler_options is None else dict(compiler_options)
        self._decoders: dict = {}

    def decode_options(self, rows: int) -> dict:
        """The XLA compiler options the decode loop over ``rows`` sequences is compiled with."""
        if self.compiler_options is not None:
            return dict(self.compiler_options)
        dt = self.weights_dtype or self._decode_model.cfg.dtype
        return cpu_decode_compiler_options(dt, rows) or {}

    def decode_fn(self, rows: int):
        """The jitted decode chunk used for ``rows`` sequences (one jit per set of options)."""
        opts = self.decode_options(rows)
        key = tuple(sorted(opts.items()))
        if key not in self._decoders:
            self._decoders[key] = jax.jit(
                self._decode_impl, static_argnames=("steps", "greedy", "temperature", "top_k", "top_p"),
                donate_argnums=(1,), compiler_options=opts or None)
        return self._decoders[key]

    def _prepare_impl(self, params):
        return decode_params(params, self.model.cfg, self.weights_dtype)

    def _prefill_impl(self, params, ids, mask, n: int, max_len: int, prompt_index=None):
        """The last prompt position's logits and the filled cache, each repeated ``n`` times
        (prompt-major rows); with ``prompt_index`` ([B] int32, each prompt's canonical index)
        also each row's id, ``prompt_index * n + sample``, which keys its random draws."""
        b = ids.shape[0]
        cache = init_cache(self._decode_model.cfg, b, max_len, self.cache_dtype)
        # the LM head at each prompt's last position only: [B, T, V] logits of the whole prompt
        # would be the prefill's largest array by far (4K tokens x 152K vocabulary a prompt)
        hidden, cache = self._decode_model.apply({"params": params}, ids, attention_mask=mask,
                                                 cache=cache, cache_index=0, return_hidden=True)
        cfg = self._decode_model.cfg
        head = params["embed_tokens"].T if cfg.tie_word_embeddings else params["lm_head"]
        last = matmul_f32("bd,dv->bv", hidden[:, -1], head.astype(hidden.dtype))
        if n > 1:
            cache = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), cache)  # per-layer [B, ...] arrays
            last = jnp.repeat(last, n, axis=0)
        if prompt_index is None:
            return last, cache
        row_id = (prompt_index.astype(jnp.int32)[:, None] * n + jnp.arange(n, dtype=jnp.int32)[None, :]).reshape(-1)
        return last, cache, row_id

    def _decode_impl(self, params, carry, start, rng, steps: int, greedy: bool, temperature: float,
                     top_k: int, top_p: float):
        prompt_len = carry["prompt_len"]
        # each row's id keys its draws (a carry without "row_id": the row's position)
        row_id = carry["row_id"] if "row_id" in carry else jnp.arange(carry["last"].shape[0], dtype=jnp.int32)

        def body(i, c):
            t = start + i
            tok, lp = sample_tokens(c["last"], rng, t, row_id, greedy, temperature, top_k, top_p)
            # spare steps past the budget (equal chunks may overshoot by a few) change nothing
            done = c["done"] | (t >= c["max_new"])
            tok = jnp.where(done, self.pad_id, tok)
            lp = jnp.where(done, 0.0, lp)
            tokens = jax.lax.dynamic_update_slice(c["tokens"], tok[:, None], (0, t))
            logprobs = jax.lax.dynamic_update_slice(c["logprobs"], lp[:, None], (0, t))
            is_eos = jnp.any(tok[:, None] == self.eos_ids[None, :], axis=-1) & ~done
            lengths = c["lengths"] + (~done).astype(jnp.int32)
            new_done = done | is_eos
            logits, cache = self._decode_model.apply({"params": params}, tok[:, None], attention_mask=~done[:, None],
                                             cache=c["cache"], cache_index=prompt_len + t)
            return dict(c, last=logits[:, -1], cache=cache, tokens=tokens, logprobs=logprobs, done=new_done,
                        eos=c["eos"] | is_eos, lengths=lengths)

        return jax.lax.fori_loop(0, steps, body, carry)

    def generate(self, params, prompts: Sequence[Sequence[int]], sp: SamplingParams, rng=None,
                 tokenizer=None, prompt_length: int | None = None,
                 prompt_index: Sequence[int] | None = None, budgets: Sequence[int] | None = None) -> Generation:
        """Generate for a batch of token-id prompts. ``tokenizer`` (with ``decode``) is needed
        for stop strings and returns texts. ``budgets``: each prompt's own token budget, at most
        ``sp.max_new_tokens`` (default: that for every prompt).

        In a multi-process job every process calls this at once with its own prompts (the
        same number on each) and gets the generations of its own prompts back; the rows are
        one global batch over the mesh's (data, fsdp) shards.

        ``prompt_index``: each prompt's canonical index, which (with ``rng``) fixes its samples
        (sample ``j`` of a prompt draws with row id ``prompt_index * n + j``); distinct over
        every process's prompts. Default: ``process_index * len(prompts) + i``, the prompt's
        index in one process's run of every process's prompts concatenated. A caller that
        splits a larger batch into several calls passes the prompts' indices in that batch, so
        the split does not change the samples."""
        if sp.stop_strings and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode with")
        rng = jax.random.key(0) if rng is None else rng
        multi = jax.process_count() > 1
        if multi:
            if self.mesh is None:
                raise ValueError("generation in a multi-process job needs the Sampler's mesh")
            prompt_length = int(agree_max([prompt_length or _bucket(max(len(p) for p in prompts))])[0])
        ids, mask = left_pad(prompts, self.pad_id, prompt_length)
        prompt_index = check_prompt_index(prompt_index, len(prompts)).astype(np.int32)
        budgets = check_budgets(budgets, len(prompts), sp.max_new_tokens)
        p = ids.shape[1]
        own = None  # this process's rows of the global batch (None: all of them)
        if multi:  # the prompt indices and budgets travel with their prompts, to the same global rows
            g = to_global({"ids": ids, "mask": mask, "prompt_index": prompt_index, "budgets": budgets}, self.mesh)
            ids, mask, prompt_index, budgets = g["ids"], g["mask"], g["prompt_index"], g["budgets"]
            own = (process_rows(ids)[:, None] * sp.n + np.arange(sp.n)[None, :]).reshape(-1)
        else:
            ids, mask, prompt_index, budgets = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(prompt_index),
                                                jnp.asarray(budgets))
        step, n_chunks = decode_schedule(sp.max_new_tokens, self.chunk)
        steps_total = n_chunks * step
        max_len = p + steps_total
        greedy = sp.temperature == 0.0
        with activation_sharding(self.mesh):
            if self._unstack or self.weights_dtype is not None:
                params = self._prepare(params)
            last, cache, row_id = self._prefill(params, ids, mask, n=sp.n, max_len=max_len, prompt_index=prompt_index)
            r = last.shape[0]
            carry = {"last": last, "cache": cache, "row_id": row_id, "prompt_len": jnp.int32(p),
                     "max_new": jnp.repeat(budgets, sp.n),
                     "tokens": jnp.full((r, steps_total), self.pad_id, jnp.int32),
                     "logprobs": jnp.zeros((r, steps_total), jnp.float32),
                     "done": jnp.zeros((r,), bool), "eos": jnp.zeros((r,), bool),
                     "lengths": jnp.zeros((r,), jnp.int32)}
            decode = self.decode_fn(r)
            stop_at = np.full(r, -1)
            t = 0
            while t < steps_total:
                carry = decode(params, carry, jnp.int32(t), rng, steps=step, greedy=greedy,
                               temperature=float(sp.temperature), top_k=int(sp.top_k), top_p=float(sp.top_p))
                t += step
                done = fetch(carry["done"]).copy()
                if sp.stop_strings:
                    done = self._check_stops(carry, tokenizer, sp.stop_strings, stop_at, done)
                    carry["done"] = jnp.asarray(done)
                if done.all():
                    break
        return self._finish(carry, sp, stop_at, own, tokenizer)

    def _finish(self, carry, sp: SamplingParams, stop_at: np.ndarray, own, tokenizer) -> Generation:
        """The finished decode state as a Generation: cut at the budget and at stop strings
        (``stop_at``), padded after each row's end, this process's rows (``own``) only."""
        tokens = fetch(carry["tokens"])[:, : sp.max_new_tokens].copy()
        logprobs = fetch(carry["logprobs"])[:, : sp.max_new_tokens].copy()
        lengths = np.minimum(fetch(carry["lengths"]), sp.max_new_tokens)
        finished = fetch(carry["eos"]).copy()
        for i in np.nonzero(stop_at >= 0)[0]:
            lengths[i] = stop_at[i]
            finished[i] = True
        for i in range(len(lengths)):
            tokens[i, lengths[i]:] = self.pad_id
            logprobs[i, lengths[i]:] = 0.0
        if own is not None:
            tokens, logprobs, lengths, finished = tokens[own], logprobs[own], lengths[own], finished[own]
        texts = None
        if tokenizer is not None:
            texts = [self._text(tokenizer, tokens[i, : lengths[i]], sp.stop_strings) for i in range(len(lengths))]
        return Generation(tokens, logprobs, lengths, finished, texts)

    def _check_stops(self, carry, tokenizer, stops, stop_at, done):
        # every process checks every row (same result everywhere, so the loop stops together)
        toks = fetch(carry["tokens"])
        lens = fetch(carry["lengths"])
        for i in range(len(done)):
            if stop_at[i] >= 0 or (done[i] and not stops):
                continue
            text = tokenizer.decode(toks[i, : lens[i]].tolist())
            if any(s in text for s in stops):
                # shortest prefix of tokens whose text contains a stop string: keep those tokens
                for k in range(1, lens[i] + 1):
                    if any(s in tokenizer.decode(toks[i, :k].tolist()) for s in stops):
                        stop_at[i] = k
                        break
                done[i] = True
        return done

    @staticmethod
    def _text(tokenizer, toks, stops):
        text = tokenizer.decode(toks.tolist(), skip_special_tokens=True)
        for s in stops:
            j = text.find(s)
            if j >= 0:
                text = text[: j + len(s)]
        return text
