"""GRPO pieces against a plain NumPy re-derivation from the formulas.

Every expected value here is computed in float64 with explicit Python loops over groups,
rows and tokens (no call into our code), from:

* advantages: (r - group mean) / (std of the group + 1e-6), the std unbiased (n - 1, torch.std,
  as RM-R1's verl) or the population one (n); exactly 0 for a group of equal rewards;
* KL estimators: k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(d) - d - 1 with
  d = ref - logp clamped to [-20, 20] (verl's low_var_kl), clamped to [-10, 10] inside the loss;
* PPO: max(-A r, -A clip(r, 0.8, 1.2)) with r = exp(clip(logp - old, -20, 20));
* aggregation: token mean (sum over all response tokens / their count), mean of per-sequence
  token means, mean of per-sequence token sums; the loss returns (sum, count), never a mean.

The model-level checks use a tiny random model whose per-token log-probs come from
``response_logprobs``, itself checked against a plain log_softmax of the full logits.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.parallel import make_mesh
from rmr1_jax.train import grpo_math
from rmr1_jax.train.grpo import GRPOSpec, grpo_loss_fn, response_logprobs
from rmr1_jax.models.logprobs import next_token_targets
from rmr1_jax.train.loop import make_train_step, to_global
from rmr1_jax.train.sft import sft_loss_fn

R, T = 5, 14  # rollout rows, tokens per row (prompt + response)


# --- plain references --------------------------------------------------------------------


def ref_group_norm(rewards, eps=1e-6, ddof=0):
    rewards = np.asarray(rewards, np.float64)
    p, n = rewards.shape
    out = np.zeros((p, n))
    for i in range(p):
        if all(rewards[i, j] == rewards[i, 0] for j in range(n)):
            continue  # equal rewards: no signal, advantage 0
        mean = sum(rewards[i, j] for j in range(n)) / n
        var = sum((rewards[i, j] - mean) ** 2 for j in range(n)) / (n - ddof)
        std = math.sqrt(var)
        for j in range(n):
            out[i, j] = (rewards[i, j] - mean) / (std + eps)
    return out


def ref_kl(name, logp, ref):
    d = min(max(ref - logp, -20.0), 20.0)
    if name == "k1":
        return logp - ref
    if name == "k2":
        return 0.5 * (logp - ref) ** 2
    if name == "k3":
        return math.exp(d) - d - 1.0
    raise ValueError(name)


def ref_pg(logp, old, adv, low=0.2, high=0.2, clamp=20.0):
    """(per-token loss, clipped branch chosen) for one token."""
    log_ratio = min(max(logp - old, -clamp), clamp)
    r = math.exp(log_ratio)
    unclipped = -adv * r
    clipped = -adv * min(max(r, 1.0 - low), 1.0 + high)
    return max(unclipped, clipped), clipped > unclipped


def ref_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def ref_grpo(spec: GRPOSpec, logp, ent, batch):
    """Expected (loss_sum, count, metrics) of grpo_loss_fn, token by token."""
    mask, old, ref, adv = (np.asarray(batch[k], np.float64) for k in ("response_mask", "old_logp", "ref_logp",
                                                                        "advantages"))
    rows, length = mask.shape
    per_token = np.zeros((rows, length))
    kl_sum = clip_sum = ent_sum = pg_sum = ntok = 0.0
    for i in range(rows):
        for t in range(length):
            if not mask[i, t]:
                continue
            pg, was_clipped = ref_pg(logp[i, t], old[i, t], adv[i], spec.clip_low, spec.clip_high,
                                     spec.log_ratio_clamp)
            value = pg
            kl = 0.0
            if spec.kl_estimator != "none":
                kl = min(max(ref_kl(spec.kl_estimator, logp[i, t], ref[i, t]), -spec.kl_clamp), spec.kl_clamp)
                value += spec.kl_coef * kl
            value -= spec.entropy_coef * ent[i, t]
            per_token[i, t] = value
            kl_sum += kl
            clip_sum += float(was_clipped)
            ent_sum += ent[i, t]
            pg_sum += pg
            ntok += 1
    if spec.loss_agg == "token_mean":
        loss_sum = sum(per_token[i, t] for i in range(rows) for t in range(length) if mask[i, t])
        count = ntok
    else:
        loss_sum = count = 0.0
        for i in range(rows):
            n_i = sum(mask[i])
            if n_i == 0:
                continue
            s_i = sum(per_token[i, t] for t in range(length) if mask[i, t])
            loss_sum += s_i / n_i if spec.loss_agg == "seq_mean_token_mean" else s_i
            count += 1
    metrics = {"kl": (kl_sum, ntok), "clip_fraction": (clip_sum, ntok), "entropy": (ent_sum, ntok),
               "policy_loss": (pg_sum, ntok)}
    return loss_sum, count, metrics


# --- fixtures -------------------------------------------------------------------------------


def _widen(params, factor=8.0):
    """Init std 0.02 -> 0.16 so that logits are O(1) and log-probs are far from uniform."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x if "scale" in str(p[-1]) else x * factor, params)


