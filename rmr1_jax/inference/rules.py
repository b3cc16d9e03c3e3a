"""Rule scoring with our own judge LM: for each (prompt, response) and each rule, one
teacher-forced forward pass over a judge prompt, no sampling.

::

    scorer, rules = load_rule_scorer("runs/judge/checkpoints", mesh)   # and the built-in rule pool
    scorer = RuleScorer(model, params, tokenizer, mesh)          # or from an "lm"-head DecoderLM
    scores, relevance = score_items(scorer, items, rules)        # [N, R] each
    score_file(scorer, rules, "in.jsonl", "out.jsonl")           # what `rmr1 rules score` does

Definitions, read from the next-token distribution at the answer position (the first
generated position, after the generation prompt) with the three answer tokens y, n, i:

* ``score = P(y) - P(n)`` in [-1, 1], RAMO's rule score;
* ``relevance = 1 - P(i)`` in [0, 1]. RAMO never released how its relevance was computed; this
  is our definition: the judge's probability that the rule does not declare itself irrelevant.

``normalize=False`` (the default, as RAMO scores) takes P over the whole vocabulary, so mass
on other tokens counts as neither Yes nor No and as relevant; ``normalize=True`` renormalizes
over the three answer tokens first (then ``relevance = P(y) + P(n)``).

The answer tokens are found through the tokenizer: each word is appended to a rendered judge
prompt (after a space unless the prompt ends in whitespace, e.g. the generation prompt's
newline) and must add exactly one token to the prompt's tokens.

Prefix sharing: an item's judge prompts for all rules are tokenized, and their longest common
token prefix (the instruction and conversation, when the template puts the rule last) runs
once, in one call, into a KV cache; each rule's remaining tokens then run as a continuation
over a copy of that cache (the prefix cache broadcast over the rules' rows). An item's prefix
runs once whatever its number of rules: the items whose rules fit a batch go into batches of
whole items (one prefix call, one continuation call), and an item with more rules than a
batch holds has its prefix run once and kept on the device for its continuation calls. The
token sequences are the same as without sharing, so the scores equal a full forward pass per
whole prompt. ``scorer.stats`` counts the calls, the prefixes run and the padding rows.

Batching: ``batch_size`` (item, rule) rows per continuation call (items by length, each item's
rules shortest first; a call's empty rows filled with copies of its first row), sharded over the
mesh's (data, fsdp) axes; widths are multiples of ``bucket`` tokens (short rule suffixes: of
``bucket // 4``) and prefix counts powers of two, so few shapes compile. Several processes (a multi-host job): every process passes the same items and rules
and gets every score back, supplying the rows of each batch its own devices hold (``batch_size``
must be a multiple of the process count); :func:`score_file` reads which rows are done on
process 0, which alone writes, and a failure on any process stops every process.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rmr1_jax.data.readers import FileStats
from rmr1_jax.errors import DataError, UserError
from rmr1_jax.inference.rows import read_rule_rows
from rmr1_jax.models.decoder import init_cache
from rmr1_jax.models.layers import dtype_of, matmul_f32
from rmr1_jax.models.params import unstack_layers
from rmr1_jax.parallel.hostlocal import fetch, to_global_shared
from rmr1_jax.parallel.sharding import activation_sharding

DEFAULT_TEMPLATE = (
    "You check conversations that will train an assistant to be safe and helpful.\n"
    "Decide whether the assistant's response in the conversation below follows the rule given "
    "after it. Answer exactly Yes if the response follows the rule, No if it does not, or "
    "Irrelevant if the conversation has nothing to do with the rule.\n\n"
    "[Conversation]\n{prompt}\n\nAssistant: {response}\n\n"
    "[Rule]\n{rule}\n\n"
    "Answer with one word."
)
PLACEHOLDERS = ("{rule}", "{prompt}", "{response}")
_FIELD = re.compile(r"\{(rule|prompt|response)\}")
OUTPUT_FIELDS = ("scores", "relevance", "line")


def prompt_text(prompt) -> str:
    """``{prompt}``'s text: a string as it is; a message list as ``Role: content`` paragraphs."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def fill(template: str, rule: str, prompt, response: str) -> str:
    """The template with its placeholders replaced in one pass (braces inside the inserted
    texts are left alone)."""
    values = {"rule": rule, "prompt": prompt_text(prompt), "response": response}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all ``seqs`` share, leaving each at least one token."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


