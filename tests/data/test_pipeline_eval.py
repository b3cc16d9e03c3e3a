"""Held-out batches in a multi-process job: every process runs the same number of evaluation
steps (a process that had one batch more would run the jitted step and its collectives alone,
and the job would hang), and together they cover every record once."""

import numpy as np
import pytest

from rmr1_jax.data.pipeline import eval_batches, pair_eval_batches, rules_eval_batches


def _records(n):
    return [{"input_ids": np.arange(1, 3 + i, dtype=np.int32), "loss_mask": np.ones(2 + i, np.int32),
             "chosen_ids": np.full(2 + i, 7, np.int32), "rejected_ids": np.full(1 + i, 8, np.int32),
             "labels": np.asarray([i % 2, 1], np.uint8)} for i in range(n)]


@pytest.mark.parametrize("n, processes, batch", [(9, 2, 2), (9, 2, 4), (3, 4, 1), (16, 2, 8), (5, 3, 2)])
@pytest.mark.parametrize("kind", ["sft", "pair", "rules"])
def test_every_process_runs_the_same_steps_and_every_record_is_read_once(n, processes, batch, kind):
    src = _records(n)
    make = {"sft": lambda **kw: eval_batches(src, **kw),
            "pair": lambda **kw: pair_eval_batches(src, **kw),
            "rules": lambda **kw: rules_eval_batches(src, num_labels=2, **kw)}[kind]
    key, mask = {"sft": ("input_ids", "segment_ids"), "pair": ("chosen_ids", "chosen_mask"),
                 "rules": ("input_ids", "attention_mask")}[kind]
    per_process = [list(make(batch_size=batch, max_length=24, pad_id=0, process_index=p, process_count=processes))
                   for p in range(processes)]
    steps = {len(b) for b in per_process}
    assert steps == {-(-n // (batch * processes))}, steps
    seen = []
    for batches in per_process:
        for b in batches:
            assert b[key].shape == (batch, 24)
            seen += [int(m.sum()) for m in b[mask] if m.sum() > 0]
    # the real rows' lengths identify the records: each exactly once
    want = [len(r["chosen_ids"] if kind == "pair" else r["input_ids"]) for r in src]
    assert sorted(seen) == sorted(want)
