"""The generation engine (paged KV cache, continuous batching) against transformers.

Greedy tokens and log-probs must equal transformers' ``generate`` and a teacher-forced forward
pass for every sequence, whatever the engine's sizes: few slots (sequences wait and are
admitted as others end), small pages, prefill chunks shorter than the prompts, a pool so small
that sequences are preempted and recomputed, EOS midway through some rows. Sampled rows must
equal the static sampler's for the same seed (the same key per row and token), and the ``n``
samples of a prompt must share its prefilled pages.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
import rmr1_jax as rj
from rmr1_jax.models.paged_attention import attend_ragged, attend_xla, split_pages, write_pages
from rmr1_jax.sampling.engine import Engine, EngineConfig
from rmr1_jax.sampling.pages import PagePool
from rmr1_jax.sampling.sampler import Sampler, SamplingParams
from test_sampler import PAD, char_tokenizer, hf_greedy, hf_token_logprobs, text_of

MAX_NEW = 10
_rng = np.random.default_rng(5)
# ragged prompt lengths: shorter and longer than a page and than a prefill chunk
PROMPTS = [_rng.integers(4, hf_models.VOCAB, n).tolist() for n in (1, 6, 23, 9, 40, 14)]
GREEDY = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)

# engine sizes that put every mechanism to work
CONFIGS = {
    "few-slots-small-pages": EngineConfig(max_slots=2, page_size=4, prefill_chunk=8, prefill_rows=2,
                                          decode_steps=3),
    "wide": EngineConfig(max_slots=8, page_size=16, prefill_chunk=64, prefill_rows=4, decode_steps=5),
    # 13 usable pages of 4 tokens: the 40-token prompt and its 10 new tokens take them all
    "tight-pool": EngineConfig(max_slots=3, page_size=4, kv_pages=14, prefill_chunk=16, prefill_rows=1,
                               decode_steps=4),
}


@dataclasses.dataclass
class Case:
    name: str
    path: str
    hf: object
    model: object
    params: object
    eos: int  # a token greedy decoding emits midway through some rows
    refs: list  # transformers' greedy continuation of each prompt
    never: list  # the same without EOS: every row runs to the budget


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def case(request, tmp_path_factory):
    name = request.param
    path = str(tmp_path_factory.mktemp(name))
    hf = {"qwen2": hf_models.make_qwen2, "llama3": hf_models.make_llama3}[name](path)
    model, params = rj.load_hf(path)
    never = [hf_greedy(hf, p, MAX_NEW, -1) for p in PROMPTS]

    def cut(row, eos):  # greedy decoding with EOS: the same tokens, up to the first EOS
        return row[: row.index(eos) + 1] if eos in row else row

    # EOS: a token that ends rows before the budget and leaves others running to it (the most
    # rows ended of such tokens)
    candidates = [t for t in sorted({t for r in never for t in r[:-1]})
                  if any(len(cut(r, t)) == MAX_NEW for r in never)]
    eos = max(candidates, key=lambda t: sum(len(cut(r, t)) < MAX_NEW for r in never))
    refs = [cut(r, eos) for r in never]
    return Case(name, path, hf, model, params, eos, refs, never)


def _assert_matches_transformers(case, gen, prompts, refs, eos):
    for i, (prompt, ref) in enumerate(zip(prompts, refs)):
        n = len(ref)
        assert gen.tokens[i, :n].tolist() == ref, f"row {i}"
        assert int(gen.lengths[i]) == n and bool(gen.finished[i]) == (ref[-1] == eos), f"row {i}"
        assert np.all(gen.tokens[i, n:] == PAD) and np.all(gen.logprobs[i, n:] == 0.0)
        np.testing.assert_allclose(gen.logprobs[i, :n], hf_token_logprobs(case.hf, prompt, ref), atol=1e-4, rtol=0,
                                   err_msg=f"row {i}")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_greedy_matches_transformers_whatever_the_engine_sizes(case, config):
    # the tight pool without EOS: every row runs to the budget, and the longest takes every page
    tight = config == "tight-pool"
    eos, refs = (None, case.never) if tight else (case.eos, case.refs)
    engine = Engine(case.model, eos_ids=[] if tight else [eos], pad_id=PAD, config=CONFIGS[config])
    gen = engine.generate(case.params, PROMPTS, GREEDY)
    _assert_matches_transformers(case, gen, PROMPTS, refs, eos)
    st = engine.stats
    assert st["tokens"] == sum(len(r) for r in refs)
    # every prompt token before the last is prefilled or read from the prefix cache (a preempted
    # row's prompt pages may still be there), and once more for each recomputation
    assert st["prefill_tokens"] + st.get("prefix_hit_tokens", 0) == \
        sum(len(p) - 1 for p in PROMPTS) + st.get("recomputed_tokens", 0)
    if tight:  # sequences gave their pages back and were recomputed, within the pool
        assert st["preemptions"] > 0 and st["recomputed_tokens"] > 0 and st["peak_pages"] <= 13
    if config == "few-slots-small-pages":  # two slots for six rows: slots were refilled
        assert st["decode_calls"] < sum(-(-len(r) // 3) for r in case.refs)


QWEN2_ONLY = pytest.mark.parametrize("case", ["qwen2"], indirect=True)


@QWEN2_ONLY
def test_admission_order_does_not_change_a_row(case):
    """The same prompts in reverse order: each row's tokens and log-probs are unchanged."""
    engine = Engine(case.model, eos_ids=[case.eos], pad_id=PAD, config=CONFIGS["few-slots-small-pages"])
    fwd = engine.generate(case.params, PROMPTS, GREEDY)
    rev = engine.generate(case.params, PROMPTS[::-1], GREEDY)
    np.testing.assert_array_equal(rev.tokens[::-1], fwd.tokens)
    np.testing.assert_allclose(rev.logprobs[::-1], fwd.logprobs, atol=1e-5)