@pytest.fixture(scope="module")
def tiny():
    # unrolled layers: the same math as the scanned stack (tested with the model), faster compiles
    model = DecoderLM(preset("tiny", scan_layers=False))
    params = _widen(init_params(model, jax.random.key(0)))
    return model, params


@pytest.fixture(scope="module")
def jitted_loss(tiny):
    """spec -> jit(grpo_loss_fn(model, spec)), compiled once per distinct spec."""
    model, _ = tiny
    cache = {}

    def get(spec: GRPOSpec):
        key = repr(spec)  # GRPOSpec is a plain (unhashable) dataclass
        if key not in cache:
            cache[key] = jax.jit(grpo_loss_fn(model, spec))
        return cache[key]

    return get


def _rows(seed=0):
    """Left-padded prompt + response rows, like a rollout batch. Row 3 has no response tokens
    (a prompt that got an immediate truncation), row 4 a one-token response."""
    rng = np.random.default_rng(seed)
    prompt_lens = [4, 6, 3, 5, 6]
    resp_lens = [7, 5, 8, 0, 1]
    plen = 6
    ids = np.zeros((R, T), np.int32)
    attn = np.zeros((R, T), np.int32)
    resp = np.zeros((R, T), np.int32)
    for i in range(R):
        ids[i, plen - prompt_lens[i]:plen + resp_lens[i]] = rng.integers(3, 512, prompt_lens[i] + resp_lens[i])
        attn[i, plen - prompt_lens[i]:plen + resp_lens[i]] = 1
        resp[i, plen - 1:plen - 1 + resp_lens[i]] = 1  # position t scores token t+1
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


@pytest.fixture(scope="module")
def rows():
    return _rows()


@pytest.fixture(scope="module")
def current_logp(tiny, rows):
    model, params = tiny
    lp, ent = jax.jit(lambda p, b: response_logprobs(model, p, b, with_entropy=True))(params, rows)
    return np.asarray(lp, np.float64), np.asarray(ent, np.float64)


@pytest.fixture(scope="module")
def grpo_batch(rows, current_logp):
    """old/ref log-probs perturbed around the current ones: ratios on both sides of the clip
    range and one token with a k3 KL beyond the clamp."""
    lp, _ = current_logp
    rng = np.random.default_rng(1)
    old = lp + rng.normal(0.0, 0.3, lp.shape)
    ref = lp + rng.normal(0.0, 0.5, lp.shape)
    ref[0, 6] = lp[0, 6] + 6.0  # k3 = e^6 - 7 = 396 -> clamped to 10
    ratio = np.exp(np.clip(lp - old, -20, 20))
    m = rows["response_mask"].astype(bool)
    # keep every ratio clearly away from the clip edges, so float32 and float64 agree on the branch
    assert np.all(np.abs(ratio[m] - 0.8) > 1e-3) and np.all(np.abs(ratio[m] - 1.2) > 1e-3)
    assert np.any(ratio[m] < 0.8) and np.any(ratio[m] > 1.2) and np.any((ratio[m] > 0.8) & (ratio[m] < 1.2))
    return {**rows, "old_logp": old.astype(np.float32), "ref_logp": ref.astype(np.float32),
            "advantages": np.array([1.3, -0.8, 0.4, 1.0, -1.5], np.float32)}


