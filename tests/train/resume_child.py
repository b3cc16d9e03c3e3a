"""Child process for test_resume.py: trains, then is stopped at step N either by SIGTERM
(graceful: the loop saves and exits) or by a hard exit while an async save is in flight."""

import os
import sys

from sigterm_hook import sigterm_at_step


def main():
    cfg_path, mode, stop_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from rmr1_jax.checkpoint.manager import CheckpointManager
    from rmr1_jax.train.sft import load_distill_config, run_distill

    if mode == "sigterm":
        sigterm_at_step(stop_step)  # handled after this step completes
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