@QWEN2_ONLY
def test_samples_equal_the_static_samplers_and_share_the_prompt_pages(case):
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.8, top_k=40, n=3)
    rng = jax.random.key(11)
    prompts = PROMPTS[1:5]
    static = Sampler(case.model, eos_ids=[case.eos], pad_id=PAD, chunk=4).generate(case.params, prompts, sp, rng=rng)
    engine = Engine(case.model, eos_ids=[case.eos], pad_id=PAD, config=CONFIGS["few-slots-small-pages"])
    gen = engine.generate(case.params, prompts, sp, rng=rng)
    np.testing.assert_array_equal(gen.tokens, static.tokens)
    np.testing.assert_array_equal(gen.lengths, static.lengths)
    np.testing.assert_allclose(gen.logprobs, static.logprobs, atol=1e-5)
    assert len({tuple(t) for t in gen.tokens}) > len(prompts)  # samples differ
    # one prefill per prompt, not per sample; a partly filled last prompt page copied per sample
    st = engine.stats
    assert st["prefill_tokens"] == sum(len(p) - 1 for p in prompts)
    assert st["page_copies"] == 3 * sum((len(p) - 1) % 4 != 0 for p in prompts)
    again = engine.generate(case.params, prompts, sp, rng=rng)
    np.testing.assert_array_equal(again.tokens, gen.tokens)


@QWEN2_ONLY
def test_stop_strings_end_a_row_at_its_shortest_matching_prefix(case):
    tok = char_tokenizer()
    row = max(range(len(PROMPTS)), key=lambda i: len(set(case.never[i])))
    stop = text_of(case.never[row][3:5])
    k = text_of(case.never[row]).find(stop) + 2  # tokens kept in that row
    refs = []
    for ref in case.never:
        text = text_of(ref)
        j = text.find(stop)
        refs.append(ref if j < 0 else ref[: j + len(stop)])
    sp = dataclasses.replace(GREEDY, stop_strings=(stop,))
    engine = Engine(case.model, eos_ids=[], pad_id=PAD, config=CONFIGS["wide"])
    gen = engine.generate(case.params, PROMPTS, sp, tokenizer=tok)
    assert int(gen.lengths[row]) == k < MAX_NEW and gen.finished[row]
    for i, ref in enumerate(refs):
        assert gen.tokens[i, : len(ref)].tolist() == ref and int(gen.lengths[i]) == len(ref), i
    assert gen.texts[row].endswith(stop)


