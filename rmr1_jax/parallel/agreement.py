"""Every process of a multi-host job agrees on success or failure, so none waits forever.

A pod job runs the same program on every host. When one host fails alone (a file missing from
its disk, a malformed row in its share, a write that process 0 alone makes), the others go on
into the next collective and wait there for it. The helpers below put an agreement point after
such a step: each process reports whether it failed, and if any did, every process raises, the
one that failed with its own error and the others with a one-line :class:`PeerError` naming it.

::

    rows = agreed(read_rows, path)                 # every process reads; any failure stops all
    done = on_process_zero(read_done, out_path)    # process 0 reads; the rest get its value
    on_process_zero(write_batch, f, rows, share=False)   # process 0 writes; a failure stops all

In a single process they just call the function.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import numpy as np

from rmr1_jax.errors import UserError

_MESSAGE_BYTES = 1024


class PeerError(UserError):
    """Another process of the job failed at a step every process takes together."""


def _gather(buf: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(buf))


def check_all(error: BaseException | None) -> None:
    """The agreement point: every process calls it with the error it met (or None). If any
    process failed, every process raises: its own error where it had one, else a
    :class:`PeerError` with the first failing process's one-line message."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    buf = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    if error is not None:
        text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        raw = text.splitlines()[0].encode("utf-8")[:_MESSAGE_BYTES] if text else b"(no message)"
        buf[0] = 1
        buf[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
    flags = _gather(buf)
    if error is not None:
        raise error
    failed = np.nonzero(flags[:, 0])[0]
    if len(failed):
        q = int(failed[0])
        msg = bytes(flags[q, 1:]).rstrip(b"\0").decode("utf-8", errors="replace")
        raise PeerError(f"process {q} failed: {msg}")


def agreed(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on every process, then :func:`check_all`."""
    try:
        out, err = fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001 - re-raised on this process by check_all
        out, err = None, e
    check_all(err)
    return out


def on_process_zero(fn: Callable[..., Any], *args, share: bool = True, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on process 0 only; with ``share`` its (JSON-serializable) result
    is sent to every process, else the others get None. Any failure of ``fn`` stops every
    process (:func:`check_all`)."""
    if jax.process_count() == 1:
        return fn(*args, **kwargs)
    out, err = None, None
    if jax.process_index() == 0:
        try:
            out = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised on process 0 by check_all
            err = e
    check_all(err)
    return broadcast_json(out) if share else out


def broadcast_json(value: Any) -> Any:
    """Process 0's JSON-serializable ``value`` on every process (a collective)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    raw = json.dumps(value).encode("utf-8") if jax.process_index() == 0 else b""
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(raw), np.int64)))
    buf = np.zeros(n, np.uint8)
    if jax.process_index() == 0:
        buf[:] = np.frombuffer(raw, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(buf)).astype(np.uint8)
    return json.loads(bytes(data).decode("utf-8"))