class RuleScorer:
    """A judge LM with its tokenizer and judge template: batched (item, rule) scoring.

    Args:
      model, params: a ``DecoderLM`` with an ``"lm"`` head and its parameters (on ``mesh``).
      tokenizer: a :class:`~rmr1_jax.text.tokenizer_base.Tokenizer`.
      mesh: the device mesh whose (data, fsdp) axes the rows are sharded over.
      template: the judge prompt with ``{rule}``, ``{prompt}``, ``{response}`` (default
        :data:`DEFAULT_TEMPLATE`).
      chat_template: render the filled template as one user message through the tokenizer's
        chat template with the generation prompt; ``False``: tokenize it as it is.
      answers: the (yes, no, irrelevant) answer words.
      batch_size: (item, rule) rows per forward pass.
      share_prefix: run each item's common prefix once (see the module docstring).
      normalize: renormalize over the three answer tokens (see the module docstring).
      max_length: the longest judge prompt in tokens (default: the model's
        ``max_position_embeddings``).
      bucket: prompt and prefix widths are multiples of this many tokens (suffixes of a quarter).
    """

    def __init__(self, model, params, tokenizer, mesh, *, template: str | None = None, chat_template: bool = True,
                 answers: Sequence[str] = ("Yes", "No", "Irrelevant"), batch_size: int = 32,
                 share_prefix: bool = True, normalize: bool = False, max_length: int | None = None,
                 bucket: int = 32):
        cfg = model.cfg
        if cfg.head != "lm":
            raise UserError(f"rule scoring needs a causal LM ('lm' head); this model has a {cfg.head!r} head")
        for name, v in (("batch_size", batch_size), ("bucket", bucket)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"{name}={v!r} must be a positive integer")
        if batch_size % jax.process_count():
            raise UserError(f"batch_size={batch_size} must be a multiple of the process count "
                            f"({jax.process_count()}): every process's devices hold an equal share of every batch")
        self.template = DEFAULT_TEMPLATE if template is None else template
        missing = [p for p in PLACEHOLDERS if p not in self.template]
        if missing:
            raise UserError(f"the rule-scoring template lacks the placeholder(s) {', '.join(missing)}")
        if len(answers) != 3:
            raise UserError(f"answers must be three words (yes, no, irrelevant), got {list(answers)}")
        self.tokenizer, self.mesh, self.chat_template = tokenizer, mesh, chat_template
        self.batch_size, self.share_prefix, self.normalize, self.bucket = batch_size, share_prefix, normalize, bucket
        self.max_length = int(max_length or cfg.max_position_embeddings)
        self._vocab = cfg.vocab_size
        self.answer_ids = self._answer_ids(tuple(answers))
        # continuations need per-layer cache arrays: the unrolled layer stack, no remat
        if cfg.scan_layers or cfg.remat_policy != "none":
            if cfg.scan_layers:
                params = jax.jit(lambda p: unstack_layers(p, cfg.num_hidden_layers))(params)
            model = type(model)(dataclasses.replace(cfg, scan_layers=False, remat_policy="none"))
        self.model, self.params = model, params
        self._full = jax.jit(self._full_impl)
        self._prefix = jax.jit(self._prefix_impl, static_argnames=("length",))
        self._suffix = jax.jit(self._suffix_impl)
        self.stats = collections.Counter()

    def render(self, rule: str, prompt, response: str) -> str:
        """The judge prompt's text for one (rule, prompt, response), as it is tokenized."""
        text = fill(self.template, rule, prompt, response)
        if not self.chat_template:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)

    def _answer_ids(self, answers: tuple[str, ...]) -> np.ndarray:
        probe = self.render("Do not insult the user.", "Is the sky blue?", "Yes, on a clear day.")
        base = self.tokenizer.encode(probe)
        sep = "" if probe[-1:].isspace() else " "
        ids = []
        for word in answers:
            full = self.tokenizer.encode(probe + sep + word)
            if len(full) != len(base) + 1 or full[:len(base)] != base:
                raise UserError(f"answer word {sep + word!r} is not one token after the judge prompt "
                                f"(it adds {len(full) - len(base)} tokens); choose single-token answer words "
                                f"(rmr1 rules score --answers YES NO IRRELEVANT)")
            ids.append(full[-1])
        if len(set(ids)) != 3:
            raise UserError(f"answer words {list(answers)} do not give three different tokens")
        if max(ids) >= self.model_vocab():
            raise UserError(f"answer token id {max(ids)} is outside the model's vocabulary; is this its tokenizer?")
        return np.asarray(ids, np.int32)

    def model_vocab(self) -> int:
        return self._vocab

    def fingerprint(self, rules: Sequence[str], model: str | None = None) -> dict:
        """What the scores depend on besides the rows (for a resumed output file): the model
        (``model``, see :func:`~rmr1_jax.checkpoint.identity.checkpoint_identity`; None: not
        known, not compared), the rules,
        the judge template and the chat template it is rendered with, the answer tokens."""
        from rmr1_jax.checkpoint.identity import text_digest

        chat = getattr(self.tokenizer, "chat_template", None) if self.chat_template else None
        return {**({"model": model} if model else {}), "rules": text_digest("\n".join(rules)), "rule_count": len(rules),
                "template": text_digest(self.template), "chat_template": self.chat_template,
                "chat_template_text": text_digest(chat), "answer_ids": [int(x) for x in self.answer_ids],
                "normalize": self.normalize}

    def _answer_probs(self, params, hidden_btd, last_b, answer_ids):
        """[B, 3] full-vocabulary probabilities of the answer tokens at each row's ``last``."""
        cfg = self.model.cfg
        h_bd = jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]
        head = params["embed_tokens"].T if cfg.tie_word_embeddings else params["lm_head"]
        logits_bv = matmul_f32("bd,dv->bv", h_bd, head.astype(dtype_of(cfg.dtype)))
        return jnp.exp(jax.nn.log_softmax(logits_bv, axis=-1)[:, answer_ids])

    def _full_impl(self, params, ids, mask, last, answer_ids):
        hidden = self.model.apply({"params": params}, ids, attention_mask=mask, return_hidden=True)
        return self._answer_probs(params, hidden, last, answer_ids)

    def _prefix_impl(self, params, pre_ids, pre_mask, *, length: int):
        """The KV cache of the prefixes [P, Lp], room for ``length`` tokens in all."""
        cache = init_cache(self.model.cfg, pre_ids.shape[0], length)
        _, cache = self.model.apply({"params": params}, pre_ids, attention_mask=pre_mask, cache=cache,
                                    cache_index=0, return_hidden=True)
        return cache

    def _suffix_impl(self, params, cache, suf_ids, suf_mask, pre_row, last, answer_ids):
        """The answer probabilities of each row's continuation over its prefix's cache."""
        lp = cache["valid"].shape[1] - suf_ids.shape[1]
        cache = jax.tree.map(lambda x: jnp.take(x, pre_row, axis=0), cache)  # one copy per rule row
        hidden, _ = self.model.apply({"params": params}, suf_ids, attention_mask=suf_mask, cache=cache,
                                     cache_index=lp, return_hidden=True)
        return self._answer_probs(params, hidden, last, answer_ids)

    def score(self, items: Sequence[tuple], rules: Sequence[str], names: Sequence[str] | None = None):
        """``(scores, relevance)``, float32 [N, R] each, for ``items`` of (prompt, response)
        (prompt a string or a message list) and rule texts. ``names`` label items in errors."""
        rules = list(rules)
        if not rules:
            raise UserError("no rules to score")
        names = list(names) if names is not None else [f"item {i}" for i in range(len(items))]
        seqs = [self._item_ids(p, r, rules, name) for (p, r), name in zip(items, names)]
        probs = np.zeros((len(items), len(rules), 3), np.float32)
        # items by length, and each item's rules shortest suffix first: a batch's rows pad little
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1][0]))
        rows = {i: [(i, j) for j in sorted(range(len(rules)), key=lambda j: len(seqs[i][1][j]))] for i in order}
        if not self.share_prefix:
            flat = [r for i in order for r in rows[i]]
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start:start + self.batch_size]
                probs[tuple(zip(*chunk))] = self._full_batch(seqs, chunk)
        else:
            batch: list = []  # whole items' rows
            for i in order:
                if len(rows[i]) > self.batch_size:  # its prefix once, its rules over several calls
                    self._shared_calls(seqs, rows[i], probs)
                    continue
                if len(batch) + len(rows[i]) > self.batch_size:
                    self._shared_calls(seqs, batch, probs)
                    batch = []
                batch = batch + rows[i]
            if batch:
                self._shared_calls(seqs, batch, probs)
        if self.normalize:
            probs = probs / np.maximum(probs.sum(-1, keepdims=True), np.finfo(np.float32).tiny)
        return probs[..., 0] - probs[..., 1], 1.0 - probs[..., 2]

    def _item_ids(self, prompt, response, rules, name):
        """(prefix ids, [suffix ids per rule]) of one item; with ``share_prefix=False`` the
        prefix is empty and each suffix is the whole prompt."""
        seqs = self.tokenizer.encode_batch([self.render(rule, prompt, response) for rule in rules])
        vocab = self.model_vocab()
        for j, s in enumerate(seqs):
            if len(s) > self.max_length:
                raise DataError(f"{name}, rule {j}: the judge prompt has {len(s)} tokens, more than the context "
                                f"of {self.max_length}")
            if s and max(s) >= vocab:
                raise DataError(f"{name}: token id {max(s)} is outside the model's vocabulary ({vocab})")
        n = common_prefix(seqs) if self.share_prefix else 0
        return seqs[0][:n], [s[n:] for s in seqs]

    def _width(self, n: int, short: bool = False) -> int:
        b = max(1, self.bucket // 4) if short else self.bucket
        return max(b, -(-n // b) * b)

    def _pad(self, seqs: list[list[int]], rows: int, width: int):
        ids = np.full((rows, width), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((rows, width), bool)
        for k, s in enumerate(seqs):
            ids[k, :len(s)] = s
            mask[k, :len(s)] = True
        return ids, mask

    def _call(self, fn, arrays: dict, *lead, **kw):
        """``fn(params, *lead, *arrays, **kw)``, the arrays placed over the mesh: every process
        builds the same whole batch and supplies the rows its own devices hold (wherever the
        mesh puts them)."""
        with activation_sharding(self.mesh):
            return fn(self.params, *lead, *to_global_shared(arrays, self.mesh).values(), **kw)

    def _run(self, fn, arrays: dict, n: int, *lead) -> np.ndarray:
        """The answer probabilities of the batch's first ``n`` rows, on every process."""
        return fetch(self._call(fn, arrays, *lead, answer_ids=self.answer_ids))[:n]

    def _full_batch(self, seqs, chunk):
        suf = [seqs[i][1][j] for i, j in chunk]
        suf += [suf[0]] * (self.batch_size - len(suf))
        ids, mask = self._pad(suf, self.batch_size, self._width(max(len(s) for s in suf)))
        last = np.asarray([len(s) - 1 for s in suf], np.int32)
        return self._run(self._full, {"ids": ids, "mask": mask, "last": last}, len(chunk))

    def _shared_calls(self, seqs, rows, probs):
        """The (item, rule) ``rows`` (whole items): their items' prefixes in one call, then their
        continuations ``batch_size`` rows a call over that cache, into ``probs``."""
        items = list(dict.fromkeys(i for i, _ in rows))
        slot = {i: k for k, i in enumerate(items)}
        pre = [seqs[i][0] for i in items]
        n_pre = -(-_pow2(len(items)) // jax.process_count()) * jax.process_count()  # a block per process
        pre_ids, pre_mask = self._pad(pre, n_pre, self._width(max(len(p) for p in pre)))
        width = self._width(max(len(seqs[i][1][j]) for i, j in rows), short=True)
        cache = self._call(self._prefix, {"pre_ids": pre_ids, "pre_mask": pre_mask}, length=pre_ids.shape[1] + width)
        self.stats["prefix_calls"] += 1
        self.stats["prefixes"] += len(items)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            full = chunk + [chunk[0]] * (self.batch_size - len(chunk))
            suf = [seqs[i][1][j] for i, j in full]
            suf_ids, suf_mask = self._pad(suf, self.batch_size, width)
            arrays = {"suf_ids": suf_ids, "suf_mask": suf_mask,
                      "pre_row": np.asarray([slot[i] for i, _ in full], np.int32),
                      "last": np.asarray([len(s) - 1 for s in suf], np.int32)}
            probs[tuple(zip(*chunk))] = self._run(self._suffix, arrays, len(chunk), cache)
            self.stats["suffix_calls"] += 1
            self.stats["padding_rows"] += self.batch_size - len(chunk)


def score_items(scorer: RuleScorer, items: Sequence[tuple], rules: Sequence[str]):
    """``(scores [N, R], relevance [N, R])`` float32 for (prompt, response) ``items``."""
    return scorer.score(items, rules)


def score_file(scorer: RuleScorer, rules: Sequence[str], in_path: str, out_path: str, *,
               model: str | None = None) -> FileStats:
    """Score every ``{"prompt", "response"}`` row of ``in_path`` against every rule into
    ``out_path``: one row per input row, its fields plus ``scores`` and ``relevance`` (one float
    per rule, in ``rules`` order) and ``line`` (its input line number). Every row is checked
    before anything is scored; an input without rows is an error. Resumable
    (:class:`~rmr1_jax.data.resumable.ResumableOutput`): lines already in ``out_path`` are
    skipped, the rest appended in input order, flushed and fsynced per batch (about
    ``batch_size`` rows of (item, rule) work). An output written for another input, or with
    other rules, templates or model (:meth:`RuleScorer.fingerprint`; ``model`` names the
    checkpoint), is an error, never overwritten. Several processes: each scores every remaining
    row; process 0 alone reads the output (it says which rows remain) and writes."""
    from rmr1_jax.data.resumable import ResumableOutput
    from rmr1_jax.parallel.agreement import agreed

    rules = list(rules)
    rows = agreed(read_rule_rows, in_path)

    def check_done(row, where):
        if len(row.get("scores") or ()) != len(rules):
            raise DataError(f"{where}: has {len(row.get('scores') or ())} scores for {len(rules)} rules; it "
                            f"was written with another rule pool (choose another output path)")

    with ResumableOutput(out_path, in_path, dict(rows), fingerprint=scorer.fingerprint(rules, model),
                         output_fields=OUTPUT_FIELDS, check_row=check_done) as out:
        todo = [r for r in rows if r[0] not in out.done]
        stats = FileStats(total=len(rows), skipped=len(rows) - len(todo))
        per_write = max(1, scorer.batch_size // len(rules)) if rules else 1
        for start in range(0, len(todo), per_write):
            chunk = todo[start:start + per_write]
            scores, rel = scorer.score([(r["prompt"], r["response"]) for _, r in chunk], rules,
                                       [f"{in_path}:{n}" for n, _ in chunk])
            if not (np.isfinite(scores).all() and np.isfinite(rel).all()):
                raise DataError(f"{in_path}:{chunk[0][0]}: the model gave non-finite rule scores")
            out.append({**{k: v for k, v in r.items() if k not in OUTPUT_FIELDS}, "scores": [float(x) for x in sc],
                        "relevance": [float(x) for x in q], "line": n} for (n, r), sc, q in zip(chunk, scores, rel))
            stats.written += len(chunk)
    return stats


def read_rules(path: str | None) -> list[str]:
    """The rule texts of a pool file (:func:`rmr1_jax.rules.pool.load_pool`; ``None``: the
    default pool), in pool order."""
    from rmr1_jax.rules.pool import load_pool

    return [r.text for r in load_pool(path)]


def load_rule_scorer(ckpt: str, mesh, *, rules_path: str | None = None, template_path: str | None = None,
                     tokenizer_path: str | None = None, chat_template: bool = True, batch_size: int = 16,
                     answers: Sequence[str] = ("Yes", "No", "Irrelevant")) -> tuple[RuleScorer, list[str]]:
    """The rule scorer of checkpoint ``ckpt`` (Orbax or HF causal LM, with its tokenizer) and
    the rule texts of ``rules_path`` (``None``: the built-in pool), scoring with the template of
    ``template_path`` (``None``: :data:`DEFAULT_TEMPLATE`) and the (yes, no, irrelevant)
    ``answers`` words. The files are read on every process
    first: one a host cannot read stops every process (:func:`~rmr1_jax.parallel.agreement.agreed`)."""
    from rmr1_jax.checkpoint.introspect import load_checkpoint_tokenizer
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel.agreement import agreed
    from rmr1_jax.text.tokenizer_base import read_text

    def inputs():
        return read_rules(rules_path), read_text(template_path) if template_path else None

    rules, template = agreed(inputs)
    model, params = load_model(ckpt, "lm", mesh=mesh, scan_layers=False)
    tokenizer = load_checkpoint_tokenizer(ckpt, tokenizer_path)
    scorer = RuleScorer(model, params, tokenizer, mesh, template=template, chat_template=chat_template,
                        batch_size=batch_size, answers=answers)
    return scorer, rules
