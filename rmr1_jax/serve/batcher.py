"""Requests arriving together, run as one model call.

Each request is a list of units (pairs to judge, texts to score, prompts to complete) under a
key that says which call runs them (the route and, for generation, its sampling settings).
One worker thread takes the oldest waiting request and every other waiting request of the same
key, up to ``max_batch`` units, runs them in one call of ``run(key, units)``, and hands each
request its share of the results. The queue is bounded (``max_queue`` requests): a request
that finds it full is refused at once (:class:`Busy`), never dropped later. Every request's
future is resolved exactly once, with its results or with the call's error.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Any, Callable, Hashable, Sequence


class Busy(Exception):
    """The queue is full."""


class Batcher:
    def __init__(self, run: Callable[[Hashable, list], Sequence[Any]], *, max_batch: int = 64, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, not {max_batch} and {max_queue}")
        self._run, self.max_batch, self.max_queue = run, max_batch, max_queue
        self._waiting: collections.deque = collections.deque()  # (key, units, future)
        self._cv = threading.Condition()
        self._closed = False
        self.calls = 0  # model calls made
        self.requests = 0  # requests answered
        self._thread = threading.Thread(target=self._loop, name="rmr1-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, units: list) -> concurrent.futures.Future:
        """A future of ``units``' results, in order; :class:`Busy` when the queue is full."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise Busy(f"the server's queue is full ({self.max_queue} requests waiting); retry later")
            self._waiting.append((key, list(units), fut))
            self._cv.notify()
        return fut

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._waiting)

    def close(self) -> None:
        """Stop after the requests already queued."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _take(self) -> list | None:
        """The next call's requests: the oldest, and the waiting ones of its key that fit."""
        with self._cv:
            while not self._waiting and not self._closed:
                self._cv.wait()
            if not self._waiting:
                return None
            first = self._waiting.popleft()
            batch, units, rest = [first], len(first[1]), collections.deque()
            while self._waiting:
                item = self._waiting.popleft()
                if item[0] == first[0] and units + len(item[1]) <= self.max_batch:
                    batch.append(item)
                    units += len(item[1])
                else:
                    rest.append(item)
            self._waiting = rest
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [b for b in batch if b[2].set_running_or_notify_cancel()]  # timed-out requests drop out
            if not live:
                continue
            units = [u for _, us, _ in live for u in us]
            try:
                results = list(self._run(live[0][0], units))
                if len(results) != len(units):
                    raise RuntimeError(f"the model call returned {len(results)} results for {len(units)} inputs")
            except BaseException as e:  # every request of the call gets the error, the loop goes on
                for _, _, fut in live:
                    fut.set_exception(e)
            else:
                at = 0
                for _, us, fut in live:
                    fut.set_result(results[at:at + len(us)])
                    at += len(us)
            self.calls += 1
            self.requests += len(live)
