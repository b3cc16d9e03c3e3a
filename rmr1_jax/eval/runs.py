"""Running a reward model over benchmark tasks, writing one results row per finished example.

Two kinds of models:

* a **scalar** reward model (:class:`ScalarRewardModel`: one number per prompt + response,
  e.g. the Bradley-Terry model) - :func:`run_scalar` scores both responses of each task;
* a **generative** judge - :func:`run_generative` takes ``judge_fn(batch)`` where ``batch``
  is a list of ``(prompt_messages, response_A, response_B)`` and the result is one verdict
  per entry: ``"A"``, ``"B"`` or ``None`` (no verdict), an object with a ``verdict``
  attribute such as :class:`rmr1_jax.inference.judge.Judgment`, or a dict with a ``"verdict"``
  key (as :func:`rmr1_jax.inference.judge.judge_pairs` returns).

Both append rows through a :class:`~rmr1_jax.eval.results.ResultsWriter` (one fsynced write
per batch) and skip examples whose ``(item_id, pair_index)`` is already in the results file,
so rerunning an interrupted evaluation finishes only what is missing; with a ``fingerprint``
(what produces the rows: the model, its templates, the options) a file written by another
set-up is refused. Row format: see
:mod:`rmr1_jax.eval.scoring`; the ``correct`` written there uses the default rules (no
verdict 0, scalar tie 0.5) and is recomputed at scoring time.

A/B positions: ``order="random"`` shows the better response as A or B by a coin flip that
depends only on ``(seed, benchmark, item_id, pair_index)`` - reproducible, and unchanged when
a run resumes. ``order="both"`` judges every pair twice (as given, then swapped); the row's
``correct`` is the mean over the two orders and the run reports position consistency (share
of pairs whose two verdicts name the same response).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

from rmr1_jax import ab_positions
from rmr1_jax.eval.benchmarks import ComparisonTask
from rmr1_jax.eval.results import ResultsWriter
from rmr1_jax.eval.correctness import example_correct

Prompt = list  # list of {"role", "content"} messages


@runtime_checkable
class ScalarRewardModel(Protocol):
    """Anything with ``score(prompts, responses) -> list[float]``: one reward per
    (conversation so far, assistant response) pair, higher is better."""

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        ...


@dataclasses.dataclass
class RunStats:
    total: int = 0  # tasks given
    skipped: int = 0  # already in the results file
    written: int = 0  # judged in this run
    no_verdict: int = 0  # judgments in this run without a verdict (generative)
    both_orders: int = 0  # pairs judged in both orders in this run
    consistent: int = 0  # of those, pairs whose two verdicts name the same response (ab_positions.position_consistent)

    @property
    def position_consistency(self) -> float | None:
        return self.consistent / self.both_orders if self.both_orders else None

    def count_matches(self, out) -> None:
        """Add the matches of a :func:`~rmr1_jax.inference.group_rewards.score_groups` result (each
        judged in both orders; consistent when neither tied by position nor without a verdict)."""
        self.both_orders += out.matches
        self.consistent += out.matches - out.inconsistent - out.no_verdict
        self.no_verdict += out.no_verdict


def _open(writer: ResultsWriter | str, benchmark: str | None, fingerprint: dict | None) -> tuple[ResultsWriter, bool]:
    if isinstance(writer, ResultsWriter):
        return writer, False
    return ResultsWriter(str(writer), benchmark, fingerprint=fingerprint), True


def _pending(tasks: Sequence[ComparisonTask], writer: ResultsWriter, stats: RunStats) -> list[ComparisonTask]:
    seen: set = set()
    out = []
    for t in tasks:
        if t.key in seen:
            raise ValueError(f"two tasks share the key {t.key} (item_id, pair_index)")
        seen.add(t.key)
        if t.key in writer.done:
            stats.skipped += 1
        else:
            out.append(t)
    return out


def _base_row(task: ComparisonTask, model_name: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"benchmark": task.benchmark, "item_id": task.item_id, "subset": task.subset,
                           "pair_index": task.pair_index}
    if model_name:
        row["model"] = model_name
    if task.meta:
        row["meta"] = dict(task.meta)
    return row


def _run(tasks: Sequence[ComparisonTask], writer: ResultsWriter | str, batch_size: int,
         progress: Callable[[int, int], None] | None, fingerprint: dict | None,
         rows_for: Callable[[list[ComparisonTask], RunStats], list[dict[str, Any]]]) -> RunStats:
    """What both runners share: skip finished tasks, judge/score the rest ``batch_size`` at a
    time with ``rows_for``, append each batch's rows to the results file as it finishes."""
    tasks = list(tasks)
    w, owned = _open(writer, tasks[0].benchmark if tasks else None, fingerprint)
    stats = RunStats(total=len(tasks))
    try:
        todo = _pending(tasks, w, stats)
        for i in range(0, len(todo), batch_size):
            stats.written += w.write(rows_for(todo[i:i + batch_size], stats))
            if progress:
                progress(stats.skipped + stats.written, stats.total)
    finally:
        if owned:
            w.close()
    return stats


