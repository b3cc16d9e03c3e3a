from rmr1_jax.checkpoint.hf import load_hf, save_hf
from rmr1_jax.checkpoint.manager import CheckpointManager, Restored
from rmr1_jax.checkpoint.trees import abstract_like
from rmr1_jax.checkpoint.reading import read_config, read_metadata, restore_params
from rmr1_jax.checkpoint.loading import load_model
