from rmr1_jax.checkpoint.hf import load_hf, save_hf