@QWEN2_ONLY
def test_prompts_that_start_alike_read_one_prefill_of_their_common_pages(case):
    """The prefix cache: prompts with a common head (a system prompt, a pair judged in both
    orders) read the head's full pages from the first prompt's prefill. The second prompt is
    taken while the first still writes those pages over several calls (it waits for them); a
    pool so tight that prompts are un-prefilled and rows preempted withdraws pages never
    written. Every row still equals transformers'; with the cache off nothing is shared."""
    rng = np.random.default_rng(7)
    head = rng.integers(4, hf_models.VOCAB, 21).tolist()  # 5 full pages of 4 tokens, and one more
    prompts = [head + rng.integers(4, hf_models.VOCAB, n).tolist() for n in (3, 9, 17, 2)]
    refs = [hf_greedy(case.hf, p, MAX_NEW, -1) for p in prompts]
    base = dict(max_slots=2, page_size=4, prefill_chunk=8, prefill_rows=2, decode_steps=3)
    runs = {}
    for name, extra in {"cached": dict(kv_pages=64), "off": dict(kv_pages=64, prefix_cache=False),
                        "tight": dict(kv_pages=14, max_slots=3)}.items():
        engine = Engine(case.model, eos_ids=[], pad_id=PAD, config=EngineConfig(**{**base, **extra}))
        gen = engine.generate(case.params, prompts, GREEDY)
        _assert_matches_transformers(case, gen, prompts, refs, None)
        st = runs[name] = engine.stats
        assert st["prefill_tokens"] + st.get("prefix_hit_tokens", 0) == \
            sum(len(p) - 1 for p in prompts) + st.get("recomputed_tokens", 0), name
    assert runs["cached"]["prefix_hit_tokens"] == 20 * 3  # the head's 5 full pages, for prompts 2-4
    assert runs["off"].get("prefix_hit_tokens", 0) == 0
    assert runs["tight"]["prefix_hit_tokens"] > 0
    assert runs["tight"].get("unprefills", 0) + runs["tight"].get("preemptions", 0) > 0


def test_page_pool_publishes_prefix_pages_and_reuses_idle_ones_last():
    pool = PagePool(6, page_size=4)  # pages 1-5
    a = pool.alloc(3)
    pool.publish(a[0], b"k0")
    pool.publish(a[1], b"k1")
    assert pool.cached([b"k0", b"k1", b"k2"]) == 2 and pool.cached([b"k1"]) == 1
    pool.release(a)  # published pages stay, idle; the unpublished one is free
    assert pool.available == 5 and pool.used == 0 and pool.cached([b"k0", b"k1"]) == 2
    assert pool.take_cached([b"k0"]) == [a[0]] and pool.available == 4
    got = pool.alloc(4)  # the three free pages first, then the idle published one, its key forgotten
    assert a[1] in got and a[0] not in got and pool.cached([b"k0", b"k1"]) == 1 and pool.available == 0
    pool.publish(got[0], b"x")
    pool.unpublish(got[0])  # never written: withdrawn, and free once released
    pool.release(got + [a[0]])
    assert pool.cached([b"x"]) == 0 and pool.available == 5 and pool.cached([b"k0"]) == 1


def test_page_pool_counts_readers():
    pool = PagePool(5, page_size=4)
    a = pool.alloc(3)
    assert a == [1, 2, 3] and pool.available == 1 and pool.alloc(2) is None
    pool.share(a[:2])
    pool.release(a)
    assert pool.available == 2  # pages 1 and 2 still have a reader
    pool.release(a[:2])
    assert pool.available == 4 and pool.peak_used == 3
    with pytest.raises(ValueError, match="released more often"):
        pool.release([1])


