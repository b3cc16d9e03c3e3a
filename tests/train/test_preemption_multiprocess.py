"""Preemption of a multi-host job: two local JAX processes (4 CPU devices each, loopback), of which
only one receives SIGTERM. The processes agree on the stop step, save it together and exit 0;
the restart resumes from it. Data and recipe as in test_resume.py."""

import json
import os
import socket
import subprocess
import sys

import pytest

from test_resume import N, _config, setup  # noqa: F401  (setup is the module fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(cfg_path, signal_pid, stop_step, result):
    worker = os.path.join(os.path.dirname(__file__), "preempt_worker.py")
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, RMR1_COORDINATOR=f"127.0.0.1:{port}", RMR1_NUM_PROCESSES="2",
                   RMR1_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu",
                   # less LLVM optimization: the compile is most of a run (the test checks steps, not numbers)
                   XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
        procs.append(subprocess.Popen([sys.executable, worker, cfg_path, str(signal_pid), str(stop_step), result],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    out = []
    for pid in range(2):
        with open(f"{result}.{pid}") as f:
            out.append(json.load(f))
    return out


@pytest.mark.multiprocess
def test_sigterm_to_one_of_two_processes(setup):
    """SIGTERM reaches only process 1, during step 3: both processes agree to stop after that
    step, save step 3 together and exit 0 (with a per-process stop flag, one would enter the
    collective save while the other ran step 4: a hang). The restart resumes from step 3."""
    root, data, tok_dir = setup
    cfg_path = _config(root, "two-processes", data, tok_dir)
    first = _two_processes(cfg_path, signal_pid=1, stop_step=3, result=str(root / "first"))
    assert [r["step"] for r in first] == [3, 3] and all(r["stopped"] for r in first)
    from rmr1_jax.checkpoint.manager import CheckpointManager

    with CheckpointManager(os.path.join(str(root / "two-processes"), "checkpoints"), read_only=True) as m:
        assert m.all_steps() == [2, 3]
    second = _two_processes(cfg_path, signal_pid=-1, stop_step=0, result=str(root / "second"))
    assert [r["step"] for r in second] == [2 * N, 2 * N] and not any(r["stopped"] for r in second)
    assert all(len(r["resumed"]) == 1 and r["resumed"][0].endswith("at step 3") for r in second)
