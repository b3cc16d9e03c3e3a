"""The generation engine's scheduler: which sequences prefill, take a slot, grow, give their
pages back or end, decided on the host between the engine's compiled calls
(:mod:`rmr1_jax.sampling.engine` describes the policy)."""

from __future__ import annotations

import collections
import dataclasses
import time

import numpy as np

from rmr1_jax.models.paged_attention import NULL_PAGE
from rmr1_jax.sampling.pages import page_keys, pages_for, table_rows
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
    done: int = 0  # tokens prefilled (or found in the prefix cache) so far
    pages: list[int] | None = None
    keys: list | None = None  # its full pages' prefix-cache keys, once asked for
    after: list = dataclasses.field(default_factory=list)  # (writer, tokens): cached pages not yet written

    def written(self) -> bool:
        """Whether the cached pages it reads have been written by the prefixes that write them."""
        return all(w.done >= need for w, need in self.after)


@dataclasses.dataclass(eq=False)
class _Shard:
    """One data-parallel shard's part of the schedule: its page pool, its slots, the prefixes
    being prefilled into its pool, and the rows prefilled there waiting for one of its slots."""

    pool: object  # PagePool
    slots: list  # _Row | None
    prefilling: collections.deque = dataclasses.field(default_factory=collections.deque)
    ready: collections.deque = dataclasses.field(default_factory=collections.deque)  # (prefix, row)
    prefilled: int = 0  # prompt tokens prefilled here
    unwritten: dict = dataclasses.field(default_factory=dict)  # published page -> (writer, tokens)

    def live(self) -> list[int]:
        return [s for s, r in enumerate(self.slots) if r is not None]

    def free(self) -> int:
        return sum(r is None for r in self.slots)