# --- advantages ------------------------------------------------------------------------------


@pytest.mark.parametrize("std,ddof", [("unbiased", 1), ("population", 0)])
def test_group_norm_advantages(std, ddof):
    rewards = np.array([
        [1.0, 1.0, 1.0, 1.0, 1.0],  # all correct: no signal
        [-1.0, -1.0, -1.0, -1.0, -1.0],  # all wrong: no signal
        [1.0, -1.0, -1.0, 1.0, -1.0],
        [1.0, -1.0, -1.0, -1.0, -1.0],
        [0.5, 1.0, -1.0, 0.0, 2.0],
    ], np.float32)
    got = grpo_math.ADVANTAGES["group_norm"](rewards, 1e-6, std=std)
    want = ref_group_norm(rewards, ddof=ddof)
    assert got.shape == rewards.shape
    np.testing.assert_array_equal(got[:2], 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # e.g. one right out of five: mean -0.6, squared deviations 2.56 + 4 x 0.16 = 3.2
    sd = math.sqrt(3.2 / (5 - ddof))
    np.testing.assert_allclose(got[3], np.array([1.6, -0.4, -0.4, -0.4, -0.4]) / (sd + 1e-6), rtol=1e-6)
    for row in got[2:]:
        assert abs(row.mean()) < 1e-6 and abs(row.std(ddof=ddof) - 1.0) < 1e-5


def test_default_group_std_is_the_unbiased_one():
    assert GRPOSpec().adv_std == "unbiased"
    r = np.array([[1.0, -1.0, -1.0, -1.0]], np.float32)
    np.testing.assert_allclose(grpo_math.ADVANTAGES["group_norm"](r, 1e-6),
                               grpo_math.ADVANTAGES["group_norm"](r, 1e-6, std="unbiased"))


@pytest.mark.parametrize("name", ["group_norm", "group_center"])
@pytest.mark.parametrize("std", ["unbiased", "population"])
def test_equal_rewards_give_exactly_zero_advantage_for_any_value(name, std):
    """Seven rewards of 0.7 have a float32 mean that is not 0.7 (plain float32 arithmetic gives
    advantages of +0.056 for them); any group of equal rewards must give exactly 0, so that its
    rows are skipped as carrying no signal."""
    vals = [0.7, 0.1, -0.3, 1e-3, 123.456, 1.0, -1.0, 0.0]
    rewards = np.array([[v] * 7 for v in vals], np.float32)
    r32 = rewards[0]
    assert (r32 - r32.mean()).any()  # the float32 trap is real
    got = grpo_math.ADVANTAGES[name](rewards, 1e-6, std=std)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, 0.0)


def test_advantages_with_non_unit_rewards():
    """Graded rewards (not +/-1), against the float64 loops."""
    rewards = np.array([[0.7, 0.7, 0.2, 0.7, 0.9, 0.7, 0.7],
                        [0.25, 0.5, 0.75, 1.0, 0.0, 0.5, 0.5],
                        [3.0, -2.0, 0.5, 0.5, 0.5, 0.5, 0.5]], np.float32)
    for std, ddof in (("unbiased", 1), ("population", 0)):
        got = grpo_math.ADVANTAGES["group_norm"](rewards, 1e-6, std=std)
        np.testing.assert_allclose(got, ref_group_norm(rewards, ddof=ddof), rtol=1e-6, atol=1e-6)
    centered = grpo_math.ADVANTAGES["group_center"](rewards, 1e-6)
    want = rewards.astype(np.float64) - rewards.astype(np.float64).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(centered, want, rtol=1e-6, atol=1e-7)


