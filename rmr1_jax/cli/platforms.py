"""Which JAX platforms a command probes: none that this host cannot have.

With libtpu installed (``pip install -e ".[tpu]"``), JAX tries the TPU backend first on every
host. Without a TPU, libtpu's C++ start-up then writes ``Failed to find host bounds...`` and
``unexpected worker hostname...`` to stderr before its logging is set up (so
``TPU_STDERR_LOG_LEVEL`` / ``TPU_MIN_LOG_LEVEL`` do not reach them), takes
``/tmp/libtpu_lockfile`` and falls back to the CPU. :func:`skip_absent_tpu` chooses the CPU
directly on such a host, before JAX starts a backend.

A host has a TPU when it has TPU device nodes (``/dev/accel*`` on v2-v4 and v5p, ``/dev/vfio``
on v5e and later; a TPU VM and a GKE TPU container both have them) or a Google TPU on the PCI
bus (the test JAX itself makes). Anything else that names an accelerator leaves the choice to
JAX: an explicit ``JAX_PLATFORMS`` (even empty), ``JAX_FORCE_TPU_INIT``, a TPU topology in
``TPU_ACCELERATOR_TYPE``/``TPU_WORKER_HOSTNAMES``, or a GPU device node (NVIDIA, AMD, WSL).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from typing import MutableMapping

_TPU_NODES = ("dev/accel*", "dev/vfio")
_GPU_NODES = ("dev/nvidia0", "dev/nvidiactl", "dev/dxg", "dev/kfd")
_GOOGLE_PCI_VENDOR = "0x1ae0"
_CHOSEN_ELSEWHERE = ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")


def _libtpu_installed(environ) -> bool:
    return bool(environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None


def _tpu_present(root: str) -> bool:
    if any(glob.glob(os.path.join(root, p)) for p in _TPU_NODES):
        return True
    for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
        try:
            with open(vendor) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def skip_absent_tpu(environ: MutableMapping[str, str] | None = None, root: str = "/") -> bool:
    """Set ``JAX_PLATFORMS=cpu`` when libtpu is installed but this host has no TPU, no GPU and
    no platform chosen otherwise (module docstring); returns whether it did. ``root`` is where
    ``/dev`` and ``/sys`` are looked up (tests point it at a directory of their own)."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in _CHOSEN_ELSEWHERE) or not _libtpu_installed(environ):
        return False
    if _tpu_present(root) or any(os.path.exists(os.path.join(root, p)) for p in _GPU_NODES):
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    if environ is os.environ and "jax" in sys.modules:  # JAX read the variable when imported
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    return True
