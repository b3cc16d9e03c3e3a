"""rmr1_jax: reasoning reward models (RM-R1) and rule-labeled reward models (RAMO) in JAX."""

__version__ = "0.1.0"
