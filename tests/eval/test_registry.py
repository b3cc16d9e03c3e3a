"""The benchmark registry: one entry per benchmark whose functions exist with the shapes the
runner calls, readable without JAX (``rmr1 --help`` lists its names), every spelling of a name
found, and the parser offering exactly its benchmarks."""

import inspect
import subprocess
import sys

import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.eval import registry


def test_every_entry_names_functions_that_exist():
    assert registry.BENCHMARKS == ("rewardbench", "rewardbench2", "rm-bench", "rmb", "rmb-bon")
    for b in registry.REGISTRY.values():
        assert set(b.models) <= {registry.GENERATIVE, registry.SCALAR} and b.models
        for field in ("load", "score", "report", "line") + (("compare",) if b.compare else ()):
            assert callable(b.fn(field)), (b.name, field)
        for kind in b.models:
            params = inspect.signature(b.fn("runs", kind)).parameters
            assert {"batch_size", "model_name"} <= set(params), (b.name, kind)
        assert {"no_verdict", "expected"} <= set(inspect.signature(b.fn("score")).parameters), b.name
    # a generative judge's RewardBench 2 run is pairwise, labelled not official
    assert registry.get("rewardbench2").models == (registry.SCALAR, registry.GENERATIVE)
    assert registry.get("rmb").models == (registry.GENERATIVE, registry.SCALAR)
    # RMB's best-of-N ranked listwise by a generative judge, labelled not official
    assert registry.get("rmb-listwise").models == (registry.GENERATIVE,)


def test_names_and_their_spellings():
    assert registry.canonical("Reward-Bench") == "rewardbench" and registry.canonical("RM_Bench") == "rm-bench"
    assert registry.get("rewardbench2").title == "RewardBench 2"
    with pytest.raises(DataError, match="unknown benchmark 'mtbench' .*rewardbench, rewardbench2, rm-bench, rmb, rmb-bon"):
        registry.get("mtbench")


def test_the_registry_and_the_parser_load_without_jax():
    code = ("import sys; from rmr1_jax.cli.parsers import build_parser; from rmr1_jax.eval.registry import BENCHMARKS; "
            "a = build_parser().parse_args(['eval', '--benchmark', 'rewardbench2']); "
            "assert 'jax' not in sys.modules and a.benchmark in BENCHMARKS; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
