"""Local multi-process JAX jobs for tests: ``processes`` copies of a worker script, each with
``devices`` simulated CPU devices, joined over loopback by
:func:`rmr1_jax.parallel.mesh.initialize_distributed` (``RMR1_COORDINATOR``,
``RMR1_NUM_PROCESSES``, ``RMR1_PROCESS_ID``; gloo collectives). A job of one process gets none
of those variables: it is a plain single-process run with ``devices`` devices.

    job = start_job(worker, [arg, ...], processes=2, devices=4)
    outputs = job.wait(timeout=300)  # every process exited 0, else AssertionError with its output

A worker that calls ``faulthandler.register(signal.SIGUSR1)`` has its stacks in the report of a
timeout (the launcher sends SIGUSR1 before it kills). ``wait(check=False)`` returns the outputs
without asserting the exit status (``job.returncodes`` holds them), for jobs meant to fail.

CPU devices come in process order, so a mesh over them puts each process's devices together; a
TPU slice's mesh follows the chips' topology and need not. ``interleave_devices()`` (called in a
worker before any mesh is made) makes every mesh interleave the processes' devices instead, so a
test can see code that assumes process-major rows. ``cli_worker.py [--interleave] ARGS...`` runs
``rmr1 ARGS...`` as one process of such a job.

JAX writes its persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, set by
``launch/test.sh``) from process 0 alone, and on CPU a program's cache key differs between the
processes of a job, so process 1 of every job compiled everything again at each launch (a
resume, a restart, a second job of the same programs) while process 0 read its programs back.
``cache_on_every_process()`` (called in a worker) lets every process write its own entries.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

_DISTRIBUTED_VARS = ("RMR1_COORDINATOR", "RMR1_NUM_PROCESSES", "RMR1_PROCESS_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    def __init__(self, procs: list[subprocess.Popen], logs: list):
        self.procs, self._logs = procs, logs

    def wait(self, timeout: float = 300, check: bool = True) -> list[str]:
        """Each process's output (stdout and stderr); every process must exit within ``timeout``
        seconds (a hung collective is killed, and reported, not waited on), and with ``check``
        exit 0."""
        deadline = time.monotonic() + timeout
        late = None
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                late = i
                self._dump_stacks()
                break
        self.kill()
        outs = [self._read(i) for i in range(len(self.procs))]
        for f in self._logs:
            f.close()
        if late is not None:
            raise AssertionError(f"process {late} of {len(self.procs)} still running after {timeout:.0f} s:\n"
                                 + "\n\n".join(f"process {i}:\n{out[-3000:]}" for i, out in enumerate(outs)))
        self.returncodes = [p.returncode for p in self.procs]
        if not check:
            return outs
        failed = [f"process {i} of {len(self.procs)} exited {p.returncode}:\n{out[-3000:]}"
                  for i, (p, out) in enumerate(zip(self.procs, outs)) if p.returncode != 0]
        assert not failed, "\n\n".join(failed)
        return outs

    def _read(self, i: int) -> str:
        f = self._logs[i]
        f.flush()
        f.seek(0)
        return f.read()

    def _dump_stacks(self) -> None:
        """SIGUSR1 to every running process: a worker that registered faulthandler for it writes
        its threads' stacks to its output (where a hung collective waits)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
        time.sleep(2)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def start_job(script: str, args: list[str], *, processes: int, devices: int, env: dict | None = None,
              xla_flags: str = "") -> Job:
    """Start ``processes`` copies of ``python script args...`` (see the module docstring), with
    ``env`` added to this process's environment and ``xla_flags`` to the device-count flag. Their
    output goes to temporary files (a full pipe would block a process inside a collective)."""
    base = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_VARS}
    base.update(env or {}, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip())
    port = free_port() if processes > 1 else None
    procs, logs = [], []
    for pid in range(processes):
        penv = dict(base)
        if processes > 1:
            penv.update(RMR1_COORDINATOR=f"127.0.0.1:{port}", RMR1_NUM_PROCESSES=str(processes),
                        RMR1_PROCESS_ID=str(pid))
        logs.append(tempfile.TemporaryFile("w+"))
        procs.append(subprocess.Popen([sys.executable, script, *map(str, args)], env=penv, stdout=logs[-1],
                                      stderr=subprocess.STDOUT, text=True))
    return Job(procs, logs)


def cache_on_every_process() -> None:
    """Test speed only: every process of a job writes the programs it compiles to JAX's persistent
    compilation cache, not process 0 alone (JAX's rule, against write contention on shared
    filesystems). On CPU each process's programs have their own keys, so process ``p`` of a later
    launch reads back what process ``p`` of an earlier one compiled: the same executable, so
    nothing a test compares changes. A no-op without a cache directory."""
    try:  # JAX internals (jax 0.10): where they differ, the cache keeps JAX's own rule
        from jax._src import compilation_cache, compiler, config, distributed

        write = compiler._cache_write
        config.persistent_cache_min_compile_time_secs, compilation_cache.put_executable_and_time  # noqa: B018
    except (ImportError, AttributeError):
        return

    def cache_write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
        if distributed.global_state.process_id == 0:
            return write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks)
        if host_callbacks or compile_time_secs < config.persistent_cache_min_compile_time_secs.value:
            return None
        try:
            compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                                      int(compile_time_secs))
        except Exception as ex:  # as JAX does: a cache that cannot be written is no failure
            import warnings

            warnings.warn(f"Error writing persistent compilation cache entry for {module_name!r}: {ex!r}")
        return None

    compiler._cache_write = cache_write


def interleave_devices() -> None:
    """Make ``jax.experimental.mesh_utils.create_device_mesh`` (what
    :func:`rmr1_jax.parallel.mesh.make_mesh` arranges devices with) lay the devices out
    process-interleaved in mesh order (process 0's first device, process 1's first, process 0's
    second, ...), as a TPU slice's topology-ordered mesh may: no process's rows of a batch are
    then a contiguous block."""
    import jax
    import numpy as np
    from jax.experimental import mesh_utils

    def create_device_mesh(shape, devices=None, **kwargs):
        del kwargs
        devices = list(jax.devices() if devices is None else devices)
        by_process: dict[int, list] = {}
        for d in devices:
            by_process.setdefault(d.process_index, []).append(d)
        per = len(devices) // len(by_process)
        order = [by_process[p][i] for i in range(per) for p in sorted(by_process)]
        return np.asarray(order, dtype=object).reshape(shape)

    mesh_utils.create_device_mesh = create_device_mesh
