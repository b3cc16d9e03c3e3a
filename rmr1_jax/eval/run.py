"""What ``rmr1 eval`` does, callable from a notebook: run a benchmark with a checkpoint and report
it (:func:`run_benchmark`), or score results files again (:func:`rescore`). Both read the
benchmark's entry in :mod:`rmr1_jax.eval.registry` (loader, runs per model kind, scorer, report)
and return an :class:`EvalOutcome` whose ``lines`` are what the command prints::

    out = run_benchmark("rewardbench", "runs/rm-r1/checkpoints", "data/rewardbench.parquet",
                        out_dir="runs/eval/rewardbench", max_new_tokens=2048)
    print("\\n".join(out.lines)); out.summary["overall"]
    rescore("rewardbench", ["runs/eval/rewardbench/results.jsonl"], no_verdict="half")
    run_benchmark(..., order="both", samples=16, vote="majority")   # accuracy against k = 1 ... 16

The checkpoint's head says which kind of model it is (:data:`KINDS`): an ``lm`` head is a
generative judge (its judgments are parsed for a verdict), a ``scalar`` head a reward model
(every response scored); a benchmark that does not accept the kind is a one-line error.

Multi-process jobs: every process reads the benchmark file and checks the checkpoint before
any collective; process 0 alone writes the results file and the report, and every process gets
the summary (:mod:`rmr1_jax.parallel.agreement`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from rmr1_jax.errors import UserError
from rmr1_jax.eval.registry import GENERATIVE, SCALAR, Benchmark, get

#: The checkpoint head of each model kind, and the verb of its summary line.
KINDS = {"lm": GENERATIVE, "scalar": SCALAR}
_VERB = {GENERATIVE: "judged", SCALAR: "scored"}
_NEEDS = {GENERATIVE: "generative judge", SCALAR: "scalar reward model"}
_NO_PATH = {GENERATIVE: "pairwise-judge", SCALAR: "scalar reward model"}


@dataclasses.dataclass
class EvalOutcome:
    """What a run or a re-scoring gave: the summary (None for a side-by-side comparison), the
    lines ``rmr1 eval`` prints, the run's counts (:class:`~rmr1_jax.eval.runs.RunStats`, None
    when re-scoring) and the report (or comparison) written, if any."""

    benchmark: str
    summary: dict | None
    lines: list[str]
    stats: Any = None
    report: str | None = None


def model_kind(ckpt: str) -> str:
    """``"generative"`` or ``"scalar"``: the kind of model checkpoint ``ckpt`` holds, from its
    head, without reading its weights."""
    from rmr1_jax.checkpoint.introspect import checkpoint_head

    head = checkpoint_head(ckpt)[0]
    if head not in KINDS:
        raise UserError(f"{ckpt}: a {head!r} head is neither a generative judge ('lm') nor a scalar reward "
                        f"model ('scalar')")
    return KINDS[head]


def _inputs(b: Benchmark, ckpt: str, data: str) -> tuple[str, list]:
    """(the checkpoint's model kind, the benchmark's tasks), checked: on every process."""
    kind = model_kind(ckpt)
    if kind not in b.models:
        raise UserError(f"{ckpt}: {b.title} has no official {_NO_PATH[kind]} path; --benchmark {b.name} needs a "
                        + " or a ".join(_NEEDS[k] for k in b.models))
    return kind, b.fn("load")(data)


def _scalar(ckpt: str, mesh, o: dict) -> tuple[Any, dict]:
    """A scalar reward model, and its runs' options (with what produces the rows)."""
    from rmr1_jax.inference.reward import load_reward_model

    if o["order"] == "both":
        raise UserError("--order both is for generative judges; a scalar reward model scores each response once")
    if o["prob"]:
        raise UserError("--prob reads a generative judge's verdict probability; a scalar reward model has none")
    if o["samples"] > 1:
        raise UserError("--samples samples a generative judge's judgments; a scalar reward model scores each "
                        "response once")
    scorer = load_reward_model(ckpt, mesh, tokenizer_path=o["tokenizer"], max_length=o["max_length"],
                               batch_size=o["batch_size"], truncate=o["overlong"] == "truncate")
    return scorer, {"fingerprint": scorer.fingerprint()}


