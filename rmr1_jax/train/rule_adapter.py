"""The Rule Adapter (RAMO): the decoder with a multi-label head over the rule pool, trained
with binary cross-entropy to predict the rules selected for each pair.

Input: the pair as one user message in labeled sections (``[Conversation]``, ``[Response A]``,
``[Response B]``; :func:`rmr1_jax.data.schemas.rule_adapter_text`) through the chat template;
the head reads its last real token. Target: the R-hot set of the pair's selected rules
(``rule_indices`` or ``labels`` in the data rows). The loss is the BCE summed over rows and
rules and divided by rows x R of the whole global batch.

Metrics: top-k precision and recall (k = ``adapter.k``) and label accuracy during training;
on held-out data also three F1 figures, named for what they average. A rule is predicted when
its sigmoid > ``adapter.threshold``; each rule's F1 counts its true / false positives and false
negatives over the whole held-out set.

* ``macro_f1_rules`` (the primary figure): the F1 of each rule averaged over every rule of the
  pool (all R head outputs), a rule that neither occurs in the gold sets nor is predicted
  counting 0 - scikit-learn's ``f1_score(gold, pred, average="macro", zero_division=0)`` on
  the [N, R] indicator arrays;
* ``macro_f1_seen_rules``: the same F1s averaged over only the rules that occur in the gold
  sets or the predictions (0 when none does) - higher than ``macro_f1_rules`` whenever some
  rule of the pool never occurs in the held-out data;
* ``f1_flattened_two_class``: the F1 of the flattened 0/1 labels for class 1 and for class 0,
  averaged - what upstream RAMO reported as "f1_macro" (two classes, not R rules).

Best checkpoint: an evaluation whose ``macro_f1_rules`` beats the best so far (strictly; the
first always does) saves the parameters, with the run config and model metadata of the regular
checkpoints, to ``<run_dir>/best`` (one step kept, so ``checkpoint.keep`` never rotates it away;
it loads like ``checkpoint.dir``: ``load_model(<run_dir>/best, "multilabel")``), and only once
that save has committed names it in ``<run_dir>/best.json`` (``step``, ``macro_f1_rules``,
``dir``). A resumed run reads the best so far from best.json and replaces it only when beaten.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmr1_jax.errors import ConfigError
from rmr1_jax.paths import resolve
from rmr1_jax.schema import JobConfig
from rmr1_jax.train.objective import IteratorSource, Job, Plan, RecordSpec, row_steps


# rows per optimizer step when train.global_batch is unset (RAMO's Rule Adapter batch: 8)
DEFAULT_ROWS_PER_STEP = 8


@dataclasses.dataclass
class AdapterSpec:
    k: int = 5  # rules selected per pair: top-k precision / recall
    threshold: float = 0.5  # sigmoid threshold of a predicted rule (F1)

    def validate(self, where: str):
        if self.k < 1:
            raise ConfigError(f"{where}: adapter.k must be at least 1")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{where}: adapter.threshold must be in (0, 1)")


@dataclasses.dataclass
class RuleAdapterConfig(JobConfig):
    adapter: AdapterSpec = dataclasses.field(default_factory=AdapterSpec)

    def validate(self, where: str):
        if not self.model.num_labels or self.model.num_labels < 1:
            raise ConfigError(f"{where}: model.num_labels must be the size of the rule pool")
        if self.adapter.k > self.model.num_labels:
            raise ConfigError(f"{where}: adapter.k={self.adapter.k} exceeds model.num_labels={self.model.num_labels}")


def adapter_loss_fn(model, k: int):
    """loss_fn(params, batch, rng) -> (BCE sum, (rows x R, metrics)) over ``input_ids``,
    ``attention_mask`` [B, T] and ``labels`` [B, R]; rows without tokens count nowhere."""

    def loss_fn(params, batch, rng):
        del rng
        logits = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"])
        labels = batch["labels"].astype(jnp.float32)
        w = (jnp.sum(batch["attention_mask"], -1) > 0).astype(jnp.float32)
        n_rules = labels.shape[-1]
        bce = optax.sigmoid_binary_cross_entropy(logits, labels)
        hits = jnp.sum(jnp.take_along_axis(labels, jax.lax.top_k(logits, k)[1], axis=-1), -1)
        rows = jnp.sum(w)
        metrics = {"label_accuracy": (jnp.sum(((logits > 0) == (labels > 0.5)) * w[:, None]), rows * n_rules),
                   "topk_precision": (jnp.sum(hits * w), rows * k),
                   "topk_recall": (jnp.sum(hits * w), jnp.sum(labels * w[:, None]))}
        return jnp.sum(bce * w[:, None]), (rows * n_rules, metrics)

    return loss_fn


def f1_scores(pred: np.ndarray, gold: np.ndarray) -> dict:
    """``macro_f1_rules``, ``macro_f1_seen_rules`` and ``f1_flattened_two_class`` (see the
    module docstring) of 0/1 predictions and gold sets [N, R]."""
    pred, gold = pred.astype(bool), gold.astype(bool)
    tp = np.sum(pred & gold, 0)
    fp = np.sum(pred & ~gold, 0)
    fn = np.sum(~pred & gold, 0)
    seen = (tp + fp + fn) > 0
    per_rule = np.where(seen, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)

    def f1(p, g):
        t = np.sum(p & g)
        return 2 * t / max(2 * t + np.sum(p & ~g) + np.sum(~p & g), 1)

    flat_p, flat_g = pred.ravel(), gold.ravel()
    return {"macro_f1_rules": float(per_rule.mean()) if per_rule.size else 0.0,
            "macro_f1_seen_rules": float(per_rule[seen].mean()) if seen.any() else 0.0,
            "f1_flattened_two_class": float((f1(flat_p, flat_g) + f1(~flat_p, ~flat_g)) / 2)}


def adapter_eval_step(model, loss_fn):
    """jit(params, batch) -> ((loss sum, (count, metrics)), logits [B, R]), compiled once for
    every evaluation of a run."""
    return jax.jit(lambda p, b: (loss_fn(p, b, None), model.apply({"params": p}, b["input_ids"],
                                                                    attention_mask=b["attention_mask"])))


def heldout_adapter(step, params, batches, mesh, threshold: float) -> dict:
    """Loss, top-k precision / recall and the F1 figures over held-out batches; ``step``
    from :func:`adapter_eval_step`. The F1 figures count every process's rows (the logits,
    labels and masks are gathered), so all processes get the same values."""
    from rmr1_jax.parallel.hostlocal import fetch, to_global
    from rmr1_jax.parallel.sharding import activation_sharding

    sums: dict = {}
    preds, golds = [], []
    with activation_sharding(mesh):
        for b in batches:
            g = to_global(b, mesh)
            (s, (c, metrics)), logits = step(params, g)
            s, c, metrics = jax.device_get((s, c, metrics))
            for key, (ms, mn) in {"loss": (s, c), **metrics}.items():
                prev = sums.get(key, (0.0, 0.0))
                sums[key] = (prev[0] + float(ms), prev[1] + float(mn))
            real = fetch(g["attention_mask"]).sum(-1) > 0
            preds.append((1 / (1 + np.exp(-fetch(logits))) > threshold)[real])
            golds.append(fetch(g["labels"])[real] > 0.5)
    out = {k: s / max(n, 1.0) for k, (s, n) in sums.items()}
    out["examples"] = float(sum(len(g) for g in golds))
    out.update(f1_scores(np.concatenate(preds), np.concatenate(golds)))
    return out


class RuleAdapterObjective:
    """The Rule Adapter: multi-label BCE over the rule pool on the selected-rule sets."""

    name = "rule-adapter"
    config_cls = RuleAdapterConfig
    head = "multilabel"

    def records(self, cfg: RuleAdapterConfig) -> RecordSpec:
        return RecordSpec("rules", cfg.data.max_length, cfg.data.overlong, num_labels=cfg.model.num_labels)

    def plan(self, job: Job) -> Plan:
        from rmr1_jax.checkpoint.convert import checkpoint_metadata
        from rmr1_jax.config import to_dict
        from rmr1_jax.train.setup import chat_template_of
        from rmr1_jax.data.pipeline import CheckpointableIterator, rules_dataset, rules_eval_batches

        cfg, sources, mesh, model = job.cfg, job.sources, job.mesh, job.model
        train = dataclasses.replace(cfg.train, global_batch=cfg.train.global_batch or DEFAULT_ROWS_PER_STEP)
        n_proc, p_idx = job.process_count, job.process_index
        per_host, total_steps, epochs = row_steps(job, train)
        r = cfg.model.num_labels
        kw = dict(batch_size=per_host, max_length=cfg.data.max_length, pad_id=job.tokenizer.pad_id, num_labels=r,
                  process_index=p_idx, process_count=n_proc)
        batches = IteratorSource(CheckpointableIterator(rules_dataset(sources["train"], seed=train.seed, epochs=epochs,
                                                                      **kw)))
        loss_fn = adapter_loss_fn(model, cfg.adapter.k)
        eval_step = adapter_eval_step(model, loss_fn)
        save_best = best_saver(os.path.join(cfg.train.run_dir, "best"), os.path.join(cfg.train.run_dir, "best.json"),
                               config=to_dict(cfg),
                               metadata=checkpoint_metadata(model.cfg, chat_template=chat_template_of(job.tokenizer)))

        def evaluate(p, step):
            out = heldout_adapter(eval_step, p, rules_eval_batches(sources["eval"], limit=train.eval_limit, **kw),
                                  mesh, cfg.adapter.threshold)
            save_best(p, step, out["macro_f1_rules"])
            return out

        return Plan(loss_fn=loss_fn, batches=batches, total_steps=total_steps, train=train, seq_len=cfg.data.max_length,
                    tokens_per_step=lambda b: float(np.sum(b["attention_mask"])),
                    evaluate=evaluate if "eval" in sources else None,
                    sizes={"rules": r, "tokens per row": cfg.data.max_length},
                    summary=f"rule adapter: BCE over {r} rules, top-{cfg.adapter.k} precision/recall, "
                            f"F1 at sigmoid > {cfg.adapter.threshold}")


def best_saver(directory: str, record: str, *, config: dict, metadata: dict):
    """``save(params, step, macro_f1) -> bool``: when ``macro_f1`` (the primary figure,
    ``macro_f1_rules``) beats the one in ``record`` (best.json; none there: it does), save
    ``{"params": params}`` as ``step`` of the checkpoint ``directory`` (one step kept), then
    write ``record``. Call it on every process: process 0 decides (it alone reads and writes
    ``record``) and the Orbax save is collective."""
    from rmr1_jax.checkpoint.manager import CheckpointManager
    from rmr1_jax.data.readers import atomic_write_text

    directory = resolve(directory)

    def save(params, step: int, macro_f1: float) -> bool:
        best = _read_best(record) if jax.process_index() == 0 else None
        if not _agreed(best is None or macro_f1 > best["macro_f1_rules"]):
            return False
        # synchronous: the step has committed (and the previous best is pruned) on return
        with CheckpointManager(directory, max_to_keep=1, async_save=False) as mgr:
            # a step already there is this step's save by an earlier attempt of a resumed run
            # that stopped before writing best.json: the same step replayed from the same data
            if step not in mgr.all_steps():
                # force: a resumed run may save a step below one an earlier attempt left here
                mgr.save(step, {"params": params}, config=config, metadata=metadata, force=True,
                         extra={"best": {"step": step, "macro_f1_rules": macro_f1}})
            mgr.wait_until_finished()
        if jax.process_index() == 0:
            atomic_write_text(record, json.dumps({"step": step, "macro_f1_rules": macro_f1, "dir": directory}))
        return True

    return save


def _agreed(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (a decision to enter a collective save)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def _read_best(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


OBJECTIVE = RuleAdapterObjective()
