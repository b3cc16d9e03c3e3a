from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.decoder import DecoderLM, init_cache
from rmr1_jax.models.params import init_params, param_logical_axes, param_shardings
from rmr1_jax.models.presets import PRESETS, preset