def test_group_center_advantages():
    rewards = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0]], np.float32)
    got = grpo_math.ADVANTAGES["group_center"](rewards, 1e-6)
    want = [[rewards[i, j] - sum(rewards[i]) / 3 for j in range(3)] for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# --- KL estimators ---------------------------------------------------------------------------

LOGP = np.array([-0.1, -2.0, -5.0, -0.7, -12.0, -1.0], np.float32)
REF = np.array([-0.1, -1.5, -0.5, -3.0, -1.0, -30.0], np.float32)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators(name):
    got = np.asarray(grpo_math.KL_ESTIMATORS[name](jnp.asarray(LOGP), jnp.asarray(REF)))
    want = [ref_kl(name, float(a), float(b)) for a, b in zip(LOGP, REF)]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    assert got[0] == 0.0  # same distribution: no divergence
    if name == "k3":
        assert np.all(got >= 0)
        assert got[4] > 10  # ref - logp = 11: exp(11) - 12, the case the loss clamps to 10
        assert got[5] == pytest.approx(math.exp(-20.0) + 20.0 - 1.0)  # d = -29, clamped to -20


def test_k3_is_finite_with_its_gradient_for_any_gap():
    """d = ref - logp of 100 would be exp(100) = inf in float32 (and a NaN gradient)."""
    logp = jnp.array([-1.0, -101.0, -1.0, -5.0])
    ref = jnp.array([99.0, -1.0, -200.0, -5.0])
    kl = grpo_math.KL_ESTIMATORS["k3"](logp, ref)
    g = jax.grad(lambda lp: jnp.sum(grpo_math.KL_ESTIMATORS["k3"](lp, ref)))(logp)
    assert np.all(np.isfinite(np.asarray(kl))) and np.all(np.isfinite(np.asarray(g)))
    assert float(kl[0]) == pytest.approx(math.exp(20.0) - 21.0, rel=1e-6)


# --- PPO clipped loss --------------------------------------------------------------------------


def test_clipped_policy_loss_and_clip_fraction():
    # log ratios: inside the range, below 1-0.2, above 1+0.2, beyond the 20 clamp (both signs)
    log_ratio = np.array([0.0, 0.1, -0.1, -0.5, 0.5, 0.3, -0.3, 25.0, 25.0, -30.0, -30.0], np.float32)
    adv = np.array([1.0, -1.0, 2.0, 1.0, 1.0, -1.0, -1.0, -0.5, 0.5, 1.0, -1.0], np.float32)
    old = np.full_like(log_ratio, -2.0)
    logp = old + log_ratio
    loss, clipped = grpo_math.clipped_policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                                                  0.2, 0.2, 20.0)
    loss, clipped = np.asarray(loss), np.asarray(clipped)
    want = [ref_pg(float(a), float(b), float(c)) for a, b, c in zip(logp, old, adv)]
    np.testing.assert_allclose(loss, [w[0] for w in want], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clipped, [w[1] for w in want])
    # spelled out: positive advantage and r > 1.2 -> clipped; negative advantage and r > 1.2 -> not
    assert clipped[4] and not clipped[5]
    assert not clipped[3]  # A > 0, r < 0.8: the unclipped (larger) loss counts
    assert clipped[6]  # A < 0, r < 0.8: the clipped loss 0.8 counts
    # the log-ratio clamp: A < 0 with log ratio 25 -> |A| e^20, not |A| e^25
    np.testing.assert_allclose(loss[7], 0.5 * math.exp(20.0), rtol=1e-5)
    assert loss[8] == pytest.approx(-0.5 * 1.2)
    np.testing.assert_allclose(loss[10], -1.0 * -0.8, rtol=1e-6)  # A < 0, r = e^-20: clipped at 0.8
    assert np.all(np.isfinite(loss))
    # clip fraction over a mask
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1], np.float32)
    frac = float(np.sum(clipped * mask) / np.sum(mask))
    want_frac = sum(w[1] for w, m in zip(want, mask) if m) / sum(mask)
    assert frac == pytest.approx(want_frac)


# --- aggregations --------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_aggregations(agg):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(4, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)
    s, c = grpo_math.AGGREGATIONS[agg](jnp.asarray(values), jnp.asarray(mask))
    if agg == "token_mean":
        want_s = sum(values[i, t] for i in range(4) for t in range(6) if mask[i, t])
        want_c = 9
    else:
        want_s, want_c = 0.0, 0
        for i in range(4):
            n_i = int(mask[i].sum())
            if n_i:
                s_i = sum(values[i, t] for t in range(6) if mask[i, t])
                want_s += s_i / n_i if agg == "seq_mean_token_mean" else s_i
                want_c += 1
    assert float(c) == want_c
    assert float(s) == pytest.approx(want_s, rel=1e-5, abs=1e-6)


