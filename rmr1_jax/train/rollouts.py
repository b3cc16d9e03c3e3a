"""GRPO's batch source: rollout steps of the current policy, rewarded, turned into the
mini-batches of the optimizer updates.

Each rollout step samples ``n`` responses per prompt (all of the step's prompts in one call of
the generator: the generation engine, :class:`~rmr1_jax.sampling.engine.Engine`, whose slots
refill across the whole step as responses end), rewards each (the source's ``reward``: for a
judge in training, :class:`VerdictReward`, +1 right verdict, -1 otherwise, a truncated judgment
getting the failure reward, or with ``grpo.reward: consistency`` +1 only when the pair's other
A/B order is right too; for a policy, :class:`rmr1_jax.train.policy_rewards.PolicyReward`),
normalizes rewards within each prompt's group, computes the reference (when the loss has a KL
term) and old-policy log-probs, and queues one mini-batch per update.
A prompt's samples are keyed by its index in the one-process rollout step, so they are the
same on any process count and mesh (see :meth:`RolloutSource._prompt_index`).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from rmr1_jax.parallel.hostlocal import agree_max, agree_sum, fetch, gather_rows, process_rows, to_global
from rmr1_jax.models.lora import has_adapters
from rmr1_jax.parallel.sharding import activation_sharding
from rmr1_jax.train import grpo_math
from rmr1_jax.models.logprobs import response_logprobs


class RolloutSource:
    """Feeds the training loop (a :class:`~rmr1_jax.train.objective.BatchSource`): when its
    queue is empty it runs a rollout step with the current params and splits the result into
    ``updates`` mini-batches (times ``ppo_epochs``)."""

    holds_arrays = True  # the queued mini-batches of the current rollout

    def __init__(self, *, model, ref_params, generator, tokenizer, prompts, spec, mesh, per_host_prompts: int,
                 per_host_minibatch_prompts: int, seed: int, row_multiple: int = 1, ref_model=None, reward=None):
        """``generator``: what samples the rollouts, an :class:`~rmr1_jax.sampling.engine.Engine`
        (or anything with its ``generate`` and ``pad_id``, e.g. the static
        :class:`~rmr1_jax.sampling.sampler.Sampler`). ``spec``: the
        :class:`~rmr1_jax.train.grpo.GRPOSpec`. ``row_multiple``: an update's
        host-local row count must be a multiple of it (the micro-batch count times the data
        shards on this host). ``ref_params``: the frozen reference policy, or ``None`` when the
        loss has no KL term; ``ref_model`` applies it (default ``model``; with LoRA the model
        without adapters, ``ref_params`` being the frozen base). ``reward``: what turns a
        record into prompts and their samples into rewards (:class:`VerdictReward`, the
        default, or anything with its ``expand``, ``records_per_prompt`` and call)."""
        if spec.uses_reference() and ref_params is None:
            raise ValueError("the GRPO loss has a KL term: RolloutSource needs ref_params")
        self.model, self.ref_params, self.generator, self.tokenizer = model, ref_params, generator, tokenizer
        self.prompts, self.spec, self.mesh = prompts, spec, mesh
        self.reward = reward if reward is not None else VerdictReward(spec)
        self.k, self.mb = per_host_prompts, per_host_minibatch_prompts
        self.seed = seed
        self.row_multiple = max(1, int(row_multiple))
        self.queue: list[dict] = []
        self._queued = 0  # queue length a restored data state says the checkpoint holds
        self._metrics: dict = {}
        self._gen_stats: dict = {}
        self._rollouts = 0

        def logprobs(p, b):  # the module follows the params: the LoRA reference has no adapters
            m = model if ref_model is None or has_adapters(p) else ref_model
            return response_logprobs(m, p, b, temperature=spec.temperature)

        self._lp = jax.jit(logprobs)

    def state(self) -> dict:
        return {"prompts": self.prompts.state(), "rollouts": self._rollouts, "queued": len(self.queue)}

    def restore(self, state: dict) -> None:
        self.prompts.restore(state["prompts"])
        self._rollouts = state["rollouts"]
        self._queued = state.get("queued", 0)
        self.queue = []

    def held_arrays(self) -> dict:
        """The mini-batches of the current rollout not trained on yet (saved with a checkpoint
        taken inside a rollout, so that the resumed run trains on exactly them)."""
        return {f"batch_{i:04d}": b for i, b in enumerate(self.queue)}

    def restore_held(self, arrays: dict) -> None:
        self.queue = [dict(arrays[k]) for k in sorted(arrays)]
        if len(self.queue) != self._queued:
            from rmr1_jax.errors import CheckpointError

            raise CheckpointError(f"the checkpoint holds {len(self.queue)} queued GRPO mini-batches, its data "
                                  f"state says {self._queued}")

    def pop_metrics(self) -> dict:
        m, self._metrics = self._metrics, {}
        return m

    def next_batch(self, params) -> dict:
        if not self.queue:
            self._rollout(params)
        return self.queue.pop(0)

    def _logprobs(self, params, rows: dict[str, np.ndarray], plen: int, lengths: np.ndarray) -> np.ndarray:
        """Log-probs [rows, plen + L] of ``rows`` (a prompt of ``plen`` columns, then L response
        columns; ``lengths``: each row's response tokens), ``logprob_batch`` rows a forward. The
        rows go shortest response first, and a forward's columns stop after its longest
        response, rounded up to the next of ``logprob_buckets`` widths (so few shapes compile):
        on a long-tailed step most forwards are far shorter than the budget. Columns past a
        row's response get zeros. Every process runs the same forwards (their count and widths
        agreed), whatever rows it holds."""
        n, width = rows["input_ids"].shape
        bs, L = self.spec.logprob_batch, width - plen
        out = np.zeros((n, width), np.float32)
        order = np.argsort(lengths, kind="stable")
        batches = [order[i:i + bs] for i in range(0, n, bs)]
        count = int(agree_max([len(batches)])[0])
        step = -(-L // self.spec.logprob_buckets)
        widths = agree_max([plen + min(L, -(-int(lengths[b].max()) // step) * step) for b in batches]
                           + [0] * (count - len(batches)))
        with activation_sharding(self.mesh):
            for i in range(count):
                idx, w = (batches[i] if i < len(batches) else order[:0]), int(widths[i])
                if len(idx):
                    sub = {k: v[idx, :w] for k, v in rows.items()}
                else:  # this process has no rows left: a pad row, attended, for the shape
                    sub = {"input_ids": np.full((1, w), self.generator.pad_id, np.int32),
                           "attention_mask": np.ones((1, w), np.int32)}
                real = len(idx)
                sub = {k: np.concatenate([v, np.repeat(v[:1], bs - len(v), axis=0)]) for k, v in sub.items()}
                g = to_global(sub, self.mesh)
                out[idx, :w] = fetch(self._lp(params, g))[process_rows(g["input_ids"])][:real]
        return out

    def _next_prompts(self) -> tuple[list[list[int]], list]:
        """This process's prompts of the next rollout step (token ids, cut to the prompt budget)
        and what each is rewarded against (the reward's ``expand`` of each drawn record: with
        ``both_orders`` a judge prompt and its swapped twin)."""
        prompt_ids, targets = [], []
        for _ in range(self.k // self.reward.prompts_per_record):
            for ids, target in self.reward.expand(next(self.prompts)):
                prompt_ids.append(np.asarray(ids)[-self.spec.max_prompt_tokens:].tolist())
                targets.append(target)
        return prompt_ids, targets

    def _sample(self, params, prompt_ids):
        """``(plen, tokens, sampler log-probs, lengths, finished, texts)`` of ``spec.n`` samples a
        prompt, every prompt of the step in one generator call; the token columns cut to the
        bucketed width any response reaches (agreed over processes, so few shapes compile)."""
        from rmr1_jax.sampling.sampler import SamplingParams

        spec = self.spec
        sp = SamplingParams(max_new_tokens=spec.max_response_tokens, temperature=spec.temperature,
                            top_p=spec.top_p, top_k=spec.top_k, n=spec.n)
        plen = int(agree_max([-(-max(len(p) for p in prompt_ids) // 32) * 32])[0])
        rng = jax.random.fold_in(jax.random.key(self.seed), self._rollouts)
        g = self.generator.generate(params, prompt_ids, sp, rng=rng, tokenizer=self.tokenizer, prompt_length=plen,
                                    prompt_index=self._prompt_index(len(prompt_ids)))
        free_kv_pool(self.generator)  # the log-prob passes and updates that follow need the memory
        # the engine's account of the call (one schedule, the same on every process)
        self._gen_stats = {k: float(v) for k, v in (getattr(self.generator, "stats", None) or {}).items()
                           if k in ("slot_use", "preemptions")}
        tokens, sampler_lp, lengths, finished = g.tokens, g.logprobs, g.lengths, g.finished
        bucket = max(32, spec.max_response_tokens // 8)
        width = int(agree_max([min(tokens.shape[1], -(-max(int(lengths.max()), 1) // bucket) * bucket)])[0])
        return plen, tokens[:, :width], sampler_lp[:, :width], lengths, finished, g.texts

    def _rollout(self, params):
        """One rollout step with the current ``params``: this process's next prompts sampled
        ``spec.n`` times each, rewarded, and the step's mini-batches queued (``ppo_epochs``
        times); the step's metrics wait for :meth:`pop_metrics`."""
        from rmr1_jax.inference.judge import prompts_open_thinking

        t0 = time.perf_counter()
        prompt_ids, targets = self._next_prompts()
        plen, tokens, sampler_lp, lengths, finished, texts = self._sample(params, prompt_ids)
        t_gen = time.perf_counter() - t0
        # a prompt that opened the thinking section (DeepSeek-R1-Distill templates) starts the
        # output inside it: without "</think>" the whole output is thinking, no verdict
        opened = prompts_open_thinking(self.tokenizer, prompt_ids)
        rewards, counts = self.reward(targets, texts, finished, opened)
        rewards = np.asarray(rewards, np.float32)
        adv = grpo_math.ADVANTAGES[self.spec.advantage](rewards.reshape(-1, self.spec.n), self.spec.adv_eps,
                                                        std=self.spec.adv_std).reshape(-1)
        t_reward = time.perf_counter() - t0 - t_gen
        rows, target_mask = self._rows(prompt_ids, plen, tokens, lengths)
        plans = self._plan_updates(adv, target_mask)
        ref_lp, old_lp, t_ref, t_old = self._logprob_columns(params, rows, plans, plen, sampler_lp, lengths)
        full = {**rows, "response_mask": target_mask, "old_logp": old_lp.astype(np.float32),
                "ref_logp": ref_lp.astype(np.float32), "advantages": adv.astype(np.float32)}
        self._queue_updates(full, plans)
        n_trained = sum(len(keep) for _, keep, _ in plans)
        self._rollouts += 1
        self._metrics = self._rollout_metrics(rewards, adv, lengths, finished, counts, n_trained,
                                              t_gen, t_reward, t_ref, t_old)

    def _rows(self, prompt_ids, plen: int, tokens: np.ndarray, lengths: np.ndarray) -> tuple[dict, np.ndarray]:
        """The training rows, ``{"input_ids", "attention_mask"}`` [rows, plen + L] int32: each
        prompt left-padded to ``plen`` and repeated ``n`` times, then its sample's L response
        columns; and the target mask [rows, plen + L] (position t scores token t + 1: 1 where
        that token is a real response token)."""
        from rmr1_jax.sampling.sampler import left_pad

        n = self.spec.n
        pid, pmask = left_pad(prompt_ids, self.generator.pad_id, plen)
        pid, pmask = np.repeat(pid, n, axis=0), np.repeat(pmask, n, axis=0)
        L = tokens.shape[1]
        resp_mask = np.arange(L)[None, :] < lengths[:, None]
        ids = np.concatenate([pid, tokens], axis=1).astype(np.int32)
        attn = np.concatenate([pmask, resp_mask], axis=1).astype(np.int32)
        target_mask = np.zeros_like(attn)
        target_mask[:, plen - 1:plen - 1 + L] = resp_mask  # position t scores token t+1
        return {"input_ids": ids, "attention_mask": attn}, target_mask

    def _logprob_columns(self, params, rows: dict, plans, plen: int, sampler_lp: np.ndarray, lengths: np.ndarray):
        """``(reference log-probs, old-policy log-probs, seconds of the first, of the second)``,
        the log-probs [rows, plen + L] float32 (zeros where not computed): the reference's, on
        the rows the updates train on, only when the loss has a KL term; the old policy's per
        ``spec.old_logprobs``, recomputed with ``params`` on those rows or the sampler's own."""
        spec = self.spec
        shape, L = rows["input_ids"].shape, sampler_lp.shape[1]
        need = np.concatenate([keep for _, keep, _ in plans])  # rows the updates train on
        sub = {k: v[need] for k, v in rows.items()}
        t1 = time.perf_counter()
        ref_lp = np.zeros(shape, np.float32)
        if spec.uses_reference():
            ref_lp[need] = self._logprobs(self.ref_params, sub, plen, lengths[need])
        t_ref = time.perf_counter() - t1
        old_lp = np.zeros(shape, np.float32)
        if spec.old_logprobs == "recompute":
            old_lp[need] = self._logprobs(params, sub, plen, lengths[need])
        else:
            old_lp[:, plen - 1:plen - 1 + L] = sampler_lp
        t_old = time.perf_counter() - t1 - t_ref
        return ref_lp, old_lp, t_ref, t_old

    def _queue_updates(self, full: dict, plans) -> None:
        """Queues the mini-batch of each planned update (:meth:`_plan_updates`) out of the
        step's rows ``full``, ``ppo_epochs`` times over."""
        batches = []
        for rows_idx, keep, count in plans:
            b = {k: v[rows_idx] for k, v in full.items()}
            if count is not None:
                b["response_mask"][len(keep):] = 0  # filler rows: in the shape, not in the loss
                b["count_share"] = np.full((len(rows_idx),), count / len(rows_idx), np.float32)
            batches.append(b)
        for _ in range(self.spec.ppo_epochs):
            self.queue.extend(batches)

    def _rollout_metrics(self, rewards, adv, lengths, finished, counts: dict, n_trained: int,
                         t_gen: float, t_reward: float, t_ref: float, t_old: float) -> dict:
        """The step's metrics, over every process's rows (each process holds its own; process 0
        alone logs them): the reward's own ``counts`` ({name: (numerator, denominator)}) summed
        over processes and divided."""
        names = sorted(counts)
        totals = agree_sum([len(rewards), rewards.sum(), np.sum(~finished), lengths.sum(), np.sum(adv == 0),
                            n_trained] + [v for k in names for v in counts[k]])
        rows_all, reward_sum, truncated, gen_tokens, zero_adv, trained = map(float, totals[:6])
        own = {k: float(totals[6 + 2 * i]) / max(float(totals[7 + 2 * i]), 1e-9) for i, k in enumerate(names)}
        return {
            "reward_mean": reward_sum / rows_all, **own, "truncated_rate": truncated / rows_all,
            "response_length": gen_tokens / rows_all,
            "rollout_tokens_per_s": gen_tokens / max(t_gen, 1e-9), "time_rollout_s": t_gen,
            "time_reward_s": t_reward, "time_reference_s": t_ref, "time_old_logprobs_s": t_old,
            "zero_advantage_rate": zero_adv / rows_all, "trained_rows_rate": trained / rows_all,
            **{f"rollout_{k}": v for k, v in self._gen_stats.items()},
            **grpo_math.length_quantiles(gather_rows(lengths)),  # what `rmr1 plan` reads back
        }

    def _prompt_index(self, k: int) -> np.ndarray:
        """Each of this process's ``k`` prompts' index in the one-process rollout step, which
        keys its samples (so they depend neither on the process count, nor on where the mesh
        puts the rows, nor on how the step is split into generator calls). The prompt stream
        (:func:`rmr1_jax.train.grpo.prompt_stream`) deals each update's mini-batch: this
        process's ``j``-th prompt of update ``u`` is the one-process step's prompt
        ``u * mb * process_count + process_index * mb + j`` (``mb`` prompts per process and
        update)."""
        u, j = np.divmod(np.arange(k), self.mb)
        return (u * self.mb * jax.process_count() + jax.process_index() * self.mb + j).astype(np.int32)

    def _plan_updates(self, adv: np.ndarray, target_mask: np.ndarray):
        """One (row indices, trained rows, count or None) per update. With
        ``skip_zero_advantage`` in effect, an update trains on its rows with a non-zero
        advantage, padded with left-out rows (masked) to the next quarter of the mini-batch,
        and carries the loss aggregation's count over all its rows."""
        spec = self.spec
        rows_per_mb = self.mb * spec.n
        n = adv.shape[0]
        spans = [np.arange(i, min(i + rows_per_mb, n)) for i in range(0, n, rows_per_mb)]
        unit = next((rows_per_mb // q for q in (4, 2) if rows_per_mb % q == 0
                     and (rows_per_mb // q) % self.row_multiple == 0), rows_per_mb)
        if not (spec.skips_zero_advantage() and unit < rows_per_mb):
            return [(idx, idx, None) for idx in spans]
        keeps = [idx[adv[idx] != 0] for idx in spans]
        # every process must feed updates of the same shape
        sizes = agree_max([min(len(idx), max(unit, -(-len(k) // unit) * unit)) for idx, k in zip(spans, keeps)])
        agg = grpo_math.AGGREGATIONS[spec.loss_agg]
        plans = []
        for idx, keep, size in zip(spans, keeps, sizes):
            fill = idx[adv[idx] == 0][: int(size) - len(keep)]
            count = float(agg(np.zeros(target_mask[idx].shape, np.float32), target_mask[idx].astype(np.float32))[1])
            plans.append((np.concatenate([keep, fill]), keep, count))
        return plans


class VerdictReward:
    """Stage 2's reward of a judge in training: a record is a judge prompt (and, with
    ``spec.both_orders``, its A/B-swapped twin, the winner flipped). A judgment is right when
    it finished with the right verdict (not: no verdict, the wrong one, or cut off at the
    budget). ``spec.reward``:

    - ``verdict``: a right judgment earns ``spec.reward_correct``, any other
      ``spec.reward_wrong``;
    - ``consistency`` (J1's, needs ``both_orders``): a judgment earns ``spec.reward_correct``
      only when it is right and its twin, the same pair judged in the other order, is right
      too; otherwise ``spec.reward_wrong``. Twins are paired by sample index: sample ``k`` of
      the pair's first order with sample ``k`` of its swapped order (the ``n`` samples of a
      prompt are independent draws, so any fixed one-to-one matching is as good; this one
      needs no extra randomness), and both get the same reward.

    With ``both_orders`` the share of such twin samples right in both orders is logged as
    ``consistent_right_rate``, whichever the reward, so the two can be compared."""

    def __init__(self, spec):
        self.spec = spec
        self.prompts_per_record = 2 if spec.both_orders else 1
        if spec.reward == "consistency" and not spec.both_orders:
            raise ValueError("grpo.reward=consistency needs grpo.both_orders=true (a judgment is rewarded with "
                             "its twin in the other A/B order)")

    def expand(self, record) -> list[tuple]:
        """``[(prompt token ids, winner)]`` of a drawn record: the prompt and, with
        ``both_orders``, its swapped twin right after it (so rows of prompts ``2i`` and
        ``2i + 1`` are the two orders of one pair)."""
        from rmr1_jax.ab_positions import flip

        w = record["winner"].decode() if isinstance(record["winner"], bytes) else record["winner"]
        out = [(record["input_ids"], w)]
        if self.spec.both_orders:
            out.append((record["input_ids_swapped"], flip(w)))
        return out

    def __call__(self, winners, texts, finished, opened) -> tuple[np.ndarray, dict]:
        """``(rewards [rows], counts)``, row ``j`` sample ``j % n`` of prompt ``j // n`` (with
        ``both_orders``, prompts ``2i`` and ``2i + 1`` the two orders of pair ``i``);
        ``counts``: the verdict accuracy, the format failures (no verdict, or cut off) and,
        with ``both_orders``, the twin samples right in both orders, as ``(numerator,
        denominator)``."""
        from rmr1_jax.text.verdict import judgment_reward

        n = self.spec.n
        right = np.array([finished[j] and judgment_reward(texts[j], winners[j // n], opened[j // n]) > 0
                          for j in range(len(texts))], bool)
        failed = sum(not f or _no_verdict(t, opened[j // n]) for j, (f, t) in enumerate(zip(finished, texts)))
        rows = float(len(texts))
        counts = {"verdict_accuracy": (float(right.sum()), rows), "format_failure_rate": (float(failed), rows)}
        rewarded = right
        if self.spec.both_orders:
            both = twins_right(right, n)
            counts["consistent_right_rate"] = (float(both.sum()), float(both.size))
            if self.spec.reward == "consistency":
                rewarded = np.repeat(both[:, None, :], 2, axis=1).reshape(-1)
        rewards = np.where(rewarded, self.spec.reward_correct, self.spec.reward_wrong).astype(np.float32)
        return rewards, counts


def twins_right(right: np.ndarray, n: int) -> np.ndarray:
    """[pairs, n] bool: whether sample ``k`` of a pair is right in both A/B orders, from
    ``right`` [rows] (row ``j`` sample ``j % n`` of prompt ``j // n``; prompts ``2i`` and
    ``2i + 1`` the two orders of pair ``i``). Sample ``k`` of one order is paired with sample
    ``k`` of the other."""
    right = np.asarray(right, bool)
    if right.size % (2 * n):
        raise ValueError(f"{right.size} rows are not whole pairs of prompts with {n} samples each")
    r = right.reshape(-1, 2, n)
    return r[:, 0, :] & r[:, 1, :]


def free_kv_pool(generator) -> None:
    """Give back the generation engine's device KV pool after a call
    (:meth:`~rmr1_jax.sampling.engine.Engine.release`): held through GRPO's log-prob passes and
    updates, it would take the memory they need. The next rollout allocates it again (cheap next
    to the rollout). Anything else (the static sampler) holds nothing between calls."""
    release = getattr(generator, "release", None)
    if release is not None:
        release()


def _no_verdict(text: str, opened_thinking: bool) -> bool:
    from rmr1_jax.text.verdict import parse_verdict

    return parse_verdict(text, opened_thinking) is None
