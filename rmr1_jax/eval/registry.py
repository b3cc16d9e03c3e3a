"""The benchmarks ``rmr1 eval`` runs, by name."""

BENCHMARKS = ("rewardbench", "rewardbench2", "rm-bench", "rmb")
