"""RAMO rule pipeline: the rule pool (``pool``, ``default_pool``), rule-score files
(``score_files``), rule scoring with our own model (``scoring``), per-pair rule selection,
rule labels and their diagnostics (``select``), and the ``rmr1 rules`` command functions
(``commands``). Modules are imported individually; this file imports nothing."""
