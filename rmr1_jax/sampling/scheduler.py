"""The generation engine's scheduler: which sequences prefill, take a slot, grow, give their
pages back or end, decided on the host between the engine's compiled calls
(:mod:`rmr1_jax.sampling.engine` describes the policy)."""

from __future__ import annotations

import collections
import dataclasses
import time

import numpy as np

from rmr1_jax.models.paged_attention import NULL_PAGE
from rmr1_jax.sampling.pages import pages_for, table_rows
from rmr1_jax.sampling.sampler import Generation, Sampler, SamplingParams, default_chunk


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _chunk_for(tokens: int, most: int) -> int:
    """A prefill call's chunk for prefixes of up to ``tokens`` tokens still to prefill: the next
    power of two from 16, at most ``most``."""
    return min(most, max(16, _pow2(tokens)))


@dataclasses.dataclass
class _Row:
    """One output sequence: a sample of a prompt."""

    index: int  # its row in the Generation (prompt-major)
    row_id: int  # canonical id keying its draws
    prompt: list[int]
    budget: int  # most tokens it may generate
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finished: bool = False  # ended by EOS or a stop string
    pages: list[int] = dataclasses.field(default_factory=list)
    admitted: int = -1  # admission order (the last admitted is preempted first)

    @property
    def context(self) -> list[int]:
        return self.prompt + self.tokens


@dataclasses.dataclass(eq=False)
class _Prefix:
    """The tokens before a context's last, prefilled once for the rows that continue it."""

    tokens: list[int]
    rows: collections.deque  # the rows that continue it, until it is prefilled
    pending: int = 0  # once prefilled: its rows still to take their copy of its pages
    done: int = 0  # tokens prefilled so far
    pages: list[int] | None = None


