"""The KV-cache sampler against transformers (the outside reference).

Random tiny Qwen2 and Llama models are built with ``transformers``, saved, and imported with
``load_hf``. Greedy decoding must reproduce ``model.generate(do_sample=False)`` token for
token, alone and in a left-padded batch of mixed prompt lengths; the returned log-probs must be
those of a teacher-forced transformers forward pass over prompt + generated tokens.

Compiles are the cost here, so one ``Sampler`` per model is shared by most tests (same batch
shapes, same prompt-length bucket, same ``max_new_tokens``). Its chunk of 4 decode steps makes
every run go through the host loop between chunks (3 chunks for 12 new tokens).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_models
import rmr1_jax as rj
from rmr1_jax.sampling.sampler import Sampler, SamplingParams

MAX_NEW = 12
CHUNK = 4
PAD = 0
_rng = np.random.default_rng(1)  # prompts whose greedy continuations have clear argmax margins
PROMPTS = [_rng.integers(4, hf_models.VOCAB, n).tolist() for n in (5, 11, 17)]  # one 32-token bucket
GREEDY = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)


# --- transformers references --------------------------------------------------------------


def hf_greedy(hf, prompt, max_new, eos):
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=max_new, eos_token_id=eos, pad_token_id=PAD)
    return out[0, len(prompt):].tolist()


def hf_token_logprobs(hf, prompt, generated, temperature=1.0):
    """log p(generated[j] | prompt, generated[:j]) under softmax(logits / temperature), from
    one teacher-forced forward pass."""
    ids = np.array([list(prompt) + list(generated)])
    logits = hf_models.hf_logits(hf, ids, np.ones_like(ids))[0].astype(np.float64) / temperature
    lsm = logits - logits.max(-1, keepdims=True)
    lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
    p = len(prompt)
    return np.array([lsm[p - 1 + j, generated[j]] for j in range(len(generated))])


def _top2_gap(hf, prompt, generated):
    ids = np.array([list(prompt) + list(generated)])
    logits = hf_models.hf_logits(hf, ids, np.ones_like(ids))[0]
    top2 = np.sort(logits[len(prompt) - 1:-1], axis=-1)[:, -2:]
    return float(np.min(top2[:, 1] - top2[:, 0]))


def char_tokenizer():
    """Token i <-> one distinct character (a CJK ideograph), decoded by concatenation."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {chr(0x4E00 + i): i for i in range(hf_models.VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=chr(0x4E00)))
    tok.decoder = decoders.Fuse()
    return tok


def text_of(tokens):
    return "".join(chr(0x4E00 + t) for t in tokens)


# --- fixtures ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    path: str
    hf: object
    model: object
    params: object
    eos_never: int  # an id greedy decoding never emits here
    ref: list  # HF greedy continuation of each prompt (MAX_NEW tokens, eos_never)
    sampler: Sampler  # eos = eos_never


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def case(request, tmp_path_factory):
    name = request.param
    path = str(tmp_path_factory.mktemp(name))
    maker = {"qwen2": hf_models.make_qwen2, "llama3": hf_models.make_llama3}[name]
    hf = maker(path)
    model, params = rj.load_hf(path)
    for eos in range(hf_models.VOCAB - 1, 3, -1):
        ref = [hf_greedy(hf, p, MAX_NEW, eos) for p in PROMPTS]
        if all(len(r) == MAX_NEW and eos not in r for r in ref):
            break
    # the random model does not just repeat one token: the comparison is meaningful
    assert len(set(sum(ref, []))) >= 8 and sum(len(set(r)) >= 4 for r in ref) >= 2, ref
    # no near-ties along the greedy path (logit error here is ~1e-5): exact-token parity is robust
    margin = min(_top2_gap(hf, p, r) for p, r in zip(PROMPTS, ref))
    assert margin > 1e-3, f"greedy path has a near-tie (top-2 logit gap {margin:.2g}); pick other prompts"
    sampler = Sampler(model, eos_ids=[eos], pad_id=PAD, chunk=CHUNK)
    return Case(name, path, hf, model, params, eos, ref, sampler)


# Model-independent sampler behavior (stopping, n, sampling, stop strings, mesh) runs on qwen2 only.
QWEN2_ONLY = pytest.mark.parametrize("case", ["qwen2"], indirect=True)