def _scattered_pages(k=2, h=128, ps=16, num_pages=12):
    """Pages holding three sequences' earlier tokens (20, 3 and 40 of them) in scattered pages,
    and 8 new queries each: decode-like and prefill-like rows in one call."""
    rng = np.random.default_rng(0)
    s, q, n = 3, 8, 2 * k
    pages = jnp.zeros((num_pages, ps, 2 * k, h), jnp.float32)
    table = jnp.asarray([[3, 7, 1, 0], [5, 2, 0, 0], [9, 10, 11, 4]], jnp.int32)
    prior = np.array([20, 3, 40])
    for s_i in range(s):
        pos = np.arange(prior[s_i] + q)
        at = np.asarray(table[s_i])[pos // ps] * ps + pos % ps
        kv = jnp.asarray(rng.normal(size=(1, len(pos), k, h)), jnp.float32)
        pages = write_pages(pages, kv, kv * 0.5 + 1.0, jnp.asarray(at[None]))
    q_pos = jnp.asarray(prior[:, None] + np.arange(q)[None, :], jnp.int32)
    queries = jnp.asarray(rng.normal(size=(s, q, n, h)), jnp.float32)
    return queries, pages, table, q_pos


def test_the_xla_path_is_jaxs_ragged_paged_attention_reference():
    """Our reading of the kernel's arguments (keys and values interleaved per head, S ragged
    sequences of Q queries, each query at the end of its sequence's keys) against the kernel
    module's own reference implementation; the XLA path over the same pages split head-major."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import ref_ragged_paged_attention

    queries, pages, table, q_pos = _scattered_pages()
    s, q, n, h = queries.shape
    want = ref_ragged_paged_attention(queries.reshape(s * q, n, h), pages, q_pos[:, -1] + 1, table,
                                      jnp.arange(s + 1, dtype=jnp.int32) * q, jnp.array([s], jnp.int32),
                                      sm_scale=h ** -0.5)
    got = attend_xla(queries, split_pages(pages), table, q_pos, scale=h ** -0.5)
    np.testing.assert_allclose(np.asarray(got).reshape(s * q, n, h), np.asarray(want), atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="compiling for a TPU needs libtpu")
def test_the_ragged_kernel_compiles_for_a_tpu():
    """The engine's attention on TPU is the Pallas kernel: it lowers and compiles for a v5e chip (of a 2x2 slice)
    from this host (as ``rmr1 plan`` compiles), with the block sizes given off-TPU."""
    from jax.sharding import SingleDeviceSharding

    from rmr1_jax.models.attention import compile_platform
    from rmr1_jax.plan.topology import resolve as topology

    device = topology("v5e:2x2").devices[0]
    queries, pages, table, q_pos = _scattered_pages()
    shapes = [jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if x.dtype == jnp.float32 else x.dtype,
                                   sharding=SingleDeviceSharding(device)) for x in (queries, pages, table, q_pos)]
    with compile_platform("tpu"), jax.default_device(device):
        lowered = jax.jit(lambda *a: attend_ragged(*a, scale=0.088)).trace(*shapes).lower(lowering_platforms=("tpu",))
    assert "ragged_paged_attention" in lowered.as_text()
    with jax.default_device(device):
        lowered.compile()


@QWEN2_ONLY
def test_per_prompt_budgets_cut_each_row_in_both_generators(case):
    budgets = [3, 10, 5, 1, 7, 2]
    engine = Engine(case.model, eos_ids=[], pad_id=PAD, config=CONFIGS["few-slots-small-pages"])
    static = Sampler(case.model, eos_ids=[hf_models.VOCAB], pad_id=PAD, chunk=4)
    for gen in (engine.generate(case.params, PROMPTS, GREEDY, budgets=budgets),
                static.generate(case.params, PROMPTS, GREEDY, budgets=budgets)):
        assert gen.lengths.tolist() == budgets and not gen.finished.any()
        for i, b in enumerate(budgets):
            assert gen.tokens[i, :b].tolist() == case.never[i][:b] and np.all(gen.tokens[i, b:] == PAD), i
    with pytest.raises(ValueError, match="budgets must lie within 1 to max_new_tokens"):
        engine.generate(case.params, PROMPTS, GREEDY, budgets=[11] * 6)


@QWEN2_ONLY
def test_slots_split_over_the_mesh_shards_give_the_same_rows(case):
    """On a (2, 2, 2) mesh each of the 4 (data, fsdp) shards has its own slots and pool, the
    weights sharded over fsdp and tensor: the greedy rows still equal transformers', with a pool
    so tight that shards preempt, and sampled rows equal the one-device engine's."""
    mesh = rj.make_mesh((2, 2, 2))
    model, params = rj.load_hf(case.path, mesh=mesh)
    for config in ("wide", "tight-pool"):
        engine = Engine(model, eos_ids=[] if config == "tight-pool" else [case.eos], pad_id=PAD, mesh=mesh,
                        config=CONFIGS[config])
        gen = engine.generate(params, PROMPTS, GREEDY)
        st = engine.stats
        assert st["shards"] == 4 and st["kv_pages"] % 4 == 0
        # a device holds its shard's pages, of its half of the key/value heads (tensor = 2)
        keys = jax.tree.leaves(engine._pages)[0]  # [K, pages, page size, H]
        assert keys.sharding.shard_shape(keys.shape)[:2] == (keys.shape[0] // 2, keys.shape[1] // 4)
        if config == "tight-pool":
            _assert_matches_transformers(case, gen, PROMPTS, case.never, None)
            assert st.get("preemptions", 0) + st.get("unprefills", 0) > 0
        else:
            _assert_matches_transformers(case, gen, PROMPTS, case.refs, case.eos)
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.9, top_k=20, n=3)
    rng = jax.random.key(3)
    split = engine.generate(params, PROMPTS, sp, rng=rng)
    one = Engine(case.model, eos_ids=[], pad_id=PAD, config=CONFIGS["tight-pool"]).generate(case.params, PROMPTS,
                                                                                             sp, rng=rng)
    np.testing.assert_array_equal(split.tokens, one.tokens)
    np.testing.assert_allclose(split.logprobs, one.logprobs, atol=2e-5)