def run_scalar(model: ScalarRewardModel, tasks: Sequence[ComparisonTask], writer: ResultsWriter | str, *,
               batch_size: int = 16, model_name: str | None = None, fingerprint: dict | None = None,
               progress: Callable[[int, int], None] | None = None) -> RunStats:
    """Score ``response_1`` and ``response_2`` of every task not yet in the results file
    (``batch_size`` tasks, i.e. ``2 * batch_size`` responses, per ``model.score`` call).
    ``fingerprint``: what produces the rows, checked against a resumed file's."""

    def rows_for(chunk, stats):
        prompts = [t.prompt for t in chunk for _ in (0, 1)]
        responses = [r for t in chunk for r in (t.response_1, t.response_2)]
        scores = list(model.score(prompts, responses))
        if len(scores) != len(responses):
            raise ValueError(f"model.score returned {len(scores)} scores for {len(responses)} responses")
        rows = []
        for k, t in enumerate(chunk):
            s1, s2 = float(scores[2 * k]), float(scores[2 * k + 1])
            if not (math.isfinite(s1) and math.isfinite(s2)):
                raise ValueError(f"model.score returned a non-finite score for item {t.item_id!r} "
                                 f"pair {t.pair_index}: {s1}, {s2}")
            row = _base_row(t, model_name)
            row.update(scores=[s1, s2], first_is_better=t.first_is_better)
            row["correct"] = example_correct(row)
            rows.append(row)
        return rows

    return _run(tasks, writer, batch_size, progress, fingerprint, rows_for)


def first_shown_as_a(task: ComparisonTask, seed: int) -> bool:
    """The seeded coin flip for ``order="random"`` (:func:`rmr1_jax.ab_positions.coin_at_a`): is
    ``response_1`` shown as A?"""
    return ab_positions.coin_at_a(seed, task.benchmark, task.item_id, task.pair_index)


def _verdict(x: Any) -> str | None:
    v = x.get("verdict") if isinstance(x, dict) else getattr(x, "verdict", x)
    if v is None:
        return None
    s = str(v).strip()
    if s.upper() in ("A", "B"):
        return s.upper()
    if s.lower() in ("model_a", "model_b"):
        return s[-1].upper()
    raise ValueError(f"judge_fn returned {v!r}; expected 'A', 'B' or None (or an object with .verdict)")


def _text(x: Any) -> str | None:
    return x.get("judgment", x.get("text")) if isinstance(x, dict) else getattr(x, "text", None)


def run_generative(judge_fn: Callable[[list[tuple[Prompt, str, str]]], Iterable[Any]],
                   tasks: Sequence[ComparisonTask], writer: ResultsWriter | str, *, order: str = "random",
                   seed: int = 0, batch_size: int = 16, model_name: str | None = None, keep_text: bool = False,
                   fingerprint: dict | None = None, progress: Callable[[int, int], None] | None = None) -> RunStats:
    """Judge every task not yet in the results file. ``order``: ``"random"`` (one judgment,
    A/B by the seeded coin flip) or ``"both"`` (two judgments, both orders, in the same
    ``judge_fn`` call). With ``keep_text`` the judgment texts (``.text`` of objects, or the
    ``"judgment"``/``"text"`` entry of dicts) are stored in the row as ``judgment``. A judge
that votes over k samples (:func:`rmr1_jax.eval.voting.vote_outputs`) also gives each
entry's ``votes`` (and ``vote_probs``), stored as ``votes``/``votes_swapped``, and ``vote``.
    ``fingerprint``: what produces the rows, checked against a resumed file's."""
    if order not in ("random", "both"):
        raise ValueError(f"order must be 'random' or 'both', got {order!r}")

    def rows_for(chunk, stats):
        inputs: list[tuple[Prompt, str, str]] = []
        winners: list[list[str]] = []
        for t in chunk:
            flips = [first_shown_as_a(t, seed)] if order == "random" else [True, False]
            ws = []
            for first_a in flips:
                a, b, first_at = ab_positions.place(t.response_1, t.response_2, first_a)
                inputs.append((t.prompt, a, b))
                ws.append(first_at if t.first_is_better else ab_positions.flip(first_at))
            winners.append(ws)
        outs = list(judge_fn(inputs))
        if len(outs) != len(inputs):
            raise ValueError(f"judge_fn returned {len(outs)} verdicts for {len(inputs)} prompts")
        rows, pos = [], 0
        for t, ws in zip(chunk, winners):
            got = outs[pos:pos + len(ws)]
            pos += len(ws)
            vs = [_verdict(x) for x in got]
            row = _base_row(t, model_name)
            if len(ws) == 1:
                row.update(verdict=vs[0], winner=ws[0])
            else:
                row.update(verdict=vs, winner=ws)
                stats.both_orders += 1
                stats.consistent += ab_positions.position_consistent(vs, ws)
            if all(isinstance(x, dict) and "prob_a" in x for x in got):  # verdict probabilities were read
                row["prob_a"] = got[0]["prob_a"] if len(ws) == 1 else [x["prob_a"] for x in got]
            if all(isinstance(x, dict) and "votes" in x for x in got):  # k samples voted on (eval.voting)
                row["vote"] = got[0]["vote"]
                for suffix, x in zip(("", "_swapped"), got):
                    row["votes" + suffix] = x["votes"]
                    if "vote_probs" in x:
                        row["vote_probs" + suffix] = x["vote_probs"]
            texts = [_text(x) for x in got]
            if keep_text and all(isinstance(t, (str, list)) for t in texts):
                row["judgment"] = texts[0] if len(texts) == 1 else texts
            row["correct"] = example_correct(row)
            stats.no_verdict += sum(v is None for v in vs)
            rows.append(row)
        return rows

    return _run(tasks, writer, batch_size, progress, fingerprint, rows_for)