@pytest.fixture(scope="module")
def batch_greedy(case):
    return case.sampler.generate(case.params, PROMPTS, GREEDY)


def _assert_logprobs_match_hf(hf, prompts_per_row, gen):
    for i, prompt in enumerate(prompts_per_row):
        n = int(gen.lengths[i])
        want = hf_token_logprobs(hf, prompt, gen.tokens[i, :n].tolist())
        np.testing.assert_allclose(gen.logprobs[i, :n], want, atol=1e-4, rtol=0, err_msg=f"row {i}")
        assert np.all(gen.logprobs[i, n:] == 0.0)


# --- greedy parity ------------------------------------------------------------------------------


def test_greedy_single_prompts_match_transformers(case):
    for prompt, ref in zip(PROMPTS, case.ref):
        g = case.sampler.generate(case.params, [prompt], GREEDY)
        assert g.tokens.shape == (1, MAX_NEW) and g.logprobs.shape == (1, MAX_NEW)
        assert g.tokens[0].tolist() == ref
        assert g.lengths.tolist() == [MAX_NEW]
        assert g.finished.tolist() == [False]  # truncated, not ended
        assert g.texts is None
        _assert_logprobs_match_hf(case.hf, [prompt], g)


def test_greedy_mixed_length_batch_matches_transformers(case, batch_greedy):
    g = batch_greedy
    assert g.tokens.shape == (len(PROMPTS), MAX_NEW)
    assert g.tokens.dtype == np.int32 and g.logprobs.dtype == np.float32
    for i, ref in enumerate(case.ref):
        assert g.tokens[i].tolist() == ref, f"prompt {i} (length {len(PROMPTS[i])})"
    assert g.lengths.tolist() == [MAX_NEW] * len(PROMPTS)
    assert not g.finished.any()
    _assert_logprobs_match_hf(case.hf, PROMPTS, g)


def test_bf16_weights_decode_tracks_the_float32_model(case):
    """``weights_dtype="bfloat16"``: every greedy token is the float32 transformers model's
    argmax up to bfloat16 rounding (its f32 logit within 0.05 of the top one), and the
    returned log-probs are within bfloat16 error of the f32 teacher-forced ones (and not
    identical: the cast model really ran)."""
    sampler = Sampler(case.model, eos_ids=[case.eos_never], pad_id=PAD, chunk=CHUNK, weights_dtype="bfloat16")
    g = sampler.generate(case.params, PROMPTS, GREEDY)
    assert g.lengths.tolist() == [MAX_NEW] * len(PROMPTS)
    max_dev = 0.0
    for i, prompt in enumerate(PROMPTS):
        gen = g.tokens[i].tolist()
        ids = np.array([list(prompt) + gen])
        logits = hf_models.hf_logits(case.hf, ids, np.ones_like(ids))[0, len(prompt) - 1:-1]
        picked = logits[np.arange(MAX_NEW), gen]
        assert np.all(logits.max(-1) - picked < 0.05), (i, logits.max(-1) - picked)
        want = hf_token_logprobs(case.hf, prompt, gen)
        np.testing.assert_allclose(g.logprobs[i], want, atol=0.05, rtol=0, err_msg=f"row {i}")
        max_dev = max(max_dev, float(np.max(np.abs(g.logprobs[i] - want))))
    assert max_dev > 1e-6


