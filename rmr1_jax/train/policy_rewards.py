"""The reward of a policy trained with GRPO (``rmr1 policy-grpo``): a trained judge's pairwise
verdicts, a scalar reward model's score, a program's check of the answer, or a model's reward
with the check mixed in.

``policy_reward.kind`` picks the model:

* ``judge``: a generative pairwise judge (RM-R1's, trained here or any HF judge). A prompt's
  ``n`` samples are turned into one reward each by a scheme of
  :mod:`rmr1_jax.inference.group_rewards` (``reference``: each sample against the row's
  ``reference`` answer; ``round_robin``; ``knockout``), every match judged in both A/B orders,
  a position-inconsistent match a tie. Each round's matches of the whole rollout step go to the
  judge's generation engine in one call (each process judges its own samples). With
  ``verdict: prob`` a match is soft: each side earns the probability that it is the better one
  (P([[A]]) against P([[B]]) where each judgment wrote its verdict, read in one teacher-forced
  pass, averaged over the two orders), so a reward separates samples a tie would lump together.
* ``scalar``: a Bradley-Terry reward model's score of the conversation (the prompt, then the
  sample as the assistant's reply).
* ``check``: no model: 1 when the sample's answer passes the check against the row's
  ``answer``, else 0 (the verifiable reward, the ceiling a learned reward is measured against).

``policy_reward.check`` names the check (``last_number``: the last number in the sample equals
the last number in ``answer``; ``exact``: the whole sample equals ``answer``, whitespace and
case aside; ``oracle``: the synthetic tasks' own check of the prompt's instruction,
:func:`rmr1_jax.worlds.oracle.oracle_check`, no ``answer`` needed); ``check_weight`` mixes it
into a model's reward (``reward + weight * passed``). The same check gives the held-out
accuracy (over the rows it applies to).

``kind: chance`` is the control of a judge at chance: every judgment's verdict is a fair coin
(:func:`coin_verdict`, keyed by ``seed`` and the judgment), run through the same scheme (so
half the matches are position-inconsistent ties).

GRPO normalizes the rewards within each prompt's group, so only their differences within a
group matter. A sample cut off at ``grpo.max_response_tokens`` is scored as it stands.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Literal

import numpy as np

from rmr1_jax.errors import ConfigError
from rmr1_jax.paths import path_field

KINDS = ("judge", "scalar", "check", "chance")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclasses.dataclass
class PolicyRewardSpec:
    kind: Literal["judge", "scalar", "check", "chance"] = "judge"
    ckpt: str | None = path_field()  # the judge or reward model: an HF directory or an Orbax checkpoint
    tokenizer: str | None = path_field()  # its tokenizer files, when not the checkpoint's own
    scheme: Literal["reference", "round_robin", "knockout"] = "reference"  # a judge's pairwise scheme
    # a judge's match: "letter" (1 win, 1/2 tie, 0 loss by the two verdicts) or "prob" (the
    # probability each side is the better one, read at the verdicts in one teacher-forced pass)
    verdict: Literal["letter", "prob"] = "letter"
    # the judge's generation: greedy, at most this many tokens a judgment, this many sequences
    # decoding at once per data-parallel shard (a reward model: rows per forward)
    max_new_tokens: int = 512
    batch_size: int = 32
    # the judge's prompt (default: what its checkpoint's run config names, else the built-in)
    prompt_variant: str | None = None
    system_file: str | None = path_field()
    user_file: str | None = path_field()
    check: Literal["last_number", "exact", "oracle"] = "last_number"
    check_weight: float = 0.0  # a model's reward + check_weight x (1 when the check passes)
    seed: int = 0  # the knockout brackets, kind: chance's coins

    def validate(self, where: str):
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: policy_reward.kind={self.kind!r} is not one of {list(KINDS)}")
        if self.kind in ("judge", "scalar") and not self.ckpt:
            raise ConfigError(f"{where}: policy_reward.kind={self.kind} needs policy_reward.ckpt (the "
                              f"{'judge' if self.kind == 'judge' else 'reward model'} checkpoint)")
        if self.verdict not in ("letter", "prob"):
            raise ConfigError(f"{where}: policy_reward.verdict={self.verdict!r} is not 'letter' or 'prob'")
        if self.check not in CHECKS:
            raise ConfigError(f"{where}: policy_reward.check={self.check!r} is not one of {list(CHECKS)}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: policy_reward.{name} must be at least 1, not {getattr(self, name)}")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``-12``, ``3.5``), normalized (``3.50`` -> ``3.5``,
    ``07`` -> ``7``), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    v = float(found[-1])
    return str(int(v)) if v == int(v) else repr(v)


def _exact(text: str) -> str:
    return " ".join(text.split()).lower()


def _same(norm):
    def check(text: str, target) -> bool | None:
        if target.answer is None:
            return None
        got = norm(text)
        return got is not None and got == norm(target.answer)

    return check


def _oracle(text: str, target) -> bool:
    from rmr1_jax.worlds.oracle import oracle_check

    try:
        return oracle_check(target.prompt[-1]["content"], text)
    except ValueError as e:
        from rmr1_jax.errors import DataError

        raise DataError(f"policy_reward.check=oracle: {e}") from None


# name -> check(sample text, PolicyTarget) -> passed, or None where it does not apply (no answer)
CHECKS = {"last_number": _same(last_number), "exact": _same(_exact), "oracle": _oracle}


def check_answer(check: str, text: str, target) -> bool | None:
    """Whether ``text`` passes ``check`` for ``target`` (a :class:`PolicyTarget`); None where
    the check does not apply (``last_number`` and ``exact`` on a row without an ``answer``)."""
    return CHECKS[check](text, target)


def _content_key(value) -> int:
    """A 63-bit key of a JSON-able value (a knockout bracket's seed: the same prompt gets the same
    bracket on any process count)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(json.dumps(value).encode(), digest_size=8).digest(), "big") >> 1