# --- the model-level pieces -------------------------------------------------------------------


def test_response_logprobs_match_log_softmax(tiny, rows, current_logp):
    model, params = tiny
    logits = np.asarray(jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"],
                                                           attention_mask=b["attention_mask"]))(params, rows))
    lsm = ref_log_softmax(logits)
    ids = rows["input_ids"]
    want_lp = np.zeros((R, T - 1))
    want_ent = np.zeros((R, T))
    for i in range(R):
        for t in range(T):
            if t + 1 < T:
                want_lp[i, t] = lsm[i, t, ids[i, t + 1]]
            want_ent[i, t] = -np.sum(np.exp(lsm[i, t]) * lsm[i, t])
    lp, ent = current_logp
    assert lp.shape == (R, T)
    np.testing.assert_allclose(lp[:, :-1], want_lp, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ent, want_ent, atol=1e-5, rtol=0)
    # log-probs are far from uniform (-log 512 = -6.24), so the checks below mean something
    assert lp[:, :-1].std() > 0.5
    # the chunked path (chunk not dividing T, padded last chunk) gives the same numbers
    lp5 = np.asarray(jax.jit(lambda p, b: response_logprobs(model, p, b, chunk=5))(params, rows))
    np.testing.assert_allclose(lp5, lp, atol=1e-6, rtol=0)


SPECS = {
    "default": GRPOSpec(),  # token_mean, k3 x 0.001, no entropy
    "token_mean_k3_strong": GRPOSpec(kl_coef=0.05),
    "seq_mean_token_mean_k1_entropy": GRPOSpec(loss_agg="seq_mean_token_mean", kl_estimator="k1", kl_coef=0.1,
                                               entropy_coef=0.01),
    "seq_mean_token_sum_k2": GRPOSpec(loss_agg="seq_mean_token_sum", kl_estimator="k2", kl_coef=0.2,
                                      clip_low=0.1, clip_high=0.3),
    "no_kl_entropy": GRPOSpec(kl_estimator="none", entropy_coef=0.05),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_grpo_loss_value(tiny, grpo_batch, current_logp, jitted_loss, name):
    spec = SPECS[name]
    model, params = tiny
    lp, ent = current_logp
    loss_sum, (count, metrics) = jitted_loss(spec)(params, grpo_batch, None)
    want_sum, want_count, want_metrics = ref_grpo(spec, lp, ent, grpo_batch)
    assert float(count) == want_count
    if spec.loss_agg == "token_mean":
        assert want_count == int(grpo_batch["response_mask"].sum())  # every response token
    else:
        assert want_count == 4  # sequences with at least one response token (row 3 has none)
    # the sum is returned, not a mean (the loop divides by the global count)
    np.testing.assert_allclose(float(loss_sum), want_sum, rtol=2e-5, atol=1e-5)
    assert set(metrics) == set(want_metrics)
    for k, (s, n) in metrics.items():
        assert float(n) == want_metrics[k][1], k
        np.testing.assert_allclose(float(s), want_metrics[k][0], rtol=2e-5, atol=1e-5, err_msg=k)
    # the batch exercises both clamps and clipping on both sides
    assert 0 < float(metrics["clip_fraction"][0]) < float(metrics["clip_fraction"][1])
    if spec.kl_estimator == "k3":
        assert float(metrics["kl"][0]) > 10.0  # includes the token clamped to 10


def test_grpo_log_ratio_clamp(tiny, grpo_batch, current_logp, jitted_loss):
    """A token whose log ratio is 25 enters as e^20 (advantage < 0: the unclipped branch)."""
    model, params = tiny
    lp, ent = current_logp
    old = grpo_batch["old_logp"].copy()
    old[1, 7] = lp[1, 7] - 25.0
    batch = dict(grpo_batch, old_logp=old)
    spec = GRPOSpec()
    got, (_, metrics) = jitted_loss(spec)(params, batch, None)
    want, _, want_metrics = ref_grpo(spec, lp, ent, batch)
    assert math.isfinite(float(got))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    pg_rest = want_metrics["policy_loss"][0] - 0.8 * math.exp(20.0)
    np.testing.assert_allclose(float(metrics["policy_loss"][0]) - 0.8 * math.exp(20.0), pg_rest, atol=100.0)


def test_grpo_kl_clamp_changes_value(tiny, grpo_batch, current_logp, jitted_loss):
    """With a huge clamp, the token with k3 ~ 396 enters unclamped: the clamp is really applied."""
    _, params = tiny
    lp, ent = current_logp
    batch = dict(grpo_batch, old_logp=np.asarray(lp, np.float32))  # ratio 1 everywhere: pg = -A
    spec = SPECS["token_mean_k3_strong"]
    big = dataclasses.replace(spec, kl_clamp=1e6)
    got, _ = jitted_loss(spec)(params, batch, None)
    got_big, _ = jitted_loss(big)(params, batch, None)
    want, _, _ = ref_grpo(spec, lp, ent, batch)
    want_big, _, _ = ref_grpo(big, lp, ent, batch)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(got_big), want_big, rtol=1e-5, atol=1e-5)
    k3 = ref_kl("k3", lp[0, 6], float(batch["ref_logp"][0, 6]))
    assert k3 > 300
    assert float(got_big) - float(got) == pytest.approx(spec.kl_coef * (k3 - 10.0), rel=1e-4)