@QWEN2_ONLY
def test_xla_default_dots_decode_the_same_tokens(case, batch_greedy):
    """On CPU the float32 decode loop over few rows compiles its dots outside YNNPACK (faster
    there); XLA's default compile gives the same tokens and log-probs. Many rows and bfloat16
    decodes keep the defaults, and explicit options apply to every batch."""
    from rmr1_jax.sampling.sampler import FEW_ROWS

    few = {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert case.sampler.decode_options(len(PROMPTS)) == few
    assert case.sampler.decode_options(FEW_ROWS) == few
    assert case.sampler.decode_options(FEW_ROWS + 1) == {}
    bf16 = Sampler(case.model, eos_ids=[case.eos_never], pad_id=PAD, weights_dtype="bfloat16")
    assert bf16.decode_options(1) == {}
    plain = Sampler(case.model, eos_ids=[case.eos_never], pad_id=PAD, chunk=CHUNK, compiler_options={})
    assert plain.decode_options(1) == {} and plain.decode_options(1000) == {}
    g = plain.generate(case.params, PROMPTS, GREEDY)
    assert g.tokens.tolist() == batch_greedy.tokens.tolist()
    np.testing.assert_allclose(g.logprobs, batch_greedy.logprobs, atol=1e-5, rtol=0)


@QWEN2_ONLY
def test_greedy_stops_at_eos(case):
    """EOS = a token greedy first emits midway through one prompt's continuation: that row
    ends there (EOS kept, counted in the length, pad after), as transformers' generate does."""
    row, j = next((i, j) for j in range(MAX_NEW - 3, 1, -1) for i, r in enumerate(case.ref) if r[j] not in r[:j])
    eos = case.ref[row][j]
    refs = [hf_greedy(case.hf, p, MAX_NEW, eos) for p in PROMPTS]
    assert len(refs[row]) == j + 1 and refs[row][-1] == eos
    sampler = Sampler(case.model, eos_ids=[eos, case.eos_never], pad_id=PAD, chunk=CHUNK)
    g = sampler.generate(case.params, PROMPTS, GREEDY)
    for i, ref in enumerate(refs):
        n = len(ref)
        assert int(g.lengths[i]) == n, i
        assert g.tokens[i, :n].tolist() == ref, i
        assert np.all(g.tokens[i, n:] == PAD) and np.all(g.logprobs[i, n:] == 0.0)
        assert bool(g.finished[i]) == (ref[-1] == eos), i
    assert g.finished[row] and int(g.lengths[row]) == j + 1 < MAX_NEW
    _assert_logprobs_match_hf(case.hf, PROMPTS, g)


# --- several samples per prompt ---------------------------------------------------------------


@QWEN2_ONLY
def test_greedy_n3_repeats_n1(case, batch_greedy):
    g3 = case.sampler.generate(case.params, PROMPTS, dataclasses.replace(GREEDY, n=3))
    assert g3.tokens.shape == (3 * len(PROMPTS), MAX_NEW)
    for i in range(len(PROMPTS)):
        for k in range(3):
            np.testing.assert_array_equal(g3.tokens[3 * i + k], batch_greedy.tokens[i])
            np.testing.assert_allclose(g3.logprobs[3 * i + k], batch_greedy.logprobs[i], atol=1e-6)
    assert g3.lengths.tolist() == [MAX_NEW] * 9


@QWEN2_ONLY
def test_temperature_samples(case):
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, n=3)
    g = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(7))
    assert g.tokens.shape == (9, MAX_NEW) and g.logprobs.shape == (9, MAX_NEW)
    assert g.lengths.shape == (9,) and g.finished.shape == (9,)
    for i in range(len(PROMPTS)):
        rows = [tuple(g.tokens[3 * i + k]) for k in range(3)]
        assert len(set(rows)) == 3, f"the 3 samples of prompt {i} coincide"
    # prompt-major rows: row 3i+k continues prompt i (its log-probs are prompt i's)
    _assert_logprobs_match_hf(case.hf, [p for p in PROMPTS for _ in range(3)], g)
    # same rng, same samples; another rng, other samples
    again = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(7))
    np.testing.assert_array_equal(again.tokens, g.tokens)
    np.testing.assert_array_equal(again.logprobs, g.logprobs)
    other = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(8))
    assert not np.array_equal(other.tokens, g.tokens)


@QWEN2_ONLY
def test_samples_follow_the_prompt_index_not_the_row(case):
    """Each row draws with a key of its canonical id (``prompt_index * n + sample``), not of its
    row in the batch: prompts reordered with their indices get the same samples (so a prompt's
    samples do not depend on where a multi-process mesh puts its row); by default a prompt's
    index is its position."""
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, n=3)
    g = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(7))
    order = [2, 0, 1]
    moved = case.sampler.generate(case.params, [PROMPTS[i] for i in order], sp, rng=jax.random.key(7),
                                  prompt_index=order)
    for pos, i in enumerate(order):
        np.testing.assert_array_equal(moved.tokens[3 * pos:3 * pos + 3], g.tokens[3 * i:3 * i + 3])
        np.testing.assert_allclose(moved.logprobs[3 * pos:3 * pos + 3], g.logprobs[3 * i:3 * i + 3], atol=1e-6)
    default = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(7), prompt_index=[0, 1, 2])
    np.testing.assert_array_equal(default.tokens, g.tokens)
    other = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(7), prompt_index=[3, 4, 5])
    assert not np.array_equal(other.tokens, g.tokens)


