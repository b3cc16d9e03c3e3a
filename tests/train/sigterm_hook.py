"""SIGTERM to this process during a chosen training step (shared by the preemption tests): the
training loop's batch placement (``loop.to_global``) is wrapped to send the signal on its
``at``-th call, and the loop sees it after that step completes."""

import os
import signal


def sigterm_at_step(at: int):
    """Install the hook; returns a function that removes it."""
    import rmr1_jax.train.loop as loop

    real = loop.to_global
    calls = {"n": 0}

    def to_global(batch, mesh):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(batch, mesh)

    loop.to_global = to_global

    def remove():
        loop.to_global = real

    return remove
