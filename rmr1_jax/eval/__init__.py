"""Evaluation on the public reward-model benchmarks with their official formulas.

The benchmarks are entries of one table (:mod:`~rmr1_jax.eval.registry`); the runner
(:mod:`~rmr1_jax.eval.run`: ``run_benchmark``, ``rescore``) reads it. The rest: the benchmark
files (:mod:`~rmr1_jax.eval.benchmarks`, :mod:`~rmr1_jax.eval.rewardbench2`), running models over
their tasks (:mod:`~rmr1_jax.eval.runs`), the per-example results files
(:mod:`~rmr1_jax.eval.results`), scores (:mod:`~rmr1_jax.eval.scoring`) and reports
(:mod:`~rmr1_jax.eval.report`, :mod:`~rmr1_jax.eval.rewardbench2_report`). Using a model outside
evaluation: :mod:`rmr1_jax.inference`. Modules are imported individually; this file imports
nothing."""
