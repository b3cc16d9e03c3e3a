"""One process of the two-process preemption test (run by test_resume.py, not by pytest):
distillation on a (2, 2, 2) mesh over two processes; the process named on the command line
sends itself SIGTERM during the given step, the other gets no signal."""

import json
import os
import sys

from sigterm_hook import sigterm_at_step

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: mp_launch


def main():
    cfg_path, signal_pid, stop_step, result_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from mp_launch import cache_on_every_process
    from rmr1_jax.parallel.mesh import initialize_distributed

    cache_on_every_process()  # the restart's process 1 reads back what the first run's compiled
    initialize_distributed()
    import jax

    from rmr1_jax.train.sft import load_distill_config, run_distill

    assert jax.process_count() == 2
    if jax.process_index() == signal_pid:  # only this process is told to stop
        sigterm_at_step(stop_step)
    logs = []
    _, _, result, _ = run_distill(load_distill_config(cfg_path), log=logs.append)
    with open(f"{result_path}.{jax.process_index()}", "w") as f:
        json.dump({"step": result.step, "stopped": result.stopped_early,
                   "resumed": [line for line in logs if line.startswith("resumed from")]}, f)


if __name__ == "__main__":
    main()