@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_loss_and_gradients_finite_with_gaps_of_100_and_masked_garbage(tiny, grpo_batch, current_logp, kl):
    """ref - logp = +/-100 on real tokens, and inf / NaN / 1e30 in the old and reference
    log-probs of padded positions and of the row without response tokens: the loss and every
    gradient stay finite, and the garbage changes nothing."""
    model, params = tiny
    lp, _ = current_logp
    mask = grpo_batch["response_mask"].astype(bool)
    ref = np.where(mask, lp + 100.0, np.inf).astype(np.float32)
    ref[1][mask[1]] = (lp[1][mask[1]] - 100.0)
    old = np.where(mask, lp - 100.0, np.nan).astype(np.float32)
    old[0, 0] = 1e30
    batch = dict(grpo_batch, ref_logp=ref, old_logp=old)
    spec = GRPOSpec(kl_estimator=kl, kl_coef=0.5)
    loss_fn = grpo_loss_fn(model, spec)
    f = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, None)[0]))
    loss, grads = f(params, batch)
    assert math.isfinite(float(loss))
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))
    clean = dict(batch, ref_logp=np.where(mask, ref, 0.0).astype(np.float32),
                 old_logp=np.where(mask, old, 0.0).astype(np.float32))
    clean_loss, _ = f(params, clean)
    assert float(loss) == float(clean_loss)


# --- gradients ---------------------------------------------------------------------------------


def _tree_max_abs(tree):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def grad_of_loss(tiny):
    """jit(grad of loss_sum / count) for GRPOSpec(kl_coef=0): one compile for both tests below."""
    model, _ = tiny
    loss_fn = grpo_loss_fn(model, GRPOSpec(kl_coef=0.0))

    def mean_loss(p, batch):
        s, (c, _) = loss_fn(p, batch, None)
        return s / c

    return jax.jit(jax.grad(mean_loss))


def test_zero_advantage_zero_kl_gives_zero_gradient(tiny, grpo_batch, grad_of_loss):
    """Every group had equal rewards (advantages 0) and no KL term: nothing to learn."""
    _, params = tiny
    grads = grad_of_loss(params, dict(grpo_batch, advantages=np.zeros(R, np.float32)))
    for g in jax.tree.leaves(grads):
        assert np.all(np.asarray(g) == 0.0)


