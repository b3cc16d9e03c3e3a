"""The end-to-end demos of ``rmr1 demo``, each a library function a notebook can call too:

* ``rmr1``: ``rmr1 demo``, the RM-R1 pipeline (distillation, then GRPO) on the verifiable
  judging tasks of :mod:`rmr1_jax.worlds.judging_tasks`;
* ``ramo``: ``rmr1 demo ramo``, the RAMO pipeline (rule scoring, selection, labels, Rule
  Adapter, reward models) on the safety world of :mod:`rmr1_jax.worlds.safety` (``--world
  hard``: :mod:`rmr1_jax.worlds.safety_hard`);
* ``recipes``: where a demo's recipe directory is and how ``--quick`` (or RAMO's hard world)
  overrides it.

Modules are imported individually; this file imports nothing."""
