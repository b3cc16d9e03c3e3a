"""Child process for test_resume.py: trains, then is stopped at step N either by SIGTERM
(graceful: the loop saves and exits) or by a hard exit while an async save is in flight."""

import os
import signal
import sys


def main():
    cfg_path, mode, stop_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import rmr1_jax.train.loop as loop
    from rmr1_jax.checkpoint.manager import CheckpointManager
    from rmr1_jax.train.sft import load_distill_config, run_distill

    calls = {"n": 0}
    real_to_global = loop.to_global

    def counting_to_global(batch, mesh):
        calls["n"] += 1
        if mode == "sigterm" and calls["n"] == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)  # handled after this step completes
        return real_to_global(batch, mesh)

    loop.to_global = counting_to_global
    real_save = CheckpointManager.save

    def save_then_die(self, step, state, **kw):
        started = real_save(self, step, state, **kw)
        if mode == "kill" and step == stop_step:
            os._exit(17)  # the async write of this step is still in flight
        return started

    CheckpointManager.save = save_then_die
    run_distill(load_distill_config(cfg_path))


if __name__ == "__main__":
    main()