def test_on_policy_gradient_is_policy_gradient(tiny, rows, current_logp, grad_of_loss):
    """old_logp == current log-probs (ratio 1, nothing clipped): the gradient of loss_sum / count
    is that of sum(-A * logp over response tokens) / count."""
    model, params = tiny
    lp, _ = current_logp
    adv = np.array([1.3, -0.8, 0.4, 1.0, -1.5], np.float32)
    batch = {**rows, "old_logp": lp.astype(np.float32), "ref_logp": lp.astype(np.float32), "advantages": adv}
    mask = rows["response_mask"].astype(np.float32)
    count = float(mask.sum())

    def plain(p):
        logp = response_logprobs(model, p, batch)
        return jnp.sum(-adv[:, None] * logp * mask) / count

    g_ours = grad_of_loss(params, batch)
    g_plain = jax.jit(jax.grad(plain))(params)
    scale = _tree_max_abs(g_plain)
    assert scale > 1e-3
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * scale)


# --- exact accumulation ------------------------------------------------------------------------


def _packed_batch(rows=8, length=16, seed=5):
    """Packed SFT rows with very different loss-token counts per row (one row has none)."""
    rng = np.random.default_rng(seed)
    segments = [[10, 6], [3, 4, 9], [16], [5], [7, 7], [2, 12], [16], [4, 4, 4, 4]]
    loss_frac = [0.9, 0.2, 1.0, 0.0, 0.5, 0.7, 0.1, 0.4]
    b = {k: np.zeros((rows, length), np.int32) for k in ("input_ids", "segment_ids", "positions", "loss_mask")}
    for i, segs in enumerate(segments):
        t = 0
        for j, n in enumerate(segs):
            b["input_ids"][i, t:t + n] = rng.integers(3, 512, n)
            b["segment_ids"][i, t:t + n] = j + 1
            b["positions"][i, t:t + n] = np.arange(n)
            b["loss_mask"][i, t:t + n] = rng.random(n) < loss_frac[i]
            t += n
    return b


def test_accumulation_is_exact(tiny):
    model, params = tiny
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    loss_fn = sft_loss_fn(model)
    batch_np = _packed_batch()
    # per-micro-batch loss-token counts differ (micro-batch j holds rows j, j+4): a mean of
    # micro-batch means would weight tokens differently from sum / count
    _, valid = next_token_targets(batch_np)
    per_row = np.asarray(valid).sum(axis=1)
    per_micro = [int(per_row[j::4].sum()) for j in range(4)]
    assert len(set(per_micro)) > 1 and min(per_micro) > 0 and per_row.min() == 0, (per_row, per_micro)

    lr = 1.0
    optimizer = optax.sgd(lr)  # update = -lr * grad: params show the gradient itself

    def run(accum):
        step = make_train_step(loss_fn, optimizer, lambda s: lr, accum, mesh)
        p = jax.tree.map(jnp.array, params)  # the step donates its state
        state = {"params": p, "opt_state": optimizer.init(p), "step": jnp.zeros((), jnp.int32)}
        new, metrics = step(state, to_global(batch_np, mesh), jax.random.key(0))
        return jax.device_get(new["params"]), jax.device_get(metrics)

    p1, m1 = run(1)
    p4, m4 = run(4)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert float(m1["loss_tokens"]) == float(m4["loss_tokens"]) == float(per_row.sum())
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-6)

    # both are sum over micro-batches of grad(loss_sum) / total count (for accum=1 that is the
    # full-batch gradient of sum / count) ...
    sum_grad = jax.jit(jax.value_and_grad(lambda p, mb: loss_fn(p, mb, None)[0]))
    micro = [{k: v[j::4] for k, v in batch_np.items()} for j in range(4)]
    sums, grads = zip(*[sum_grad(params, mb) for mb in micro])
    counts = [float(c) for c in per_micro]
    total = sum(counts)
    g_exact = jax.tree.map(lambda *g: sum(np.asarray(x, np.float64) for x in g) / total, *grads)
    expected = jax.tree.map(lambda x, g: np.asarray(x) - lr * g, params, g_exact)
    np.testing.assert_allclose(float(m1["loss"]), sum(float(x) for x in sums) / total, rtol=1e-6)
    for got in (p1, p4):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    # ... and not the mean of micro-batch means, which this batch tells apart
    g_mm = jax.tree.map(lambda *g: sum(np.asarray(x, np.float64) / c for x, c in zip(g, counts)) / 4, *grads)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(g_mm), jax.tree.leaves(g_exact)))
    assert diff > 1e-3
