"""One process of a multi-process ``rmr1`` job in a test (started through
:func:`mp_launch.start_job`, not by pytest)::

    cli_worker.py [--interleave] [--swap-on-last OLD=NEW] ARGS... [:: ARGS...]...

runs ``rmr1 ARGS...`` for each ``::``-separated command in turn, in this one process, and prints
``RMR1_RC <i> <exit status> <seconds>`` after command ``i``; it exits 0 once every command has
run. ``--interleave``: every mesh interleaves the processes' devices
(:func:`mp_launch.interleave_devices`), as a TPU slice's mesh may. ``--swap-on-last OLD=NEW``:
the job's last process reads argument ``NEW`` wherever the others read ``OLD`` (one host's view
of a file differs), for a failure on that process alone."""

import faulthandler
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    faulthandler.register(signal.SIGUSR1)  # the launcher asks for the stacks of a hung process
    from mp_launch import cache_on_every_process

    cache_on_every_process()  # a later command's programs compiled by an earlier one: read back
    args = sys.argv[1:]
    swaps = {}
    while args and args[0] in ("--interleave", "--swap-on-last"):
        if args[0] == "--interleave":
            from mp_launch import interleave_devices

            interleave_devices()
            args = args[1:]
        else:
            old, new = args[1].split("=", 1)
            swaps[old] = new
            args = args[2:]
    last = int(os.environ.get("RMR1_PROCESS_ID", "0")) == int(os.environ.get("RMR1_NUM_PROCESSES", "1")) - 1
    if last:
        args = [swaps.get(a, a) for a in args]
    from rmr1_jax.cli import main as rmr1

    commands, cur = [], []
    for a in args:
        if a == "::":
            commands.append(cur)
            cur = []
        else:
            cur.append(a)
    commands.append(cur)
    for i, cmd in enumerate(commands):
        t0 = time.perf_counter()
        rc = rmr1(cmd)
        print(f"RMR1_RC {i} {rc} {time.perf_counter() - t0:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
