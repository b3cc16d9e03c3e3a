"""rmr1_jax: reasoning reward models (RM-R1) and rule-labeled reward models (RAMO) in JAX."""

__version__ = "0.1.0"

from rmr1_jax.checkpoint.hf import load_hf, save_hf  # noqa: E402
from rmr1_jax.checkpoint.loading import load_model  # noqa: E402
from rmr1_jax.models import DecoderLM, ModelConfig, preset  # noqa: E402
from rmr1_jax.parallel import MeshConfig, make_mesh  # noqa: E402
from rmr1_jax.text.verdict import judgment_reward, parse_verdict  # noqa: E402

__all__ = ["DecoderLM", "MeshConfig", "ModelConfig", "judgment_reward", "load_hf", "load_model", "make_mesh",
           "parse_verdict", "preset", "save_hf"]
