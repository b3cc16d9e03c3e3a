"""Host-side bookkeeping of the generation engine's page pool.

The pool's pages live on the device (:func:`rmr1_jax.models.paged_attention.init_pages`); which
page holds what is decided here, on the host, between compiled calls. Page 0 is the null page
(never handed out). A page has a reference count: a prompt's prefilled pages are read by each of
its samples and return to the free list when the last reader lets go.
"""

from __future__ import annotations

import numpy as np

from rmr1_jax.models.paged_attention import NULL_PAGE


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold ``tokens`` tokens."""
    return -(-tokens // page_size)


class PagePool:
    """Free pages and reference counts of a pool of ``num_pages`` pages (page 0 reserved)."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"a page pool needs at least 2 pages (page 0 is the null page), not {num_pages}")
        self.num_pages = num_pages
        self.page_size = page_size
        self._free = list(range(num_pages - 1, NULL_PAGE, -1))  # pop() hands out 1, 2, ...
        self._refs = np.zeros(num_pages, np.int32)
        self.peak_used = 0

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_pages - 1 - len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """``n`` fresh pages (one reference each), or None when fewer are free."""
        if n > len(self._free):
            return None
        pages = [self._free.pop() for _ in range(n)]
        self._refs[pages] = 1
        self.peak_used = max(self.peak_used, self.used)
        return pages

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
                self._free.append(p)


def table_rows(page_lists, width: int) -> np.ndarray:
    """Page-table rows [len(page_lists), width]: each list's pages, then the null page."""
    table = np.full((len(page_lists), width), NULL_PAGE, np.int32)
    for i, pages in enumerate(page_lists):
        if len(pages) > width:
            raise ValueError(f"a sequence holds {len(pages)} pages, more than the table's {width}")
        table[i, : len(pages)] = pages
    return table