class Schedule:
    """One generate call: the scheduler's state between compiled calls."""

    def __init__(self, engine, params, prompts, prompt_index, budgets, sp: SamplingParams, rng, tokenizer, own=None):
        """``rng``: the key's raw data; ``own``: the rows to return (None: every row)."""
        self.e, self.params, self.sp, self.rng, self.tok = engine, params, sp, rng, tokenizer
        self.own = own
        c = engine.config
        self.ps = c.page_size
        n = sp.n
        self.rows = [_Row(i * n + j, int(prompt_index[i]) * n + j, [int(t) for t in p], int(budgets[i]))
                     for i, p in enumerate(prompts) for j in range(n)]
        self.prefixes = collections.deque(
            _Prefix(list(self.rows[i * n].prompt[:-1]), collections.deque(self.rows[i * n: (i + 1) * n]))
            for i in range(len(prompts)))
        longest = max(len(p) for p in prompts) + sp.max_new_tokens
        self.slots_n = min(c.max_slots, len(self.rows))
        self.width = -(-pages_for(longest, self.ps) // 8) * 8  # page-table width, in steps of 8 pages
        self.pool = engine.pool(self.slots_n, pages_for(longest, self.ps))
        self.steps = c.decode_steps or default_chunk(sp.max_new_tokens)
        self.slots: list[_Row | None] = [None] * self.slots_n
        self.ready: collections.deque = collections.deque()  # (prefix, row) prefilled, waiting for a slot
        self.admitted = 0
        self.counts = collections.Counter()
        self.host_s = 0.0
        self.t0 = time.perf_counter()

    # ----- the loop -----

    def loop(self):
        while self.prefixes or self.ready or any(self.slots):
            t = time.perf_counter()
            self._prefill_some()
            self._admit()
            live = [i for i, r in enumerate(self.slots) if r is not None]
            self._grow(live)
            self.host_s += time.perf_counter() - t
            if any(self.slots):
                self._decode_chunk()
            elif not self.prefixes and not self.ready:
                break

    def _prefill_some(self):
        """Prefill calls (each up to ``prefill_rows`` prompts x ``prefill_chunk`` tokens) while
        fewer rows are ready than slots are free: while other slots decode, at most
        ``prefill_budget`` tokens before the next decode call."""
        budget = self.e.config.prefill_budget
        start = self.counts["prefill_tokens"]
        while self.prefixes and len(self.ready) < sum(r is None for r in self.slots):
            if any(self.slots) and self.counts["prefill_tokens"] - start >= budget:
                return
            if not self._prefill_once():
                return

    def _prefill_once(self) -> bool:
        """One prefill call over the next prefixes, at most ``prefill_rows x prefill_chunk``
        tokens; False when none could get its pages."""
        c = self.e.config
        budget = c.prefill_rows * c.prefill_chunk
        batch, longest = [], 0
        for pf in self.prefixes:
            rest = len(pf.tokens) - pf.done
            if batch and (len(batch) + 1) * _chunk_for(max(longest, rest), c.prefill_chunk) > budget:
                break
            if pf.pages is None:
                pf.pages = self.pool.alloc(pages_for(len(pf.tokens), self.ps))
                if pf.pages is None:
                    break
            batch.append(pf)
            longest = max(longest, rest)
        if not batch:
            if self.pool.used == 0:  # the pool is empty and still too small
                raise RuntimeError(f"the page pool ({self.pool.num_pages} pages of {self.ps} tokens) cannot hold a "
                                   f"prompt of {len(self.prefixes[0].tokens) + 1} tokens; raise sampling.kv_pages")
            return False
        todo = [pf for pf in batch if pf.done < len(pf.tokens)]
        if todo:
            self._prefill_call(todo, _chunk_for(longest, c.prefill_chunk))
        while self.prefixes and self.prefixes[0].pages is not None and self.prefixes[0].done >= len(self.prefixes[0].tokens):
            pf = self.prefixes.popleft()
            self.ready.extend((pf, r) for r in pf.rows)
            pf.pending, pf.rows = len(pf.rows), collections.deque()
        return True

    def _prefill_call(self, todo, chunk: int):
        """One compiled prefill of ``chunk`` tokens of each prefix in ``todo`` (rows padded to a
        power of two, so few shapes compile)."""
        rows = _pow2(len(todo))
        ids = np.full((rows, chunk), self.e.pad_id, np.int32)
        q_pos = np.tile(np.arange(chunk, dtype=np.int32), (rows, 1))
        write_at = np.full((rows, chunk), NULL_PAGE * self.ps, np.int32)
        table = table_rows([pf.pages for pf in todo], self.width)
        table = np.concatenate([table, np.zeros((rows - len(todo), self.width), np.int32)])
        for i, pf in enumerate(todo):
            part = pf.tokens[pf.done: pf.done + chunk]
            pos = pf.done + np.arange(len(part))
            ids[i, : len(part)] = part
            q_pos[i] = pf.done + np.arange(chunk)
            write_at[i, : len(part)] = np.asarray(pf.pages)[pos // self.ps] * self.ps + pos % self.ps
            pf.done += len(part)
            self.counts["prefill_tokens"] += len(part)
        self.e.prefill(self.params, ids, q_pos, write_at, table)
        self.counts["prefill_calls"] += 1

    def _admit(self):
        """Ready rows into free slots: each reads its prefix's full pages and gets its own copy
        of a partly filled last page."""
        copies = []
        for s in range(self.slots_n):
            if self.slots[s] is not None or not self.ready:
                continue
            pf, row = self.ready[0]
            full = len(pf.tokens) // self.ps
            own = []
            if len(pf.tokens) % self.ps:
                own = self.pool.alloc(1)
                if own is None:
                    break
                copies.append((pf.pages[full], own[0]))
            self.ready.popleft()
            self.pool.share(pf.pages[:full])
            row.pages = pf.pages[:full] + own
            pf.pending -= 1
            if pf.pending == 0:
                self.pool.release(pf.pages)
            row.admitted = self.admitted
            self.admitted += 1
            self.slots[s] = row
        if copies:
            m = -(-len(copies) // 8) * 8
            src = np.zeros(m, np.int32)
            dst = np.zeros(m, np.int32)
            src[: len(copies)], dst[: len(copies)] = zip(*copies)
            self.e.copy_pages(src, dst)
            self.counts["page_copies"] += len(copies)

    def _grow(self, live):
        """Pages for the next decode call's positions of every live slot; when the pool is dry,
        the slot admitted last gives its pages back and waits to be prefilled again."""
        for s in sorted(live, key=lambda s: self.slots[s].admitted):
            row = self.slots[s]
            if row is None:
                continue
            pos = len(row.context) - 1
            last = min(pos + self.steps, len(row.prompt) + row.budget - 1)
            need = pages_for(last + 1, self.ps) - len(row.pages)
            while need > 0:
                got = self.pool.alloc(need)
                if got is not None:
                    row.pages += got
                    break
                if self._unprefill():
                    continue
                victim = max((s2 for s2 in range(self.slots_n) if self.slots[s2] is not None),
                             key=lambda s2: self.slots[s2].admitted)
                if victim == s and sum(r is not None for r in self.slots) == 1:
                    raise RuntimeError(f"the page pool ({self.pool.num_pages} pages of {self.ps} tokens) cannot hold "
                                       f"one sequence of {last + 1} tokens; raise sampling.kv_pages")
                self._preempt(victim)
                if victim == s:
                    break

    def _unprefill(self) -> bool:
        """Give back the pages of the prefix prefilled last and not yet taken by all its rows
        (it is prefilled again when its turn comes); False when no prefix holds pages."""
        waiting = [pf for pf in self.prefixes if pf.pages]
        if waiting:
            pf = waiting[-1]
        else:
            held = [pf for pf in dict.fromkeys(pf for pf, _ in self.ready) if pf.pages]
            if not held:
                return False
            pf = held[-1]
            rows = collections.deque(r for p, r in self.ready if p is pf)
            self.ready = collections.deque((p, r) for p, r in self.ready if p is not pf)
            pf.rows = rows
            self.prefixes.appendleft(pf)
        self.pool.release(pf.pages)
        self.counts["unprefills"] += 1
        self.counts["recomputed_tokens"] += pf.done
        pf.pages, pf.done = None, 0
        return True

    def _preempt(self, s):
        row = self.slots[s]
        self.pool.release(row.pages)
        row.pages = []
        self.slots[s] = None
        self.prefixes.appendleft(_Prefix(row.context[:-1], collections.deque([row])))
        self.counts["preemptions"] += 1
        self.counts["recomputed_tokens"] += len(row.context) - 1

    def _decode_chunk(self):
        """One decode call over the live slots, packed into the first rows of a call of a power
        of two rows (at most ``max_slots``): as rows end and none wait, the calls shrink with them
        (the long tail of one batch runs on few rows, not on every slot)."""
        live = [s for s, r in enumerate(self.slots) if r is not None]
        n = min(self.slots_n, _pow2(len(live)))
        cur = np.zeros(n, np.int32)
        pos = np.zeros(n, np.int32)
        gen = np.zeros(n, np.int32)
        max_gen = np.zeros(n, np.int32)
        active = np.zeros(n, bool)
        row_id = np.zeros(n, np.int32)
        for i, s in enumerate(live):
            r = self.slots[s]
            cur[i], pos[i], gen[i] = r.context[-1], len(r.context) - 1, len(r.tokens)
            max_gen[i], active[i], row_id[i] = r.budget, True, r.row_id
        table = table_rows([self.slots[s].pages for s in live] + [[]] * (n - len(live)), self.width)
        sp = self.sp
        # with sequences waiting, return as soon as a slot ends (the host's turn costs well under
        # 1% of the time); with none waiting, run the whole call
        waiting = len(self.ready) + sum(len(pf.rows) for pf in self.prefixes)
        refill = np.int32(1 if waiting else n + 1)
        toks, lps, ran = self.e.decode(
            self.params, table, cur, pos, gen, max_gen, active, row_id, self.rng, refill,
            steps=self.steps, greedy=sp.temperature == 0.0, temperature=float(sp.temperature), top_k=int(sp.top_k),
            top_p=float(sp.top_p))
        t = time.perf_counter()
        self.counts["decode_calls"] += 1
        self.counts["slot_steps"] += n * ran
        for i, s in enumerate(live):
            self._take(s, toks[i, :ran], lps[i, :ran])
        self.host_s += time.perf_counter() - t

    def _take(self, s, toks, lps):
        """A slot's tokens of the last call; the slot is freed when its row has ended."""
        row = self.slots[s]
        ended = False
        for tok, lp in zip(toks.tolist(), lps.tolist()):
            row.tokens.append(tok)
            row.logprobs.append(lp)
            self.counts["tokens"] += 1
            if tok in self.e.eos:
                row.finished = ended = True
                break
            if len(row.tokens) >= row.budget:
                ended = True
                break
        if self.sp.stop_strings and self._stop(row):
            ended = True
        if ended:
            self.pool.release(row.pages)
            row.pages = []
            self.slots[s] = None

    def _stop(self, row) -> bool:
        """Cut ``row`` at the shortest prefix of its tokens whose text holds a stop string."""
        stops = self.sp.stop_strings
        if not any(s in self.tok.decode(row.tokens) for s in stops):
            return False
        for k in range(1, len(row.tokens) + 1):
            if any(s in self.tok.decode(row.tokens[:k]) for s in stops):
                del row.tokens[k:], row.logprobs[k:]
                break
        row.finished = True
        return True

    # ----- results -----

    def result(self) -> Generation:
        m = self.sp.max_new_tokens
        r = len(self.rows)
        tokens = np.full((r, m), self.e.pad_id, np.int32)
        logprobs = np.zeros((r, m), np.float32)
        lengths = np.zeros(r, np.int32)
        finished = np.zeros(r, bool)
        for row in self.rows:
            k = len(row.tokens)
            tokens[row.index, :k] = row.tokens
            logprobs[row.index, :k] = row.logprobs
            lengths[row.index], finished[row.index] = k, row.finished
        if self.own is not None:
            tokens, logprobs, lengths, finished = tokens[self.own], logprobs[self.own], lengths[self.own], finished[self.own]
            r = len(lengths)
        texts = None
        if self.tok is not None:
            texts = [Sampler._text(self.tok, tokens[i, : lengths[i]], self.sp.stop_strings) for i in range(r)]
        return Generation(tokens, logprobs, lengths, finished, texts)

    def stats(self) -> dict:
        """What the call did: tokens generated, slot-steps run (their ratio is the slots' use),
        prefill tokens and calls, page copies, preemptions, the pool's size and peak, and the
        host's share of the wall time."""
        wall = time.perf_counter() - self.t0
        out = dict(self.counts, slots=self.slots_n, page_size=self.ps, kv_pages=self.pool.num_pages,
                   peak_pages=self.pool.peak_used, wall_s=wall, host_s=self.host_s)
        out["slot_use"] = out.get("tokens", 0) / max(1, out.get("slot_steps", 0))
        out["host_share"] = self.host_s / wall if wall else 0.0
        return out
