"""Where a plan compiles for: a TPU slice described by libtpu (no TPU needed), or this
host's CPU devices as a simulated mesh; and what each chip offers (HBM, dense bf16 peak).

Names: ``v5p:2x2x2``, ``v5p:4x4x4``, ``v6e:4x4``, ``v5e:8x8``, ``v4:2x2x2`` (generation and
chip grid, as in GKE and ``gcloud`` topologies), or ``cpu:N`` (N host CPU devices; the
process must start with ``--xla_force_host_platform_device_count`` >= N, which ``rmr1 plan``
sets when it is the first to import JAX).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

from rmr1_jax.errors import ConfigError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # per chip
    bf16_flops: float  # dense bf16 peak per chip, FLOP/s
    hbm_bandwidth: float  # bytes/s per chip
    dims: int  # topology dimensions (2 for the lite chips' 2-D tori, 3 otherwise)


# Google Cloud's published per-chip figures.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1228e9, 3),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9, 2),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9, 3),
    "v6e": Chip("TPU v6e (Trillium)", 32 * GIB, 918e12, 1640e9, 2),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """A compile target: its devices (compile-only TPU devices, or CPU devices), and the
    memory and peak FLOP/s of one device (a TPU chip may expose several devices)."""

    name: str
    kind: str  # "tpu" or "cpu"
    devices: tuple
    chips: int
    device_hbm_bytes: int
    device_peak_flops: float
    device_bandwidth: float  # HBM bytes/s of one device
    hosts: int  # processes of a job on this target (TPU VMs hold 4 chips each)
    description: str

    @property
    def num_devices(self) -> int:
        return len(self.devices)


def parse(name: str) -> tuple[str, tuple[int, ...]]:
    """``"v5p:2x2x2"`` -> ``("v5p", (2, 2, 2))``; ``"cpu:8"`` -> ``("cpu", (8,))``."""
    gen, sep, grid = name.partition(":")
    gen = gen.lower()
    known = ", ".join([f"{g}:{'x'.join(['N'] * c.dims)}" for g, c in CHIPS.items()] + ["cpu:N"])
    if not sep or (gen not in CHIPS and gen != "cpu"):
        raise ConfigError(f"--topology {name!r}: expected one of {known}")
    try:
        dims = tuple(int(d) for d in grid.lower().split("x"))
    except ValueError:
        dims = ()
    want = 1 if gen == "cpu" else CHIPS[gen].dims
    if len(dims) != want or any(d < 1 for d in dims):
        raise ConfigError(f"--topology {name!r}: {gen} takes {want} positive integer dimension(s) "
                          f"joined by 'x' (e.g. {known})")
    return gen, dims


@contextlib.contextmanager
def _quiet_fd2():
    """libtpu prints start-up warnings about the (absent) TPU host on file descriptor 2."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def resolve(name: str) -> Target:
    gen, dims = parse(name)
    import jax

    if gen == "cpu":
        n = dims[0]
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise ConfigError(f"--topology {name}: this process has {len(devices)} CPU devices; start it with "
                              f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
        import psutil

        from rmr1_jax.train.flops import measure_matmul_peak

        peak = measure_matmul_peak(512, jax.numpy.float32, repeats=3, devices=devices[:1])
        return Target(name, "cpu", tuple(devices[:n]), n, psutil.virtual_memory().total // n, peak, 20e9, 1,
                      f"{n} simulated CPU devices (host memory split evenly; peak: one device's measured "
                      f"float32 matmul rate)")
    # libtpu takes a lock file per host unless told that several processes may load it; a
    # plan only compiles, so it never contends for a chip
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        with _quiet_fd2():
            topo = topologies.get_topology_desc(f"{gen}:{'x'.join(map(str, dims))}", "tpu")
    except Exception as e:  # no libtpu, or a grid libtpu rejects
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--topology {name}: cannot describe this TPU slice ({first}); compiling for TPUs "
                          f"needs libtpu: pip install 'rmr1_jax[tpu]'") from None
    chip = CHIPS[gen]
    chips = math.prod(dims)
    devices = tuple(topo.devices)
    per_chip = len(devices) / chips
    return Target(name, "tpu", devices, chips, int(chip.hbm_bytes / per_chip), chip.bf16_flops / per_chip,
                  chip.hbm_bandwidth / per_chip, max(1, math.ceil(chips / 4)), f"{chip.name}, {chips} chips ({len(devices)} devices), {chip.hbm_bytes / GIB:.0f} GiB HBM, "
                  f"{chip.bf16_flops / 1e12:.0f} TFLOP/s bf16 and "
                  f"{chip.hbm_bandwidth / 1e9:.0f} GB/s per chip")
