"""``rmr1 plan``: a training job's steps compiled ahead of time for a TPU slice (through
libtpu's topology descriptions, no TPU needed) or a simulated CPU mesh, with per-device
memory, FLOPs, step time and whether the job fits. See :func:`rmr1_jax.plan.job.plan`."""
