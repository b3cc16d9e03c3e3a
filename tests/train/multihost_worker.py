"""One process of the multi-host equality test (run by test_multihost_equality.py, not by pytest),
in a job of one process (8 CPU devices) or of two (4 each, loopback): distillation to a
``max_steps`` stop, its resume to more steps, then GRPO from that checkpoint, stopped by SIGTERM
inside a rollout (on the last process only) and resumed, then (when the spec has ``policy``)
policy GRPO from the distilled checkpoint, rewarded by that checkpoint as a judge. Every process writes what it saw to
``<out>/result.<process>.json``; process 0 writes the final parameters of each stage (gathered
from every process) to ``<out>/<stage>.npz``.

Usage: ``multihost_worker.py SPEC.json`` where the spec holds ``sft`` (the two distillation
config paths: the stop, the resume), ``grpo`` (the GRPO config path), ``grpo_stop_at`` (the
step during which SIGTERM arrives), ``out`` (a directory) and, optionally,
``compilation_cache`` (a directory for JAX's persistent compilation cache)."""

import faulthandler
import json
import os
import signal
import sys
import time

import numpy as np


def graded_reward(text, winner, opened_thinking=False):
    """A reward that varies within a group (a random tiny policy never writes a verdict) and
    depends on the sampled text alone, so equal samples get equal rewards on any process."""
    del winner, opened_thinking
    return 1.0 if len(text) % 2 else -1.0


def every_sample_finishes():
    """Count every sample as finished: a random tiny policy seldom ends within the few tokens
    the test samples, and the rollout gives an unfinished sample the failure reward whatever
    its text, so without this every group would be rewarded alike (no advantage)."""
    from rmr1_jax.sampling.engine import Engine
    from rmr1_jax.sampling.sampler import Sampler

    for cls in (Engine, Sampler):  # GRPO rolls out with the engine
        def generate(self, *args, _real=cls.generate, **kwargs):
            g = _real(self, *args, **kwargs)
            g.finished[:] = True
            return g

        cls.generate = generate


def dump_params(params, path):
    """Every process takes part (the gather is a collective); process 0 writes."""
    import jax

    from rmr1_jax.parallel.hostlocal import fetch

    flat = {"/".join(str(getattr(k, "key", k)) for k in p): fetch(x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)}
    if jax.process_index() == 0:
        np.savez(path, **flat)


def main():
    faulthandler.register(signal.SIGUSR1)  # the launcher asks for the stacks of a hung process
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: mp_launch
    from mp_launch import cache_on_every_process
    from rmr1_jax.parallel.mesh import initialize_distributed

    cache_on_every_process()  # every process, not process 0 alone, reads its resumes' programs back
    initialize_distributed()
    import jax

    if spec.get("compilation_cache"):
        # Test speed only: the resumed stages find their programs in the cache instead of
        # compiling them again. On CPU the cache key of a program differs between the processes
        # of a job (jax_share_binary_between_hosts would wait forever for process 0's binary),
        # and JAX writes the cache from process 0 only: cache_on_every_process() above lets
        # process 1 write its own.
        jax.config.update("jax_compilation_cache_dir", spec["compilation_cache"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

    from rmr1_jax.text import verdict
    from rmr1_jax.train.runner import load_config, run
    from sigterm_hook import sigterm_at_step

    verdict.judgment_reward = graded_reward  # looked up by the rollout at each call
    every_sample_finishes()
    pid, out = jax.process_index(), spec["out"]
    res = {"process_count": jax.process_count(), "device_count": jax.device_count(),
           "local_devices": jax.local_device_count(), "stages": {}, "seconds": {}}

    def stage(name, objective, cfg_path, signal_at=None):
        logs = []
        remove = sigterm_at_step(signal_at) if signal_at is not None and pid == jax.process_count() - 1 else None
        t0 = time.perf_counter()
        try:
            _, params, result, _ = run(load_config(objective, cfg_path), objective, log=logs.append)
        finally:
            if remove is not None:
                remove()
        res["seconds"][name] = round(time.perf_counter() - t0, 2)
        res["stages"][name] = {"step": result.step, "stopped": result.stopped_early,
                               "resumed": [line for line in logs if line.startswith("resumed from")],
                               "received_signal": [line for line in logs if line.startswith("received signal")]}
        return params

    stage("sft_stop", "distill", spec["sft"][0])
    dump_params(stage("sft_resume", "distill", spec["sft"][1]), os.path.join(out, "sft.npz"))
    stage("grpo_stop", "grpo", spec["grpo"], signal_at=spec["grpo_stop_at"])
    dump_params(stage("grpo_resume", "grpo", spec["grpo"]), os.path.join(out, "grpo.npz"))
    if spec.get("policy"):
        dump_params(stage("policy", "policy-grpo", spec["policy"]), os.path.join(out, "policy.npz"))
    with open(os.path.join(out, f"result.{pid}.json"), "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
