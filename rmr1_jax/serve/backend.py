"""The model behind ``rmr1 serve``: a generative judge or a scalar reward model, and the batched
calls the routes make of it (:meth:`Backend.run`, one per batch of requests)."""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Sequence

from rmr1_jax.errors import UserError

GENERATIVE, SCALAR = "generative", "scalar"


@dataclasses.dataclass
class Completion:
    texts: list[str]
    finished: list[bool]
    prompt_tokens: int
    completion_tokens: int


class Backend:
    """One model, loaded once. Keys of :meth:`run`:

    * ``("judge", max_new_tokens)``: units are (prompt, response_a, response_b) triples; results
      :func:`~rmr1_jax.inference.judge.judge_pairs`' dicts (one order each);
    * ``("chat", n, temperature, top_p, top_k, max_tokens, stop)``: units are message lists;
      results :class:`Completion` (``n`` samples each), through the generation engine;
    * ``("score_text",)``: texts scored as they are (a scalar model);
    * ``("score_pair",)``: (prompt, response) pairs scored as a conversation (a scalar model)."""

    def __init__(self, path: str, mesh, *, tokenizer_path: str | None = None, max_slots: int = 32,
                 batch_size: int = 16, max_length: int = 4096, prompt_variant: str | None = None,
                 system_file: str | None = None, user_file: str | None = None):
        from rmr1_jax.checkpoint.introspect import checkpoint_head

        self.path = path
        head, _ = checkpoint_head(path)
        if head == "scalar":
            from rmr1_jax.inference.reward import load_reward_model

            self.kind = SCALAR
            self.scorer = load_reward_model(path, mesh, tokenizer_path=tokenizer_path, batch_size=batch_size,
                                            max_length=max_length)
            self.tokenizer = self.scorer.tokenizer
        elif head == "lm":
            from rmr1_jax.inference.loading import load_judge
            from rmr1_jax.sampling.engine import Engine, EngineConfig, shard_count

            self.kind = GENERATIVE
            self.judge = load_judge(path, mesh, tokenizer_path=tokenizer_path, prompt_variant=prompt_variant,
                                    system_file=system_file, user_file=user_file)
            self.tokenizer = self.judge.tokenizer
            tok = self.tokenizer
            self.judge.sampler = Engine(self.judge.model, eos_ids=tok.eos_ids, pad_id=tok.pad_id, mesh=mesh,
                                        config=EngineConfig(max_slots=max(1, -(-max_slots // shard_count(mesh)))))
        else:
            raise UserError(f"{path}: a {head!r} head; rmr1 serve takes a causal LM (a judge) or a scalar reward model")
        self.batch = batch_size
        self._draws = 0  # generation calls so far: each samples with its own key

    def run(self, key: Hashable, units: list) -> Sequence[Any]:
        kind = key[0]
        if kind == "judge":
            from rmr1_jax.inference.judge import judge_pairs

            return judge_pairs(self.judge, units, max_new_tokens=key[1], batch_size=max(self.batch, len(units)))
        if kind == "chat":
            return self._chat(units, *key[1:])
        if kind == "score_text":
            return self.scorer.score_texts(units)
        if kind == "score_pair":
            return self.scorer.score([p for p, _ in units], [r for _, r in units])
        raise ValueError(f"unknown call {kind!r}")

    def _chat(self, conversations, n, temperature, top_p, top_k, max_tokens, stop) -> list[Completion]:
        from rmr1_jax.sampling.sampler import SamplingParams

        tok, judge = self.tokenizer, self.judge
        ids = [tok.encode(tok.apply_chat_template(list(c), add_generation_prompt=True)) for c in conversations]
        sp = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, n=n,
                            stop_strings=tuple(stop))
        import jax

        self._draws += 1
        g = judge.sampler.generate(judge.params, ids, sp, rng=jax.random.key(self._draws), tokenizer=tok,
                                   shared=True)
        out = []
        for i, p in enumerate(ids):
            rows = range(i * n, (i + 1) * n)
            out.append(Completion([g.texts[r] for r in rows], [bool(g.finished[r]) for r in rows], len(p),
                                  int(sum(int(g.lengths[r]) for r in rows))))
        return out