class Schedule:
    """One generate call: the scheduler's state between compiled calls. Each shard of the
    engine's mesh has its own slots and pool; a prompt waits in one queue until some shard
    takes it to prefill; every compiled call runs every shard."""

    def __init__(self, engine, params, prompts, prompt_index, budgets, sp: SamplingParams, rng, tokenizer, own=None):
        """``rng``: the key's raw data; ``own``: the rows to return (None: every row)."""
        self.e, self.params, self.sp, self.rng, self.tok = engine, params, sp, rng, tokenizer
        self.own = own
        c = engine.config
        self.ps = c.page_size
        n = sp.n
        self.rows = [_Row(i * n + j, int(prompt_index[i]) * n + j, [int(t) for t in p], int(budgets[i]))
                     for i, p in enumerate(prompts) for j in range(n)]
        self.waiting = collections.deque(  # prefixes no shard has taken yet
            _Prefix(list(self.rows[i * n].prompt[:-1]), collections.deque(self.rows[i * n: (i + 1) * n]))
            for i in range(len(prompts)))
        longest = max(len(p) for p in prompts) + sp.max_new_tokens
        self.slots_n = min(c.max_slots, -(-len(self.rows) // engine.shards))  # slots a shard
        self.width = -(-pages_for(longest, self.ps) // 8) * 8  # page-table width, in steps of 8 pages
        self.shards = [_Shard(pool, [None] * self.slots_n)
                       for pool in engine.pools(self.slots_n, pages_for(longest, self.ps))]
        self.steps = c.decode_steps or default_chunk(sp.max_new_tokens)
        self.admitted = 0
        self.counts = collections.Counter()
        self.host_s = 0.0
        self.t0 = time.perf_counter()

    # ----- the loop -----

    def _pending(self) -> bool:
        """Whether some prompt or row still waits for a slot."""
        return bool(self.waiting) or any(sh.prefilling or sh.ready for sh in self.shards)

    def loop(self):
        while True:
            t = time.perf_counter()
            self._prefill_some()
            self._admit()
            for sh in self.shards:
                self._grow(sh)
            self.host_s += time.perf_counter() - t
            if any(sh.live() for sh in self.shards):
                self._decode_chunk()
            elif not self._pending():
                break

    def _prefill_some(self):
        """Prefill calls (each up to ``prefill_rows`` prompts x ``prefill_chunk`` tokens a
        shard) while a shard has fewer rows ready than slots free: while its other slots decode,
        at most ``prefill_budget`` tokens a shard before the next decode call."""
        budget = self.e.config.prefill_budget
        start = [sh.prefilled for sh in self.shards]
        while True:
            batches = []
            for sh, s0 in zip(self.shards, start):
                wants = len(sh.ready) < sh.free() and (sh.prefilling or self.waiting)
                if wants and sh.live() and sh.prefilled - s0 >= budget:
                    wants = False
                batches.append(self._pick(sh) if wants else [])
            if not any(batches):
                return
            todo = [[pf for pf in b if pf.done < len(pf.tokens) and pf.written()] for b in batches]
            if any(todo):
                longest = max(len(pf.tokens) - pf.done for t in todo for pf in t)
                self._prefill_call(todo, _chunk_for(longest, self.e.config.prefill_chunk))
            for sh in self.shards:
                sh.unwritten = {p: (w, need) for p, (w, need) in sh.unwritten.items() if w.done < need}
                while sh.prefilling and sh.prefilling[0].done >= len(sh.prefilling[0].tokens) \
                        and sh.prefilling[0].written():
                    pf = sh.prefilling.popleft()
                    pf.after = []
                    sh.ready.extend((pf, r) for r in pf.rows)
                    pf.pending, pf.rows = len(pf.rows), collections.deque()

    def _pick(self, sh) -> list:
        """The prefixes of ``sh``'s next prefill call, at most ``prefill_rows x prefill_chunk``
        tokens: those it is prefilling, then waiting ones it takes while its pool has their
        pages."""
        c = self.e.config
        budget = c.prefill_rows * c.prefill_chunk
        batch, longest = [], 0

        def fits(pf):
            rest = len(pf.tokens) - pf.done
            return not batch or (len(batch) + 1) * _chunk_for(max(longest, rest), c.prefill_chunk) <= budget

        for pf in sh.prefilling:
            if not fits(pf):
                return batch
            batch.append(pf)
            longest = max(longest, len(pf.tokens) - pf.done)
        while self.waiting:
            pf = self.waiting[0]
            hit = sh.pool.cached(self._keys(pf))
            pf.done = hit * self.ps
            if not fits(pf) or not self._place(sh, pf, hit):
                pf.done = 0
                break
            self.waiting.popleft()
            sh.prefilling.append(pf)
            batch.append(pf)
            longest = max(longest, len(pf.tokens) - pf.done)
        return batch

    def _keys(self, pf) -> list:
        """``pf``'s prefix-cache keys (none with the cache off)."""
        if pf.keys is None:
            pf.keys = page_keys(pf.tokens, self.ps) if self.e.config.prefix_cache else []
        return pf.keys

    def _place(self, sh, pf, hit: int) -> bool:
        """Pages in ``sh``'s pool for ``pf``: its first ``hit`` pages from the prefix cache, the
        rest fresh, its full fresh pages published (readers of a page not yet written wait for
        its writer). False when the pool has too few pages."""
        keys, need = self._keys(pf), pages_for(len(pf.tokens), self.ps)
        cached = sh.pool.take_cached(keys[:hit])
        fresh = sh.pool.alloc(need - hit)
        if fresh is None:
            sh.pool.release(cached)
            if sh.pool.used == 0:  # the pool is empty and still too small
                raise RuntimeError(f"the page pool ({sh.pool.num_pages} pages of {self.ps} tokens) cannot hold "
                                   f"a prompt of {len(pf.tokens) + 1} tokens; raise sampling.kv_pages")
            return False
        pf.pages = cached + fresh
        pf.after = [sh.unwritten[p] for p in cached if p in sh.unwritten]
        for i in range(hit, len(keys)):
            sh.pool.publish(pf.pages[i], keys[i])
            sh.unwritten[pf.pages[i]] = (pf, (i + 1) * self.ps)
        self.counts["prefix_hit_tokens"] += hit * self.ps
        return True

    def _prefill_call(self, todo, chunk: int):
        """One compiled prefill of ``chunk`` tokens of each prefix in each shard's ``todo``
        (rows padded to a power of two, so few shapes compile)."""
        rows = _pow2(max(len(t) for t in todo))
        d = len(self.shards)
        ids = np.full((d, rows, chunk), self.e.pad_id, np.int32)
        q_pos = np.tile(np.arange(chunk, dtype=np.int32), (d, rows, 1))
        write_at = np.full((d, rows, chunk), NULL_PAGE * self.ps, np.int32)
        table = np.zeros((d, rows, self.width), np.int32)
        for k, (sh, part_todo) in enumerate(zip(self.shards, todo)):
            if part_todo:
                table[k, : len(part_todo)] = table_rows([pf.pages for pf in part_todo], self.width)
            for i, pf in enumerate(part_todo):
                part = pf.tokens[pf.done: pf.done + chunk]
                pos = pf.done + np.arange(len(part))
                ids[k, i, : len(part)] = part
                q_pos[k, i] = pf.done + np.arange(chunk)
                write_at[k, i, : len(part)] = np.asarray(pf.pages)[pos // self.ps] * self.ps + pos % self.ps
                pf.done += len(part)
                sh.prefilled += len(part)
                self.counts["prefill_tokens"] += len(part)
        self.e.prefill(self.params, ids, q_pos, write_at, table)
        self.counts["prefill_calls"] += 1

    def _admit(self):
        """Ready rows into free slots: each reads its prefix's full pages and gets its own copy
        of a partly filled last page (one copy call for every shard)."""
        copies = [self._admit_shard(sh) for sh in self.shards]
        if any(copies):
            m = -(-max(len(c) for c in copies) // 8) * 8
            src = np.zeros((len(copies), m), np.int32)
            dst = np.zeros((len(copies), m), np.int32)
            for k, c in enumerate(copies):
                if c:
                    src[k, : len(c)], dst[k, : len(c)] = zip(*c)
            self.e.copy_pages(src, dst)
            self.counts["page_copies"] += sum(map(len, copies))

    def _admit_shard(self, sh) -> list[tuple[int, int]]:
        """Ready rows into ``sh``'s free slots; the (source, destination) pages to copy."""
        copies = []
        for s in range(self.slots_n):
            if sh.slots[s] is not None or not sh.ready:
                continue
            pf, row = sh.ready[0]
            full = len(pf.tokens) // self.ps
            own = []
            if len(pf.tokens) % self.ps:
                own = sh.pool.alloc(1)
                if own is None:
                    break
                copies.append((pf.pages[full], own[0]))
            sh.ready.popleft()
            sh.pool.share(pf.pages[:full])
            row.pages = pf.pages[:full] + own
            pf.pending -= 1
            if pf.pending == 0:
                sh.pool.release(pf.pages)
            row.admitted = self.admitted
            self.admitted += 1
            sh.slots[s] = row
        return copies

    def _grow(self, sh):
        """Pages for the next decode call's positions of every live slot of ``sh``; when its
        pool is dry, its slot admitted last gives its pages back and waits to be prefilled
        again."""
        for s in sorted(sh.live(), key=lambda s: sh.slots[s].admitted):
            row = sh.slots[s]
            if row is None:
                continue
            pos = len(row.context) - 1
            last = min(pos + self.steps, len(row.prompt) + row.budget - 1)
            need = pages_for(last + 1, self.ps) - len(row.pages)
            while need > 0:
                got = sh.pool.alloc(need)
                if got is not None:
                    row.pages += got
                    break
                if self._unprefill(sh):
                    continue
                victim = max(sh.live(), key=lambda s2: sh.slots[s2].admitted)
                if victim == s and len(sh.live()) == 1:
                    raise RuntimeError(f"the page pool ({sh.pool.num_pages} pages of {self.ps} tokens) cannot hold "
                                       f"one sequence of {last + 1} tokens; raise sampling.kv_pages")
                self._preempt(sh, victim)
                if victim == s:
                    break

    def _unprefill(self, sh) -> bool:
        """Give back the pages of the prefix ``sh`` took last and not all its rows have taken
        yet (it waits again, first in line); False when no prefix holds pages there."""
        if sh.prefilling:
            pf = sh.prefilling.pop()
        else:
            held = [pf for pf in dict.fromkeys(pf for pf, _ in sh.ready) if pf.pages]
            if not held:
                return False
            pf = held[-1]
            pf.rows = collections.deque(r for p, r in sh.ready if p is pf)
            sh.ready = collections.deque((p, r) for p, r in sh.ready if p is not pf)
        self.waiting.appendleft(pf)
        for p in [p for p, (w, _) in sh.unwritten.items() if w is pf]:  # its promised pages: never written
            del sh.unwritten[p]
            sh.pool.unpublish(p)
        sh.pool.release(pf.pages)
        self.counts["unprefills"] += 1
        self.counts["recomputed_tokens"] += pf.done
        pf.pages, pf.done, pf.after = None, 0, []
        return True

    def _preempt(self, sh, s):
        row = sh.slots[s]
        sh.pool.release(row.pages)
        row.pages = []
        sh.slots[s] = None
        self.waiting.appendleft(_Prefix(row.context[:-1], collections.deque([row])))
        self.counts["preemptions"] += 1
        self.counts["recomputed_tokens"] += len(row.context) - 1

    def _decode_chunk(self):
        """One decode call over every shard's live slots, packed into the first rows of a call
        of a power of two rows (at most ``max_slots``): as rows end and none wait, the calls
        shrink with them (the long tail of one batch runs on few rows, not on every slot)."""
        lives = [sh.live() for sh in self.shards]
        d, n = len(self.shards), min(self.slots_n, _pow2(max(map(len, lives))))
        cur, pos, gen, max_gen, row_id = (np.zeros((d, n), np.int32) for _ in range(5))
        active = np.zeros((d, n), bool)
        table = np.zeros((d, n, self.width), np.int32)
        # with sequences waiting for a shard's slots, return as soon as one of them ends (the
        # host's turn costs well under 1% of the time); with none waiting, run the whole call
        waiting = sum(len(pf.rows) for pf in self.waiting)
        refill = np.full(d, n + 1, np.int32)
        for k, (sh, live) in enumerate(zip(self.shards, lives)):
            for i, s in enumerate(live):
                r = sh.slots[s]
                cur[k, i], pos[k, i], gen[k, i] = r.context[-1], len(r.context) - 1, len(r.tokens)
                max_gen[k, i], active[k, i], row_id[k, i] = r.budget, True, r.row_id
            table[k] = table_rows([sh.slots[s].pages for s in live] + [[]] * (n - len(live)), self.width)
            if waiting or sh.ready or any(pf.rows for pf in sh.prefilling):
                refill[k] = 1
        sp = self.sp
        toks, lps, ran = self.e.decode(
            self.params, table, cur, pos, gen, max_gen, active, row_id, self.rng, refill,
            steps=self.steps, greedy=sp.temperature == 0.0, temperature=float(sp.temperature), top_k=int(sp.top_k),
            top_p=float(sp.top_p))
        t = time.perf_counter()
        self.counts["decode_calls"] += 1
        self.counts["slot_steps"] += d * n * ran
        for k, (sh, live) in enumerate(zip(self.shards, lives)):
            for i, s in enumerate(live):
                self._take(sh, s, toks[k, i, :ran], lps[k, i, :ran])
        self.host_s += time.perf_counter() - t

    def _take(self, sh, s, toks, lps):
        """A slot's tokens of the last call; the slot is freed when its row has ended."""
        row = sh.slots[s]
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
            sh.pool.release(row.pages)
            row.pages = []
            sh.slots[s] = None

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
        prefill tokens and calls, page copies, preemptions, the shards, their slots and pools
        (sizes and peaks summed over the shards), and the host's share of the wall time."""
        wall = time.perf_counter() - self.t0
        pools = [sh.pool for sh in self.shards]
        out = dict(self.counts, shards=len(pools), slots=self.slots_n * len(pools), page_size=self.ps,
                   kv_pages=sum(p.num_pages for p in pools), peak_pages=sum(p.peak_used for p in pools),
                   wall_s=wall, host_s=self.host_s)
        out["slot_use"] = out.get("tokens", 0) / max(1, out.get("slot_steps", 0))
        out["host_share"] = self.host_s / wall if wall else 0.0
        return out
