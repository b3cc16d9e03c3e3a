"""Seeded synthetic worlds whose right answers a program knows, for the demos, the tests and
the benchmarks:

* ``judging_tasks``: verifiable judging pairs (small arithmetic, instruction checks) for
  RM-R1, with Chain-of-Rubrics traces from ``oracle``, which decides a pair from the question
  and the two replies alone;
* ``safety``: the safety world of ``rmr1 demo ramo``, a rule pool and pairs whose gold
  preference a few pair-specific rules decide while tone rules score both replies noisily,
  with the annotator that labels rule-scoring examples;
* ``safety_hard``: the hard world of ``rmr1 demo ramo --world hard``, the same harm topics
  with style rules whose large discrepancies are unrelated to gold, mildly broken deciding
  rules, a rule that decides some pairs and is noise in others, and per-rule annotator noise.

Modules are imported individually; this file imports nothing."""
