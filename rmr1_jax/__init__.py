"""rmr1_jax: reasoning reward models (RM-R1) and rule-labeled reward models (RAMO) in JAX.

The names below are imported on first use (PEP 562), so ``import rmr1_jax`` (and ``rmr1
--help``) does not pay for JAX until something needs it."""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_hf": "rmr1_jax.checkpoint.hf",
    "save_hf": "rmr1_jax.checkpoint.hf",
    "load_model": "rmr1_jax.checkpoint.loading",
    "DecoderLM": "rmr1_jax.models",
    "ModelConfig": "rmr1_jax.models",
    "preset": "rmr1_jax.models",
    "generate": "rmr1_jax.inference.generate",
    "SamplingParams": "rmr1_jax.sampling.sampler",
    "MeshConfig": "rmr1_jax.parallel",
    "make_mesh": "rmr1_jax.parallel",
    "judgment_reward": "rmr1_jax.text.verdict",
    "parse_verdict": "rmr1_jax.text.verdict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rmr1_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