@QWEN2_ONLY
def test_logprobs_at_temperature_07_are_those_of_the_tempered_policy(case):
    """At T = 0.7 the sampler's log-probs, and GRPO's teacher-forced ones (old, reference and
    training passes), are log_softmax(logits / T) of transformers' logits: the ratio and the
    KL refer to the distribution that sampled."""
    from rmr1_jax.sampling.sampler import left_pad
    from rmr1_jax.train.grpo import response_logprobs

    t = 0.7
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=t, n=2)
    g = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(5))
    refs = []
    for r in range(g.tokens.shape[0]):
        gen = g.tokens[r, : g.lengths[r]].tolist()
        refs.append(hf_token_logprobs(case.hf, PROMPTS[r // 2], gen, temperature=t))
        np.testing.assert_allclose(g.logprobs[r, : len(gen)], refs[-1], atol=2e-4, rtol=1e-4)
        # the T = 1 log-probs differ: the test would catch log-probs taken at the wrong temperature
        assert np.max(np.abs(hf_token_logprobs(case.hf, PROMPTS[r // 2], gen) - refs[-1])) > 1e-2
    plen = 32
    pid, pmask = left_pad([p for p in PROMPTS for _ in range(2)], PAD, plen)
    ids = np.concatenate([pid, g.tokens], axis=1)
    attn = np.concatenate([pmask, np.arange(MAX_NEW)[None] < g.lengths[:, None]], axis=1)
    lp = np.asarray(jax.jit(lambda p, b: response_logprobs(case.model, p, b, temperature=t))(
        case.params, {"input_ids": ids, "attention_mask": attn}))
    for r, ref in enumerate(refs):
        np.testing.assert_allclose(lp[r, plen - 1: plen - 1 + len(ref)], ref, atol=2e-4, rtol=1e-4)


def _all_shapes(jaxpr):
    """Every intermediate's shape in a jaxpr, sub-jaxprs (scans, jits, custom VJPs) included."""
    out = []
    for eqn in jaxpr.eqns:
        out += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _all_shapes(inner)
    return out


def test_prefill_attends_over_the_prompt_only(case):
    """The prefill's attention spans the prompt's T tokens only: no intermediate has both the
    prompt length and the cache length (prompt + generation budget), as [B, K, G, T, S] scores
    over every cache slot would (gigabytes per layer at RM-R1's 4,096 + 8,192 tokens)."""
    s = case.sampler
    t, max_len = 40, 40 + 600
    params = s._prepare(case.params) if s._unstack else case.params
    ids, mask = jnp.zeros((2, t), jnp.int32), jnp.ones((2, t), bool)
    jaxpr = jax.make_jaxpr(lambda p, i, m: s._prefill_impl(p, i, m, n=1, max_len=max_len))(params, ids, mask)
    shapes = _all_shapes(jaxpr.jaxpr)
    assert any(max_len in sh for sh in shapes)  # the cache is there
    assert [sh for sh in shapes if t in sh and max_len in sh] == []


@QWEN2_ONLY
def test_top_k_1_is_greedy(case, batch_greedy):
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, top_k=1)
    g = case.sampler.generate(case.params, PROMPTS, sp, rng=jax.random.key(3))
    np.testing.assert_array_equal(g.tokens, batch_greedy.tokens)
    np.testing.assert_allclose(g.logprobs, batch_greedy.logprobs, atol=1e-6)


# --- stop strings ----------------------------------------------------------------------------------


@QWEN2_ONLY
def test_stop_strings(case, batch_greedy):
    tok = char_tokenizer()
    ref0 = case.ref[0]
    stop = text_of(ref0[4:6])  # spans two tokens of prompt 0's continuation
    g = case.sampler.generate(case.params, PROMPTS, dataclasses.replace(GREEDY, stop_strings=(stop,)),
                              tokenizer=tok)
    assert g.texts is not None and len(g.texts) == len(PROMPTS)
    for i, ref in enumerate(case.ref):
        text = text_of(ref)
        if stop in text:
            k = text.index(stop) + len(stop)  # one character per token: k tokens are kept
            assert int(g.lengths[i]) == k and bool(g.finished[i]), i
            assert g.texts[i] == text[:k] and g.texts[i].endswith(stop)
        else:
            assert int(g.lengths[i]) == MAX_NEW and not g.finished[i], i
            assert g.texts[i] == text
        n = int(g.lengths[i])
        assert g.tokens[i, :n].tolist() == ref[:n]
        assert np.all(g.tokens[i, n:] == PAD) and np.all(g.logprobs[i, n:] == 0.0)
        np.testing.assert_allclose(g.logprobs[i, :n], batch_greedy.logprobs[i, :n], atol=1e-6)
    assert int(g.lengths[0]) <= 6 and g.finished[0]

    # a stop string that never occurs: every row is truncated, finished=False, full text
    g = case.sampler.generate(case.params, PROMPTS, dataclasses.replace(GREEDY, stop_strings=("\n\n",)),
                              tokenizer=tok)
    assert not g.finished.any() and g.lengths.tolist() == [MAX_NEW] * 3
    assert g.texts == [text_of(r) for r in case.ref]

    with pytest.raises(ValueError, match="tokenizer"):
        case.sampler.generate(case.params, PROMPTS, dataclasses.replace(GREEDY, stop_strings=("x",)))


@QWEN2_ONLY
def test_eos_after_the_budget_is_not_finished(case):
    """With max_new_tokens > chunk and not a multiple of it, decoding runs to the bucketed step
    count (16 with chunk 8) and keeps max_new_tokens. An EOS first emitted after the budget must
    not make the kept (truncated) row count as finished."""
    chunk, steps = 8, 16
    found = None
    for prompt in PROMPTS:
        ext = hf_greedy(case.hf, prompt, steps, case.eos_never)
        for max_new in range(steps - 1, chunk, -1):  # all bucket to 16 decode steps
            late = [t for t in ext[max_new:] if t not in ext[:max_new]]
            if late and found is None:
                found = (prompt, ext, max_new, late[0])
    if found is None:
        pytest.skip("no token is first emitted past the budget for these prompts")
    prompt, ext, max_new, late = found
    assert hf_greedy(case.hf, prompt, max_new, late) == ext[:max_new]  # no EOS within the budget
    sampler = Sampler(case.model, eos_ids=[late], pad_id=PAD, chunk=chunk)
    sp = SamplingParams(max_new_tokens=max_new, temperature=0.0)
    g = sampler.generate(case.params, [prompt], sp)
    assert g.tokens[0].tolist() == ext[:max_new]
    # the same with a stop string (the late token's text) that only occurs past the budget
    gs = sampler.generate(case.params, [prompt], dataclasses.replace(sp, stop_strings=(text_of([late]),)),
                          tokenizer=char_tokenizer())
    assert gs.tokens[0].tolist() == ext[:max_new]
    problems = [f"{what}: length {int(x.lengths[0])}, finished {bool(x.finished[0])}"
                for what, x in (("eos", g), ("stop string", gs))
                if bool(x.finished[0]) or int(x.lengths[0]) != max_new]
    assert not problems, problems  # an EOS or stop string past the budget does not count
    assert gs.texts == [text_of(ext[:max_new])]


# --- sharded -----------------------------------------------------------------------------------------


@QWEN2_ONLY
def test_sharded_mesh_matches_single_device(case, batch_greedy):
    mesh = rj.make_mesh((2, 2, 2))
    model, params = rj.load_hf(case.path, mesh=mesh)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(params)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
    sampler = Sampler(model, eos_ids=[case.eos_never], pad_id=PAD, mesh=mesh, chunk=CHUNK)
    g = sampler.generate(params, PROMPTS, GREEDY)
    np.testing.assert_array_equal(g.tokens, batch_greedy.tokens)
    np.testing.assert_allclose(g.logprobs, batch_greedy.logprobs, atol=1e-5)
    assert g.lengths.tolist() == batch_greedy.lengths.tolist()