def _generative(ckpt: str, mesh, o: dict) -> tuple[Callable, dict]:
    """A judge as its runs take it (``judge_fn(batch) -> judgments``), and their options (with
    what produces the rows). With ``samples`` k > 1 each judgment is k samples voted on
    (:mod:`rmr1_jax.eval.voting`)."""
    from rmr1_jax.eval.voting import vote_outputs
    from rmr1_jax.inference.judge import judge_pairs
    from rmr1_jax.inference.loading import load_judge

    judge = load_judge(ckpt, mesh, tokenizer_path=o["tokenizer"], prompt_variant=o["prompt_variant"],
                       system_file=o["system_file"], user_file=o["user_file"])
    k, vote, temperature = o["samples"], o["vote"], o["temperature"]
    prob = o["prob"] or vote == "mean-prob"

    def judge_fn(batch):
        outs = judge_pairs(judge, batch, max_new_tokens=o["max_new_tokens"], batch_size=o["batch_size"],
                           prob=prob, samples=k, temperature=temperature, seed=o["seed"])
        return vote_outputs(outs, vote) if k > 1 else outs

    # rows with verdict probabilities and rows without, greedy and sampled, are not one results file
    sampling = {"samples": k, "vote": vote, "temperature": temperature} if k > 1 else \
        {"temperature": temperature} if temperature > 0 else {}
    fingerprint = judge.fingerprint(max_new_tokens=o["max_new_tokens"], order=o["order"], seed=o["seed"],
                                    **({"prob": True} if prob else {}), **sampling)
    return judge_fn, {"order": o["order"], "seed": o["seed"], "keep_text": o["keep_text"], "fingerprint": fingerprint}


_LOADERS = {SCALAR: _scalar, GENERATIVE: _generative}


def score_and_report(benchmark: str, results: str, out_dir: str | None = None, *, no_verdict: str = "zero",
                     expected: Sequence | None = None) -> tuple[dict, dict | None]:
    """Score a results file with the benchmark's scorer and, with ``out_dir``, write its report
    there: ``(summary, {"md": path, ...} or None)``. ``expected``: the tasks the file should
    hold (what is missing is a warning in the summary, where the benchmark compares it)."""
    b = get(benchmark)
    summary = b.fn("score")(b.name, results, no_verdict=no_verdict, expected=expected)
    return summary, (b.fn("report")(summary, out_dir) if out_dir else None)


