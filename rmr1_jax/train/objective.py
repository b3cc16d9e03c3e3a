"""What a training objective gives the one runner, and what the runner gives it.

An objective (distillation, GRPO, and the ones to come) is a small object with a name, a
config class, the kind of records it trains on, and a ``plan(job)`` that returns its loss,
its batch source, its step count, its evaluation and its derived sizes. The runner
(:func:`rmr1_jax.train.runner.run`) does everything else: run directory, mesh, tokenizer,
records, model, optimizer, state, checkpoints, metrics, preemption.

Adding an objective::

    class MyObjective:
        name = "my-objective"
        config_cls = MyConfig                    # a JobConfig subclass with its own section
        head = "scalar"                          # the model head it trains
        supports_lora = True                     # optional: it may train LoRA adapters

        def records(self, cfg) -> RecordSpec: ...
        def plan(self, job: Job) -> Plan: ...

    rmr1_jax.train.runner.register_objective(MyObjective())
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax

from rmr1_jax.schema import JobConfig, TrainSpec

# loss_fn(params, batch, rng) -> (loss_sum, (count, {name: (sum, count)})): sums and counts,
# never means, so accumulation over micro-batches and devices is exact.
LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, tuple[jax.Array, dict]]]


class BatchSource(Protocol):
    """Where the loop draws its batches from.

    ``next_batch(params)`` returns the next host-local batch (numpy rows), or raises
    StopIteration when the data is exhausted; it sees the current parameters, for sources
    that generate data with the policy (GRPO rollouts). ``state``/``restore`` save and restore
    the position (a small JSON-able dict, saved with every checkpoint). A source that holds
    arrays between steps (mini-batches of a rollout not trained on yet) sets ``holds_arrays``:
    ``held_arrays()`` are then saved with each checkpoint and handed back to ``restore_held``
    on resume. ``pop_metrics()`` returns (and forgets) the metrics gathered since the last call.
    """

    holds_arrays: bool

    def next_batch(self, params) -> dict: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...

    def held_arrays(self) -> dict: ...

    def restore_held(self, arrays: dict) -> None: ...

    def pop_metrics(self) -> dict: ...


class IteratorSource:
    """A :class:`BatchSource` over a checkpointable iterator of batches that do not depend on
    the parameters (:class:`~rmr1_jax.data.pipeline.CheckpointableIterator`)."""

    holds_arrays = False

    def __init__(self, iterator):
        self.iterator = iterator

    def next_batch(self, params) -> dict:
        del params
        return next(self.iterator)

    def state(self) -> dict:
        return self.iterator.state()

    def restore(self, state: dict) -> None:
        self.iterator.restore(state)

    def held_arrays(self) -> dict:
        return {}

    def restore_held(self, arrays: dict) -> None:
        del arrays

    def pop_metrics(self) -> dict:
        return {}


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """The tokenized records an objective trains on: ``kind`` as in
    :class:`rmr1_jax.data.records.RecordOptions` ("sft": prompt + target with a loss mask,
    "prompt": the judge prompt alone, "pair": both sides of a preference pair, "rules": a pair
    and its selected-rule set), the token limit and what to do with longer records."""

    kind: str
    max_length: int
    overlong: str
    both_orders: bool = False
    num_labels: int = 0  # "rules" records: the rule pool's size
    length_key: str = "data.max_length"  # the config key max_length comes from (named in errors)


@dataclasses.dataclass
class Job:
    """What the runner has built when it asks the objective for its plan."""

    cfg: JobConfig
    mesh: Any
    tokenizer: Any
    template: Any
    sources: dict  # "train" (and "eval" when data.eval is set): random-access record sources
    model: Any
    params: Any
    log: Callable[[str], None] = print

    @property
    def process_count(self) -> int:
        return jax.process_count()

    @property
    def process_index(self) -> int:
        return jax.process_index()


@dataclasses.dataclass
class Plan:
    """An objective's part of a run.

    ``train`` is the config's train section with the sizes the objective derives filled in
    (``global_batch``); the runner prints it and never writes it back into the config.
    ``seq_len`` is the tokens per row the FLOPs estimate assumes; ``tokens_per_step(batch)``
    counts the real tokens of a host-local batch. ``evaluate(params, step)`` returns held-out
    metrics (``None``: no held-out set). ``derive_metrics(metrics)`` adds metrics computed from
    a step's averaged ones (a spread from a mean and a mean square). ``sizes`` are the derived
    sizes printed at start.
    """

    loss_fn: LossFn
    batches: BatchSource
    total_steps: int
    train: TrainSpec
    seq_len: int
    tokens_per_step: Callable[[dict], float]
    evaluate: Callable[[Any, int], dict] | None = None
    save_every: int | None = None  # None: checkpoint.save_every
    derive_metrics: Callable[[dict], dict] | None = None
    sizes: dict = dataclasses.field(default_factory=dict)
    summary: str = ""


def row_steps(job: Job, train: TrainSpec, what: str = "examples") -> tuple[int, int, int | None]:
    """``(rows per host, optimizer steps, data epochs)`` of a run over ``job.sources["train"]``
    (one record per row, no packing) at ``train.global_batch`` rows a step: ``train.max_steps``
    steps over endless data, else ``train.epochs`` passes. A global batch the processes do not
    divide, or larger than the data, is a ConfigError."""
    import math

    from rmr1_jax.errors import ConfigError

    n_proc, n = job.process_count, len(job.sources["train"])
    if train.global_batch % n_proc:
        raise ConfigError(f"train.global_batch={train.global_batch} must be divisible by the {n_proc} processes")
    per_host = train.global_batch // n_proc
    # the smallest process's share, the same number on every process: steps counted from each
    # one's own share could differ by one (a hang at the last step, or diverging schedules)
    host_rows = n // n_proc
    if host_rows < per_host:
        raise ConfigError(f"data.train has {n} usable {what}, fewer than one step of "
                          f"train.global_batch={train.global_batch}")
    if train.max_steps is not None:
        return per_host, train.max_steps, None
    return per_host, max(1, math.ceil(host_rows // per_host * train.epochs)), max(1, math.ceil(train.epochs))


class Objective(Protocol):
    name: str
    config_cls: type
    head: str | None  # the model head it trains ("lm", "scalar", "multilabel"); None: the source's
    # (optional, default False) whether it trains with model.lora_rank > 0: its losses and
    # evaluations then get the base and the adapters as one tree (rmr1_jax.models.lora)
    supports_lora: bool

    def records(self, cfg) -> RecordSpec: ...

    def plan(self, job: Job) -> Plan: ...
