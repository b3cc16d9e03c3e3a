"""Host-side bookkeeping of the generation engine's page pool.

The pool's pages live on the device (:func:`rmr1_jax.models.paged_attention.init_pages`); which
page holds what is decided here, on the host, between compiled calls. Page 0 is the null page
(never handed out). A page has a reference count: a prompt's prefilled pages are read by each of
its samples and return to the free list when the last reader lets go.

Prefix caching: a full page of prompt tokens can be published under a key that names its
tokens and every token before them (:func:`page_keys`); a later prompt that starts with the same
tokens reads the published pages instead of prefilling them again (a shared system prompt, the
two orders of a judged pair up to where their responses start). A published page that nobody
reads any more stays in the pool, idle, until a fresh page is needed and none is free: the idle
page that went idle first is then handed out and its key forgotten.
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np

from rmr1_jax.models.paged_attention import NULL_PAGE


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold ``tokens`` tokens."""
    return -(-tokens // page_size)


def page_keys(tokens, page_size: int) -> list[bytes]:
    """A key for each full page of ``tokens``: a digest of the page's tokens chained to the key
    of the page before, so equal keys mean equal tokens from the first position on."""
    keys, prev = [], b""
    arr = np.asarray(tokens, np.int64)
    for i in range(len(arr) // page_size):
        prev = hashlib.blake2b(prev + arr[i * page_size:(i + 1) * page_size].tobytes(), digest_size=16).digest()
        keys.append(prev)
    return keys


class PagePool:
    """Free pages and reference counts of a pool of ``num_pages`` pages (page 0 reserved)."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"a page pool needs at least 2 pages (page 0 is the null page), not {num_pages}")
        self.num_pages = num_pages
        self.page_size = page_size
        self._free = list(range(num_pages - 1, NULL_PAGE, -1))  # pop() hands out 1, 2, ...
        self._refs = np.zeros(num_pages, np.int32)
        self._page_of: dict[bytes, int] = {}  # published pages by key
        self._key_of: dict[int, bytes] = {}
        self._idle: collections.OrderedDict = collections.OrderedDict()  # published, unread; oldest first
        self.peak_used = 0

    @property
    def available(self) -> int:
        """Pages :meth:`alloc` can hand out: the free ones and the idle published ones."""
        return len(self._free) + len(self._idle)

    @property
    def used(self) -> int:
        """Pages somebody reads."""
        return self.num_pages - 1 - self.available

    def alloc(self, n: int) -> list[int] | None:
        """``n`` fresh pages (one reference each), or None when fewer are available. Free pages
        go first, then idle published ones (the longest idle first, its key forgotten)."""
        if n > self.available:
            return None
        pages = []
        for _ in range(n):
            if self._free:
                pages.append(self._free.pop())
            else:
                p, _ = self._idle.popitem(last=False)
                del self._page_of[self._key_of.pop(p)]
                pages.append(p)
        self._refs[pages] = 1
        self.peak_used = max(self.peak_used, self.used)
        return pages

    def cached(self, keys) -> int:
        """How many of ``keys``' pages, from the first, are published."""
        n = 0
        for k in keys:
            if k not in self._page_of:
                break
            n += 1
        return n

    def take_cached(self, keys) -> list[int]:
        """The published pages of ``keys`` (all published: see :meth:`cached`), one more
        reference each."""
        pages = [self._page_of[k] for k in keys]
        for p in pages:
            self._idle.pop(p, None)
            self._refs[p] += 1
        self.peak_used = max(self.peak_used, self.used)
        return pages

    def publish(self, page: int, key: bytes) -> None:
        """Offer ``page`` (in use) to later prompts under ``key``; a key already published keeps
        its page."""
        if self._refs[page] <= 0:
            raise ValueError(f"page {page} is not in use")
        if key not in self._page_of and page not in self._key_of:
            self._page_of[key], self._key_of[page] = page, key

    def unpublish(self, page: int) -> None:
        """Withdraw ``page``'s key (its contents were never written)."""
        key = self._key_of.pop(page, None)
        if key is not None:
            del self._page_of[key]
            if page in self._idle:
                del self._idle[page]
                self._free.append(page)

    def share(self, pages) -> None:
        """One more reader of ``pages``."""
        for p in pages:
            if self._refs[p] <= 0:
                raise ValueError(f"page {p} is not in use")
            self._refs[p] += 1

    def release(self, pages) -> None:
        """One reader fewer; a page nobody reads is free again."""
        for p in pages:
            if self._refs[p] <= 0:
                raise ValueError(f"page {p} released more often than taken")
            self._refs[p] -= 1
            if self._refs[p] == 0:
                if p in self._key_of:
                    self._idle[p] = None
                else:
                    self._free.append(p)


def table_rows(page_lists, width: int) -> np.ndarray:
    """Page-table rows [len(page_lists), width]: each list's pages, then the null page."""
    table = np.full((len(page_lists), width), NULL_PAGE, np.int32)
    for i, pages in enumerate(page_lists):
        if len(pages) > width:
            raise ValueError(f"a sequence holds {len(pages)} pages, more than the table's {width}")
        table[i, : len(pages)] = pages
    return table
