"""The benchmarks ``rmr1 eval`` runs: one :class:`Benchmark` entry each, the one table the runner
(:mod:`rmr1_jax.eval.run`), the parser and the reports read. A new benchmark is a new entry.

Each entry names its functions as ``"module:function"`` strings, imported when a run uses them
(:meth:`Benchmark.fn`): this module imports only the errors (``rmr1 --help`` reads
:data:`BENCHMARKS` without loading JAX). The functions' shapes:

* ``load(path) -> tasks``: the benchmark file (or directory) as the tasks its runs take;
* ``runs[kind](model, tasks, results_path, *, batch_size, model_name, fingerprint, **options)
  -> RunStats``, one per model kind the benchmark accepts: ``"generative"`` (``model`` is a
  ``judge_fn``, see :func:`rmr1_jax.eval.runs.run_generative`) and ``"scalar"`` (a
  :class:`~rmr1_jax.eval.runs.ScalarRewardModel`);
* ``score(benchmark, results_path, *, no_verdict, expected) -> summary``: the official scores
  of a results file;
* ``report(summary, out_dir) -> {"md": path, ...}``: the report files, written into ``out_dir``;
* ``line(summary, name) -> str``: the summary's one line for the terminal (``name``: the
  model's, where the summary does not carry it);
* ``compare({name: summary}) -> markdown`` (optional): several models side by side.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

from rmr1_jax.errors import DataError

GENERATIVE, SCALAR = "generative", "scalar"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark: its name on the command line, its title in reports, the functions above,
    what a results row holds (``unit``: "scored 12 new <unit>") and other spellings of its name
    (``aliases``, e.g. in results files written elsewhere)."""

    name: str
    title: str
    load: str
    runs: Mapping[str, str]
    score: str
    report: str
    line: str
    compare: str | None = None
    unit: str = "examples"
    aliases: tuple[str, ...] = ()

    @property
    def models(self) -> tuple[str, ...]:
        """The model kinds it accepts (``"generative"``, ``"scalar"``)."""
        return tuple(self.runs)

    def fn(self, field: str, kind: str | None = None) -> Callable[..., Any]:
        """The function an entry names in ``field`` (``runs``: the one of model ``kind``)."""
        ref = self.runs[kind] if field == "runs" else getattr(self, field)
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)


_PAIRWISE = {"runs": {GENERATIVE: "rmr1_jax.eval.runs:run_generative", SCALAR: "rmr1_jax.eval.runs:run_scalar"},
             "score": "rmr1_jax.eval.scoring:score_results", "report": "rmr1_jax.eval.report:write_report",
             "line": "rmr1_jax.eval.report:summary_line", "compare": "rmr1_jax.eval.report:compare"}

REGISTRY: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("rewardbench", "RewardBench", "rmr1_jax.eval.benchmarks:load_rewardbench", **_PAIRWISE,
              aliases=("reward-bench", "reward_bench")),
    Benchmark("rewardbench2", "RewardBench 2", "rmr1_jax.eval.rewardbench2:load_rewardbench2",
              runs={SCALAR: "rmr1_jax.eval.rewardbench2:run_rewardbench2",
                    GENERATIVE: "rmr1_jax.eval.rewardbench2:run_rewardbench2_pairwise"},  # not official
              score="rmr1_jax.eval.rewardbench2_report:score_results",
              report="rmr1_jax.eval.rewardbench2_report:write_report",
              line="rmr1_jax.eval.rewardbench2_report:summary_line", unit="prompts",
              aliases=("reward-bench-2", "reward_bench_2")),
    Benchmark("rm-bench", "RM-Bench", "rmr1_jax.eval.benchmarks:load_rm_bench", **_PAIRWISE,
              aliases=("rmbench", "rm_bench")),
    Benchmark("rmb", "RMB", "rmr1_jax.eval.benchmarks:load_rmb", **_PAIRWISE),
    # RMB's best-of-N items ranked listwise by a generative judge's pairwise verdicts: not official
    Benchmark("rmb-bon", "RMB best-of-N (listwise)", "rmr1_jax.eval.rmb_listwise:load_rmb_bon",
              runs={GENERATIVE: "rmr1_jax.eval.rmb_listwise:run_rmb_listwise"},
              score="rmr1_jax.eval.rmb_listwise:score_results", report="rmr1_jax.eval.rmb_listwise:write_report",
              line="rmr1_jax.eval.rmb_listwise:summary_line", unit="items", aliases=("rmb_bon", "rmb-listwise")),
)}
BENCHMARKS = tuple(REGISTRY)
_NAMES = {alias: b.name for b in REGISTRY.values() for alias in (b.name, *b.aliases)}


def canonical(name: str) -> str:
    """A benchmark's name from any of its spellings (``"RewardBench"``, ``"reward-bench"`` ->
    ``"rewardbench"``); another name is a one-line error listing the benchmarks."""
    key = str(name).strip().lower()
    if key not in _NAMES:
        raise DataError(f"unknown benchmark {name!r} (expected one of {', '.join(BENCHMARKS)})")
    return _NAMES[key]


def get(name: str) -> Benchmark:
    """The entry of benchmark ``name`` (any spelling, :func:`canonical`)."""
    return REGISTRY[canonical(name)]


def load_benchmark(name: str, path: str) -> list:
    """The tasks of benchmark ``name`` read from ``path`` (its entry's ``load``)."""
    return get(name).fn("load")(path)