def run_benchmark(benchmark: str, ckpt: str, data: str, *, out_dir: str | None = None, mesh=None,
                  batch_size: int = 16, limit: int | None = None, no_verdict: str = "zero", order: str = "random",
                  seed: int = 0, max_new_tokens: int = 4096, keep_text: bool = False, max_length: int = 4096,
                  overlong: str = "error", tokenizer: str | None = None, prompt_variant: str | None = None,
                  system_file: str | None = None, user_file: str | None = None, prob: bool = False,
                  samples: int = 1, vote: str | None = None, temperature: float | None = None,
                  scheme: str | None = None) -> EvalOutcome:
    """Run ``benchmark`` (any spelling of a registry name) read from ``data`` with the model of
    ``ckpt`` (an Orbax checkpoint or HF directory: a generative judge or a scalar reward model),
    appending one row per finished example to ``OUT/results.jsonl`` (resumed: examples already
    there are skipped; a file another model or set-up wrote is refused), then score it and write the report into ``OUT`` (``out_dir``, default
    ``runs/eval/BENCHMARK``).

    ``mesh``: a ``jax.sharding.Mesh``, or a :class:`~rmr1_jax.parallel.MeshConfig` built once the
    inputs are read (default: every device on the data axis). ``limit``: the first N tasks only.
    Generative judges: ``order`` (``"random"``: a seeded coin flip per task; ``"both"``),
    ``seed``, ``max_new_tokens``, ``keep_text`` (store the judgments), the prompt template
    (``prompt_variant``, ``system_file``, ``user_file``; default the checkpoint's). Scalar models:
    ``max_length`` and ``overlong`` (``"error"`` or ``"truncate"``). ``no_verdict``: the score of
    a judgment without a verdict (``"zero"`` or ``"half"``). ``prob``: also read each judgment's
    verdict probability (a ``prob_a`` column; the report's calibration section). ``samples``
    k > 1: k judgments sampled at ``temperature`` (default 1.0) per pair and order, aggregated by
    ``vote`` (``"majority"``, the default, or ``"mean-prob"``; :mod:`rmr1_jax.eval.voting`),
    every vote kept in the rows and the report's "accuracy against k" table and plot read from
    them; with one sample ``temperature`` > 0 samples it (default greedy). ``scheme``: a listwise
    benchmark's ranking (``rmb-bon``: ``"round_robin"``, the default, or ``"knockout"``)."""
    from rmr1_jax.eval.voting import check_voting

    from rmr1_jax.parallel.agreement import agreed, on_process_zero
    from rmr1_jax.parallel.mesh import MeshConfig, make_mesh

    vote, temperature = check_voting(samples, vote, temperature)
    b = get(benchmark)
    if scheme is not None and b.name != "rmb-bon":
        raise UserError(f"--scheme ranks a listwise benchmark's candidates (rmb-bon); {b.name} judges pairs")
    kind, tasks = agreed(_inputs, b, ckpt, data)  # a file one host cannot read stops every process
    tasks = tasks[:limit] if limit else tasks
    out = out_dir or os.path.join("runs", "eval", b.name)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    mesh = make_mesh(mesh) if mesh is None or isinstance(mesh, MeshConfig) else mesh
    opts = {"batch_size": batch_size, "order": order, "seed": seed, "max_new_tokens": max_new_tokens,
            "keep_text": keep_text, "max_length": max_length, "overlong": overlong, "tokenizer": tokenizer,
            "prompt_variant": prompt_variant, "system_file": system_file, "user_file": user_file, "prob": prob,
            "samples": samples, "vote": vote, "temperature": temperature}
    model, run_opts = _LOADERS[kind](ckpt, mesh, opts)
    if scheme is not None:
        run_opts["scheme"] = scheme
    name = os.path.basename(os.path.normpath(ckpt))
    stats = b.fn("runs", kind)(model, tasks, results, batch_size=batch_size, model_name=name, **run_opts)
    summary, paths = on_process_zero(score_and_report, b.name, results, out, no_verdict=no_verdict, expected=tasks)
    lines = [f"{_VERB[kind]} {stats.written} new {b.unit} ({stats.skipped} already in {results})",
             b.fn("line")(summary, name), f"report: {paths['md']}"]
    return EvalOutcome(b.name, summary, lines, stats, paths["md"])


def _names(results: Sequence[str]) -> list[str]:
    """A column name per results file: its directory's name (the file paths where two agree)."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(r))) or r for r in results]
    return names if len(set(names)) == len(names) else list(results)


def rescore(benchmark: str, results: Sequence[str], out_dir: str | None = None, *,
            no_verdict: str = "zero") -> EvalOutcome:
    """Score results files again (``rmr1 eval score``): one file, with its report written into
    ``out_dir`` when given; several, side by side (the benchmark's ``compare``), the table
    written to ``out_dir/compare-BENCHMARK.md`` when given."""
    from rmr1_jax.data.readers import atomic_write_text

    b = get(benchmark)
    results = list(results)
    if not results:
        raise UserError("rmr1 eval score needs --results FILE [FILE ...]")
    if len(results) == 1:
        summary, paths = score_and_report(b.name, results[0], out_dir, no_verdict=no_verdict)
        report = paths["md"] if paths else None
        return EvalOutcome(b.name, summary, [b.fn("line")(summary, results[0])] + ([f"report: {report}"] if report
                                                                                     else []), report=report)
    if b.compare is None:
        raise UserError(f"rmr1 eval score --benchmark {b.name} takes one --results file")
    table = b.fn("compare")({n: b.fn("score")(b.name, r, no_verdict=no_verdict, expected=None)
                            for n, r in zip(_names(results), results)})
    report = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        report = os.path.join(out_dir, f"compare-{b.name}.md")
        atomic_write_text(report, table + "\n")
    return EvalOutcome(b.name, None, [table], report=report)