def coin_verdict(seed: int, triple) -> str:
    """A judge at chance: ``"A"`` or ``"B"`` by a fair coin keyed by ``seed`` and the judgment's
    (prompt, response A, response B), so a run draws the same coins on any process count and
    after a resume."""
    return "AB"[_content_key([seed, *triple]) & 1]


@dataclasses.dataclass
class PolicyTarget:
    """What a policy prompt's samples are rewarded against (from its record)."""

    prompt: list  # the conversation, {role, content} messages
    reference: str | None
    answer: str | None


def policy_target(record) -> PolicyTarget:
    def text(k):
        v = record[k]
        v = v.decode() if isinstance(v, bytes) else str(v)
        return v or None

    return PolicyTarget(json.loads(text("prompt")), text("reference"), text("answer"))


class PolicyReward:
    """A rollout source's reward (:class:`~rmr1_jax.train.rollouts.RolloutSource`) for a policy:
    ``spec.kind``'s reward of each sample, plus ``spec.check_weight`` times its check.

    ``scorer``: the loaded judge (:class:`~rmr1_jax.inference.loading.LoadedJudge`) or reward
    model (:class:`~rmr1_jax.inference.reward.RewardScorer`); None for ``kind: check``."""

    prompts_per_record = 1

    def __init__(self, spec: PolicyRewardSpec, n: int, scorer=None):
        self.spec, self.n, self.scorer = spec, n, scorer

    def expand(self, record) -> list[tuple]:
        return [(record["input_ids"], policy_target(record))]

    def __call__(self, targets, texts, finished, opened) -> tuple[np.ndarray, dict]:
        """``(rewards [rows], counts)``, row ``j`` a sample of prompt ``j // n``; ``counts``
        ({name: (numerator, denominator)}, summed over processes before dividing): the check's
        accuracy where the rows have answers, the model's mean reward, and a judge's calls and
        tie rates."""
        del finished, opened
        spec, n = self.spec, self.n
        checked = [check_answer(spec.check, x, targets[j // n]) for j, x in enumerate(texts)]
        passed = np.array([bool(c) for c in checked], bool)
        counts = {"check_accuracy": (float(passed.sum()), float(sum(c is not None for c in checked)))}
        if spec.kind == "check":
            return passed.astype(np.float32), counts
        if spec.kind in ("judge", "chance"):
            model_reward, judged = self._judge(targets, texts)
            counts.update(judged)
        else:
            model_reward = self._scalar(targets, texts)
        counts["model_reward_mean"] = (float(model_reward.sum()), float(len(texts)))
        return (model_reward + spec.check_weight * passed).astype(np.float32), counts

    def _judge(self, targets, texts) -> tuple[np.ndarray, dict]:
        from rmr1_jax.inference.group_rewards import score_groups
        from rmr1_jax.inference.judge import judge_pairs
        from rmr1_jax.train.rollouts import free_kv_pool

        spec, n, judge = self.spec, self.n, self.scorer
        if spec.scheme == "reference" and any(t.reference is None for t in targets):
            from rmr1_jax.errors import DataError

            raise DataError("policy_reward.scheme=reference: every prompt row needs a 'reference' answer "
                            "(or choose round_robin or knockout)")

        def judge_fn(triples):
            if spec.kind == "chance":
                return [coin_verdict(spec.seed, t) for t in triples]
            prob = spec.verdict == "prob"
            rows = judge_pairs(judge, triples, max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                               shared=False, prob=prob)
            return [(r["verdict"], r["prob_a"]) if prob else r["verdict"] for r in rows]

        groups = score_groups(spec.scheme, [t.prompt for t in targets],
                              [texts[g * n:(g + 1) * n] for g in range(len(targets))], judge_fn,
                              references=[t.reference for t in targets] if spec.scheme == "reference" else None,
                              seed=spec.seed, group_keys=[_content_key(t.prompt) for t in targets])
        free_kv_pool(getattr(judge, "sampler", None))  # the log-prob passes and updates that follow need the memory
        import jax

        matches = float(groups.matches)
        return np.concatenate(groups.rewards).astype(np.float32), {
            "judge_calls_per_prompt": (float(groups.judge_calls), float(len(targets))),
            # summed over processes: every process's calls over 1 (each process adds 1 / P)
            "judge_calls_per_step": (float(groups.judge_calls), 1.0 / jax.process_count()),
            "judge_inconsistent_rate": (float(groups.inconsistent), matches),
            "judge_no_verdict_rate": (float(groups.no_verdict), matches)}

    def _scalar(self, targets, texts) -> np.ndarray:
        """The reward model's score of each sample as its prompt's reply. The model scores
        every process's rows together (a batch of the global rows, sharded over the mesh), so
        each process gathers the token rows of all and keeps its own scores."""
        import jax

        from rmr1_jax.inference.rows import conversation
        from rmr1_jax.parallel.hostlocal import agree_max, gather_rows

        scorer, n = self.scorer, self.n
        rows = [scorer.tokenizer.encode(scorer.render(conversation(targets[j // n].prompt, x)))
                for j, x in enumerate(texts)]
        if jax.process_count() == 1:
            return np.asarray(scorer.score_ids(rows), np.float32)
        width = int(agree_max([max(len(r) for r in rows)])[0])
        block = np.full((len(rows), width), -1, np.int32)
        for i, r in enumerate(rows):
            block[i, :len(r)] = r
        every = [[int(t) for t in r if t >= 0] for r in gather_rows(block)]
        scores = np.asarray(scorer.score_ids(every), np.float32)
        start = jax.process_index() * len(rows)
        return scores[start:start + len(rows)]
