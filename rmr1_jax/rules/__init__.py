"""RAMO rule pipeline on files and arrays: the rule pool (``pool``, ``default_pool``),
rule-score files (``score_files``), per-pair rule selection and rule labels (``select``),
their diagnostics against gold (``diagnostics``) and the Rule Adapter's apply mode
(``apply``). Scoring rules with a model is inference (:mod:`rmr1_jax.inference.rules`); the
``rmr1 rules`` handlers are in :mod:`rmr1_jax.cli.rules`. Modules are imported individually;
this file imports nothing."""
